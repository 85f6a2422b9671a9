//! The listeners: accept AMQP connections (plain TCP, or TLS on the AMQPS listener), cap
//! their number, and hand each to its own connection task. Shutdown is a cancellation token
//! every task watches, plus a task tracker the node waits on until every connection has
//! closed.

use crate::broker::BrokerShared;
use crate::connection::{self, stream::Transport};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// Accepts connections until the node shuts down. With `tls`, each connection first
/// completes a TLS handshake (within the handshake timeout).
pub async fn run(
    shared: Arc<BrokerShared>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limit: Arc<Semaphore>,
) {
    loop {
        let permit = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                let shared2 = shared.clone();
                let tls = tls.clone();
                shared.tasks.spawn(async move {
                    let transport = match tls {
                        None => Transport::tcp(socket, peer),
                        Some(acceptor) => {
                            let timeout =
                                Duration::from_secs(shared2.config.handshake_timeout_secs);
                            match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
                                Ok(Ok(stream)) => {
                                    let session = crate::tls::session(stream.get_ref().1);
                                    Transport::tls(stream, peer, session)
                                }
                                Ok(Err(e)) => {
                                    tracing::info!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::info!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            }
                        }
                    };
                    connection::serve(shared2, transport).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
