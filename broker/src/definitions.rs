//! Definitions in RabbitMQ's JSON export format (`rabbitmqctl export_definitions`): users
//! with their password hashes, vhosts, permissions, topic permissions, runtime parameters,
//! global parameters, policies, queues, exchanges and bindings.
//!
//! [`export`] writes what the node has; [`import`] applies a file as `MetaCommand`s in
//! RabbitMQ's order (users, vhosts, permissions, topic permissions, parameters, global
//! parameters, policies, queues, exchanges, bindings), stopping at the first item that
//! cannot be applied and naming it. A file exported by RabbitMQ 3.x imports as is,
//! including its quirks (vhost tags as one comma-separated string, global parameter values
//! as lists of pairs, which are kept as they are).

use crate::auth::HashingAlgorithm;
use crate::broker::BrokerShared;
use crate::meta::{
    BindingDef, DestinationKind, ExchangeDef, ExchangeKind, MetaCommand, Metadata, ParameterDef,
    Permission, PolicyDef, QueueDef, TopicPermission, UserDef, VhostMetadata, PREDECLARED,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use warren_amqp::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

/// A definitions file. Keys in RabbitMQ's (alphabetical) order; all sections optional on
/// import, unknown keys ignored as RabbitMQ does.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Definitions {
    /// Bindings.
    #[serde(default)]
    pub bindings: Vec<BindingJson>,
    /// Exchanges (not the predeclared ones).
    #[serde(default)]
    pub exchanges: Vec<ExchangeJson>,
    /// Global runtime parameters.
    #[serde(default)]
    pub global_parameters: Vec<GlobalParameterJson>,
    /// Vhost runtime parameters.
    #[serde(default)]
    pub parameters: Vec<ParameterJson>,
    /// Permissions.
    #[serde(default)]
    pub permissions: Vec<PermissionJson>,
    /// Policies.
    #[serde(default)]
    pub policies: Vec<PolicyJson>,
    /// The product that wrote the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_version: Option<String>,
    /// Queues.
    #[serde(default)]
    pub queues: Vec<QueueJson>,
    /// The version of the node that wrote the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbit_version: Option<String>,
    /// Same, under the newer key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq_version: Option<String>,
    /// Topic permissions.
    #[serde(default)]
    pub topic_permissions: Vec<TopicPermissionJson>,
    /// Users.
    #[serde(default)]
    pub users: Vec<UserJson>,
    /// Vhosts.
    #[serde(default)]
    pub vhosts: Vec<VhostJson>,
}

/// Tags: a list, or (older exports, and vhost tags from RabbitMQ's CLI) one comma-separated
/// string.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Tags {
    /// `["a", "b"]`.
    List(Vec<String>),
    /// `"a,b"`.
    Text(String),
}

impl Default for Tags {
    fn default() -> Self {
        Tags::List(Vec::new())
    }
}

impl Tags {
    /// The tags as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Tags::List(v) => v.clone(),
            Tags::Text(s) => s
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

/// A user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserJson {
    /// RabbitMQ's module name of the hashing scheme; absent in exports older than 3.6,
    /// which used MD5 (not supported).
    #[serde(default)]
    pub hashing_algorithm: Option<String>,
    /// Per-user limits.
    #[serde(default = "empty_object")]
    pub limits: Value,
    /// The user name.
    pub name: String,
    /// base64(salt ++ digest(salt ++ password)), or empty.
    #[serde(default)]
    pub password_hash: String,
    /// Tags.
    #[serde(default)]
    pub tags: Tags,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// A vhost's metadata as RabbitMQ 3.10 exports it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VhostMetadataJson {
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Tags.
    #[serde(default)]
    pub tags: Tags,
    /// The default queue type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_queue_type: Option<String>,
}

/// A vhost.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VhostJson {
    /// Newer exports put the description at the top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Newer exports put the default queue type at the top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_queue_type: Option<String>,
    /// The vhost's limits as pairs (informational: they are imported from `parameters`).
    #[serde(default = "empty_array")]
    pub limits: Value,
    /// Description and tags (RabbitMQ 3.8 to 3.10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<VhostMetadataJson>,
    /// The name.
    pub name: String,
    /// Newer exports put the tags at the top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
}

