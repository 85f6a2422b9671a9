//! The node's shared state: configuration, definitions, the vhosts' run-time state and the
//! store, and the one place definition changes are executed.
//!
//! Starting a node: the store is opened, the definitions log replayed, what does not survive
//! a restart (transient exchanges and queues) dropped, the log rewritten as a compact
//! snapshot, and every durable queue started with what its messages on disk are.

use crate::alarm::{self, Alarms};
use crate::cluster::raft_store::RaftDisk;
use crate::cluster::{Cluster, ClusterFile, Identity, Request};
use crate::config::Config;
use crate::error::ChannelError;
use crate::exchange::ExchangeRoute;
use crate::meta::{Change, MetaCommand, Metadata, Permission, UserDef};
use crate::queue::{self, Disk};
use crate::store::{RecoveredQueue, Store};
use crate::vhost::Vhost;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_amqp::ReplyCode;

/// State shared by every task of a node.
pub struct BrokerShared {
    /// The node's configuration.
    pub config: Config,
    /// Definitions. A std mutex: held only while a command is applied, logged and its
    /// effects on the routing snapshots made, never across an await; this orders changes.
    meta: Mutex<Metadata>,
    /// Vhosts by name. Read on connection.open, written on vhost add/delete.
    vhosts: RwLock<HashMap<String, Arc<Vhost>>>,
    /// Messages and the definitions log.
    pub store: Store,
    /// What recovery found on disk, per queue store id, taken when the queue starts.
    recovered: Mutex<HashMap<u64, RecoveredQueue>>,
    /// Cancelled when the node stops.
    pub shutdown: CancellationToken,
    /// Connection tasks, waited for at shutdown.
    pub tasks: TaskTracker,
    /// Resource alarms (disk, memory), watched by every connection.
    pub alarms: watch::Receiver<Alarms>,
    /// The alarm limits, changeable at run time.
    pub alarm_limits: Arc<alarm::Limits>,
    /// Compiled permissions, invalidated on every permission change.
    pub access: crate::access::AccessRegistry,
    /// Open client connections.
    pub connections: Arc<crate::connection::registry::ConnectionRegistry>,
    /// The listeners, for `status`: (protocol, address).
    pub listeners: Mutex<Vec<(String, std::net::SocketAddr)>>,
    /// When the node started.
    pub started_at: std::time::Instant,
    /// Cancelled once the node has completely stopped (after `shutdown`).
    pub stopped: CancellationToken,
    /// Direct reply-to consumers.
    pub replies: crate::direct_reply::ReplyRegistry,
    /// The node's shovels, set once the AMQP listener is bound (see `shovel::start`).
    pub shovels: std::sync::OnceLock<warren_shovel::Shovels>,
    /// Who this node is to a cluster (known even while standalone, to found one).
    pub identity: Identity,
    /// The Raft member, while the node is clustered. A std mutex: only held to clone it.
    cluster: Mutex<Option<Arc<Cluster>>>,
    /// Where a disc node keeps its Raft state.
    raft_disk: Mutex<Option<RaftDisk>>,
    /// Serializes founding a cluster.
    founding: tokio::sync::Mutex<()>,
    /// Links, channels and proxies for queues on other nodes.
    pub remote: crate::cluster::remote_queue::Registry,
    next_id: AtomicU64,
    me: Weak<BrokerShared>,
}

