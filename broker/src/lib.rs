//! warren-broker: the Warren node.
//!
//! `Broker::start` binds the listeners (AMQP, AMQPS when configured, and the distribution
//! port that warrenctl and, later, other nodes use) and returns a handle; the node runs on
//! the caller's tokio runtime until `shutdown`. `server` accepts connections; `connection`
//! and `channel` are the protocol state machines; `access` checks permissions; `vhost` and
//! `exchange` route; `queue` holds the queue actors; `meta` is the definitions state machine
//! every change goes through; `definitions` reads and writes RabbitMQ's JSON export format;
//! `dist` serves the distribution port.

pub mod access;
pub mod alarm;
pub mod args;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod config;
pub mod connection;
pub mod definitions;
pub mod delivery;
pub mod direct_reply;
pub mod dist;
pub mod error;
pub mod exchange;
pub mod http;
pub mod message;
pub mod meta;
pub mod policy;
pub mod queue;
pub mod server;
pub mod store;
pub mod tls;
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
    tls_addr: Option<SocketAddr>,
    dist_addr: SocketAddr,
    http_addr: SocketAddr,
    shared: Arc<BrokerShared>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

async fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("failed to bind the {what} listener on {addr}: {e}"))
}

impl Broker {
    /// Recovers the node's data, binds the listeners and starts serving on the current
    /// tokio runtime. A `load_definitions` file is imported before clients are accepted.
    pub async fn start(mut config: Config) -> anyhow::Result<RunningBroker> {
        tls::install_crypto_provider();
        if config.data_dir.as_os_str().is_empty() {
            config.data_dir = std::path::PathBuf::from("warren-data").join(config.node_name());
        }
        // Configuration problems are reported before anything is opened.
        let tls_acceptor = match &config.tls {
            Some(t) => Some(tls::acceptor(t)?),
            None => None,
        };
        let cookie_path = config.cookie_file();
        let cookie = {
            let path = cookie_path.clone();
            tokio::task::spawn_blocking(move || dist::auth::read_or_create_cookie(&path)).await??
        };
        let addr = SocketAddr::new(config.bind, config.port);
        let tls_bind = config
            .tls
            .as_ref()
            .map(|t| SocketAddr::new(t.bind.unwrap_or(config.bind), t.port));
        let dist_bind = SocketAddr::new(config.bind, config.dist_port()?);
        let http_bind = SocketAddr::new(config.bind, config.http_port()?);
        let definitions_file = config.load_definitions.clone();
        // Recover first: the listeners open once the node can serve what it had.
        let shared = BrokerShared::start(config).await?;
        if let Some(path) = definitions_file {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                anyhow::anyhow!("load_definitions: failed to read {}: {e}", path.display())
            })?;
            let summary = definitions::import_json(&shared, &text)
                .await
                .map_err(|e| anyhow::anyhow!("load_definitions {}: {e}", path.display()))?;
            tracing::info!(file = %path.display(), %summary, "definitions imported");
        }
        let limit = Arc::new(tokio::sync::Semaphore::new(shared.config.max_connections));
        let mut listeners = Vec::new();
        let listener = bind("AMQP", addr).await?;
        let local_addr = listener.local_addr()?;
        tracing::info!(%local_addr, "AMQP listener started");
        listeners.push(tokio::spawn(server::run(
            shared.clone(),
            listener,
            None,
            limit.clone(),
        )));
        let mut tls_addr = None;
        if let (Some(acceptor), Some(bind_addr)) = (tls_acceptor, tls_bind) {
            let listener = bind("AMQPS", bind_addr).await?;
            let a = listener.local_addr()?;
            tracing::info!(local_addr = %a, "AMQPS listener started");
            tls_addr = Some(a);
            listeners.push(tokio::spawn(server::run(
                shared.clone(),
                listener,
                Some(acceptor),
                limit,
            )));
        }
        let dist_listener = bind("distribution", dist_bind).await?;
        let dist_addr = dist_listener.local_addr()?;
        tracing::info!(local_addr = %dist_addr, cookie_file = %cookie_path.display(), "distribution listener started");
        listeners.push(tokio::spawn(dist::run(
            shared.clone(),
            dist_listener,
            cookie,
        )));
        let http_listener = bind("HTTP", http_bind).await?;
        let http_addr = http_listener.local_addr()?;
        tracing::info!(local_addr = %http_addr, "HTTP listener started");
        listeners.push(tokio::spawn(http::run(shared.clone(), http_listener)));
        {
            let mut l = shared.listeners.lock().unwrap_or_else(|e| e.into_inner());
            l.push(("amqp".into(), local_addr));
            if let Some(a) = tls_addr {
                l.push(("amqp/ssl".into(), a));
            }
            l.push(("clustering".into(), dist_addr));
            l.push(("http".into(), http_addr));
        }
        Ok(RunningBroker {
            local_addr,
            tls_addr,
            dist_addr,
            http_addr,
            shared,
            listeners,
        })
    }
}

impl RunningBroker {
    /// The address the AMQP listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the AMQPS listener is bound to, when TLS is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The address of the distribution listener (warrenctl connects there).
    pub fn dist_addr(&self) -> SocketAddr {
        self.dist_addr
    }

    /// The address of the HTTP listener (management API, /metrics).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
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
        for l in self.listeners {
            let _ = l.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.shared.tasks.wait()).await;
        // Everything written so far reaches the disk, and the store is closed (so the same
        // data directory can be opened again), before the node reports it stopped.
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.store.shutdown(Box::new(move |_| {
            let _ = tx.send(());
        }));
        let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        self.shared.stopped.cancel();
    }

    /// Starts the shutdown without waiting for it (for `Drop`).
    pub fn shutdown_in_background(self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        self.shared.stopped.cancel();
    }

    /// Resolves when the node has been asked to stop.
    pub async fn stopped(&self) {
        self.shared.shutdown.cancelled().await
    }
}
