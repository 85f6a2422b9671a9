//! The node's shared state: configuration, definitions, the vhosts' run-time state and the
//! store, and the one place definition changes are executed.
//!
//! Starting a node: the store is opened, the definitions log replayed, what does not survive
//! a restart (transient exchanges and queues) dropped, the log rewritten as a compact
//! snapshot, and every durable queue started with what its messages on disk are.

use crate::alarm::{self, Alarms};
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
    /// starts every durable queue.
    pub async fn start(config: Config) -> Result<Arc<Self>, StartError> {
        let dir = config.data_dir.clone();
        let opened = tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|e| StartError::Task(e.to_string()))?
            .map_err(StartError::Store)?;
        let mut commands = Vec::with_capacity(opened.meta_log.len());
        for (i, record) in opened.meta_log.iter().enumerate() {
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
        if fresh {
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
        let (store, recovered) =
            tokio::task::spawn_blocking(move || opened.recover(&keep, &compacted))
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
            next_id: AtomicU64::new(1),
            me: me.clone(),
        });
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

    /// Applies a definition change, updates the run-time state to match, and — for a
    /// change that survives a restart — returns once it is durable in the log.
    pub async fn execute(&self, cmd: MetaCommand) -> Result<(), ChannelError> {
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
    pub fn execute_in_background(&self, cmd: MetaCommand) {
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
                    let reason = format!("vhost '{name}' is deleted");
                    self.connections.close_where(|c| *c.vhost == *name, &reason);
                }
                Change::PermissionsChanged => self.access.invalidate(),
                Change::UserRemoved(name) => {
                    let reason = format!("user '{name}' is deleted");
                    self.connections.close_where(|c| *c.user == *name, &reason);
                }
                // Parameters are stored; what they configure (shovels, federation) reads
                // them where it is implemented.
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