/// Errors starting a node.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The store could not be opened or recovered.
    Store(crate::store::StoreError),
    /// A background task failed.
    Task(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Store(e) => write!(f, "failed to open the store: {e}"),
            StartError::Task(e) => write!(f, "failed to start: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

fn encode_command(cmd: &MetaCommand) -> Vec<u8> {
    // Serializing plain data to JSON cannot fail.
    serde_json::to_vec(cmd).unwrap_or_default()
}

impl BrokerShared {
    /// Opens the store under the data directory, recovers definitions and messages, and
    /// starts every durable queue. `force_boot`: the disc members to keep besides this
    /// node when the Raft membership is forced (see `RaftDisk::force_membership`).
    pub async fn start(
        config: Config,
        identity: Identity,
        force_boot: Option<Vec<String>>,
    ) -> Result<Arc<Self>, StartError> {
        let dir = config.data_dir.clone();
        let clustered = crate::cluster::read_cluster_file(&config.data_dir);
        let opened = tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|e| StartError::Task(e.to_string()))?
            .map_err(StartError::Store)?;
        let (db, ks) = Store::raft_keyspace(&opened).map_err(StartError::Store)?;
        let raft_disk = RaftDisk::new(db, ks);
        if let (Some(keep), Some(file)) = (force_boot, clustered.as_ref()) {
            if !file.ram {
                let mut ids: std::collections::BTreeSet<u64> =
                    keep.iter().map(|n| crate::cluster::node_id(n)).collect();
                ids.insert(crate::cluster::node_id(&identity.me.name));
                let d = raft_disk.clone();
                tokio::task::spawn_blocking(move || d.force_membership(&ids))
                    .await
                    .map_err(|e| StartError::Task(e.to_string()))?
                    .map_err(|e| StartError::Task(format!("force_boot failed: {e}")))?;
            }
        }
        if clustered.as_ref().is_some_and(|c| c.ram) {
            // A RAM node keeps no Raft state on disk: whatever a disc past left goes.
            let d = raft_disk.clone();
            tokio::task::spawn_blocking(move || d.clear())
                .await
                .map_err(|e| StartError::Task(e.to_string()))?
                .map_err(|e| StartError::Task(format!("failed to clear the Raft state: {e}")))?;
        }
        let mut commands = Vec::with_capacity(opened.meta_log.len());
        // A clustered node's definitions come from the Raft log, not the standalone log.
        let meta_log = if clustered.is_some() {
            &[][..]
        } else {
            &opened.meta_log[..]
        };
        for (i, record) in meta_log.iter().enumerate() {
            match serde_json::from_slice::<MetaCommand>(record) {
                Ok(cmd) => commands.push(cmd),
                Err(e) => {
                    tracing::warn!(record = i, error = %e, "skipping an unreadable definitions record")
                }
            }
        }
        let fresh = commands.is_empty();
        let mut meta = Metadata::replay(&commands);
        meta.retain_durable();
        if fresh && clustered.is_none() {
            for cmd in default_definitions(&config) {
                let _ = meta.apply(cmd);
            }
        }
        let keep: HashSet<u64> = meta
            .vhosts
            .iter()
            .flat_map(|(v, vh)| vh.queues.values().map(move |q| q.store_id(v)))
            .collect();
        let compacted: Vec<Vec<u8>> = meta.snapshot().iter().map(encode_command).collect();
        let keep_all = clustered.is_some();
        let (store, recovered) = tokio::task::spawn_blocking(move || {
            opened.recover((!keep_all).then_some(&keep), &compacted)
        })
        .await
        .map_err(|e| StartError::Task(e.to_string()))?
        .map_err(StartError::Store)?;
        let messages: u64 = recovered.values().map(|q| q.count).sum();
        tracing::info!(
            vhosts = meta.vhosts.len(),
            queues = keep_count(&meta),
            messages,
            "definitions and messages recovered"
        );
        let memory_limit = alarm::total_memory()
            .map(|t| (t as f64 * config.memory_high_watermark) as u64)
            .unwrap_or(u64::MAX);
        let alarm_limits = Arc::new(alarm::Limits {
            disk_free_limit: config.disk_free_limit.into(),
            memory_high_watermark: memory_limit.into(),
        });
        let (alarm_tx, alarms) = watch::channel(Alarms::default());
        let shutdown = CancellationToken::new();
        alarm::spawn_monitor(
            config.data_dir.clone(),
            alarm_limits.clone(),
            alarm_tx,
            std::time::Duration::from_millis(config.alarm_interval_ms.max(10)),
            shutdown.clone(),
        );
        let shared = Arc::new_cyclic(|me| BrokerShared {
            config,
            meta: Mutex::new(Metadata::default()),
            vhosts: RwLock::new(HashMap::new()),
            store,
            recovered: Mutex::new(recovered),
            shutdown,
            tasks: TaskTracker::new(),
            alarms,
            alarm_limits,
            access: Default::default(),
            connections: Default::default(),
            listeners: Mutex::new(Vec::new()),
            started_at: std::time::Instant::now(),
            stopped: CancellationToken::new(),
            replies: Default::default(),
            shovels: std::sync::OnceLock::new(),
            // Connection ids are unique in a cluster (exclusive queue owners are replicated).
            next_id: AtomicU64::new(if clustered.is_some() {
                ((crate::cluster::node_id(&identity.me.name) & 0xffff) << 40) | 1
            } else {
                1
            }),
            identity,
            cluster: Mutex::new(None),
            raft_disk: Mutex::new(Some(raft_disk.clone())),
            founding: tokio::sync::Mutex::new(()),
            remote: Default::default(),
            me: me.clone(),
        });
        if let Some(file) = clustered {
            // The Raft member re-applies the committed log: definitions and queues return.
            let disk = (!file.ram).then_some(raft_disk);
            let cluster = Cluster::start(&shared, &shared.identity, disk).await?;
            *shared.cluster.lock().unwrap_or_else(|e| e.into_inner()) = Some(cluster.clone());
            crate::cluster::spawn_node_monitor(&shared, cluster);
            return Ok(shared);
        }
        // Rebuild the run-time state by applying the recovered definitions (not logged again).
        for cmd in meta.snapshot() {
            let mut m = shared.meta.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(changes) = m.apply(cmd) {
                shared.react(&m, changes);
            }
        }
        shared
            .recovered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(shared)
    }

    /// Changes the free disk space under which publishers are blocked (takes effect at the
    /// next check).
    pub fn set_disk_free_limit(&self, bytes: u64) {
        self.alarm_limits
            .disk_free_limit
            .store(bytes, Ordering::Relaxed);
    }

    /// A fresh id for a connection.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A vhost's run-time state.
    pub fn vhost(&self, name: &str) -> Option<Arc<Vhost>> {
        self.vhosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Reads the definitions.
    pub fn with_meta<T>(&self, f: impl FnOnce(&Metadata) -> T) -> T {
        f(&self.meta.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The Raft member, when the node is clustered.
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Detaches the Raft member (the application stops).
    pub fn take_cluster(&self) -> Option<Arc<Cluster>> {
        self.raft_disk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Makes this standalone node the first member of a cluster, its definitions the
    /// cluster's (another node is joining it).
    pub async fn found_cluster(
        self: &Arc<Self>,
    ) -> Result<Arc<Cluster>, crate::dist::protocol::RemoteError> {
        use crate::dist::protocol::RemoteError;
        let _g = self.founding.lock().await;
        if let Some(c) = self.cluster() {
            return Ok(c);
        }
        let disk = self
            .raft_disk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        crate::cluster::write_cluster_file(
            &self.config.data_dir,
            &ClusterFile {
                ram: false,
                members: vec![self.identity.me.clone()],
            },
        )
        .map_err(|e| RemoteError::software(format!("failed to write cluster.json: {e}")))?;
        let cluster = Cluster::start(self, &self.identity, disk)
            .await
            .map_err(|e| RemoteError::software(e.to_string()))?;
        // From now on changes go through Raft (refused until the cluster has its leader).
        *self.cluster.lock().unwrap_or_else(|e| e.into_inner()) = Some(cluster.clone());
        let mut seed = self.with_meta(|m| m.snapshot());
        for cmd in &mut seed {
            self.set_home(cmd);
        }
        if let Err(e) = cluster.found(seed).await {
            let _ = crate::cluster::remove_cluster_file(&self.config.data_dir);
            self.take_cluster();
            cluster.shutdown().await;
            return Err(e);
        }
        tracing::info!(node = %self.identity.me.name, "formed a cluster");
        if let Some(me) = self.me.upgrade() {
            crate::cluster::spawn_node_monitor(&me, cluster.clone());
        }
        Ok(cluster)
    }

    /// A queue declared on this node lives here.
    fn set_home(&self, cmd: &mut MetaCommand) {
        if let MetaCommand::DeclareQueue { def, .. } = cmd {
            if def.node.is_none() {
                def.node = Some(self.identity.me.name.clone());
            }
        }
    }

    /// Applies a command the cluster committed (every node, in log order).
    pub fn apply_replicated(&self, cmd: MetaCommand) -> Result<(), ChannelError> {
        let mut meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        let changes = meta.apply(cmd)?;
        self.react(&meta, changes);
        Ok(())
    }

    /// Replaces the definitions by `commands`' (a snapshot, or the seed of a cluster),
    /// reacting to the difference: what is gone is removed, what is new is started, what
    /// both have keeps running.
    pub fn replace_metadata(&self, commands: Vec<MetaCommand>) {
        let new = Metadata::replay(&commands);
        let mut meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut *meta, new);
        let mut changes = Vec::new();
        for (vname, ovh) in &old.vhosts {
            let nvh = meta.vhosts.get(vname);
            for (qname, q) in &ovh.queues {
                if nvh
                    .and_then(|v| v.queues.get(qname))
                    .is_none_or(|n| n.uid != q.uid)
                {
                    changes.push(Change::QueueRemoved {
                        vhost: vname.clone(),
                        name: qname.clone(),
                    });
                }
            }
            match nvh {
                None => changes.push(Change::VhostRemoved(vname.clone())),
                Some(nvh) => {
                    for xname in ovh.exchanges.keys() {
                        if !nvh.exchanges.contains_key(xname) {
                            changes.push(Change::ExchangeRemoved {
                                vhost: vname.clone(),
                                name: xname.clone(),
                            });
                        }
                    }
                }
            }
        }
        for user in old.users.keys() {
            if !meta.users.contains_key(user) {
                changes.push(Change::UserRemoved(user.clone()));
            }
        }
        for (vname, nvh) in &meta.vhosts {
            let ovh = old.vhosts.get(vname);
            if ovh.is_none() {
                changes.push(Change::VhostAdded(vname.clone()));
            }
            for xname in nvh.exchanges.keys() {
                changes.push(Change::ExchangeChanged {
                    vhost: vname.clone(),
                    name: xname.clone(),
                });
            }
            for (qname, q) in &nvh.queues {
                if ovh
                    .and_then(|v| v.queues.get(qname))
                    .is_none_or(|o| o.uid != q.uid)
                {
                    changes.push(Change::QueueAdded {
                        vhost: vname.clone(),
                        def: q.clone(),
                    });
                }
            }
            changes.push(Change::PoliciesChanged {
                vhost: vname.clone(),
            });
        }
        changes.push(Change::PermissionsChanged);
        self.react(&meta, changes);
    }

    /// Applies a definition change, updates the run-time state to match, and — for a
    /// change that survives a restart — returns once it is durable in the log. On a
    /// clustered node the change goes through the cluster's log first.
    pub async fn execute(&self, mut cmd: MetaCommand) -> Result<(), ChannelError> {
        if let Some(cluster) = self.cluster() {
            self.set_home(&mut cmd);
            return cluster.write(Request::Meta(cmd)).await;
        }
        let Some(rx) = self.execute_logged(cmd)? else {
            return Ok(());
        };
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(ChannelError::new(
                ReplyCode::InternalError,
                "failed to write the definition change to disk",
            )),
        }
    }

    /// Like `execute`, without waiting for the log write (for changes the node makes itself,
    /// such as deleting an auto-delete queue).
    pub fn execute_in_background(&self, mut cmd: MetaCommand) {
        if let Some(cluster) = self.cluster() {
            self.set_home(&mut cmd);
            tokio::spawn(async move {
                if let Err(e) = cluster.write(Request::Meta(cmd)).await {
                    tracing::debug!(error = %e, "background definition change refused");
                }
            });
            return;
        }
        if let Err(e) = self.execute_logged(cmd) {
            tracing::debug!(error = %e, "background definition change refused");
        }
    }

    fn execute_logged(
        &self,
        cmd: MetaCommand,
    ) -> Result<Option<oneshot::Receiver<bool>>, ChannelError> {
        let mut meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        let durable = cmd.is_durable(&meta);
        let record = durable.then(|| encode_command(&cmd));
        let hint = RouteHint::of(&cmd);
        let changes = meta.apply(cmd)?;
        // Logged under the lock, so the log has the order the changes were applied in.
        let rx = record.map(|record| {
            let (tx, rx) = oneshot::channel();
            self.store.meta_append(
                record,
                Box::new(move |ok| {
                    let _ = tx.send(ok);
                }),
            );
            rx
        });
        self.react_with(&meta, changes, hint);
        Ok(rx)
    }

    fn react(&self, meta: &Metadata, changes: Vec<Change>) {
        self.react_with(meta, changes, None)
    }

    /// `react`, told what the command was where that saves work (a new binding updates its
    /// exchange's routing table instead of rebuilding it).
    fn react_with(&self, meta: &Metadata, changes: Vec<Change>, hint: Option<RouteHint>) {
        for change in changes {
            match change {
                Change::VhostAdded(name) => {
                    let vh = Arc::new(Vhost::new(&name));
                    self.vhosts
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name, vh);
                }
                Change::VhostRemoved(name) => {
                    self.vhosts
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&name);
                    self.access.invalidate();
                    crate::shovel::vhost_removed(self, &name);
                    let reason = format!("vhost '{name}' is deleted");
                    self.connections.close_where(|c| *c.vhost == *name, &reason);
                }
                Change::PermissionsChanged => self.access.invalidate(),
                Change::UserRemoved(name) => {
                    let reason = format!("user '{name}' is deleted");
                    self.connections.close_where(|c| *c.user == *name, &reason);
                }
                Change::ParameterChanged {
                    vhost,
                    component,
                    name,
                } if component == crate::shovel::COMPONENT => {
                    crate::shovel::parameter_changed(self, meta, &vhost, &name);
                }
                // Other parameters are stored; what they configure reads them where it is
                // implemented.
                Change::ParameterChanged { .. } => {}
                Change::ExchangeChanged { vhost, name } => {
                    let (Some(vh), Some(vm)) = (self.vhost(&vhost), meta.vhosts.get(&vhost)) else {
                        continue;
                    };
                    let Some(def) = vm.exchanges.get(&name) else {
                        continue;
                    };
                    // A binding added to an exchange already routing: updated in place (in
                    // O(log n)) where the exchange type allows it, else rebuilt.
                    let added = match &hint {
                        Some(RouteHint::Bound { vhost: v, binding })
                            if *v == vhost && binding.source == name =>
                        {
                            vh.routes()
                                .exchanges
                                .get(name.as_str())
                                .and_then(|r| r.with_binding(binding))
                        }
                        _ => None,
                    };
                    let route = Arc::new(added.unwrap_or_else(|| {
                        ExchangeRoute::build(def, vm.bindings_from(&name))
                            .with_alternate(vm.alternate_exchange(def))
                    }));
                    vh.update(|r| {
                        r.exchanges.insert(Arc::from(name.as_str()), route);
                    });
                }
                Change::ExchangeRemoved { vhost, name } => {
                    if let Some(vh) = self.vhost(&vhost) {
                        vh.update(|r| {
                            r.exchanges.remove(name.as_str());
                        });
                    }
                }
                Change::QueueAdded { vhost, def } => {
                    let (Some(vh), Some(vm)) = (self.vhost(&vhost), meta.vhosts.get(&vhost)) else {
                        continue;
                    };
                    let settings = vm.queue_settings(&def, self.config.consumer_timeout_ms);
                    if let Some(home) = def.node.as_ref().filter(|n| **n != self.identity.me.name) {
                        // Homed on another node: its actor runs there, this node forwards.
                        let handle = crate::cluster::remote_queue::spawn(
                            &def,
                            &vh,
                            settings,
                            home.clone(),
                            self.me.clone(),
                        );
                        vh.update(|r| {
                            r.queues.insert(Arc::from(def.name.as_str()), handle);
                        });
                        continue;
                    }
                    let me = self.me.clone();
                    let (qv, qn) = (vhost.clone(), def.name.clone());
                    let auto_delete = Box::new(move || {
                        if let Some(me) = me.upgrade() {
                            me.execute_in_background(MetaCommand::DeleteQueue {
                                vhost: qv,
                                name: qn,
                            });
                        }
                    });
                    let qid = def.store_id(&vhost);
                    let recovered = self
                        .recovered
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&qid)
                        .unwrap_or_default();
                    let disk = Disk {
                        store: self.store.clone(),
                        qid,
                        recovered,
                        confirm_sync: self.config.confirm_sync,
                    };
                    let handle = queue::spawn(&def, &vh, settings, Some(disk), auto_delete);
                    vh.update(|r| {
                        r.queues.insert(Arc::from(def.name.as_str()), handle);
                    });
                }
                Change::PoliciesChanged { vhost } => {
                    let (Some(vh), Some(vm)) = (self.vhost(&vhost), meta.vhosts.get(&vhost)) else {
                        continue;
                    };
                    // Every queue gets its effective settings again (a no-op where they did
                    // not change), every exchange its alternate exchange.
                    for def in vm.queues.values() {
                        if let Some(q) = vh.queue(&def.name) {
                            q.set_settings(vm.queue_settings(def, self.config.consumer_timeout_ms));
                        }
                    }
                    let routes: Vec<(Arc<str>, Arc<ExchangeRoute>)> = vm
                        .exchanges
                        .values()
                        .map(|def| {
                            (
                                Arc::from(def.name.as_str()),
                                Arc::new(
                                    ExchangeRoute::build(def, vm.bindings_from(&def.name))
                                        .with_alternate(vm.alternate_exchange(def)),
                                ),
                            )
                        })
                        .collect();
                    vh.update(|r| r.exchanges.extend(routes));
                }
                Change::QueueRemoved { vhost, name } => {
                    if let Some(vh) = self.vhost(&vhost) {
                        let mut removed = None;
                        vh.update(|r| removed = r.queues.remove(name.as_str()));
                        if let Some(q) = removed {
                            q.stop();
                        }
                    }
                }
            }
        }
    }
}

