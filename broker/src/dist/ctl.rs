//! The admin commands warrenctl sends over the distribution port, with RabbitMQ's command
//! names, and their handlers. Every definition change goes through `BrokerShared::execute`
//! like any other; listings read the definitions, the queue actors and the connection
//! registry. Errors carry rabbitmqctl's exit codes.

use super::protocol::RemoteError;
use crate::broker::BrokerShared;
use crate::meta::{
    DestinationKind, MetaCommand, Permission, TopicPermission, UserDef, VhostMetadata,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;

/// An admin command.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CtlOp {
    /// The node's status.
    Status,
    /// Answered once the node has booted (the dist port opens only then).
    AwaitStartup,
    /// Stops the node (the same path as SIGTERM).
    Stop,
    /// Creates a user.
    AddUser {
        /// Name.
        name: String,
        /// Password (hashed by the node).
        password: String,
    },
    /// Deletes a user (its connections close).
    DeleteUser {
        /// Name.
        name: String,
    },
    /// Changes a user's password.
    ChangePassword {
        /// Name.
        name: String,
        /// New password.
        password: String,
    },
    /// Replaces a user's tags.
    SetUserTags {
        /// Name.
        name: String,
        /// Tags.
        tags: Vec<String>,
    },
    /// Lists users.
    ListUsers,
    /// Replaces a user's limits (`max-connections`, `max-channels`).
    SetUserLimits {
        /// User.
        name: String,
        /// The limits, JSON text.
        definition: String,
    },
    /// Removes one of a user's limits, or `all`.
    ClearUserLimits {
        /// User.
        name: String,
        /// The limit's name, or `all`.
        key: String,
    },
    /// Shows a user's limits (the default user's when none is named).
    ListUserLimits {
        /// User.
        name: Option<String>,
    },
    /// Creates a vhost (idempotent).
    AddVhost {
        /// Name.
        name: String,
        /// Description.
        description: Option<String>,
        /// Tags.
        tags: Option<Vec<String>>,
        /// Default queue type.
        default_queue_type: Option<String>,
    },
    /// Deletes a vhost and everything in it (its connections close).
    DeleteVhost {
        /// Name.
        name: String,
    },
    /// Lists vhosts.
    ListVhosts {
        /// Columns.
        columns: Vec<String>,
    },
    /// Sets a user's permissions in a vhost.
    SetPermissions {
        /// Vhost.
        vhost: String,
        /// User.
        user: String,
        /// Configure expression.
        configure: String,
        /// Write expression.
        write: String,
        /// Read expression.
        read: String,
    },
    /// Removes a user's permissions in a vhost.
    ClearPermissions {
        /// Vhost.
        vhost: String,
        /// User.
        user: String,
    },
    /// Lists a vhost's permissions.
    ListPermissions {
        /// Vhost.
        vhost: String,
    },
    /// Lists a user's permissions.
    ListUserPermissions {
        /// User.
        user: String,
    },
    /// Sets a user's topic permissions for an exchange.
    SetTopicPermissions {
        /// Vhost.
        vhost: String,
        /// User.
        user: String,
        /// Exchange.
        exchange: String,
        /// Write expression.
        write: String,
        /// Read expression.
        read: String,
    },
    /// Removes a user's topic permissions (for one exchange, or all).
    ClearTopicPermissions {
        /// Vhost.
        vhost: String,
        /// User.
        user: String,
        /// Exchange.
        exchange: Option<String>,
    },
    /// Lists a vhost's topic permissions.
    ListTopicPermissions {
        /// Vhost.
        vhost: String,
    },
    /// Lists a user's topic permissions.
    ListUserTopicPermissions {
        /// User.
        user: String,
    },
    /// Lists queues.
    ListQueues {
        /// Vhost.
        vhost: String,
        /// Columns.
        columns: Vec<String>,
    },
    /// Lists exchanges.
    ListExchanges {
        /// Vhost.
        vhost: String,
        /// Columns.
        columns: Vec<String>,
    },
    /// Lists bindings.
    ListBindings {
        /// Vhost.
        vhost: String,
        /// Columns.
        columns: Vec<String>,
    },
    /// Lists connections.
    ListConnections {
        /// Columns.
        columns: Vec<String>,
    },
    /// Lists channels.
    ListChannels {
        /// Columns.
        columns: Vec<String>,
    },
    /// Lists consumers.
    ListConsumers {
        /// Vhost.
        vhost: String,
        /// Columns.
        columns: Vec<String>,
    },
    /// Drops a queue's ready messages.
    PurgeQueue {
        /// Vhost.
        vhost: String,
        /// Queue.
        name: String,
    },
    /// Deletes a queue.
    DeleteQueue {
        /// Vhost.
        vhost: String,
        /// Queue.
        name: String,
        /// Only if it has no messages.
        if_empty: bool,
        /// Only if it has no consumers.
        if_unused: bool,
    },
    /// Closes a connection (320 CONNECTION_FORCED with the reason).
    CloseConnection {
        /// The connection's name (`client:port -> server:port`) or id.
        name: String,
        /// The reason the client sees.
        reason: String,
    },
    /// Creates or replaces a policy (or an operator policy).
    SetPolicy {
        /// Vhost.
        vhost: String,
        /// Name.
        name: String,
        /// Regular expression over queue and exchange names.
        pattern: String,
        /// The definition, JSON text.
        definition: String,
        /// Priority.
        priority: i64,
        /// `queues`, `exchanges` or `all`.
        apply_to: String,
        /// An operator policy.
        operator: bool,
    },
    /// Removes a policy (or an operator policy).
    ClearPolicy {
        /// Vhost.
        vhost: String,
        /// Name.
        name: String,
        /// An operator policy.
        operator: bool,
    },
    /// Lists a vhost's policies (or operator policies).
    ListPolicies {
        /// Vhost.
        vhost: String,
        /// Operator policies.
        operator: bool,
    },
    /// Sets a vhost's runtime parameter.
    SetParameter {
        /// Vhost.
        vhost: String,
        /// Component.
        component: String,
        /// Name.
        name: String,
        /// The value, JSON text.
        value: String,
    },
    /// Removes a vhost's runtime parameter.
    ClearParameter {
        /// Vhost.
        vhost: String,
        /// Component.
        component: String,
        /// Name.
        name: String,
    },
    /// Lists a vhost's runtime parameters.
    ListParameters {
        /// Vhost.
        vhost: String,
    },
    /// Sets a global runtime parameter.
    SetGlobalParameter {
        /// Name.
        name: String,
        /// The value, JSON text.
        value: String,
    },
    /// Removes a global runtime parameter.
    ClearGlobalParameter {
        /// Name.
        name: String,
    },
    /// Lists the global runtime parameters.
    ListGlobalParameters,
    /// Every shovel's status.
    ShovelStatus,
    /// Deletes a shovel: clears a dynamic shovel's parameter, stops a static one.
    DeleteShovel {
        /// Vhost.
        vhost: String,
        /// Name.
        name: String,
    },
    /// Restarts a shovel's link.
    RestartShovel {
        /// Vhost.
        vhost: String,
        /// Name.
        name: String,
    },
    /// The node's definitions in RabbitMQ's JSON format.
    ExportDefinitions,
    /// Imports definitions in RabbitMQ's JSON format.
    ImportDefinitions {
        /// The file's content.
        definitions: Value,
    },
    /// Stops the application, leaving the node reachable.
    StopApp,
    /// Starts the application.
    StartApp,
    /// Resets the (stopped) node and makes it a member of another node's cluster.
    JoinCluster {
        /// The node to join (`name@host`).
        node: String,
        /// Its distribution address (`host:port`).
        addr: String,
        /// Join as a RAM node.
        ram: bool,
    },
    /// Deletes the (stopped) node's data and cluster membership.
    Reset,
    /// Like `Reset`, without asking the cluster to remove the node first.
    ForceReset,
    /// Makes the (stopped) node boot next time with the disc nodes reachable then as the
    /// whole cluster (after a majority was lost for good).
    ForceBoot,
    /// Makes the (stopped) node a disc or a RAM node.
    ChangeClusterNodeType {
        /// RAM node.
        ram: bool,
    },
    /// Removes a node from the cluster.
    ForgetClusterNode {
        /// Its name.
        node: String,
    },
    /// The cluster's members and running nodes.
    ClusterStatus,
}

