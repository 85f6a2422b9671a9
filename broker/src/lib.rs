//! warren-broker: the Warren node.
//!
//! `Broker::start` binds the AMQP listener and returns a handle; the node runs on the
//! caller's tokio runtime until `shutdown`. See `server` for the listener, `connection` and
//! `channel` for the protocol state machines, `vhost` and `exchange` for routing, `queue`
//! for the queue actors and `meta` for the definitions every change goes through.

pub mod config;

pub use config::Config;

use std::net::SocketAddr;

/// The entry point: starts a node.
pub struct Broker;

/// A started node.
pub struct RunningBroker {
    local_addr: SocketAddr,
}

impl Broker {
    /// Binds the listener and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<RunningBroker> {
        let _ = config;
        anyhow::bail!("not yet")
    }
}

impl RunningBroker {
    /// The address the AMQP listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every connection and waits for the node to stop.
    pub async fn shutdown(self) {}

    /// Starts the shutdown without waiting for it (for `Drop`).
    pub fn shutdown_in_background(self) {}
}
