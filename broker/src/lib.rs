//! warren-broker: the Warren node.
//!
//! `Broker::start` binds the listeners (AMQP, AMQPS when configured, and the distribution
//! port that warrenctl and other nodes use) and returns a handle; the node runs on
//! the caller's tokio runtime until `shutdown`. `server` accepts connections; `connection`
//! and `channel` are the protocol state machines; `access` checks permissions; `vhost` and
//! `exchange` route; `queue` holds the queue actors; `meta` is the definitions state machine
//! every change goes through; `definitions` reads and writes RabbitMQ's JSON export format;
//! `dist` serves the distribution port; `cluster` replicates definitions through Raft and
//! runs the application under the node (stop_app/start_app, join_cluster).

pub mod access;
pub mod alarm;
pub mod args;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod cluster;
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
pub mod shovel;
pub mod store;
pub mod tls;
pub mod vhost;

pub use config::Config;

use broker::BrokerShared;
use std::net::SocketAddr;
use std::sync::Arc;

/// The entry point: starts a node.
pub struct Broker;

/// A started node.
pub struct RunningBroker {
    node: Arc<cluster::node::Node>,
    dist_task: tokio::task::JoinHandle<()>,
}

/// A listener could not be bound: a configuration problem the node does not outlive.
#[derive(Debug)]
pub struct BindError(String);

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BindError {}

pub(crate) async fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::Error::new(BindError(format!(
            "failed to bind the {what} listener on {addr}: {e}"
        )))
    })
}

/// The members of `cluster_nodes` other than this node (name, address), and this node's
/// rank in the list (the list's length when it is not listed).
fn discovery_candidates(config: &Config) -> (Vec<(String, String)>, usize) {
    let me = config.node_name();
    let mut rank = config.cluster_nodes.len();
    let mut out = Vec::new();
    for (i, entry) in config.cluster_nodes.iter().enumerate() {
        match config::parse_member(entry) {
            Ok((name, _)) if name == me => rank = rank.min(i),
            Ok(m) => out.push(m),
            Err(e) => tracing::warn!("cluster_nodes: {e}"),
        }
    }
    (out, rank)
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
        if let Some(t) = &config.tls {
            tls::acceptor(t)?;
        }
        let cookie_path = config.cookie_file();
        let mut cookie = {
            let path = cookie_path.clone();
            tokio::task::spawn_blocking(move || dist::auth::read_or_create_cookie(&path)).await??
        };
        let dist_acceptor = match &config.dist_tls {
            Some(t) => {
                cookie = cookie.with_tls(dist::tls_connector(t).map_err(anyhow::Error::msg)?);
                Some(dist::tls_acceptor(t).map_err(anyhow::Error::msg)?)
            }
            None => None,
        };
        let dist_bind = SocketAddr::new(config.bind, config.dist_port()?);
        config.http_port()?;
        let definitions_file = config.load_definitions.clone();
        // The distribution port is bound first (peers learn its address), and served once
        // the application has recovered.
        let dist_listener = bind("distribution", dist_bind).await?;
        let dist_addr = dist_listener.local_addr()?;
        // A fresh node (nothing in its data directory) with `cluster_nodes` joins one of
        // them; never again once it has data.
        let fresh = !config.data_dir.join("store").exists()
            && cluster::read_cluster_file(&config.data_dir).is_none();
        let (candidates, my_rank) = discovery_candidates(&config);
        let discovery = (fresh && !candidates.is_empty()).then(|| {
            (
                candidates,
                my_rank,
                config.cluster_node_ram,
                config.discovery_retry_limit,
                std::time::Duration::from_millis(config.discovery_retry_interval_ms),
            )
        });
        let node = Arc::new(cluster::node::Node::new(config, cookie, dist_addr));
        let mut dist_task = None;
        let mut dist_listener = Some(dist_listener);
        let started = match discovery {
            Some((candidates, rank, ram, retries, interval)) => {
                // The cluster reaches a joining node over its distribution port.
                dist_task = Some(tokio::spawn(dist::run(
                    node.clone(),
                    dist_listener.take().expect("bound above"),
                    dist_acceptor.clone(),
                )));
                node.auto_cluster(candidates, rank, ram, retries, interval)
                    .await
            }
            None => node.start_app().await,
        };
        if let Err(e) = started {
            if e.downcast_ref::<BindError>().is_some() {
                return Err(e);
            }
            // The node stays up without its application, reachable for warrenctl (reset,
            // force_boot, start_app), as the error says.
            tracing::error!(error = %e, "the application failed to start; the node stays reachable for warrenctl (reset, force_boot, start_app)");
        }
        if let (Some(path), Some(shared)) = (definitions_file, node.app()) {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                anyhow::anyhow!("load_definitions: failed to read {}: {e}", path.display())
            })?;
            let summary = definitions::import_json(&shared, &text)
                .await
                .map_err(|e| anyhow::anyhow!("load_definitions {}: {e}", path.display()))?;
            tracing::info!(file = %path.display(), %summary, "definitions imported");
        }
        tracing::info!(local_addr = %dist_addr, cookie_file = %cookie_path.display(), "distribution listener started");
        let dist_task = match (dist_task, dist_listener) {
            (Some(t), _) => t,
            (None, Some(l)) => tokio::spawn(dist::run(node.clone(), l, dist_acceptor)),
            (None, None) => unreachable!("the listener is served by exactly one task"),
        };
        Ok(RunningBroker { node, dist_task })
    }

    /// Resets a stopped node from its configuration (`warren-server --reset`): asks the
    /// cluster to remove it (`force`: without asking), then deletes its data directory's
    /// definitions, messages and cluster membership. Refused while a node runs on it.
    pub async fn reset(mut config: Config, force: bool) -> anyhow::Result<String> {
        tls::install_crypto_provider();
        if config.data_dir.as_os_str().is_empty() {
            config.data_dir = std::path::PathBuf::from("warren-data").join(config.node_name());
        }
        let mut cookie = {
            let path = config.cookie_file();
            tokio::task::spawn_blocking(move || dist::auth::read_or_create_cookie(&path)).await??
        };
        if let Some(t) = &config.dist_tls {
            cookie = cookie.with_tls(dist::tls_connector(t).map_err(anyhow::Error::msg)?);
        }
        // A node running on this data directory holds its distribution port.
        let dist_bind = SocketAddr::new(config.bind, config.dist_port()?);
        let probe = tokio::net::TcpListener::bind(dist_bind).await.map_err(|e| {
            anyhow::anyhow!(
                "node {} seems to be running (its distribution port {dist_bind} is in use: {e}); stop it, or use warrenctl stop_app and warrenctl reset",
                config.node_name()
            )
        })?;
        let dist_addr = probe.local_addr()?;
        drop(probe);
        let node = cluster::node::Node::new(config, cookie, dist_addr);
        node.reset(force)
            .await
            .map(|r| match r {
                dist::ctl::Reply::Message(m) => m,
                other => format!("{other:?}"),
            })
            .map_err(|e| anyhow::anyhow!("{}", e.message))
    }
}

