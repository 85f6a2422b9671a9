//! Definitions: the replicated state machine every definition change goes through.
//!
//! A `MetaCommand` (declare an exchange, bind a queue, add a user...) is applied by one
//! deterministic function, [`Metadata::apply`], to the in-memory [`Metadata`] model. It
//! validates against the current state (equivalence, existence, if-unused) and returns the
//! [`Change`]s the node's runtime then reacts to (spawn a queue actor, rebuild an exchange's
//! routing). On one node commands are applied in arrival order; in a cluster the same commands
//! are applied on every node in the order a replicated log fixes. Nothing else writes
//! definitions.

use crate::error::ChannelError;
use crate::policy::Policy;
pub use crate::policy::{ApplyTo, PolicyDef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use warren_amqp::{AMQPValue, FieldTable};

/// The exchange types Warren implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExchangeKind {
    /// Routes on exact routing key.
    Direct,
    /// Routes to every binding.
    Fanout,
    /// Routes on `*`/`#` patterns.
    Topic,
    /// Routes on header values.
    Headers,
}

impl ExchangeKind {
    /// The type name clients use in `exchange.declare`.
    pub fn name(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }

    /// Parses a type name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }
}

/// An exchange's definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    /// Its name ("" is the default exchange).
    pub name: String,
    /// Its type.
    pub kind: ExchangeKind,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding (as a source) goes.
    pub auto_delete: bool,
    /// Clients may not publish to it directly.
    pub internal: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
}

/// A queue's definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    /// Its name.
    pub name: String,
    /// Survives a restart.
    pub durable: bool,
    /// The connection that owns it, for exclusive queues.
    pub exclusive_owner: Option<u64>,
    /// Deleted when its last consumer goes (after it had one).
    pub auto_delete: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
    /// Identifies this incarnation of the queue (a queue deleted and declared again under
    /// the same name is a new one); its messages on disk are keyed by it.
    #[serde(default)]
    pub uid: u64,
    /// The node the queue lives on (its home node) in a cluster; None on a standalone node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl QueueDef {
    /// The key prefix of this queue's messages in the store.
    pub fn store_id(&self, vhost: &str) -> u64 {
        crate::store::queue_id(vhost, &format!("{}\0{}", self.name, self.uid))
    }
}

/// What a binding points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DestinationKind {
    /// A queue.
    Queue,
    /// An exchange (exchange-to-exchange binding).
    Exchange,
}

/// A binding from a source exchange to a queue or exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    /// The source exchange.
    pub source: String,
    /// Queue or exchange.
    pub destination_kind: DestinationKind,
    /// The destination's name.
    pub destination: String,
    /// The binding key.
    pub routing_key: String,
    /// Binding arguments (headers exchanges match on them).
    pub arguments: FieldTable,
}

/// A user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserDef {
    /// The user name.
    pub name: String,
    /// RabbitMQ-format password hash: base64 of a 4-byte salt followed by the digest of
    /// salt ++ password; empty for a user that cannot log in with a password.
    pub password_hash: String,
    /// Tags such as `administrator`.
    pub tags: Vec<String>,
    /// The digest of `password_hash`, by RabbitMQ's module name.
    #[serde(default)]
    pub hashing_algorithm: crate::auth::HashingAlgorithm,
    /// Per-user limits (`max-connections`, `max-channels`), kept as RabbitMQ exports them.
    #[serde(default = "empty_object")]
    pub limits: serde_json::Value,
}

impl UserDef {
    /// A limit set by `set_user_limits` (`max-connections`, `max-channels`): None when
    /// unset or negative (no limit).
    pub fn limit(&self, key: &str) -> Option<u64> {
        limit_of(&self.limits, key)
    }
}

/// `key` of a limits object, as RabbitMQ reads it: a negative value is no limit.
fn limit_of(limits: &serde_json::Value, key: &str) -> Option<u64> {
    u64::try_from(limits.get(key)?.as_i64()?).ok()
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// A user's topic permissions in one vhost for one topic exchange: regular expressions over
/// routing keys (`{username}` and `{vhost}` are expanded before matching).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicPermission {
    /// Which routing keys the user may publish with.
    pub write: String,
    /// Which binding keys the user may bind (consume) with.
    pub read: String,
}

/// A runtime parameter of a vhost (a shovel, a federation upstream, vhost limits...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParameterDef {
    /// The vhost.
    pub vhost: String,
    /// The component it configures (`shovel`, `federation-upstream`, `vhost-limits`...).
    pub component: String,
    /// The parameter's name.
    pub name: String,
    /// Its value, as JSON.
    pub value: serde_json::Value,
}

/// A vhost's descriptive metadata.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VhostMetadata {
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The queue type declared when a client names none (RabbitMQ's `default_queue_type`).
    #[serde(default)]
    pub default_queue_type: Option<String>,
}

