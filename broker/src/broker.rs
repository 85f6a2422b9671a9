//! The node's shared state: configuration, definitions and the vhosts' run-time state, and
//! the one place definition changes are executed.

use crate::config::Config;
use crate::error::ChannelError;
use crate::exchange::ExchangeRoute;
use crate::meta::{Change, MetaCommand, Metadata, Permission, UserDef};
use crate::queue;
use crate::vhost::Vhost;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// State shared by every task of a node.
pub struct BrokerShared {
    /// The node's configuration.
    pub config: Config,
    /// Definitions. A std mutex: held only while a command is applied and its effects on
    /// the routing snapshots are made, never across an await; this also orders changes.
    meta: Mutex<Metadata>,
    /// Vhosts by name. Read on connection.open, written on vhost add/delete.
    vhosts: RwLock<HashMap<String, Arc<Vhost>>>,
    /// Cancelled when the node stops.
    pub shutdown: CancellationToken,
    /// Connection tasks, waited for at shutdown.
    pub tasks: TaskTracker,
    next_id: AtomicU64,
    me: Weak<BrokerShared>,
}

impl BrokerShared {
    /// A node with the default vhost and user.
    pub fn new(config: Config) -> Result<Arc<Self>, ChannelError> {
        let shared = Arc::new_cyclic(|me| BrokerShared {
            config,
            meta: Mutex::new(Metadata::default()),
            vhosts: RwLock::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_id: AtomicU64::new(1),
            me: me.clone(),
        });
        shared.execute(MetaCommand::AddVhost { name: "/".into() })?;
        let user = shared.config.default_user.clone();
        let hash = crate::auth::hash_password(&shared.config.default_pass);
        shared.execute(MetaCommand::PutUser(UserDef {
            name: user.clone(),
            password_hash: hash,
            tags: vec!["administrator".into()],
        }))?;
        shared.execute(MetaCommand::SetPermissions {
            user,
            vhost: "/".into(),
            permission: Permission {
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            },
        })?;
        Ok(shared)
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

    /// Applies a definition change and updates the run-time state to match.
    pub fn execute(&self, cmd: MetaCommand) -> Result<(), ChannelError> {
        let mut meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        let changes = meta.apply(cmd)?;
        self.react(&meta, changes);
        Ok(())
    }

    fn react(&self, meta: &Metadata, changes: Vec<Change>) {
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
                }
                Change::ExchangeChanged { vhost, name } => {
                    let (Some(vh), Some(vm)) = (self.vhost(&vhost), meta.vhosts.get(&vhost)) else {
                        continue;
                    };
                    let Some(def) = vm.exchanges.get(&name) else {
                        continue;
                    };
                    let route = Arc::new(ExchangeRoute::build(def, vm.bindings_from(&name)));
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
                    let Some(vh) = self.vhost(&vhost) else {
                        continue;
                    };
                    let me = self.me.clone();
                    let (qv, qn) = (vhost.clone(), def.name.clone());
                    let auto_delete = Box::new(move || {
                        if let Some(me) = me.upgrade() {
                            let _ = me.execute(MetaCommand::DeleteQueue {
                                vhost: qv,
                                name: qn,
                            });
                        }
                    });
                    let handle = queue::spawn(&def, vh.name.clone(), auto_delete);
                    vh.update(|r| {
                        r.queues.insert(Arc::from(def.name.as_str()), handle);
                    });
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
