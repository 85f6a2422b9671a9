//! A fault-injecting TCP proxy for link tests: it forwards every accepted connection to a
//! target address, and on request cuts all current connections at once (both sockets are
//! dropped mid-stream, as a failed WAN link or a crashed peer would), refuses new ones
//! for a while (each accepted socket is closed at once, like a broker that is down),
//! blackholes them (accepted, never answered: packets lost in a network partition) or
//! delays every byte by a fixed latency in each direction (a slow link).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct State {
    target: Mutex<SocketAddr>,
    refuse: AtomicBool,
    blackhole: AtomicBool,
    /// Added latency per direction, in microseconds.
    delay_us: AtomicU64,
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
            blackhole: AtomicBool::new(false),
            delay_us: AtomicU64::new(0),
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
                let target = *st.target.lock().unwrap_or_else(|e| e.into_inner());
                let cut = st.cut.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let stop3 = stop2.clone();
                if st.blackhole.load(Ordering::SeqCst) {
                    // Held open and never answered until the next cut (or heal + cut).
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = cut.cancelled() => {}
                            _ = stop3.cancelled() => {}
                        }
                        drop(client);
                    });
                    continue;
                }
                st.accepted.fetch_add(1, Ordering::SeqCst);
                let st2 = st.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = async { tokio::join!(pump(cr, sw, st2.clone()), pump(sr, cw, st2)) } => {}
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

    /// While `on`, new connections are accepted and never answered (a network partition:
    /// the dialer waits for its own timeout). Combine with [`Proxy::cut`] to drop the
    /// current ones.
    pub fn blackhole(&self, on: bool) {
        self.state.blackhole.store(on, Ordering::SeqCst);
    }

    /// Adds `latency` to every byte in each direction, on current and new connections
    /// (zero: forward at once).
    pub fn delay(&self, latency: Duration) {
        self.state
            .delay_us
            .store(latency.as_micros() as u64, Ordering::SeqCst);
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

/// Copies one direction of a connection, holding each chunk until `delay` after it was read
/// (a reader task and a writer task, so the latency does not limit the throughput).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    st: Arc<State>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let delay = Duration::from_micros(st.delay_us.load(Ordering::SeqCst));
                    let due = tokio::time::Instant::now() + delay;
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    // The writer drains what was read before the reader saw the end of the stream.
    tokio::join!(reader, writer);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