/// A user's permissions in one vhost: regular expressions over resource names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Permission {
    /// Which resources the user may declare and delete.
    pub configure: String,
    /// Which resources the user may publish to.
    pub write: String,
    /// Which resources the user may consume from.
    pub read: String,
}

/// A definition change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MetaCommand {
    /// Create a vhost with its predeclared exchanges.
    AddVhost {
        /// The vhost's name.
        name: String,
    },
    /// Delete a vhost and everything in it.
    DeleteVhost {
        /// The vhost's name.
        name: String,
    },
    /// Create or replace a user.
    PutUser(UserDef),
    /// Set a user's permissions in a vhost.
    SetPermissions {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
        /// The permission patterns.
        permission: Permission,
    },
    /// Delete a user with its permissions.
    DeleteUser {
        /// The user.
        name: String,
    },
    /// Remove a user's permissions in a vhost.
    ClearPermissions {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
    },
    /// Set a user's topic permissions for one exchange of a vhost.
    SetTopicPermissions {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
        /// The topic exchange.
        exchange: String,
        /// The permission patterns.
        permission: TopicPermission,
    },
    /// Remove a user's topic permissions in a vhost: for one exchange, or all of them.
    ClearTopicPermissions {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
        /// The exchange; None clears them for every exchange.
        exchange: Option<String>,
    },
    /// Set a vhost's description, tags and default queue type.
    SetVhostMetadata {
        /// The vhost.
        name: String,
        /// The metadata.
        metadata: VhostMetadata,
    },
    /// Create or replace a vhost's runtime parameter.
    SetParameter(ParameterDef),
    /// Remove a vhost's runtime parameter.
    ClearParameter {
        /// The vhost.
        vhost: String,
        /// The component.
        component: String,
        /// The parameter's name.
        name: String,
    },
    /// Create or replace a global runtime parameter.
    SetGlobalParameter {
        /// The parameter's name.
        name: String,
        /// Its value, as JSON.
        value: serde_json::Value,
    },
    /// Remove a global runtime parameter.
    ClearGlobalParameter {
        /// The parameter's name.
        name: String,
    },
    /// Declare an exchange (idempotent when equivalent).
    DeclareExchange {
        /// The vhost.
        vhost: String,
        /// The definition.
        def: ExchangeDef,
    },
    /// Delete an exchange and the bindings to and from it.
    DeleteExchange {
        /// The vhost.
        vhost: String,
        /// The exchange.
        name: String,
        /// Refuse if the exchange is the source of a binding.
        if_unused: bool,
    },
    /// Declare a queue (idempotent when equivalent).
    DeclareQueue {
        /// The vhost.
        vhost: String,
        /// The definition.
        def: QueueDef,
    },
    /// Delete a queue and its bindings.
    DeleteQueue {
        /// The vhost.
        vhost: String,
        /// The queue.
        name: String,
    },
    /// Add a binding (idempotent).
    Bind {
        /// The vhost.
        vhost: String,
        /// The binding.
        binding: BindingDef,
    },
    /// Remove a binding (a missing one is not an error).
    Unbind {
        /// The vhost.
        vhost: String,
        /// The binding.
        binding: BindingDef,
    },
    /// Create or replace a policy (validated; applies to existing objects at once).
    SetPolicy(PolicyDef),
    /// Remove a policy.
    ClearPolicy {
        /// The vhost.
        vhost: String,
        /// The policy's name.
        name: String,
    },
    /// Create or replace an operator policy.
    SetOperatorPolicy(PolicyDef),
    /// Remove an operator policy.
    ClearOperatorPolicy {
        /// The vhost.
        vhost: String,
        /// The operator policy's name.
        name: String,
    },
}

/// What applying a command changed, for the runtime to act on.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A vhost was created.
    VhostAdded(String),
    /// A vhost was deleted.
    VhostRemoved(String),
    /// An exchange was created, or its bindings changed: rebuild its routing.
    ExchangeChanged {
        /// The vhost.
        vhost: String,
        /// The exchange.
        name: String,
    },
    /// An exchange was deleted.
    ExchangeRemoved {
        /// The vhost.
        vhost: String,
        /// The exchange.
        name: String,
    },
    /// A queue was created.
    QueueAdded {
        /// The vhost.
        vhost: String,
        /// The definition.
        def: QueueDef,
    },
    /// A queue was deleted.
    QueueRemoved {
        /// The vhost.
        vhost: String,
        /// The queue.
        name: String,
    },
    /// Permissions or topic permissions changed: cached checks are stale.
    PermissionsChanged,
    /// A user was deleted: its connections close.
    UserRemoved(String),
    /// The policies or operator policies of a vhost changed: every queue and exchange in it
    /// gets its effective settings again.
    PoliciesChanged {
        /// The vhost.
        vhost: String,
    },
    /// A vhost's runtime parameter was set or cleared.
    ParameterChanged {
        /// The vhost.
        vhost: String,
        /// The component.
        component: String,
        /// The parameter's name.
        name: String,
    },
}