fn empty_array() -> Value {
    Value::Array(Vec::new())
}

/// A user's permissions in a vhost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PermissionJson {
    /// Configure expression.
    pub configure: String,
    /// Read expression.
    pub read: String,
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// Write expression.
    pub write: String,
}

/// A user's topic permissions for one exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicPermissionJson {
    /// The exchange.
    pub exchange: String,
    /// Read expression.
    pub read: String,
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// Write expression.
    pub write: String,
}

/// A vhost's runtime parameter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParameterJson {
    /// The component.
    pub component: String,
    /// The name.
    pub name: String,
    /// The value.
    pub value: Value,
    /// The vhost.
    pub vhost: String,
}

/// A global runtime parameter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GlobalParameterJson {
    /// The name.
    pub name: String,
    /// The value.
    pub value: Value,
}

/// A policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyJson {
    /// `queues`, `exchanges` or `all`.
    #[serde(rename = "apply-to", default = "apply_to_all")]
    pub apply_to: String,
    /// The policy's keys.
    pub definition: Value,
    /// The name.
    pub name: String,
    /// The pattern.
    pub pattern: String,
    /// The priority.
    #[serde(default)]
    pub priority: i64,
    /// The vhost.
    pub vhost: String,
}

fn apply_to_all() -> String {
    "all".into()
}

/// A queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueJson {
    /// Declare arguments.
    #[serde(default = "empty_object")]
    pub arguments: Value,
    /// Auto-delete.
    #[serde(default)]
    pub auto_delete: bool,
    /// Durable.
    #[serde(default = "yes")]
    pub durable: bool,
    /// The name.
    pub name: String,
    /// `classic` or `quorum` (from `x-queue-type`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The vhost.
    pub vhost: String,
}

fn yes() -> bool {
    true
}

/// An exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExchangeJson {
    /// Declare arguments.
    #[serde(default = "empty_object")]
    pub arguments: Value,
    /// Auto-delete.
    #[serde(default)]
    pub auto_delete: bool,
    /// Durable.
    #[serde(default = "yes")]
    pub durable: bool,
    /// Internal (written only when true, as RabbitMQ leaves it out).
    #[serde(default, skip_serializing_if = "is_false")]
    pub internal: bool,
    /// The name.
    pub name: String,
    /// `direct`, `fanout`, `topic` or `headers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The vhost.
    pub vhost: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A binding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BindingJson {
    /// Binding arguments.
    #[serde(default = "empty_object")]
    pub arguments: Value,
    /// The destination's name.
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    /// The binding key.
    #[serde(default)]
    pub routing_key: String,
    /// The source exchange.
    pub source: String,
    /// The vhost.
    pub vhost: String,
}

/// A field table as JSON: integers as numbers, strings as strings, nested tables as
/// objects, arrays as arrays.
pub fn table_to_json(t: &FieldTable) -> Value {
    let mut m = Map::new();
    for (k, v) in t.inner() {
        m.insert(k.as_str().to_string(), value_to_json(v));
    }
    Value::Object(m)
}

fn value_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::from(*i),
        AMQPValue::ShortShortUInt(i) => Value::from(*i),
        AMQPValue::ShortInt(i) => Value::from(*i),
        AMQPValue::ShortUInt(i) => Value::from(*i),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::LongUInt(i) => Value::from(*i),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::Float(f) => Value::from(f64::from(*f)),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::DecimalValue(d) => {
            Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into()),
        AMQPValue::Void => Value::Null,
    }
}

/// JSON arguments as a field table (what RabbitMQ's import does: integers become signed
/// 64-bit, other numbers doubles).
pub fn json_to_table(v: &Value) -> Result<FieldTable, String> {
    let Value::Object(m) = v else {
        return Err(format!("arguments must be a JSON object, got {v}"));
    };
    let mut t = FieldTable::default();
    for (k, v) in m {
        t.insert(ShortString::from(k.as_str()), json_to_value(v)?);
    }
    Ok(t)
}