impl RunningBroker {
    /// The address the AMQP listener is bound to.
    ///
    /// # Panics
    /// When the application is not running (it failed to start, or `stop_app`).
    pub fn local_addr(&self) -> SocketAddr {
        self.node
            .addrs()
            .0
            .expect("the AMQP listener was bound at start")
    }

    /// The address the AMQPS listener is bound to, when TLS is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.node.addrs().1
    }

    /// The address of the distribution listener (warrenctl connects there).
    pub fn dist_addr(&self) -> SocketAddr {
        self.node.dist_addr
    }

    /// The running application's shared state.
    ///
    /// # Panics
    /// When the application is stopped (`stop_app`).
    pub fn shared(&self) -> Arc<BrokerShared> {
        self.node
            .app()
            .expect("the application is running (not stopped with stop_app)")
    }

    /// The node (application lifecycle, clustering).
    pub fn node(&self) -> &Arc<cluster::node::Node> {
        &self.node
    }

    /// The address of the HTTP listener (management API, /metrics).
    pub fn http_addr(&self) -> SocketAddr {
        self.node
            .addrs()
            .2
            .expect("the HTTP listener was bound at start")
    }

    /// Stops accepting, closes every connection (320 CONNECTION_FORCED) and waits, up to a
    /// few seconds, for every connection task to end.
    pub async fn shutdown(self) {
        self.node.stop().await;
        let _ = self.dist_task.await;
    }

    /// Starts the shutdown without waiting for it (for `Drop`).
    pub fn shutdown_in_background(self) {
        let node = self.node;
        node.shutdown.cancel();
        if let Some(shared) = node.app() {
            if let Some(s) = shared.shovels.get() {
                s.stop_all();
            }
            shared.shutdown.cancel();
            shared.tasks.close();
            shared.stopped.cancel();
            if let Some(c) = shared.take_cluster() {
                // The Raft member would otherwise keep running on this runtime.
                if let Ok(h) = tokio::runtime::Handle::try_current() {
                    h.spawn(async move { c.shutdown().await });
                }
            }
        }
        node.stopped.cancel();
    }

    /// Resolves when the node has been asked to stop.
    pub async fn stopped(&self) {
        self.node.shutdown.cancelled().await
    }
}