/// A table: named columns and rows of JSON values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, one value per column.
    pub rows: Vec<Vec<Value>>,
}

/// The answer to a command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reply {
    /// Done, nothing to show.
    Done,
    /// A sentence to show.
    Message(String),
    /// A table to show.
    Table(Table),
    /// A JSON document to show (status, definitions).
    Document(Value),
}

fn vhost_missing(vhost: &str) -> RemoteError {
    RemoteError::unavailable(format!("Virtual host '{vhost}' does not exist"))
}

fn user_missing(user: &str) -> RemoteError {
    RemoteError::no_user(format!("User \"{user}\" does not exist"))
}

/// Picks `columns` (or `default`) out of rows built as name -> value.
fn select(
    columns: &[String],
    default: &[&str],
    valid: &[&str],
    rows: Vec<serde_json::Map<String, Value>>,
) -> Result<Table, RemoteError> {
    let columns: Vec<String> = if columns.is_empty() {
        default.iter().map(|c| c.to_string()).collect()
    } else if columns.len() == 1 && columns[0] == "*" {
        // Every column (the HTTP API shows whole objects).
        valid.iter().map(|c| c.to_string()).collect()
    } else {
        columns.to_vec()
    };
    let bad: Vec<&str> = columns
        .iter()
        .map(String::as_str)
        .filter(|c| !valid.contains(c))
        .collect();
    if !bad.is_empty() {
        return Err(RemoteError::usage(format!(
            "Info key(s) {} are not supported. Valid keys are: {}",
            bad.join(","),
            valid.join(", ")
        )));
    }
    let rows = rows
        .into_iter()
        .map(|r| {
            columns
                .iter()
                .map(|c| r.get(c).cloned().unwrap_or(Value::Null))
                .collect()
        })
        .collect();
    Ok(Table { columns, rows })
}