fn json_to_value(v: &Value) -> Result<AMQPValue, String> {
    Ok(match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().ok_or_else(|| format!("bad number {n}"))?),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(a) => {
            let mut arr = FieldArray::default();
            for x in a {
                arr.push(json_to_value(x)?);
            }
            AMQPValue::FieldArray(arr)
        }
        Value::Object(_) => AMQPValue::FieldTable(json_to_table(v)?),
    })
}

/// The node's definitions in RabbitMQ's format, each section sorted.
pub fn export(meta: &Metadata) -> Definitions {
    let version = env!("CARGO_PKG_VERSION").to_string();
    let mut d = Definitions {
        product_name: Some("Warren".into()),
        product_version: Some(version.clone()),
        rabbit_version: Some(version.clone()),
        rabbitmq_version: Some(version),
        ..Definitions::default()
    };
    for u in meta.users.values() {
        d.users.push(UserJson {
            hashing_algorithm: Some(u.hashing_algorithm.name().to_string()),
            limits: u.limits.clone(),
            name: u.name.clone(),
            password_hash: u.password_hash.clone(),
            tags: Tags::List(u.tags.clone()),
        });
    }
    for ((user, vhost), p) in &meta.permissions {
        d.permissions.push(PermissionJson {
            configure: p.configure.clone(),
            read: p.read.clone(),
            user: user.clone(),
            vhost: vhost.clone(),
            write: p.write.clone(),
        });
    }
    for ((user, vhost, exchange), p) in &meta.topic_permissions {
        d.topic_permissions.push(TopicPermissionJson {
            exchange: exchange.clone(),
            read: p.read.clone(),
            user: user.clone(),
            vhost: vhost.clone(),
            write: p.write.clone(),
        });
    }
    for (name, value) in &meta.global_parameters {
        d.global_parameters.push(GlobalParameterJson {
            name: name.clone(),
            value: value.clone(),
        });
    }
    for (vname, vh) in &meta.vhosts {
        // RabbitMQ shows the vhost-limits parameter again as pairs on the vhost.
        let limits = vh
            .parameters
            .get(&("vhost-limits".to_string(), "limits".to_string()))
            .and_then(|p| p.value.as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| Value::Array(vec![Value::String(k.clone()), v.clone()]))
                    .collect()
            })
            .unwrap_or_default();
        d.vhosts.push(VhostJson {
            description: None,
            default_queue_type: None,
            limits: Value::Array(limits),
            metadata: Some(VhostMetadataJson {
                description: vh.metadata.description.clone(),
                tags: Tags::List(vh.metadata.tags.clone()),
                default_queue_type: vh.metadata.default_queue_type.clone(),
            }),
            name: vname.clone(),
            tags: None,
        });
        for p in vh.parameters.values() {
            d.parameters.push(ParameterJson {
                component: p.component.clone(),
                name: p.name.clone(),
                value: p.value.clone(),
                vhost: vname.clone(),
            });
        }
        for p in vh.policies.values() {
            d.policies.push(PolicyJson {
                apply_to: p.def.apply_to.name().to_string(),
                definition: p.def.definition.clone(),
                name: p.def.name.clone(),
                pattern: p.def.pattern.clone(),
                priority: p.def.priority,
                vhost: vname.clone(),
            });
        }
        for q in vh.queues.values().filter(|q| q.exclusive_owner.is_none()) {
            let kind = crate::meta::string_arg(&q.arguments, "x-queue-type")
                .unwrap_or("classic")
                .to_string();
            d.queues.push(QueueJson {
                arguments: table_to_json(&q.arguments),
                auto_delete: q.auto_delete,
                durable: q.durable,
                name: q.name.clone(),
                kind: Some(kind),
                vhost: vname.clone(),
            });
        }
        let predeclared =
            |n: &str| n.starts_with("amq.") || PREDECLARED.iter().any(|(p, _)| *p == n);
        for x in vh.exchanges.values().filter(|x| !predeclared(&x.name)) {
            d.exchanges.push(ExchangeJson {
                arguments: table_to_json(&x.arguments),
                auto_delete: x.auto_delete,
                durable: x.durable,
                internal: x.internal,
                name: x.name.clone(),
                kind: x.kind.name().to_string(),
                vhost: vname.clone(),
            });
        }
        for b in vh.bindings() {
            d.bindings.push(BindingJson {
                arguments: table_to_json(&b.arguments),
                destination: b.destination.clone(),
                destination_type: match b.destination_kind {
                    DestinationKind::Queue => "queue".into(),
                    DestinationKind::Exchange => "exchange".into(),
                },
                routing_key: b.routing_key.clone(),
                source: b.source.clone(),
                vhost: vname.clone(),
            });
        }
    }
    d
}