/// Which map a policy command works on.
enum PolicyKind {
    Regular,
    Operator,
}

type BindingKey = (String, DestinationKind, String, String, Vec<u8>);

/// One vhost's definitions.
#[derive(Clone, Debug, Default)]
pub struct VhostMeta {
    /// Exchanges by name.
    pub exchanges: BTreeMap<String, ExchangeDef>,
    /// Queues by name.
    pub queues: BTreeMap<String, QueueDef>,
    /// Bindings ordered by source exchange.
    bindings: BTreeMap<BindingKey, BindingDef>,
    /// Description, tags, default queue type.
    pub metadata: VhostMetadata,
    /// Runtime parameters by (component, name).
    pub parameters: BTreeMap<(String, String), ParameterDef>,
    /// Policies by name.
    pub policies: BTreeMap<String, Policy>,
    /// Operator policies by name.
    pub operator_policies: BTreeMap<String, Policy>,
}

impl VhostMeta {
    /// A limit set by `set_vhost_limits` (`max-connections`, `max-queues`): None when unset
    /// or negative, which RabbitMQ reads as no limit.
    pub fn limit(&self, key: &str) -> Option<u64> {
        let limits = self
            .parameters
            .iter()
            .find(|((c, _), _)| c == "vhost-limits")?
            .1;
        limit_of(&limits.value, key)
    }

    /// Bindings whose source is `exchange`.
    pub fn bindings_from<'a>(&'a self, exchange: &str) -> impl Iterator<Item = &'a BindingDef> {
        let start: BindingKey = (
            exchange.to_string(),
            DestinationKind::Queue,
            String::new(),
            String::new(),
            Vec::new(),
        );
        let exchange = exchange.to_string();
        self.bindings
            .range(start..)
            .take_while(move |(k, _)| k.0 == exchange)
            .map(|(_, b)| b)
    }

    /// Every binding.
    pub fn bindings(&self) -> impl Iterator<Item = &BindingDef> {
        self.bindings.values()
    }

    fn has_binding_from(&self, exchange: &str) -> bool {
        self.bindings_from(exchange).next().is_some()
    }

    /// A queue's effective settings: its arguments merged with the policies applying to it.
    pub fn queue_settings(
        &self,
        def: &QueueDef,
        default_consumer_timeout: u64,
    ) -> crate::policy::QueueSettings {
        use crate::policy::{applying, QueueSettings, Target};
        QueueSettings::resolve(
            &def.arguments,
            applying(self.policies.values(), Target::Queue, &def.name),
            applying(self.operator_policies.values(), Target::Queue, &def.name),
            default_consumer_timeout,
        )
    }

    /// An exchange's alternate exchange (argument, else policy).
    pub fn alternate_exchange(&self, def: &ExchangeDef) -> Option<std::sync::Arc<str>> {
        use crate::policy::{alternate_exchange, applying, Target};
        if def.name.is_empty() {
            return None;
        }
        alternate_exchange(
            &def.arguments,
            applying(self.policies.values(), Target::Exchange, &def.name),
        )
    }
}

/// All definitions of a node (or cluster).
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    /// Vhosts by name.
    pub vhosts: BTreeMap<String, VhostMeta>,
    /// Users by name.
    pub users: BTreeMap<String, UserDef>,
    /// Permissions by (user, vhost).
    pub permissions: BTreeMap<(String, String), Permission>,
    /// Topic permissions by (user, vhost, exchange).
    pub topic_permissions: BTreeMap<(String, String, String), TopicPermission>,
    /// Global runtime parameters by name.
    pub global_parameters: BTreeMap<String, serde_json::Value>,
}

