//! warren-shovel: shovels, which consume from a queue (or an exchange) on one AMQP 0-9-1
//! broker and republish to a queue or exchange on another, as RabbitMQ's shovel plugin
//! does. Both ends are lapin clients, so either may be Warren or RabbitMQ; a node embeds
//! the crate (its local end is an AMQP connection to itself), and the `warren-shovel`
//! binary runs the same shovels as a separate process.
//!
//! `definition` reads and checks definitions in RabbitMQ's vocabulary, `endpoint` the URIs
//! (with their TLS options), `link` runs one shovel, `status` is what it reports, and
//! `Shovels` is the registry that starts, stops, restarts and lists them.

pub mod definition;
pub mod endpoint;
mod link;
pub mod status;

pub use definition::{AckMode, DefinitionError, DeleteAfter, Destination, ShovelDef, Source};
pub use status::{Kind, ShovelStatus, State};

use serde_json::Value;
use status::StatusCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Turns a vhost into an AMQP URI of the local node (for `amqp://` URIs without a host).
pub type LocalNode = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Called when a shovel finished by itself (delete-after); a node clears the parameter
/// of a dynamic shovel then, as RabbitMQ does.
pub type OnFinished = Arc<dyn Fn(&ShovelDef, Kind) + Send + Sync>;

/// What the shovels of one process share.
pub struct Env {
    /// The name put in `x-shovelled` headers (`shovelled-by`).
    pub node_name: String,
    /// The local node, when embedded.
    pub local: Option<LocalNode>,
    /// Called when a shovel finished by itself.
    pub on_finished: Option<OnFinished>,
}

struct Link {
    def: Arc<ShovelDef>,
    kind: Kind,
    status: Arc<StatusCell>,
    cancel: CancellationToken,
}

/// The shovels of a node or of a standalone process.
pub struct Shovels {
    env: Arc<Env>,
    /// By (vhost, name). A std mutex: held only to look up, insert or remove, never
    /// across an await.
    links: Mutex<BTreeMap<(String, String), Link>>,
    tasks: TaskTracker,
}

impl Shovels {
    /// An empty registry.
    pub fn new(env: Env) -> Shovels {
        Shovels {
            env: Arc::new(env),
            links: Mutex::new(BTreeMap::new()),
            tasks: TaskTracker::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Link>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a shovel, replacing (and stopping) one of the same vhost and name.
    pub fn start(&self, def: ShovelDef, kind: Kind) {
        let def = Arc::new(def);
        let link = self.spawn(def, kind);
        let key = (link.def.vhost.clone(), link.def.name.clone());
        if let Some(old) = self.lock().insert(key, link) {
            old.cancel.cancel();
        }
    }

    fn spawn(&self, def: Arc<ShovelDef>, kind: Kind) -> Link {
        let status = Arc::new(StatusCell::new(&def.name, &def.vhost, kind));
        let cancel = CancellationToken::new();
        let ctx = link::Ctx {
            def: def.clone(),
            kind,
            env: self.env.clone(),
            status: status.clone(),
        };
        let env = self.env.clone();
        let token = cancel.clone();
        let d = def.clone();
        self.tasks.spawn(async move {
            if link::run(ctx, token).await {
                if let Some(f) = &env.on_finished {
                    f(&d, kind);
                }
            }
        });
        Link {
            def,
            kind,
            status,
            cancel,
        }
    }

    /// Stops and forgets a shovel; returns its kind, or `None` if there was none.
    pub fn delete(&self, vhost: &str, name: &str) -> Option<Kind> {
        let link = self.lock().remove(&(vhost.to_owned(), name.to_owned()))?;
        link.cancel.cancel();
        Some(link.kind)
    }

    /// Restarts a shovel (new connections, counters from zero); false if there is none.
    pub fn restart(&self, vhost: &str, name: &str) -> bool {
        let key = (vhost.to_owned(), name.to_owned());
        let Some((def, kind)) = self.lock().get(&key).map(|l| (l.def.clone(), l.kind)) else {
            return false;
        };
        let link = self.spawn(def, kind);
        if let Some(old) = self.lock().insert(key, link) {
            old.cancel.cancel();
        }
        true
    }

    /// The kind of a shovel, if it exists.
    pub fn kind(&self, vhost: &str, name: &str) -> Option<Kind> {
        self.lock()
            .get(&(vhost.to_owned(), name.to_owned()))
            .map(|l| l.kind)
    }

    /// Every shovel's status, by vhost and name.
    pub fn status(&self) -> Vec<ShovelStatus> {
        self.lock().values().map(|l| l.status.snapshot()).collect()
    }

    /// Stops every shovel without waiting (their tasks close their connections).
    pub fn stop_all(&self) {
        for link in std::mem::take(&mut *self.lock()).into_values() {
            link.cancel.cancel();
        }
    }

    /// Stops every shovel and waits (a few seconds at most) for their connections to close.
    pub async fn shutdown(&self) {
        self.stop_all();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
    }
}

/// Reads a shovel from a config-file table: RabbitMQ's keys plus `name` and, optionally,
/// `vhost` (default `/`).
pub fn parse_table(table: &Value) -> Result<ShovelDef, DefinitionError> {
    let Some(obj) = table.as_object() else {
        return Err(DefinitionError("a shovel is a table".to_owned()));
    };
    let mut rest = obj.clone();
    let name = match rest.remove("name") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(v) => return Err(DefinitionError(format!("name should be a string, not {v}"))),
        None => return Err(DefinitionError("name is missing".to_owned())),
    };
    let vhost = match rest.remove("vhost") {
        None => "/".to_owned(),
        Some(Value::String(s)) => s,
        Some(v) => {
            return Err(DefinitionError(format!(
                "vhost should be a string, not {v}"
            )))
        }
    };
    ShovelDef::parse(&name, &vhost, &Value::Object(rest))
        .map_err(|e| DefinitionError(format!("shovel '{name}': {e}")))
}