/// Exports as pretty JSON text.
pub fn export_json(meta: &Metadata) -> String {
    serde_json::to_string_pretty(&export(meta)).unwrap_or_default()
}

/// What an import applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSummary {
    /// Users.
    pub users: usize,
    /// Vhosts.
    pub vhosts: usize,
    /// Permissions and topic permissions.
    pub permissions: usize,
    /// Parameters, global parameters and policies.
    pub parameters: usize,
    /// Queues.
    pub queues: usize,
    /// Exchanges.
    pub exchanges: usize,
    /// Bindings.
    pub bindings: usize,
}

impl std::fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} users, {} vhosts, {} permissions, {} parameters and policies, {} queues, {} exchanges, {} bindings",
            self.users,
            self.vhosts,
            self.permissions,
            self.parameters,
            self.queues,
            self.exchanges,
            self.bindings
        )
    }
}

/// Parses definitions text and imports it.
pub async fn import_json(shared: &BrokerShared, text: &str) -> Result<ImportSummary, String> {
    let defs: Definitions =
        serde_json::from_str(text).map_err(|e| format!("not a definitions file: {e}"))?;
    import(shared, defs).await
}

/// Turns definitions into the commands that apply them, in RabbitMQ's order, checking
/// each item first; an error names the item.
pub fn commands(defs: &Definitions) -> Result<Vec<MetaCommand>, String> {
    let mut out = Vec::new();
    for u in &defs.users {
        let algorithm = match u.hashing_algorithm.as_deref() {
            None => {
                return Err(format!(
                    "user '{}': no hashing_algorithm (an export older than RabbitMQ 3.6, MD5 hashes are not supported)",
                    u.name
                ))
            }
            Some(a) => HashingAlgorithm::parse(a).ok_or_else(|| {
                format!(
                    "user '{}': unsupported hashing_algorithm '{a}' (supported: rabbit_password_hashing_sha256, rabbit_password_hashing_sha512)",
                    u.name
                )
            })?,
        };
        if !crate::auth::is_valid_hash(algorithm, &u.password_hash) {
            return Err(format!(
                "user '{}': password_hash is not a {} hash",
                u.name,
                algorithm.name()
            ));
        }
        out.push(MetaCommand::PutUser(UserDef {
            name: u.name.clone(),
            password_hash: u.password_hash.clone(),
            tags: u.tags.to_vec(),
            hashing_algorithm: algorithm,
            limits: match &u.limits {
                // Some versions write an empty list for no limits.
                Value::Array(a) if a.is_empty() => empty_object(),
                other => other.clone(),
            },
        }));
    }
    for v in &defs.vhosts {
        out.push(MetaCommand::AddVhost {
            name: v.name.clone(),
        });
        let meta = v.metadata.clone().unwrap_or_default();
        let metadata = VhostMetadata {
            description: v.description.clone().unwrap_or(meta.description),
            tags: v.tags.as_ref().unwrap_or(&meta.tags).to_vec(),
            default_queue_type: v.default_queue_type.clone().or(meta.default_queue_type),
        };
        if metadata != VhostMetadata::default() {
            out.push(MetaCommand::SetVhostMetadata {
                name: v.name.clone(),
                metadata,
            });
        }
    }
    for p in &defs.permissions {
        for re in [&p.configure, &p.write, &p.read] {
            crate::access::validate_pattern(re).map_err(|e| {
                format!(
                    "permissions of user '{}' in vhost '{}': {e}",
                    p.user, p.vhost
                )
            })?;
        }
        out.push(MetaCommand::SetPermissions {
            user: p.user.clone(),
            vhost: p.vhost.clone(),
            permission: Permission {
                configure: p.configure.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            },
        });
    }
    for p in &defs.topic_permissions {
        for re in [&p.write, &p.read] {
            crate::access::validate_pattern(re).map_err(|e| {
                format!(
                    "topic permissions of user '{}' in vhost '{}': {e}",
                    p.user, p.vhost
                )
            })?;
        }
        out.push(MetaCommand::SetTopicPermissions {
            user: p.user.clone(),
            vhost: p.vhost.clone(),
            exchange: p.exchange.clone(),
            permission: TopicPermission {
                write: p.write.clone(),
                read: p.read.clone(),
            },
        });
    }
    for p in &defs.parameters {
        out.push(MetaCommand::SetParameter(ParameterDef {
            vhost: p.vhost.clone(),
            component: p.component.clone(),
            name: p.name.clone(),
            value: p.value.clone(),
        }));
    }
    for p in &defs.global_parameters {
        out.push(MetaCommand::SetGlobalParameter {
            name: p.name.clone(),
            value: p.value.clone(),
        });
    }
    for p in &defs.policies {
        let apply_to = crate::meta::ApplyTo::parse(&p.apply_to)
            .map_err(|e| format!("policy '{}' in vhost '{}': {}", p.name, p.vhost, e.text))?;
        if !p.definition.is_object() {
            return Err(format!(
                "policy '{}' in vhost '{}': definition must be a JSON object",
                p.name, p.vhost
            ));
        }
        out.push(MetaCommand::SetPolicy(PolicyDef {
            vhost: p.vhost.clone(),
            name: p.name.clone(),
            pattern: p.pattern.clone(),
            apply_to,
            priority: p.priority,
            definition: p.definition.clone(),
        }));
    }
    for q in &defs.queues {
        let what = || format!("queue '{}' in vhost '{}'", q.name, q.vhost);
        let arguments = json_to_table(&q.arguments).map_err(|e| format!("{}: {e}", what()))?;
        out.push(MetaCommand::DeclareQueue {
            vhost: q.vhost.clone(),
            def: QueueDef {
                name: q.name.clone(),
                durable: q.durable,
                exclusive_owner: None,
                auto_delete: q.auto_delete,
                arguments,
                uid: rand::random(),
                node: None,
            },
        });
    }
    for x in &defs.exchanges {
        let what = || format!("exchange '{}' in vhost '{}'", x.name, x.vhost);
        let kind = ExchangeKind::parse(&x.kind)
            .ok_or_else(|| format!("{}: unknown exchange type '{}'", what(), x.kind))?;
        let arguments = json_to_table(&x.arguments).map_err(|e| format!("{}: {e}", what()))?;
        out.push(MetaCommand::DeclareExchange {
            vhost: x.vhost.clone(),
            def: ExchangeDef {
                name: x.name.clone(),
                kind,
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments,
            },
        });
    }
    for b in &defs.bindings {
        let what = || {
            format!(
                "binding from '{}' to {} '{}' in vhost '{}'",
                b.source, b.destination_type, b.destination, b.vhost
            )
        };
        let destination_kind = match b.destination_type.as_str() {
            "queue" => DestinationKind::Queue,
            "exchange" => DestinationKind::Exchange,
            other => {
                return Err(format!(
                    "{}: destination_type '{other}' is not queue or exchange",
                    what()
                ))
            }
        };
        let arguments = json_to_table(&b.arguments).map_err(|e| format!("{}: {e}", what()))?;
        out.push(MetaCommand::Bind {
            vhost: b.vhost.clone(),
            binding: BindingDef {
                source: b.source.clone(),
                destination_kind,
                destination: b.destination.clone(),
                routing_key: b.routing_key.clone(),
                arguments,
            },
        });
    }
    Ok(out)
}