/// The exchanges every vhost has.
pub const PREDECLARED: &[(&str, ExchangeKind)] = &[
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

fn binding_key(b: &BindingDef) -> BindingKey {
    (
        b.source.clone(),
        b.destination_kind,
        b.destination.clone(),
        b.routing_key.clone(),
        crate::args::table_bytes(&b.arguments),
    )
}

impl Metadata {
    /// Applies a command, returning what changed or the error a client should see.
    pub fn apply(&mut self, cmd: MetaCommand) -> Result<Vec<Change>, ChannelError> {
        let cmd_kind = match &cmd {
            MetaCommand::SetOperatorPolicy(_) | MetaCommand::ClearOperatorPolicy { .. } => {
                PolicyKind::Operator
            }
            _ => PolicyKind::Regular,
        };
        match cmd {
            MetaCommand::AddVhost { name } => {
                if self.vhosts.contains_key(&name) {
                    return Ok(vec![]);
                }
                let mut vh = VhostMeta::default();
                let mut changes = vec![Change::VhostAdded(name.clone())];
                for (x, kind) in PREDECLARED {
                    vh.exchanges.insert(
                        x.to_string(),
                        ExchangeDef {
                            name: x.to_string(),
                            kind: *kind,
                            durable: true,
                            auto_delete: false,
                            internal: false,
                            arguments: FieldTable::default(),
                        },
                    );
                    changes.push(Change::ExchangeChanged {
                        vhost: name.clone(),
                        name: x.to_string(),
                    });
                }
                self.vhosts.insert(name, vh);
                Ok(changes)
            }
            MetaCommand::DeleteVhost { name } => {
                let Some(vh) = self.vhosts.remove(&name) else {
                    return Err(ChannelError::new(
                        warren_amqp::ReplyCode::NotFound,
                        format!("vhost '{name}' does not exist"),
                    ));
                };
                self.permissions.retain(|(_, v), _| *v != name);
                self.topic_permissions.retain(|(_, v, _), _| *v != name);
                let mut changes: Vec<Change> = vh
                    .queues
                    .keys()
                    .map(|q| Change::QueueRemoved {
                        vhost: name.clone(),
                        name: q.clone(),
                    })
                    .collect();
                changes.push(Change::VhostRemoved(name));
                Ok(changes)
            }
            MetaCommand::PutUser(user) => {
                self.users.insert(user.name.clone(), user);
                Ok(vec![])
            }
            MetaCommand::SetPermissions {
                user,
                vhost,
                permission,
            } => {
                if !self.users.contains_key(&user) {
                    return Err(no_user(&user));
                }
                self.vhost_mut(&vhost)?;
                self.permissions.insert((user, vhost), permission);
                Ok(vec![Change::PermissionsChanged])
            }
            MetaCommand::DeleteUser { name } => {
                if self.users.remove(&name).is_none() {
                    return Err(no_user(&name));
                }
                self.permissions.retain(|(u, _), _| *u != name);
                self.topic_permissions.retain(|(u, _, _), _| *u != name);
                Ok(vec![Change::PermissionsChanged, Change::UserRemoved(name)])
            }
            MetaCommand::ClearPermissions { user, vhost } => {
                if !self.users.contains_key(&user) {
                    return Err(no_user(&user));
                }
                self.vhost_mut(&vhost)?;
                self.permissions.remove(&(user, vhost));
                Ok(vec![Change::PermissionsChanged])
            }
            MetaCommand::SetTopicPermissions {
                user,
                vhost,
                exchange,
                permission,
            } => {
                if !self.users.contains_key(&user) {
                    return Err(no_user(&user));
                }
                self.vhost_mut(&vhost)?;
                self.topic_permissions
                    .insert((user, vhost, exchange), permission);
                Ok(vec![Change::PermissionsChanged])
            }
            MetaCommand::ClearTopicPermissions {
                user,
                vhost,
                exchange,
            } => {
                if !self.users.contains_key(&user) {
                    return Err(no_user(&user));
                }
                self.vhost_mut(&vhost)?;
                self.topic_permissions.retain(|(u, v, x), _| {
                    !(*u == user && *v == vhost && exchange.as_ref().is_none_or(|e| e == x))
                });
                Ok(vec![Change::PermissionsChanged])
            }
            MetaCommand::SetVhostMetadata { name, metadata } => {
                self.vhost_mut(&name)?.metadata = metadata;
                Ok(vec![])
            }
            MetaCommand::SetParameter(def) => {
                crate::policy::validate_parameter(
                    &def.component,
                    &def.vhost,
                    &def.name,
                    &def.value,
                )?;
                let vh = self.vhost_mut(&def.vhost)?;
                let (vhost, component, name) =
                    (def.vhost.clone(), def.component.clone(), def.name.clone());
                vh.parameters
                    .insert((def.component.clone(), def.name.clone()), def);
                Ok(vec![Change::ParameterChanged {
                    vhost,
                    component,
                    name,
                }])
            }
            MetaCommand::ClearParameter {
                vhost,
                component,
                name,
            } => {
                let vh = self.vhost_mut(&vhost)?;
                if vh
                    .parameters
                    .remove(&(component.clone(), name.clone()))
                    .is_none()
                {
                    return Err(ChannelError::new(
                        warren_amqp::ReplyCode::NotFound,
                        format!(
                            "parameter '{name}' of component '{component}' in vhost '{vhost}' does not exist"
                        ),
                    ));
                }
                Ok(vec![Change::ParameterChanged {
                    vhost,
                    component,
                    name,
                }])
            }
            MetaCommand::SetGlobalParameter { name, value } => {
                self.global_parameters.insert(name, value);
                Ok(vec![])
            }
            MetaCommand::ClearGlobalParameter { name } => {
                if self.global_parameters.remove(&name).is_none() {
                    return Err(ChannelError::new(
                        warren_amqp::ReplyCode::NotFound,
                        format!("global parameter '{name}' does not exist"),
                    ));
                }
                Ok(vec![])
            }
            MetaCommand::DeclareExchange { vhost, def } => {
                let vh = self.vhost_mut(&vhost)?;
                if let Some(existing) = vh.exchanges.get(&def.name) {
                    check_exchange_equivalent(&vhost, existing, &def)?;
                    return Ok(vec![]);
                }
                let name = def.name.clone();
                vh.exchanges.insert(name.clone(), def);
                Ok(vec![Change::ExchangeChanged { vhost, name }])
            }
            MetaCommand::DeleteExchange {
                vhost,
                name,
                if_unused,
            } => {
                let vh = self.vhost_mut(&vhost)?;
                if !vh.exchanges.contains_key(&name) {
                    return Err(ChannelError::no_exchange(&vhost, &name));
                }
                if if_unused && vh.has_binding_from(&name) {
                    return Err(ChannelError::precondition(format!(
                        "exchange '{name}' in vhost '{vhost}' in use"
                    )));
                }
                Ok(remove_exchange(vh, &vhost, &name))
            }
            MetaCommand::DeclareQueue { vhost, def } => {
                let vh = self.vhost_mut(&vhost)?;
                if let Some(existing) = vh.queues.get(&def.name) {
                    check_queue_equivalent(&vhost, existing, &def)?;
                    return Ok(vec![]);
                }
                vh.queues.insert(def.name.clone(), def.clone());
                Ok(vec![Change::QueueAdded { vhost, def }])
            }
            MetaCommand::DeleteQueue { vhost, name } => {
                let vh = self.vhost_mut(&vhost)?;
                if vh.queues.remove(&name).is_none() {
                    return Err(ChannelError::no_queue(&vhost, &name));
                }
                let mut changes = remove_bindings_to(vh, &vhost, DestinationKind::Queue, &name);
                changes.insert(0, Change::QueueRemoved { vhost, name });
                Ok(changes)
            }
            MetaCommand::SetPolicy(def) | MetaCommand::SetOperatorPolicy(def) => {
                let operator = matches!(cmd_kind, PolicyKind::Operator);
                let vhost = def.vhost.clone();
                let policy = Policy::new(def, operator)?;
                let vh = self.vhost_mut(&vhost)?;
                let map = if operator {
                    &mut vh.operator_policies
                } else {
                    &mut vh.policies
                };
                map.insert(policy.def.name.clone(), policy);
                Ok(vec![Change::PoliciesChanged { vhost }])
            }
            MetaCommand::ClearPolicy { vhost, name }
            | MetaCommand::ClearOperatorPolicy { vhost, name } => {
                let operator = matches!(cmd_kind, PolicyKind::Operator);
                let vh = self.vhost_mut(&vhost)?;
                let map = if operator {
                    &mut vh.operator_policies
                } else {
                    &mut vh.policies
                };
                if map.remove(&name).is_none() {
                    return Err(ChannelError::new(
                        warren_amqp::ReplyCode::NotFound,
                        format!("Parameter does not exist: {name} in vhost '{vhost}'"),
                    ));
                }
                Ok(vec![Change::PoliciesChanged { vhost }])
            }
            MetaCommand::Bind { vhost, binding } => {
                let vh = self.vhost_mut(&vhost)?;
                check_binding_ends(vh, &vhost, &binding)?;
                let key = binding_key(&binding);
                let source = binding.source.clone();
                if vh.bindings.insert(key, binding).is_some() {
                    return Ok(vec![]);
                }
                Ok(vec![Change::ExchangeChanged {
                    vhost,
                    name: source,
                }])
            }
            MetaCommand::Unbind { vhost, binding } => {
                let vh = self.vhost_mut(&vhost)?;
                // Removing a binding that does not exist is fine, even between missing ends.
                if binding.source.is_empty() {
                    return Err(ChannelError::access_refused(
                        "operation not permitted on the default exchange",
                    ));
                }
                let key = binding_key(&binding);
                if vh.bindings.remove(&key).is_none() {
                    return Ok(vec![]);
                }
                let source = binding.source;
                let mut changes = vec![Change::ExchangeChanged {
                    vhost: vhost.clone(),
                    name: source.clone(),
                }];
                changes.extend(auto_delete_exchange(vh, &vhost, &source));
                Ok(changes)
            }
        }
    }

    fn vhost_mut(&mut self, vhost: &str) -> Result<&mut VhostMeta, ChannelError> {
        self.vhosts.get_mut(vhost).ok_or_else(|| {
            ChannelError::new(
                warren_amqp::ReplyCode::NotFound,
                format!("vhost '{vhost}' does not exist"),
            )
        })
    }
}

fn no_user(user: &str) -> ChannelError {
    ChannelError::new(
        warren_amqp::ReplyCode::NotFound,
        format!("user '{user}' does not exist"),
    )
}

fn check_binding_ends(vh: &VhostMeta, vhost: &str, b: &BindingDef) -> Result<(), ChannelError> {
    if b.source.is_empty()
        || (b.destination_kind == DestinationKind::Exchange && b.destination.is_empty())
    {
        return Err(ChannelError::access_refused(
            "operation not permitted on the default exchange",
        ));
    }
    if !vh.exchanges.contains_key(&b.source) {
        return Err(ChannelError::no_exchange(vhost, &b.source));
    }
    match b.destination_kind {
        DestinationKind::Queue if !vh.queues.contains_key(&b.destination) => {
            Err(ChannelError::no_queue(vhost, &b.destination))
        }
        DestinationKind::Exchange if !vh.exchanges.contains_key(&b.destination) => {
            Err(ChannelError::no_exchange(vhost, &b.destination))
        }
        _ => Ok(()),
    }
}

/// Removes an exchange, every binding from or to it, and any auto-delete exchange left
/// without bindings by that.
fn remove_exchange(vh: &mut VhostMeta, vhost: &str, name: &str) -> Vec<Change> {
    vh.exchanges.remove(name);
    let from: Vec<BindingKey> = vh
        .bindings
        .keys()
        .filter(|k| k.0 == name)
        .cloned()
        .collect();
    for k in from {
        vh.bindings.remove(&k);
    }
    let mut changes = vec![Change::ExchangeRemoved {
        vhost: vhost.to_string(),
        name: name.to_string(),
    }];
    changes.extend(remove_bindings_to(
        vh,
        vhost,
        DestinationKind::Exchange,
        name,
    ));
    changes
}

fn remove_bindings_to(
    vh: &mut VhostMeta,
    vhost: &str,
    kind: DestinationKind,
    name: &str,
) -> Vec<Change> {
    let to: Vec<BindingKey> = vh
        .bindings
        .keys()
        .filter(|k| k.1 == kind && k.2 == name)
        .cloned()
        .collect();
    let mut sources: Vec<String> = Vec::new();
    for k in to {
        vh.bindings.remove(&k);
        if !sources.contains(&k.0) {
            sources.push(k.0);
        }
    }
    let mut changes = Vec::new();
    for source in sources {
        if !vh.exchanges.contains_key(&source) {
            continue;
        }
        changes.push(Change::ExchangeChanged {
            vhost: vhost.to_string(),
            name: source.clone(),
        });
        changes.extend(auto_delete_exchange(vh, vhost, &source));
    }
    changes
}

fn auto_delete_exchange(vh: &mut VhostMeta, vhost: &str, name: &str) -> Vec<Change> {
    let auto = vh.exchanges.get(name).is_some_and(|x| x.auto_delete);
    if auto && !vh.has_binding_from(name) {
        remove_exchange(vh, vhost, name)
    } else {
        Vec::new()
    }
}

fn inequivalent(
    what: &str,
    name: &str,
    vhost: &str,
    arg: &str,
    received: impl std::fmt::Display,
    current: impl std::fmt::Display,
) -> ChannelError {
    ChannelError::precondition(format!(
        "inequivalent arg '{arg}' for {what} '{name}' in vhost '{vhost}': received '{received}' but current is '{current}'"
    ))
}

fn check_exchange_equivalent(
    vhost: &str,
    cur: &ExchangeDef,
    new: &ExchangeDef,
) -> Result<(), ChannelError> {
    let n = &cur.name;
    if cur.kind != new.kind {
        return Err(inequivalent(
            "exchange",
            n,
            vhost,
            "type",
            new.kind.name(),
            cur.kind.name(),
        ));
    }
    if cur.durable != new.durable {
        return Err(inequivalent(
            "exchange",
            n,
            vhost,
            "durable",
            new.durable,
            cur.durable,
        ));
    }
    if cur.auto_delete != new.auto_delete {
        return Err(inequivalent(
            "exchange",
            n,
            vhost,
            "auto_delete",
            new.auto_delete,
            cur.auto_delete,
        ));
    }
    if cur.internal != new.internal {
        return Err(inequivalent(
            "exchange",
            n,
            vhost,
            "internal",
            new.internal,
            cur.internal,
        ));
    }
    crate::args::check_equivalent_args(
        "exchange",
        n,
        vhost,
        &cur.arguments,
        &new.arguments,
        crate::args::EXCHANGE_ARGS,
    )
}

fn check_queue_equivalent(vhost: &str, cur: &QueueDef, new: &QueueDef) -> Result<(), ChannelError> {
    let n = &cur.name;
    if cur.exclusive_owner != new.exclusive_owner {
        return Err(ChannelError::locked(vhost, n));
    }
    if cur.durable != new.durable {
        return Err(inequivalent(
            "queue",
            n,
            vhost,
            "durable",
            new.durable,
            cur.durable,
        ));
    }
    if cur.auto_delete != new.auto_delete {
        return Err(inequivalent(
            "queue",
            n,
            vhost,
            "auto_delete",
            new.auto_delete,
            cur.auto_delete,
        ));
    }
    crate::args::check_equivalent_args(
        "queue",
        n,
        vhost,
        &cur.arguments,
        &new.arguments,
        crate::args::QUEUE_ARGS,
    )
}

/// A string argument's value, if it is a string.
pub fn string_arg<'a>(args: &'a FieldTable, key: &str) -> Option<&'a str> {
    match args.inner().get(key)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