/// What a command changed, for the routing reaction.
enum RouteHint {
    /// A binding was added.
    Bound {
        vhost: String,
        binding: crate::meta::BindingDef,
    },
}

impl RouteHint {
    fn of(cmd: &MetaCommand) -> Option<RouteHint> {
        match cmd {
            MetaCommand::Bind { vhost, binding } => Some(RouteHint::Bound {
                vhost: vhost.clone(),
                binding: binding.clone(),
            }),
            _ => None,
        }
    }
}

fn keep_count(meta: &Metadata) -> usize {
    meta.vhosts.values().map(|v| v.queues.len()).sum()
}

/// What a node starts with the first time: the default vhost (`/`) and the default user
/// with full permissions on it.
fn default_definitions(config: &Config) -> Vec<MetaCommand> {
    let user = config.default_user.clone();
    vec![
        MetaCommand::AddVhost {
            name: config.default_vhost.clone(),
        },
        MetaCommand::PutUser(UserDef {
            name: user.clone(),
            password_hash: crate::auth::hash_password(&config.default_pass),
            tags: config.default_user_tags.clone(),
            hashing_algorithm: crate::auth::HashingAlgorithm::Sha256,
            limits: serde_json::json!({}),
        }),
        MetaCommand::SetPermissions {
            user,
            vhost: config.default_vhost.clone(),
            permission: Permission {
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            },
        },
    ]
}