/// Applies definitions to the node.
pub async fn import(shared: &BrokerShared, defs: Definitions) -> Result<ImportSummary, String> {
    let cmds = commands(&defs)?;
    let mut summary = ImportSummary::default();
    for cmd in cmds {
        let what = describe(&cmd);
        if let MetaCommand::DeclareQueue { vhost, def } = &cmd {
            let exists = shared.with_meta(|m| {
                m.vhosts
                    .get(vhost)
                    .is_some_and(|v| v.queues.contains_key(&def.name))
            });
            if !exists {
                crate::args::validate_queue_args(&def.name, vhost, &def.arguments)
                    .map_err(|e| format!("{what}: {}", e.text))?;
            }
        }
        match &cmd {
            MetaCommand::PutUser(_) => summary.users += 1,
            MetaCommand::AddVhost { .. } => summary.vhosts += 1,
            MetaCommand::SetPermissions { .. } | MetaCommand::SetTopicPermissions { .. } => {
                summary.permissions += 1
            }
            MetaCommand::SetParameter(_)
            | MetaCommand::SetGlobalParameter { .. }
            | MetaCommand::SetPolicy(_) => summary.parameters += 1,
            MetaCommand::DeclareQueue { .. } => summary.queues += 1,
            MetaCommand::DeclareExchange { .. } => summary.exchanges += 1,
            MetaCommand::Bind { .. } => summary.bindings += 1,
            _ => {}
        }
        shared
            .execute(cmd)
            .await
            .map_err(|e| format!("{what}: {}", e.text))?;
    }
    Ok(summary)
}