impl MetaCommand {
    /// True when the command changes state that survives a restart, so it must be logged
    /// durably before it is acknowledged. Transient exchanges, queues and their bindings
    /// are never written to disk.
    pub fn is_durable(&self, meta: &Metadata) -> bool {
        match self {
            MetaCommand::DeclareExchange { def, .. } => def.durable,
            MetaCommand::DeclareQueue { def, .. } => def.durable && def.exclusive_owner.is_none(),
            MetaCommand::DeleteExchange { vhost, name, .. } => meta
                .vhosts
                .get(vhost)
                .and_then(|v| v.exchanges.get(name))
                .is_some_and(|x| x.durable),
            MetaCommand::DeleteQueue { vhost, name } => meta
                .vhosts
                .get(vhost)
                .and_then(|v| v.queues.get(name))
                .is_some_and(|q| q.durable),
            MetaCommand::Bind { vhost, binding } | MetaCommand::Unbind { vhost, binding } => meta
                .vhosts
                .get(vhost)
                .is_some_and(|v| v.binding_is_durable(binding)),
            _ => true,
        }
    }
}

impl VhostMeta {
    /// A binding survives a restart when both its ends do.
    fn binding_is_durable(&self, b: &BindingDef) -> bool {
        let source = self.exchanges.get(&b.source).is_some_and(|x| x.durable);
        let dest = match b.destination_kind {
            DestinationKind::Queue => self.queues.get(&b.destination).is_some_and(|q| q.durable),
            DestinationKind::Exchange => self
                .exchanges
                .get(&b.destination)
                .is_some_and(|x| x.durable),
        };
        source && dest
    }
}

