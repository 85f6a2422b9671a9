//! warren-broker: the Warren node.
//!
//! `Broker::start` binds the AMQP listener and returns a handle; the node runs on the
//! caller's tokio runtime until `shutdown`. `server` accepts connections; `connection` and
//! `channel` are the protocol state machines; `vhost` and `exchange` route; `queue` holds the
//! queue actors; `meta` is the definitions state machine every change goes through.

pub mod alarm;
pub mod args;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod config;
pub mod connection;
pub mod delivery;
pub mod direct_reply;
pub mod error;
pub mod exchange;
pub mod message;
pub mod meta;
pub mod policy;
pub mod queue;
pub mod server;
pub mod store;
pub mod vhost;

pub use config::Config;

use broker::BrokerShared;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The entry point: starts a node.
pub struct Broker;

/// A started node.
pub struct RunningBroker {
    local_addr: SocketAddr,
    shared: Arc<BrokerShared>,
    listener: tokio::task::JoinHandle<()>,
}

impl Broker {
    /// Binds the listener and starts serving on the current tokio runtime.
    pub async fn start(config: Config) -> anyhow::Result<RunningBroker> {
        let addr = SocketAddr::new(config.bind, config.port);
        // Recover first: the listener opens once the node can serve what it had.
        let shared = BrokerShared::start(config).await?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("failed to bind the AMQP listener on {addr}: {e}"))?;
        let local_addr = listener.local_addr()?;
        tracing::info!(%local_addr, "AMQP listener started");
        let listener = tokio::spawn(server::run(shared.clone(), listener));
        Ok(RunningBroker {
            local_addr,
            shared,
            listener,
        })
    }
}

impl RunningBroker {
    /// The address the AMQP listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The node's shared state.
    pub fn shared(&self) -> &Arc<BrokerShared> {
        &self.shared
    }

    /// Stops accepting, closes every connection (320 CONNECTION_FORCED) and waits, up to a
    /// few seconds, for every connection task to end.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        let _ = self.listener.await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.shared.tasks.wait()).await;
        // Everything written so far reaches the disk, and the store is closed (so the same
        // data directory can be opened again), before the node reports it stopped.
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.store.shutdown(Box::new(move |_| {
            let _ = tx.send(());
        }));
        let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
    }

    /// Starts the shutdown without waiting for it (for `Drop`).
    pub fn shutdown_in_background(self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
    }

    /// Resolves when the node has been asked to stop.
    pub async fn stopped(&self) {
        self.shared.shutdown.cancelled().await
    }
}