fn describe(cmd: &MetaCommand) -> String {
    match cmd {
        MetaCommand::PutUser(u) => format!("user '{}'", u.name),
        MetaCommand::AddVhost { name } | MetaCommand::SetVhostMetadata { name, .. } => {
            format!("vhost '{name}'")
        }
        MetaCommand::SetPermissions { user, vhost, .. } => {
            format!("permissions of user '{user}' in vhost '{vhost}'")
        }
        MetaCommand::SetTopicPermissions { user, vhost, .. } => {
            format!("topic permissions of user '{user}' in vhost '{vhost}'")
        }
        MetaCommand::SetParameter(p) => format!(
            "parameter '{}' of component '{}' in vhost '{}'",
            p.name, p.component, p.vhost
        ),
        MetaCommand::SetGlobalParameter { name, .. } => format!("global parameter '{name}'"),
        MetaCommand::SetPolicy(p) => format!("policy '{}' in vhost '{}'", p.name, p.vhost),
        MetaCommand::DeclareQueue { vhost, def } => {
            format!("queue '{}' in vhost '{vhost}'", def.name)
        }
        MetaCommand::DeclareExchange { vhost, def } => {
            format!("exchange '{}' in vhost '{vhost}'", def.name)
        }
        MetaCommand::Bind { vhost, binding } => format!(
            "binding from '{}' to '{}' in vhost '{vhost}'",
            binding.source, binding.destination
        ),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_survive_a_json_round_trip() {
        let v = serde_json::json!({
            "x-max-length": 500,
            "x-overflow": "reject-publish",
            "ratio": 0.5,
            "flag": true,
            "list": [1, "a"],
            "nested": {"k": "v"}
        });
        let t = json_to_table(&v).expect("converts");
        assert_eq!(table_to_json(&t), v);
        assert!(json_to_table(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn tags_read_as_a_list_or_a_comma_separated_string() {
        let t: Tags = serde_json::from_str("\"fixture,qa\"").expect("string");
        assert_eq!(t.to_vec(), vec!["fixture", "qa"]);
        let t: Tags = serde_json::from_str("[\"a\"]").expect("list");
        assert_eq!(t.to_vec(), vec!["a"]);
    }

    #[test]
    fn bad_items_are_named() {
        let defs: Definitions = serde_json::from_value(serde_json::json!({
            "users": [{"name": "old", "password_hash": "x", "tags": ""}]
        }))
        .expect("parses");
        let e = commands(&defs).expect_err("md5 era");
        assert!(e.contains("user 'old'"), "{e}");
        let defs: Definitions = serde_json::from_value(serde_json::json!({
            "exchanges": [{"name": "d", "vhost": "/", "type": "x-delayed-message",
                           "durable": true, "auto_delete": false, "arguments": {}}]
        }))
        .expect("parses");
        let e = commands(&defs).expect_err("unknown type");
        assert!(e.contains("exchange 'd' in vhost '/'"), "{e}");
    }
}