impl Metadata {
    /// Rebuilds definitions from a log: every command applied in order (one that fails, as
    /// it failed the first time, changes nothing).
    pub fn replay<'a>(records: impl IntoIterator<Item = &'a MetaCommand>) -> Metadata {
        let mut meta = Metadata::default();
        for cmd in records {
            let _ = meta.apply(cmd.clone());
        }
        meta
    }

    /// Drops what does not survive a restart: transient exchanges, transient and exclusive
    /// queues, and the bindings that lose an end that way.
    pub fn retain_durable(&mut self) {
        for vh in self.vhosts.values_mut() {
            vh.exchanges.retain(|_, x| x.durable);
            vh.queues
                .retain(|_, q| q.durable && q.exclusive_owner.is_none());
            let keep: Vec<BindingKey> = vh
                .bindings
                .iter()
                .filter(|(_, b)| vh.binding_is_durable(b))
                .map(|(k, _)| k.clone())
                .collect();
            let mut kept = BTreeMap::new();
            for k in keep {
                if let Some(b) = vh.bindings.remove(&k) {
                    kept.insert(k, b);
                }
            }
            vh.bindings = kept;
        }
    }

    /// The shortest log that rebuilds these definitions.
    pub fn snapshot(&self) -> Vec<MetaCommand> {
        let mut out = Vec::new();
        for name in self.vhosts.keys() {
            out.push(MetaCommand::AddVhost { name: name.clone() });
        }
        for user in self.users.values() {
            out.push(MetaCommand::PutUser(user.clone()));
        }
        for ((user, vhost), permission) in &self.permissions {
            out.push(MetaCommand::SetPermissions {
                user: user.clone(),
                vhost: vhost.clone(),
                permission: permission.clone(),
            });
        }
        for ((user, vhost, exchange), permission) in &self.topic_permissions {
            out.push(MetaCommand::SetTopicPermissions {
                user: user.clone(),
                vhost: vhost.clone(),
                exchange: exchange.clone(),
                permission: permission.clone(),
            });
        }
        for (name, value) in &self.global_parameters {
            out.push(MetaCommand::SetGlobalParameter {
                name: name.clone(),
                value: value.clone(),
            });
        }
        for (vname, vh) in &self.vhosts {
            if vh.metadata != VhostMetadata::default() {
                out.push(MetaCommand::SetVhostMetadata {
                    name: vname.clone(),
                    metadata: vh.metadata.clone(),
                });
            }
            for p in vh.parameters.values() {
                out.push(MetaCommand::SetParameter(p.clone()));
            }
            let predeclared = |n: &str| PREDECLARED.iter().any(|(p, _)| *p == n);
            for x in vh.exchanges.values().filter(|x| !predeclared(&x.name)) {
                out.push(MetaCommand::DeclareExchange {
                    vhost: vname.clone(),
                    def: x.clone(),
                });
            }
            for q in vh.queues.values() {
                out.push(MetaCommand::DeclareQueue {
                    vhost: vname.clone(),
                    def: q.clone(),
                });
            }
            for b in vh.bindings.values() {
                out.push(MetaCommand::Bind {
                    vhost: vname.clone(),
                    binding: b.clone(),
                });
            }
            for p in vh.policies.values() {
                out.push(MetaCommand::SetPolicy(p.def.clone()));
            }
            for p in vh.operator_policies.values() {
                out.push(MetaCommand::SetOperatorPolicy(p.def.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str, durable: bool, owner: Option<u64>) -> MetaCommand {
        MetaCommand::DeclareQueue {
            vhost: "/".into(),
            def: QueueDef {
                name: name.into(),
                durable,
                exclusive_owner: owner,
                auto_delete: false,
                arguments: FieldTable::default(),
                uid: 1,
                node: None,
            },
        }
    }

    fn bind(queue: &str) -> MetaCommand {
        MetaCommand::Bind {
            vhost: "/".into(),
            binding: BindingDef {
                source: "amq.direct".into(),
                destination_kind: DestinationKind::Queue,
                destination: queue.into(),
                routing_key: queue.into(),
                arguments: FieldTable::default(),
            },
        }
    }

    #[test]
    fn only_durable_definitions_survive_and_the_snapshot_rebuilds_them() {
        let log = vec![
            MetaCommand::AddVhost { name: "/".into() },
            queue("keep", true, None),
            queue("transient", false, None),
            queue("exclusive", false, Some(7)),
            bind("keep"),
            bind("transient"),
        ];
        let mut meta = Metadata::replay(&log);
        assert!(log[1].is_durable(&meta) && !log[2].is_durable(&meta));
        assert!(bind("keep").is_durable(&meta) && !bind("transient").is_durable(&meta));
        meta.retain_durable();
        let vh = &meta.vhosts["/"];
        assert_eq!(vh.queues.keys().collect::<Vec<_>>(), vec!["keep"]);
        assert_eq!(vh.bindings().count(), 1);
        let again = Metadata::replay(&meta.snapshot());
        assert_eq!(again.vhosts["/"].queues, vh.queues);
        assert_eq!(again.vhosts["/"].bindings().count(), 1);
        assert_eq!(again.vhosts["/"].exchanges.len(), PREDECLARED.len());
    }

    #[test]
    fn policies_are_logged_and_rebuilt_from_the_snapshot() {
        let policy = |name: &str, definition: serde_json::Value| PolicyDef {
            vhost: "/".into(),
            name: name.into(),
            pattern: "^kept\\.".into(),
            apply_to: ApplyTo::Queues,
            priority: 1,
            definition,
        };
        let log = vec![
            MetaCommand::AddVhost { name: "/".into() },
            queue("kept.q", true, None),
            MetaCommand::SetPolicy(policy(
                "limits",
                serde_json::json!({"max-length": 3, "message-ttl": 60000}),
            )),
            MetaCommand::SetOperatorPolicy(policy("cap", serde_json::json!({"max-length": 2}))),
        ];
        let meta = Metadata::replay(&log);
        assert!(log[2].is_durable(&meta) && log[3].is_durable(&meta));
        // The log is JSON: policies come back from it as they went in.
        let text = serde_json::to_vec(&log[2]).expect("encodes");
        assert_eq!(
            serde_json::from_slice::<MetaCommand>(&text).expect("decodes"),
            log[2]
        );
        let again = Metadata::replay(&meta.snapshot());
        let vh = &again.vhosts["/"];
        assert_eq!(
            vh.policies["limits"].def,
            meta.vhosts["/"].policies["limits"].def
        );
        let s = vh.queue_settings(&vh.queues["kept.q"], 0);
        assert_eq!(s.max_length, Some(2), "the operator policy caps the limit");
        assert_eq!(s.message_ttl, Some(60000));
        assert_eq!(
            (s.policy.as_deref(), s.operator_policy.as_deref()),
            (Some("limits"), Some("cap"))
        );
        let cleared = {
            let mut m = again.clone();
            m.apply(MetaCommand::ClearOperatorPolicy {
                vhost: "/".into(),
                name: "cap".into(),
            })
            .expect("clear");
            m
        };
        let vh = &cleared.vhosts["/"];
        assert_eq!(
            vh.queue_settings(&vh.queues["kept.q"], 0).max_length,
            Some(3)
        );
    }

    #[test]
    fn commands_survive_a_json_round_trip() {
        let cmd = bind("q");
        let text = serde_json::to_vec(&cmd).expect("encodes");
        let back: MetaCommand = serde_json::from_slice(&text).expect("decodes");
        assert_eq!(back, cmd);
    }
}