fn obj(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

fn table(columns: &[&str], rows: Vec<Vec<Value>>) -> Reply {
    Reply::Table(Table {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows,
    })
}

async fn execute(shared: &BrokerShared, cmd: MetaCommand) -> Result<(), RemoteError> {
    shared
        .execute(cmd)
        .await
        .map_err(|e| RemoteError::software(e.text))
}

fn check_patterns(patterns: &[&str]) -> Result<(), RemoteError> {
    for p in patterns {
        crate::access::validate_pattern(p).map_err(RemoteError::data)?;
    }
    Ok(())
}

fn require_vhost(shared: &BrokerShared, vhost: &str) -> Result<(), RemoteError> {
    if shared.with_meta(|m| m.vhosts.contains_key(vhost)) {
        Ok(())
    } else {
        Err(vhost_missing(vhost))
    }
}

fn require_user(shared: &BrokerShared, user: &str) -> Result<(), RemoteError> {
    if shared.with_meta(|m| m.users.contains_key(user)) {
        Ok(())
    } else {
        Err(user_missing(user))
    }
}

/// Runs a command.
pub async fn handle(shared: &Arc<BrokerShared>, op: CtlOp) -> Result<Reply, RemoteError> {
    match op {
        CtlOp::Status => Ok(Reply::Document(status(shared))),
        CtlOp::AwaitStartup => Ok(Reply::Done),
        CtlOp::Stop => Ok(Reply::Done),
        // Answered by the node (`cluster::node`), which outlives the application.
        CtlOp::StopApp
        | CtlOp::StartApp
        | CtlOp::JoinCluster { .. }
        | CtlOp::Reset
        | CtlOp::ForceReset
        | CtlOp::ForceBoot
        | CtlOp::ChangeClusterNodeType { .. }
        | CtlOp::ForgetClusterNode { .. }
        | CtlOp::ClusterStatus => Err(RemoteError::usage("a node command reached the application")),
        CtlOp::AddUser { name, password } => {
            if name.is_empty() {
                return Err(RemoteError::usage("user name must not be empty"));
            }
            if shared.with_meta(|m| m.users.contains_key(&name)) {
                return Err(RemoteError::software(format!(
                    "User \"{name}\" already exists"
                )));
            }
            execute(
                shared,
                MetaCommand::PutUser(UserDef {
                    name,
                    password_hash: crate::auth::hash_password(&password),
                    tags: Vec::new(),
                    hashing_algorithm: crate::auth::HashingAlgorithm::Sha256,
                    limits: json!({}),
                }),
            )
            .await?;
            Ok(Reply::Done)
        }
        CtlOp::DeleteUser { name } => {
            require_user(shared, &name)?;
            execute(shared, MetaCommand::DeleteUser { name }).await?;
            Ok(Reply::Done)
        }
        CtlOp::ChangePassword { name, password } => {
            let Some(mut user) = shared.with_meta(|m| m.users.get(&name).cloned()) else {
                return Err(user_missing(&name));
            };
            user.password_hash = crate::auth::hash_password(&password);
            user.hashing_algorithm = crate::auth::HashingAlgorithm::Sha256;
            execute(shared, MetaCommand::PutUser(user)).await?;
            Ok(Reply::Done)
        }
        CtlOp::SetUserTags { name, tags } => {
            let Some(mut user) = shared.with_meta(|m| m.users.get(&name).cloned()) else {
                return Err(user_missing(&name));
            };
            user.tags = tags;
            execute(shared, MetaCommand::PutUser(user)).await?;
            Ok(Reply::Done)
        }
        CtlOp::SetUserLimits { name, definition } => {
            let limits = parse_json(&definition)?;
            crate::policy::validate_limits(
                "user-limits",
                &["max-connections", "max-channels"],
                &limits,
            )
            .map_err(RemoteError::unavailable)?;
            let Some(mut user) = shared.with_meta(|m| m.users.get(&name).cloned()) else {
                return Err(user_missing(&name));
            };
            user.limits = limits;
            execute(shared, MetaCommand::PutUser(user)).await?;
            Ok(Reply::Done)
        }
        CtlOp::ClearUserLimits { name, key } => {
            let Some(mut user) = shared.with_meta(|m| m.users.get(&name).cloned()) else {
                return Err(user_missing(&name));
            };
            match (key.as_str(), user.limits.as_object_mut()) {
                ("all", _) | (_, None) => user.limits = json!({}),
                (k, Some(o)) => {
                    o.remove(k);
                }
            }
            execute(shared, MetaCommand::PutUser(user)).await?;
            Ok(Reply::Done)
        }
        CtlOp::ListUserLimits { name } => {
            let name = name.unwrap_or_else(|| shared.config.default_user.clone());
            let Some(limits) = shared.with_meta(|m| m.users.get(&name).map(|u| u.limits.clone()))
            else {
                return Err(user_missing(&name));
            };
            Ok(Reply::Message(limits.to_string()))
        }
        CtlOp::ListUsers => {
            let rows = shared.with_meta(|m| {
                m.users
                    .values()
                    .map(|u| vec![json!(u.name), json!(u.tags)])
                    .collect()
            });
            Ok(table(&["user", "tags"], rows))
        }
        CtlOp::AddVhost {
            name,
            description,
            tags,
            default_queue_type,
        } => {
            if name.is_empty() {
                return Err(RemoteError::usage("vhost name must not be empty"));
            }
            execute(shared, MetaCommand::AddVhost { name: name.clone() }).await?;
            if description.is_some() || tags.is_some() || default_queue_type.is_some() {
                let current = shared.with_meta(|m| {
                    m.vhosts
                        .get(&name)
                        .map(|v| v.metadata.clone())
                        .unwrap_or_default()
                });
                let metadata = VhostMetadata {
                    description: description.unwrap_or(current.description),
                    tags: tags.unwrap_or(current.tags),
                    default_queue_type: default_queue_type.or(current.default_queue_type),
                };
                execute(shared, MetaCommand::SetVhostMetadata { name, metadata }).await?;
            }
            Ok(Reply::Done)
        }
        CtlOp::DeleteVhost { name } => {
            if !shared.with_meta(|m| m.vhosts.contains_key(&name)) {
                return Err(RemoteError::data(format!(
                    "Virtual host '{name}' does not exist"
                )));
            }
            execute(shared, MetaCommand::DeleteVhost { name }).await?;
            Ok(Reply::Done)
        }
        CtlOp::ListVhosts { columns } => {
            let rows = shared.with_meta(|m| {
                m.vhosts
                    .iter()
                    .map(|(name, v)| {
                        obj(json!({
                            "name": name,
                            "description": v.metadata.description,
                            "tags": v.metadata.tags,
                            "default_queue_type": v.metadata.default_queue_type.clone().unwrap_or_else(|| "classic".into()),
                            "tracing": false,
                        }))
                    })
                    .collect()
            });
            Ok(Reply::Table(select(
                &columns,
                &["name"],
                &[
                    "name",
                    "description",
                    "tags",
                    "default_queue_type",
                    "tracing",
                ],
                rows,
            )?))
        }
        CtlOp::SetPermissions {
            vhost,
            user,
            configure,
            write,
            read,
        } => {
            require_user(shared, &user)?;
            require_vhost(shared, &vhost)?;
            check_patterns(&[&configure, &write, &read])?;
            execute(
                shared,
                MetaCommand::SetPermissions {
                    user,
                    vhost,
                    permission: Permission {
                        configure,
                        write,
                        read,
                    },
                },
            )
            .await?;
            Ok(Reply::Done)
        }
        CtlOp::ClearPermissions { vhost, user } => {
            require_user(shared, &user)?;
            require_vhost(shared, &vhost)?;
            execute(shared, MetaCommand::ClearPermissions { user, vhost }).await?;
            Ok(Reply::Done)
        }
        CtlOp::ListPermissions { vhost } => {
            require_vhost(shared, &vhost)?;
            let rows = shared.with_meta(|m| {
                m.permissions
                    .iter()
                    .filter(|((_, v), _)| *v == vhost)
                    .map(|((u, _), p)| {
                        vec![json!(u), json!(p.configure), json!(p.write), json!(p.read)]
                    })
                    .collect()
            });
            Ok(table(&["user", "configure", "write", "read"], rows))
        }
        CtlOp::ListUserPermissions { user } => {
            require_user(shared, &user)?;
            let rows = shared.with_meta(|m| {
                m.permissions
                    .iter()
                    .filter(|((u, _), _)| *u == user)
                    .map(|((_, v), p)| {
                        vec![json!(v), json!(p.configure), json!(p.write), json!(p.read)]
                    })
                    .collect()
            });
            Ok(table(&["vhost", "configure", "write", "read"], rows))
        }
        CtlOp::SetTopicPermissions {
            vhost,
            user,
            exchange,
            write,
            read,
        } => {
            require_user(shared, &user)?;
            require_vhost(shared, &vhost)?;
            check_patterns(&[&write, &read])?;
            execute(
                shared,
                MetaCommand::SetTopicPermissions {
                    user,
                    vhost,
                    exchange,
                    permission: TopicPermission { write, read },
                },
            )
            .await?;
            Ok(Reply::Done)
        }
        CtlOp::ClearTopicPermissions {
            vhost,
            user,
            exchange,
        } => {
            require_user(shared, &user)?;
            require_vhost(shared, &vhost)?;
            execute(
                shared,
                MetaCommand::ClearTopicPermissions {
                    user,
                    vhost,
                    exchange,
                },
            )
            .await?;
            Ok(Reply::Done)
        }
        CtlOp::ListTopicPermissions { vhost } => {
            require_vhost(shared, &vhost)?;
            let rows = shared.with_meta(|m| {
                m.topic_permissions
                    .iter()
                    .filter(|((_, v, _), _)| *v == vhost)
                    .map(|((u, _, x), p)| vec![json!(u), json!(x), json!(p.write), json!(p.read)])
                    .collect()
            });
            Ok(table(&["user", "exchange", "write", "read"], rows))
        }
        CtlOp::ListUserTopicPermissions { user } => {
            require_user(shared, &user)?;
            let rows = shared.with_meta(|m| {
                m.topic_permissions
                    .iter()
                    .filter(|((u, _, _), _)| *u == user)
                    .map(|((_, v, x), p)| vec![json!(v), json!(x), json!(p.write), json!(p.read)])
                    .collect()
            });
            Ok(table(&["vhost", "exchange", "write", "read"], rows))
        }
        CtlOp::ListQueues { vhost, columns } => list_queues(shared, &vhost, &columns).await,
        CtlOp::ListExchanges { vhost, columns } => {
            require_vhost(shared, &vhost)?;
            let rows = shared.with_meta(|m| {
                m.vhosts
                    .get(&vhost)
                    .map(|vh| {
                        vh.exchanges
                            .values()
                            .map(|x| {
                                obj(json!({
                                    "name": x.name,
                                    "vhost": vhost,
                                    "type": x.kind.name(),
                                    "durable": x.durable,
                                    "auto_delete": x.auto_delete,
                                    "internal": x.internal,
                                    "arguments": crate::definitions::table_to_json(&x.arguments),
                                }))
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            });
            Ok(Reply::Table(select(
                &columns,
                &["name", "type"],
                &[
                    "name",
                    "vhost",
                    "type",
                    "durable",
                    "auto_delete",
                    "internal",
                    "arguments",
                ],
                rows,
            )?))
        }
        CtlOp::ListBindings { vhost, columns } => {
            require_vhost(shared, &vhost)?;
            let rows = shared.with_meta(|m| {
                let Some(vh) = m.vhosts.get(&vhost) else {
                    return Vec::new();
                };
                let row = |source: &str, kind: &str, dest: &str, key: &str, args: Value| {
                    obj(json!({
                        "source_name": source,
                        "source_kind": "exchange",
                        "destination_name": dest,
                        "destination_kind": kind,
                        "routing_key": key,
                        "arguments": args,
                        "vhost": vhost,
                    }))
                };
                // The default exchange's implicit bindings come first, as in RabbitMQ.
                let mut rows: Vec<_> = vh
                    .queues
                    .keys()
                    .map(|q| row("", "queue", q, q, json!({})))
                    .collect();
                rows.extend(vh.bindings().map(|b| {
                    let kind = match b.destination_kind {
                        DestinationKind::Queue => "queue",
                        DestinationKind::Exchange => "exchange",
                    };
                    row(
                        &b.source,
                        kind,
                        &b.destination,
                        &b.routing_key,
                        crate::definitions::table_to_json(&b.arguments),
                    )
                }));
                rows
            });
            Ok(Reply::Table(select(
                &columns,
                &[
                    "source_name",
                    "source_kind",
                    "destination_name",
                    "destination_kind",
                    "routing_key",
                    "arguments",
                ],
                &[
                    "source_name",
                    "source_kind",
                    "destination_name",
                    "destination_kind",
                    "routing_key",
                    "arguments",
                    "vhost",
                ],
                rows,
            )?))
        }
        CtlOp::ListConnections { columns } => {
            let rows = shared
                .connections
                .list()
                .iter()
                .map(|c| connection_row(shared, c))
                .collect();
            Ok(Reply::Table(select(
                &columns,
                &["user", "peer_host", "peer_port", "state"],
                CONNECTION_KEYS,
                rows,
            )?))
        }
        CtlOp::ListChannels { columns } => {
            let mut rows = Vec::new();
            for c in shared.connections.list() {
                for ch in c.channels().await.unwrap_or_default() {
                    let name = format!("{} ({})", c.name, ch.number);
                    rows.push(obj(json!({
                        "name": name,
                        "pid": name,
                        "connection": c.name,
                        "number": ch.number,
                        "user": &*c.user,
                        "vhost": &*c.vhost,
                        "transactional": ch.transactional,
                        "confirm": ch.confirm,
                        "consumer_count": ch.consumers.len(),
                        "messages_unacknowledged": ch.messages_unacknowledged,
                        "prefetch_count": ch.prefetch_count,
                        "global_prefetch_count": ch.global_prefetch_count,
                    })));
                }
            }
            Ok(Reply::Table(select(
                &columns,
                &["pid", "user", "consumer_count", "messages_unacknowledged"],
                &[
                    "name",
                    "pid",
                    "connection",
                    "number",
                    "user",
                    "vhost",
                    "transactional",
                    "confirm",
                    "consumer_count",
                    "messages_unacknowledged",
                    "prefetch_count",
                    "global_prefetch_count",
                ],
                rows,
            )?))
        }
        CtlOp::ListConsumers { vhost, columns } => {
            require_vhost(shared, &vhost)?;
            let mut rows = Vec::new();
            for c in shared.connections.list() {
                for ch in c.channels().await.unwrap_or_default() {
                    let channel = format!("{} ({})", c.name, ch.number);
                    for cons in ch.consumers.iter().filter(|k| k.vhost == vhost) {
                        rows.push(obj(json!({
                            "queue_name": cons.queue,
                            "channel_pid": channel,
                            "consumer_tag": cons.consumer_tag,
                            "ack_required": cons.ack_required,
                            "prefetch_count": cons.prefetch_count,
                            "exclusive": cons.exclusive,
                            "active": true,
                            "activity_status": "up",
                            "arguments": [],
                        })));
                    }
                }
            }
            Ok(Reply::Table(select(
                &columns,
                &[
                    "queue_name",
                    "channel_pid",
                    "consumer_tag",
                    "ack_required",
                    "prefetch_count",
                    "active",
                    "arguments",
                ],
                &[
                    "queue_name",
                    "channel_pid",
                    "consumer_tag",
                    "ack_required",
                    "prefetch_count",
                    "exclusive",
                    "active",
                    "activity_status",
                    "arguments",
                ],
                rows,
            )?))
        }
        CtlOp::PurgeQueue { vhost, name } => {
            require_vhost(shared, &vhost)?;
            let q = shared
                .vhost(&vhost)
                .and_then(|v| v.queue(&name))
                .ok_or_else(|| queue_missing(&vhost, &name))?;
            let n = q.purge().await.map_err(|e| RemoteError::software(e.text))?;
            Ok(Reply::Message(format!("{n}")))
        }
        CtlOp::DeleteQueue {
            vhost,
            name,
            if_empty,
            if_unused,
        } => {
            require_vhost(shared, &vhost)?;
            let q = shared
                .vhost(&vhost)
                .and_then(|v| v.queue(&name))
                .ok_or_else(|| queue_missing(&vhost, &name))?;
            let n = q
                .check_delete(if_unused, if_empty)
                .await
                .map_err(|e| RemoteError::software(e.text))?;
            execute(shared, MetaCommand::DeleteQueue { vhost, name }).await?;
            Ok(Reply::Message(format!("{n}")))
        }
        CtlOp::CloseConnection { name, reason } => {
            let closed = shared
                .connections
                .close_where(|c| c.name == name || c.id.to_string() == name, &reason);
            if closed == 0 {
                return Err(RemoteError::unavailable(format!(
                    "connection '{name}' not found"
                )));
            }
            Ok(Reply::Done)
        }
        CtlOp::SetPolicy {
            vhost,
            name,
            pattern,
            definition,
            priority,
            apply_to,
            operator,
        } => {
            require_vhost(shared, &vhost)?;
            let definition = parse_json(&definition)?;
            let apply_to = crate::meta::ApplyTo::parse(&apply_to)
                .map_err(|e| RemoteError::unavailable(e.text))?;
            let def = crate::meta::PolicyDef {
                vhost,
                name,
                pattern,
                apply_to,
                priority,
                definition,
            };
            let cmd = if operator {
                MetaCommand::SetOperatorPolicy(def)
            } else {
                MetaCommand::SetPolicy(def)
            };
            shared
                .execute(cmd)
                .await
                .map_err(|e| RemoteError::unavailable(e.text))?;
            Ok(Reply::Done)
        }
        CtlOp::ClearPolicy {
            vhost,
            name,
            operator,
        } => {
            require_vhost(shared, &vhost)?;
            let cmd = if operator {
                MetaCommand::ClearOperatorPolicy { vhost, name }
            } else {
                MetaCommand::ClearPolicy { vhost, name }
            };
            shared
                .execute(cmd)
                .await
                .map_err(|e| RemoteError::unavailable(e.text))?;
            Ok(Reply::Done)
        }
        CtlOp::ListPolicies { vhost, operator } => {
            require_vhost(shared, &vhost)?;
            let rows = shared.with_meta(|m| {
                let Some(vh) = m.vhosts.get(&vhost) else {
                    return Vec::new();
                };
                let map = if operator {
                    &vh.operator_policies
                } else {
                    &vh.policies
                };
                map.values()
                    .map(|p| {
                        vec![
                            json!(p.def.vhost),
                            json!(p.def.name),
                            json!(p.def.pattern),
                            json!(p.def.apply_to.name()),
                            p.def.definition.clone(),
                            json!(p.def.priority),
                        ]
                    })
                    .collect()
            });
            Ok(table(
                &[
                    "vhost",
                    "name",
                    "pattern",
                    "apply-to",
                    "definition",
                    "priority",
                ],
                rows,
            ))
        }
        CtlOp::SetParameter {
            vhost,
            component,
            name,
            value,
        } => {
            require_vhost(shared, &vhost)?;
            let value = parse_json(&value)?;
            if component == "vhost-limits" {
                let keys = ["max-connections", "max-queues"];
                crate::policy::validate_limits(&component, &keys, &value)
                    .map_err(RemoteError::unavailable)?;
            }
            execute(
                shared,
                MetaCommand::SetParameter(crate::meta::ParameterDef {
                    vhost,
                    component,
                    name,
                    value,
                }),
            )
            .await?;
            Ok(Reply::Done)
        }
        CtlOp::ClearParameter {
            vhost,
            component,
            name,
        } => {
            require_vhost(shared, &vhost)?;
            shared
                .execute(MetaCommand::ClearParameter {
                    vhost,
                    component,
                    name,
                })
                .await
                .map_err(|e| RemoteError::unavailable(e.text))?;
            Ok(Reply::Done)
        }
        CtlOp::ShovelStatus => {
            let rows = shared
                .shovels
                .get()
                .map(|s| s.status())
                .unwrap_or_default()
                .into_iter()
                .map(|s| {
                    let reason = match &s.state {
                        warren_shovel::State::Terminated(r) => json!(r),
                        _ => Value::Null,
                    };
                    let time = s.last_error_time.and_then(|t| {
                        t.duration_since(std::time::UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_secs())
                    });
                    vec![
                        json!(s.name),
                        json!(s.vhost),
                        json!(s.kind.as_str()),
                        json!(s.state.name()),
                        reason,
                        json!(s.source),
                        json!(s.destination),
                        json!(s.last_error),
                        json!(time),
                        json!(s.reconnects),
                        json!(s.forwarded),
                        json!(s.in_flight),
                    ]
                })
                .collect();
            Ok(table(
                &[
                    "name",
                    "vhost",
                    "type",
                    "state",
                    "termination_reason",
                    "source",
                    "destination",
                    "last_error",
                    "last_error_time",
                    "reconnects",
                    "forwarded",
                    "in_flight",
                ],
                rows,
            ))
        }
        CtlOp::DeleteShovel { vhost, name } => {
            let not_found = || {
                RemoteError::unavailable(format!(
                    "Shovel with the given name was not found on the target node '{}' and / or virtual host '{vhost}'",
                    shared.config.node_name()
                ))
            };
            let kind = shared.shovels.get().and_then(|s| s.kind(&vhost, &name));
            match kind {
                Some(warren_shovel::Kind::Static) => {
                    if let Some(s) = shared.shovels.get() {
                        s.delete(&vhost, &name);
                    }
                }
                _ => {
                    shared
                        .execute(MetaCommand::ClearParameter {
                            vhost: vhost.clone(),
                            component: crate::shovel::COMPONENT.to_owned(),
                            name: name.clone(),
                        })
                        .await
                        .map_err(|_| not_found())?;
                }
            }
            Ok(Reply::Done)
        }
        CtlOp::RestartShovel { vhost, name } => {
            if shared
                .shovels
                .get()
                .is_some_and(|s| s.restart(&vhost, &name))
            {
                Ok(Reply::Done)
            } else {
                Err(RemoteError::unavailable(format!(
                    "Shovel with the given name was not found on the target node '{}' and / or virtual host '{vhost}'",
                    shared.config.node_name()
                )))
            }
        }
        CtlOp::ListParameters { vhost } => {
            require_vhost(shared, &vhost)?;
            let rows = shared.with_meta(|m| {
                m.vhosts
                    .get(&vhost)
                    .map(|vh| {
                        vh.parameters
                            .values()
                            .map(|p| vec![json!(p.component), json!(p.name), p.value.clone()])
                            .collect()
                    })
                    .unwrap_or_default()
            });
            Ok(table(&["component", "name", "value"], rows))
        }
        CtlOp::SetGlobalParameter { name, value } => {
            let value = parse_json(&value)?;
            execute(shared, MetaCommand::SetGlobalParameter { name, value }).await?;
            Ok(Reply::Done)
        }
        CtlOp::ClearGlobalParameter { name } => {
            shared
                .execute(MetaCommand::ClearGlobalParameter { name })
                .await
                .map_err(|e| RemoteError::unavailable(e.text))?;
            Ok(Reply::Done)
        }
        CtlOp::ListGlobalParameters => {
            let rows = shared.with_meta(|m| {
                m.global_parameters
                    .iter()
                    .map(|(n, v)| vec![json!(n), v.clone()])
                    .collect()
            });
            Ok(table(&["name", "value"], rows))
        }
        CtlOp::ExportDefinitions => {
            let defs = shared.with_meta(crate::definitions::export);
            let doc =
                serde_json::to_value(defs).map_err(|e| RemoteError::software(e.to_string()))?;
            Ok(Reply::Document(doc))
        }
        CtlOp::ImportDefinitions { definitions } => {
            let defs: crate::definitions::Definitions = serde_json::from_value(definitions)
                .map_err(|e| RemoteError::data(format!("not a definitions file: {e}")))?;
            let summary = crate::definitions::import(shared, defs)
                .await
                .map_err(RemoteError::data)?;
            Ok(Reply::Message(summary.to_string()))
        }
    }
}

/// Parses a JSON argument (a policy definition, a parameter value).
fn parse_json(text: &str) -> Result<Value, RemoteError> {
    serde_json::from_str(text)
        .map_err(|e| RemoteError::unavailable(format!("JSON decoding error. Reason: {e}")))
}

fn queue_missing(vhost: &str, name: &str) -> RemoteError {
    RemoteError::unavailable(format!("queue '{name}' in vhost '{vhost}' not found"))
}

const QUEUE_KEYS: &[&str] = &[
    "name",
    "vhost",
    "durable",
    "auto_delete",
    "exclusive",
    "arguments",
    "type",
    "state",
    "messages",
    "messages_ready",
    "messages_unacknowledged",
    "message_bytes_ready",
    "consumers",
    "node",
];

async fn list_queues(
    shared: &BrokerShared,
    vhost: &str,
    columns: &[String],
) -> Result<Reply, RemoteError> {
    require_vhost(shared, vhost)?;
    let defs: Vec<crate::meta::QueueDef> = shared.with_meta(|m| {
        m.vhosts
            .get(vhost)
            .map(|v| v.queues.values().cloned().collect())
            .unwrap_or_default()
    });
    let vh = shared.vhost(vhost);
    let mut rows = Vec::with_capacity(defs.len());
    for q in defs {
        let info = match vh.as_ref().and_then(|v| v.queue(&q.name)) {
            Some(h) => h.info().await.ok(),
            None => None,
        };
        let i = info.unwrap_or_default();
        let kind = crate::meta::string_arg(&q.arguments, "x-queue-type").unwrap_or("classic");
        rows.push(obj(json!({
            "name": q.name,
            "vhost": vhost,
            "durable": q.durable,
            "auto_delete": q.auto_delete,
            "exclusive": q.exclusive_owner.is_some(),
            "arguments": crate::definitions::table_to_json(&q.arguments),
            "type": kind,
            "state": if info.is_some() { "running" } else { "stopped" },
            "messages": i.messages_ready + i.messages_unacknowledged,
            "messages_ready": i.messages_ready,
            "messages_unacknowledged": i.messages_unacknowledged,
            "message_bytes_ready": i.message_bytes_ready,
            "consumers": i.consumers,
            "node": q.node.clone().unwrap_or_else(|| shared.identity.me.name.clone()),
        })));
    }
    Ok(Reply::Table(select(
        columns,
        &["name", "messages"],
        QUEUE_KEYS,
        rows,
    )?))
}

const CONNECTION_KEYS: &[&str] = &[
    "name",
    "id",
    "user",
    "vhost",
    "peer_host",
    "peer_port",
    "host",
    "port",
    "state",
    "protocol",
    "auth_mechanism",
    "ssl",
    "ssl_protocol",
    "ssl_cipher",
    "peer_cert_subject",
    "channels",
    "channel_max",
    "frame_max",
    "timeout",
    "connected_at",
    "client_properties",
    "node",
];

fn connection_row(
    shared: &BrokerShared,
    c: &crate::connection::registry::ConnectionEntry,
) -> serde_json::Map<String, Value> {
    let connected_at = c
        .connected_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let tls = c.tls.as_ref();
    obj(json!({
        "name": c.name,
        "id": c.id,
        "user": &*c.user,
        "vhost": &*c.vhost,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "host": c.local.ip().to_string(),
        "port": c.local.port(),
        "state": "running",
        "protocol": "AMQP 0-9-1",
        "auth_mechanism": c.auth_mechanism,
        "ssl": tls.is_some(),
        "ssl_protocol": tls.map(|t| t.protocol.clone()),
        "ssl_cipher": tls.map(|t| t.cipher.clone()),
        "peer_cert_subject": tls.and_then(|t| t.peer_cert.as_ref()).map(|p| p.subject.clone()),
        "channels": c.channels.load(std::sync::atomic::Ordering::Relaxed),
        "channel_max": c.channel_max,
        "frame_max": c.frame_max,
        "timeout": c.heartbeat,
        "connected_at": connected_at,
        "client_properties": c.client_properties,
        "node": shared.config.node_name(),
    }))
}

fn status(shared: &BrokerShared) -> Value {
    let listeners: Vec<Value> = shared
        .listeners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(p, a)| json!({"protocol": p, "address": a.to_string()}))
        .collect();
    let (vhosts, users, queues) = shared.with_meta(|m| {
        (
            m.vhosts.len(),
            m.users.len(),
            m.vhosts.values().map(|v| v.queues.len()).sum::<usize>(),
        )
    });
    let alarms = *shared.alarms.borrow();
    let mut raised = Vec::new();
    if alarms.disk {
        raised.push("disk");
    }
    if alarms.memory {
        raised.push("memory");
    }
    let free_disk = fs2::available_space(&shared.config.data_dir).ok();
    json!({
        "node": shared.config.node_name(),
        "product": "Warren",
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "running": !shared.shutdown.is_cancelled(),
        "uptime_seconds": shared.started_at.elapsed().as_secs(),
        "data_directory": shared.config.data_dir.display().to_string(),
        "listeners": listeners,
        "connections": shared.connections.count(),
        "vhosts": vhosts,
        "users": users,
        "queues": queues,
        "memory": {
            "rss_bytes": crate::alarm::resident_memory(),
            "high_watermark_bytes": shared.alarm_limits.memory_high_watermark.load(std::sync::atomic::Ordering::Relaxed),
        },
        "disk": {
            "free_bytes": free_disk,
            "free_limit_bytes": shared.alarm_limits.disk_free_limit.load(std::sync::atomic::Ordering::Relaxed),
        },
        "alarms": raised,
    })
}
