//! The node around the application: the distribution listener, the cookie and the node's
//! identity stay up while the application (store, definitions, queues, AMQP listeners, the
//! Raft member) is stopped and started again — `stop_app`, `start_app`, and the commands
//! that need a stopped application: `join_cluster`, `reset`, `change_cluster_node_type`.
//! `cluster_status` and `forget_cluster_node` are answered here too.
//!
//! At start the node also checks that the cluster still counts it as a member (a forgotten
//! node refuses to start with RabbitMQ's `inconsistent_cluster` text and stays reachable
//! for `reset`), joins the members of `cluster_nodes` when it is fresh (classic config peer
//! discovery), and honours `force_boot` (see `raft_store::RaftDisk::force_membership`).

use super::{network, ClusterFile, Identity, Member, PeerOp};
use crate::broker::BrokerShared;
use crate::config::Config;
use crate::dist::ctl::{CtlOp, Reply};
use crate::dist::protocol::RemoteError;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A running application: the node's shared state and its listener tasks.
struct App {
    shared: Arc<BrokerShared>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

/// The node: what outlives `stop_app`.
pub struct Node {
    /// The configuration (data directory resolved; ports as first bound).
    config: Mutex<Config>,
    /// Name, distribution address and cookie.
    pub identity: Identity,
    /// The application while it runs. A std mutex: only held to take or clone it.
    app: Mutex<Option<App>>,
    /// Serializes application starts, stops, joins and resets.
    lifecycle: tokio::sync::Mutex<()>,
    /// Cancelled when the node is asked to stop (SIGTERM, `warrenctl stop`).
    pub shutdown: CancellationToken,
    /// Cancelled once the node has completely stopped.
    pub stopped: CancellationToken,
    /// The distribution listener's address.
    pub dist_addr: SocketAddr,
    /// The AMQP, AMQPS and HTTP addresses of the last start.
    addrs: Mutex<(Option<SocketAddr>, Option<SocketAddr>, Option<SocketAddr>)>,
    /// Why the application failed to start, while it stays stopped.
    boot_error: Mutex<Option<String>>,
    /// True while a fresh node looks for `cluster_nodes` to join (told to peers, so nodes
    /// started together agree on which one starts first).
    discovering: AtomicBool,
}

/// The marker file `warrenctl force_boot` leaves for the next start (RabbitMQ's
/// `force_load` in the Mnesia directory).
pub const FORCE_BOOT_FILE: &str = "force_boot";

/// The application refused to start because the cluster no longer counts this node.
#[derive(Debug)]
pub struct InconsistentCluster(pub String);

impl std::fmt::Display for InconsistentCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "inconsistent_cluster: {}", self.0)
    }
}

impl std::error::Error for InconsistentCluster {}

fn not_running(node: &str) -> RemoteError {
    RemoteError::unavailable(format!(
        "Warren application is not running on node {node} (start it with start_app)"
    ))
}

impl Node {
    /// A node whose distribution listener is bound at `dist_addr`.
    pub fn new(config: Config, cookie: crate::dist::auth::Cookie, dist_addr: SocketAddr) -> Self {
        let name = config.node_name();
        let host = name
            .split_once('@')
            .map(|(_, h)| h.to_string())
            .unwrap_or_else(|| "localhost".into());
        let me = Member {
            name,
            addr: format!("{host}:{}", dist_addr.port()),
        };
        let peer_addresses = Arc::new(config.cluster_peer_addresses.clone());
        Node {
            config: Mutex::new(config),
            identity: Identity {
                me,
                cookie: Arc::new(cookie),
                peer_addresses,
            },
            app: Mutex::new(None),
            lifecycle: tokio::sync::Mutex::new(()),
            shutdown: CancellationToken::new(),
            stopped: CancellationToken::new(),
            dist_addr,
            addrs: Mutex::new((None, None, None)),
            boot_error: Mutex::new(None),
            discovering: AtomicBool::new(false),
        }
    }

