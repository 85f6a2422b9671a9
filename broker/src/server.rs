//! The listener: accepts AMQP connections, caps their number, and hands each to its own
//! connection task. Shutdown is a cancellation token every task watches, plus a task
//! tracker the node waits on until every connection has closed.

use crate::broker::BrokerShared;
use crate::connection;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Accepts connections until the node shuts down.
pub async fn run(shared: Arc<BrokerShared>, listener: TcpListener) {
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
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
                shared.tasks.spawn(async move {
                    connection::serve(shared2, socket, peer).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "failed to accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
