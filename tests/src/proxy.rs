//! A fault-injecting TCP proxy for link tests: it forwards every accepted connection to a
//! target address, and on request cuts all current connections at once (both sockets are
//! dropped mid-stream, as a failed WAN link or a crashed peer would) or refuses new ones
//! for a while (each accepted socket is closed at once, like a broker that is down).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct State {
    target: Mutex<SocketAddr>,
    refuse: AtomicBool,
    /// Cancelled to cut every current connection; replaced by a fresh token after a cut.
    cut: Mutex<CancellationToken>,
    accepted: AtomicU64,
}

/// A proxy listening on `127.0.0.1:<ephemeral>`; stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Proxy {
    /// Starts a proxy to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy listener");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(State {
            target: Mutex::new(target),
            refuse: AtomicBool::new(false),
            cut: Mutex::new(CancellationToken::new()),
            accepted: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let (st, stop2) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(_) => continue,
                    },
                    _ = stop2.cancelled() => return,
                };
                if st.refuse.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                st.accepted.fetch_add(1, Ordering::SeqCst);
                let target = *st.target.lock().unwrap_or_else(|e| e.into_inner());
                let cut = st.cut.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let stop3 = stop2.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut c, mut s) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut c, &mut s) => {}
                        _ = cut.cancelled() => {}
                        _ = stop3.cancelled() => {}
                    }
                });
            }
        });
        Proxy { addr, state, stop }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `amqp://guest:guest@<proxy>/%2f`.
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Cuts every current connection.
    pub fn cut(&self) {
        let mut token = self.state.cut.lock().unwrap_or_else(|e| e.into_inner());
        token.cancel();
        *token = CancellationToken::new();
    }

    /// While `on`, new connections are closed as soon as they are accepted.
    pub fn refuse(&self, on: bool) {
        self.state.refuse.store(on, Ordering::SeqCst);
    }

    /// Sends new connections to another target.
    pub fn set_target(&self, target: SocketAddr) {
        *self.state.target.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