    /// Why the application could not start, while it is stopped.
    pub fn boot_error(&self) -> Option<String> {
        self.boot_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_boot_error(&self, e: Option<String>) {
        *self.boot_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }

    fn not_running(&self) -> RemoteError {
        match self.boot_error() {
            Some(e) => RemoteError::software(format!(
                "Warren application is not running on node {}: it failed to start: {e}",
                self.name()
            )),
            None => not_running(self.name()),
        }
    }

    /// Pings the node at `addr` (its distribution port): its answer says whether its
    /// application runs and which cluster it is in.
    async fn ping(&self, addr: &str, timeout: Duration) -> Result<Value, crate::dist::ClientError> {
        network::peer_call(
            addr,
            &self.identity.cookie,
            self.name(),
            PeerOp::Ping,
            timeout,
        )
        .await
    }

    /// Asks the members this node knows whether they still count it; a running member
    /// that has no cluster, or the leader of one that does not list this node, disagrees
    /// (RabbitMQ's `inconsistent_cluster`). Unreachable members cannot tell: the node
    /// starts and waits for a majority as usual.
    async fn check_consistency(&self, file: &ClusterFile) -> Result<(), String> {
        for m in file.members.iter().filter(|m| m.name != self.name()) {
            let Ok(v) = self
                .ping(&self.identity.dial_addr(m), Duration::from_secs(2))
                .await
            else {
                continue;
            };
            if v.get("running") != Some(&Value::Bool(true)) {
                continue;
            }
            let disagrees = match v.get("clustered") {
                Some(Value::Bool(false)) => true,
                Some(Value::Bool(true)) => {
                    v.get("leader") == Some(&Value::Bool(true))
                        && !v
                            .get("members")
                            .and_then(Value::as_array)
                            .is_some_and(|l| l.iter().any(|n| n.as_str() == Some(self.name())))
                }
                _ => false,
            };
            if disagrees {
                return Err(format!(
                    "Node {} thinks it's clustered with node {}, but {} disagrees",
                    self.name(),
                    m.name,
                    m.name
                ));
            }
        }
        Ok(())
    }

    /// Classic config peer discovery for a fresh node: joins the first member of
    /// `candidates` (name, address) whose application runs, trying them in order for up
    /// to `retries` rounds `interval` apart, then starts standalone. Nodes started together
    /// see each other discovering: the one listed first among them starts standalone at
    /// once, so the others join it.
    pub async fn auto_cluster(
        &self,
        candidates: Vec<(String, String)>,
        my_rank: usize,
        ram: bool,
        retries: u32,
        interval: Duration,
    ) -> anyhow::Result<()> {
        self.discovering.store(true, Ordering::SeqCst);
        let names: Vec<&str> = candidates.iter().map(|(n, _)| n.as_str()).collect();
        tracing::info!(nodes = ?names, "peer discovery: looking for a cluster member to join");
        let rounds = retries.max(1);
        for round in 0..rounds {
            let mut first_discovering = usize::MAX;
            for (rank, (name, addr)) in candidates.iter().enumerate() {
                let dial = self.identity.dial_addr(&Member {
                    name: name.clone(),
                    addr: addr.clone(),
                });
                let v = match self.ping(&dial, Duration::from_secs(2)).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::debug!(node = %name, error = %e, "Could not auto-cluster with node {name}");
                        continue;
                    }
                };
                if v.get("running") != Some(&Value::Bool(true)) {
                    if v.get("discovering") == Some(&Value::Bool(true)) {
                        first_discovering = first_discovering.min(rank);
                    }
                    continue;
                }
                match self.join(name.clone(), addr.clone(), ram).await {
                    Ok(_) => {
                        self.discovering.store(false, Ordering::SeqCst);
                        tracing::info!("Node '{name}' selected for auto-clustering");
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(node = %name, error = %e.message, "Could not auto-cluster with node {name}")
                    }
                }
            }
            if first_discovering != usize::MAX && my_rank < first_discovering {
                tracing::info!("peer discovery: the other listed nodes are starting too and this node is listed first; starting as the first node");
                break;
            }
            if round + 1 < rounds {
                tokio::time::sleep(interval).await;
            }
        }
        self.discovering.store(false, Ordering::SeqCst);
        tracing::warn!(nodes = ?names, "Could not find any node for auto-clustering from: {names:?}. Starting blank node...");
        self.start_app().await
    }

    /// Marks the node to boot without waiting for the lost disc nodes: at the next
    /// application start the Raft membership shrinks to this node and the disc nodes
    /// reachable then (RabbitMQ's `force_boot`).
    async fn force_boot(&self) -> Result<Reply, RemoteError> {
        let _g = self.lifecycle.lock().await;
        self.require_stopped("force_boot")?;
        let dir = self.config().data_dir;
        match super::read_cluster_file(&dir) {
            None => {
                return Err(RemoteError::software(format!(
                    "Node {} is not clustered: a standalone node always boots",
                    self.name()
                )))
            }
            Some(f) if f.ram => {
                return Err(RemoteError::software(format!(
                    "Node {} is a RAM node: only a disc node can force the cluster to boot",
                    self.name()
                )))
            }
            Some(_) => {}
        }
        std::fs::write(dir.join(FORCE_BOOT_FILE), b"").map_err(|e| {
            RemoteError::software(format!("failed to write the force_boot marker: {e}"))
        })?;
        Ok(Reply::Message(format!(
            "Forcing boot for node {} (data directory {})",
            self.name(),
            dir.display()
        )))
    }

    /// With the force_boot marker present: the disc members (other than this node)
    /// reachable now, to keep as voters; the marker is consumed.
    async fn take_force_boot(&self) -> Option<Vec<String>> {
        let dir = self.config().data_dir;
        let marker = dir.join(FORCE_BOOT_FILE);
        if !marker.exists() {
            return None;
        }
        let _ = std::fs::remove_file(&marker);
        let file = super::read_cluster_file(&dir)?;
        let mut keep = Vec::new();
        for m in file.members.iter().filter(|m| m.name != self.name()) {
            let r = self
                .ping(&self.identity.dial_addr(m), Duration::from_secs(2))
                .await;
            if r.is_ok() {
                keep.push(m.name.clone());
            }
        }
        tracing::warn!(keep = ?keep, "force_boot: the cluster's disc nodes shrink to this node and the reachable ones");
        Some(keep)
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.identity.me.name
    }

    fn config(&self) -> Config {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The running application's shared state.
    pub fn app(&self) -> Option<Arc<BrokerShared>> {
        self.app
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|a| a.shared.clone())
    }

    /// The AMQP, AMQPS and HTTP addresses.
    pub fn addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>, Option<SocketAddr>) {
        *self.addrs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the application (a no-op when it runs), after checking that the cluster
    /// still counts this node.
    pub async fn start_app(&self) -> anyhow::Result<()> {
        let _g = self.lifecycle.lock().await;
        if self.app().is_some() {
            return Ok(());
        }
        if let Some(file) = super::read_cluster_file(&self.config().data_dir) {
            if let Err(msg) = self.check_consistency(&file).await {
                tracing::error!(
                    "{msg}; reset this node (warrenctl reset) and join the cluster again"
                );
                self.set_boot_error(Some(format!("inconsistent_cluster: {msg}")));
                return Err(InconsistentCluster(msg).into());
            }
        }
        let r = self.start_app_locked().await;
        self.set_boot_error(r.as_ref().err().map(|e| e.to_string()));
        r
    }

    async fn start_app_locked(&self) -> anyhow::Result<()> {
        if self.app().is_some() {
            return Ok(());
        }
        let config = self.config();
        let force_boot = self.take_force_boot().await;
        let tls_acceptor = match &config.tls {
            Some(t) => Some(crate::tls::acceptor(t)?),
            None => None,
        };
        let addr = SocketAddr::new(config.bind, config.port);
        let tls_bind = config
            .tls
            .as_ref()
            .map(|t| SocketAddr::new(t.bind.unwrap_or(config.bind), t.port));
        let http_bind = SocketAddr::new(config.bind, config.http_port()?);
        let shared = BrokerShared::start(config.clone(), self.identity.clone(), force_boot).await?;
        let limit = Arc::new(tokio::sync::Semaphore::new(shared.config.max_connections));
        let mut listeners = Vec::new();
        let listener = crate::bind("AMQP", addr).await?;
        let local_addr = listener.local_addr()?;
        tracing::info!(%local_addr, "AMQP listener started");
        listeners.push(tokio::spawn(crate::server::run(
            shared.clone(),
            listener,
            None,
            limit.clone(),
        )));
        let mut tls_addr = None;
        if let (Some(acceptor), Some(bind_addr)) = (tls_acceptor, tls_bind) {
            let listener = crate::bind("AMQPS", bind_addr).await?;
            let a = listener.local_addr()?;
            tracing::info!(local_addr = %a, "AMQPS listener started");
            tls_addr = Some(a);
            listeners.push(tokio::spawn(crate::server::run(
                shared.clone(),
                listener,
                Some(acceptor),
                limit,
            )));
        }
        let http_listener = crate::bind("HTTP", http_bind).await?;
        let http_addr = http_listener.local_addr()?;
        tracing::info!(local_addr = %http_addr, "HTTP listener started");
        listeners.push(tokio::spawn(crate::http::run(
            shared.clone(),
            http_listener,
        )));
        {
            let mut l = shared.listeners.lock().unwrap_or_else(|e| e.into_inner());
            l.push(("amqp".into(), local_addr));
            if let Some(a) = tls_addr {
                l.push(("amqp/ssl".into(), a));
            }
            l.push(("clustering".into(), self.dist_addr));
            l.push(("http".into(), http_addr));
        }
        {
            // A restart of the application binds the same ports (tests bind port 0 first).
            let mut c = self.config.lock().unwrap_or_else(|e| e.into_inner());
            c.port = local_addr.port();
            c.http_port = Some(http_addr.port());
            if let (Some(t), Some(a)) = (c.tls.as_mut(), tls_addr) {
                t.port = a.port();
            }
        }
        crate::shovel::start(&shared, local_addr);
        *self.addrs.lock().unwrap_or_else(|e| e.into_inner()) =
            (Some(local_addr), tls_addr, Some(http_addr));
        *self.app.lock().unwrap_or_else(|e| e.into_inner()) = Some(App { shared, listeners });
        Ok(())
    }

    /// Stops the application: listeners close, connections are closed (320), the Raft
    /// member stops, the store is flushed and closed. The node stays reachable.
    pub async fn stop_app(&self) {
        let _g = self.lifecycle.lock().await;
        self.stop_app_locked().await
    }

    async fn stop_app_locked(&self) {
        let Some(app) = self.app.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let shared = app.shared;
        if let Some(s) = shared.shovels.get() {
            s.shutdown().await;
        }
        shared.shutdown.cancel();
        shared.tasks.close();
        for l in app.listeners {
            let _ = l.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.tasks.wait()).await;
        if let Some(cluster) = shared.cluster() {
            // As RabbitMQ does when a node stops: its transient and exclusive queues go.
            let doomed = super::transient_queues_of(&shared, self.name());
            for (vhost, name) in doomed {
                let cmd = crate::meta::MetaCommand::DeleteQueue { vhost, name };
                if let Err(e) = cluster.write(super::Request::Meta(cmd)).await {
                    tracing::debug!(error = %e, "could not delete a transient queue at stop");
                    break;
                }
            }
        }
        if let Some(cluster) = shared.take_cluster() {
            // Remember the members, to reach the cluster while stopped.
            let (disc, ram) = cluster.members();
            if let Some(mut file) = super::read_cluster_file(&shared.config.data_dir) {
                file.members = disc.into_iter().chain(ram).collect();
                if let Err(e) = super::write_cluster_file(&shared.config.data_dir, &file) {
                    tracing::warn!(error = %e, "failed to write cluster.json");
                }
            }
            cluster.shutdown().await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        shared.store.shutdown(Box::new(move |_| {
            let _ = tx.send(());
        }));
        let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        shared.stopped.cancel();
        tracing::info!("application stopped");
    }

    /// Stops the application and marks the node stopped.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.stop_app().await;
        self.stopped.cancel();
    }

    /// Deletes the node's data: messages, definitions, cluster membership.
    fn wipe(&self) -> Result<(), RemoteError> {
        let dir = self.config().data_dir;
        let store = dir.join("store");
        if store.exists() {
            std::fs::remove_dir_all(&store).map_err(|e| {
                RemoteError::software(format!("failed to delete {}: {e}", store.display()))
            })?;
        }
        let _ = std::fs::remove_file(dir.join(FORCE_BOOT_FILE));
        self.set_boot_error(None);
        super::remove_cluster_file(&dir)
            .map_err(|e| RemoteError::software(format!("failed to delete cluster.json: {e}")))
    }

    fn require_stopped(&self, what: &str) -> Result<(), RemoteError> {
        if self.app().is_some() {
            return Err(RemoteError::software(format!(
                "Warren application is still running on node {}; stop it with stop_app before {what}",
                self.name()
            )));
        }
        Ok(())
    }

    /// Asks the cluster (through any member reachable) to run a membership request.
    async fn ask_members(&self, members: &[Member], op: PeerOp) -> Result<(), RemoteError> {
        let mut last = RemoteError::unavailable("no other cluster member is known");
        for m in members.iter().filter(|m| m.name != self.name()) {
            match network::peer_call::<()>(
                &self.identity.dial_addr(m),
                &self.identity.cookie,
                self.name(),
                op.clone(),
                Duration::from_secs(30),
            )
            .await
            {
                Ok(()) => return Ok(()),
                Err(crate::dist::ClientError::Remote(e)) => return Err(e),
                Err(e) => {
                    last = RemoteError::unavailable(format!("could not reach node {}: {e}", m.name))
                }
            }
        }
        Err(last)
    }

    async fn join(
        &self,
        target_name: String,
        target_addr: String,
        ram: bool,
    ) -> Result<Reply, RemoteError> {
        let _g = self.lifecycle.lock().await;
        self.require_stopped("joining a cluster")?;
        if target_name == self.name() {
            return Err(RemoteError::data(format!(
                "Node {target_name} cannot join itself"
            )));
        }
        let target_dial = self.identity.dial_addr(&Member {
            name: target_name.clone(),
            addr: target_addr.clone(),
        });
        // Prove both ends share the cookie before anything is deleted.
        match self.ping(&target_dial, Duration::from_secs(10)).await {
            Ok(v) if v.get("running") == Some(&Value::Bool(true)) => {}
            Ok(_) => {
                return Err(RemoteError::unavailable(format!(
                    "Warren application is not running on node {target_name}"
                )))
            }
            Err(crate::dist::ClientError::Refused(r)) => {
                return Err(RemoteError::unavailable(format!(
                    "node {target_name} refused the connection: {r}"
                )))
            }
            Err(crate::dist::ClientError::BadServerProof) => {
                return Err(RemoteError::unavailable(format!(
                    "node {target_name} does not hold this node's cookie: refusing to join it"
                )))
            }
            Err(e) => {
                return Err(RemoteError::unavailable(format!(
                    "could not reach node {target_name} at {target_dial}: {e}"
                )))
            }
        }
        self.wipe()?;
        let dir = self.config().data_dir;
        super::write_cluster_file(
            &dir,
            &ClusterFile {
                ram,
                members: vec![Member {
                    name: target_name.clone(),
                    addr: target_addr.clone(),
                }],
            },
        )
        .map_err(|e| RemoteError::software(format!("failed to write cluster.json: {e}")))?;
        self.start_app_locked()
            .await
            .map_err(|e| RemoteError::software(format!("failed to start the application: {e}")))?;
        let joined: Result<(), _> = network::peer_call(
            &target_dial,
            &self.identity.cookie,
            self.name(),
            PeerOp::Join {
                member: self.identity.me.clone(),
                ram,
            },
            Duration::from_secs(60),
        )
        .await;
        if let Err(e) = joined {
            // Back to a clean standalone node, stopped, as before the attempt.
            self.stop_app_locked().await;
            let _ = self.wipe();
            return Err(match e {
                crate::dist::ClientError::Remote(r) => r,
                other => {
                    RemoteError::unavailable(format!("could not join node {target_name}: {other}"))
                }
            });
        }
        Ok(Reply::Message(format!(
            "Clustering node {} with {target_name}",
            self.name()
        )))
    }

    /// `reset` (leave the cluster, then wipe) or `force_reset` (wipe without asking it).
    pub async fn reset(&self, force: bool) -> Result<Reply, RemoteError> {
        let _g = self.lifecycle.lock().await;
        self.require_stopped("resetting it")?;
        let dir = self.config().data_dir;
        if let Some(file) = super::read_cluster_file(&dir).filter(|_| !force) {
            // Leave the cluster first; refused when this is its last disc node.
            let others = file.members.iter().any(|m| m.name != self.name());
            if others {
                let left = self
                    .ask_members(
                        &file.members,
                        PeerOp::Remove {
                            name: self.name().to_string(),
                        },
                    )
                    .await;
                match left {
                    Ok(()) => {}
                    // Forgotten already (forget_cluster_node): nothing to leave.
                    Err(e) if e.message.contains("is not a member of the cluster") => {}
                    Err(e) if e.code == 69 => {
                        return Err(RemoteError::unavailable(format!(
                            "cannot leave the cluster: no other cluster node is reachable ({}); use force_reset to reset this node anyway (then run forget_cluster_node {} on the cluster)",
                            e.message,
                            self.name()
                        )))
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.wipe()?;
        Ok(Reply::Message(format!("Resetting node {}", self.name())))
    }

    async fn change_type(&self, ram: bool) -> Result<Reply, RemoteError> {
        let _g = self.lifecycle.lock().await;
        self.require_stopped("changing its node type")?;
        let dir = self.config().data_dir;
        let Some(mut file) = super::read_cluster_file(&dir) else {
            return Err(RemoteError::software(format!(
                "Node {} is not clustered: a standalone node is a disc node",
                self.name()
            )));
        };
        if file.ram != ram {
            self.ask_members(
                &file.members,
                PeerOp::SetType {
                    name: self.name().to_string(),
                    ram,
                },
            )
            .await?;
            file.ram = ram;
            super::write_cluster_file(&dir, &file)
                .map_err(|e| RemoteError::software(format!("failed to write cluster.json: {e}")))?;
        }
        Ok(Reply::Message(format!(
            "Turning {} into a {} node",
            self.name(),
            if ram { "ram" } else { "disc" }
        )))
    }

    async fn forget(&self, name: String) -> Result<Reply, RemoteError> {
        let shared = self.app().ok_or_else(|| self.not_running())?;
        let Some(cluster) = shared.cluster() else {
            return Err(RemoteError::data(format!(
                "Node {} is not clustered",
                self.name()
            )));
        };
        if name == self.name() {
            return Err(RemoteError::software(
                "a node cannot forget itself while running; use reset on a stopped node",
            ));
        }
        cluster
            .membership(PeerOp::Remove { name: name.clone() })
            .await?;
        Ok(Reply::Message(format!(
            "Removing node {name} from the cluster"
        )))
    }

    /// `cluster_status`: the members by kind, the running ones, the leader, and what the
    /// node waits for. The same on every member that can reach the others.
    pub async fn cluster_status(&self) -> Result<Value, RemoteError> {
        let shared = self.app().ok_or_else(|| self.not_running())?;
        let Some(cluster) = shared.cluster() else {
            return Ok(json!({
                "cluster_name": self.name(),
                "disk_nodes": [self.name()],
                "ram_nodes": [],
                "running_nodes": [self.name()],
                "leader": null,
                "partitions": {},
                "waiting_for": null,
            }));
        };
        let (disc, ram) = cluster.members();
        let mut probes = Vec::new();
        for m in disc.iter().chain(ram.iter()) {
            let m = m.clone();
            let cookie = self.identity.cookie.clone();
            let addr = self.identity.dial_addr(&m);
            let me = self.name().to_string();
            let is_me = m.name == me;
            probes.push(tokio::spawn(async move {
                if is_me {
                    return Some(m.name);
                }
                let r: Result<Value, _> =
                    network::peer_call(&addr, &cookie, &me, PeerOp::Ping, Duration::from_secs(2))
                        .await;
                match r {
                    Ok(v) if v.get("running") == Some(&Value::Bool(true)) => Some(m.name),
                    _ => None,
                }
            }));
        }
        let mut running = Vec::new();
        for p in probes {
            if let Ok(Some(n)) = p.await {
                running.push(n);
            }
        }
        running.sort();
        let names = |v: &[Member]| v.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        let cluster_name = disc
            .first()
            .map(|m| m.name.clone())
            .unwrap_or_else(|| self.name().to_string());
        Ok(json!({
            "cluster_name": cluster_name,
            "disk_nodes": names(&disc),
            "ram_nodes": names(&ram),
            "running_nodes": running,
            "leader": cluster.leader().map(|l| l.name),
            "partitions": {},
            "waiting_for": cluster.waiting_for(),
        }))
    }

    /// Handles an admin command that concerns the node rather than the application, or
    /// passes it on to the running application.
    pub async fn handle_ctl(&self, op: CtlOp) -> Result<Reply, RemoteError> {
        match op {
            CtlOp::StopApp => {
                self.stop_app().await;
                Ok(Reply::Message(format!(
                    "Stopping Warren application on node {}",
                    self.name()
                )))
            }
            CtlOp::StartApp => {
                self.start_app().await.map_err(|e| {
                    RemoteError::software(format!("failed to start the application: {e}"))
                })?;
                Ok(Reply::Message(format!("Starting node {}", self.name())))
            }
            CtlOp::JoinCluster { node, addr, ram } => self.join(node, addr, ram).await,
            CtlOp::Reset => self.reset(false).await,
            CtlOp::ForceReset => self.reset(true).await,
            CtlOp::ForceBoot => self.force_boot().await,
            CtlOp::ChangeClusterNodeType { ram } => self.change_type(ram).await,
            CtlOp::ForgetClusterNode { node } => self.forget(node).await,
            CtlOp::ClusterStatus => Ok(Reply::Document(self.cluster_status().await?)),
            CtlOp::AwaitStartup => {
                let shared = self.app().ok_or_else(|| self.not_running())?;
                match shared.cluster().and_then(|c| c.waiting_for()) {
                    Some(w) => Ok(Reply::Message(format!(
                        "node {} is serving its queues; waiting for a majority of disc nodes to accept definition changes ({w})",
                        self.name()
                    ))),
                    None => Ok(Reply::Done),
                }
            }
            op => {
                let shared = self.app().ok_or_else(|| self.not_running())?;
                crate::dist::ctl::handle(&shared, op).await
            }
        }
    }

    /// Handles a request from another node.
    pub async fn handle_peer(&self, op: PeerOp) -> Result<Reply, RemoteError> {
        let shared = self.app();
        if let PeerOp::Ping = op {
            let cluster = shared.as_ref().and_then(|s| s.cluster());
            let members = cluster.as_ref().map(|c| {
                let (disc, ram) = c.members();
                disc.into_iter()
                    .chain(ram)
                    .map(|m| m.name)
                    .collect::<Vec<_>>()
            });
            return Ok(Reply::Document(json!({
                "running": shared.is_some(),
                "clustered": cluster.is_some(),
                "members": members,
                "leader": cluster.as_ref().is_some_and(|c| c.is_leader()),
                "discovering": self.discovering.load(Ordering::SeqCst),
            })));
        }
        let shared = shared.ok_or_else(|| not_running(self.name()))?;
        if let PeerOp::Queue(q) = op {
            return Ok(Reply::Document(
                super::remote_queue::handle(&shared, q).await?,
            ));
        }
        let cluster = match (shared.cluster(), &op) {
            (Some(c), _) => c,
            // A standalone node that another node joins founds the cluster.
            (None, PeerOp::Join { .. }) => shared.found_cluster().await?,
            (None, _) => {
                return Err(RemoteError::unavailable(format!(
                    "node {} is not clustered",
                    self.name()
                )))
            }
        };
        Ok(Reply::Document(cluster.rpc(op).await?))
    }
}
