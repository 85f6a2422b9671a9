//! `warrenctl`: Warren's admin CLI, with rabbitmqctl's command names and flags. It speaks
//! to a node over its distribution port (`-n name@host[:port]`), proving it holds the
//! node's cookie by HMAC challenge-response; the cookie never crosses the wire.
//!
//! Exit codes are rabbitmqctl's: 0 ok, 64 usage, 65 bad data, 67 no such user, 69 node
//! unreachable (or refused us) or something missing, 70 internal error.

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use warren_broker::dist::ctl::{CtlOp, Reply, Table};
use warren_broker::dist::protocol::Role;
use warren_broker::dist::{auth, Client, ClientError};

/// Warren's admin CLI.
#[derive(Parser, Debug)]
#[command(name = "warrenctl", version, about, disable_help_subcommand = true)]
struct Cli {
    /// The node: name@host[:port] (default warren@<this host>; the port defaults to
    /// WARREN_DIST_PORT, else WARREN_NODE_PORT + 20000, else 25672).
    #[arg(short = 'n', long = "node", global = true)]
    node: Option<String>,
    /// The vhost commands act on.
    #[arg(short = 'p', long = "vhost", global = true, default_value = "/")]
    vhost: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Formatter::Table)]
    formatter: Formatter,
    /// Print no informational lines.
    #[arg(short = 'q', long, global = true)]
    quiet: bool,
    /// Print nothing but results and errors (implies --quiet).
    #[arg(short = 's', long, global = true)]
    silent: bool,
    /// Seconds to wait for the node.
    #[arg(short = 't', long, global = true)]
    timeout: Option<u64>,
    /// Mutual TLS on the distribution port: this client's certificate (PEM) [env:
    /// WARREN_DIST_TLS_CERTFILE].
    #[arg(long, global = true, env = "WARREN_DIST_TLS_CERTFILE")]
    dist_certfile: Option<PathBuf>,
    /// Its private key (PEM) [env: WARREN_DIST_TLS_KEYFILE].
    #[arg(long, global = true, env = "WARREN_DIST_TLS_KEYFILE")]
    dist_keyfile: Option<PathBuf>,
    /// The CA that signs the nodes' certificates (PEM) [env: WARREN_DIST_TLS_CACERTFILE].
    #[arg(long, global = true, env = "WARREN_DIST_TLS_CACERTFILE")]
    dist_cacertfile: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Formatter {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
}

#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
enum Command {
    /// Shows the node's status.
    Status,
    /// Waits until the node has started.
    AwaitStartup,
    /// Stops the node and waits until it has stopped.
    Stop,
    /// Creates a user (the password is read from stdin when not given).
    AddUser {
        username: String,
        password: Option<String>,
    },
    /// Deletes a user.
    DeleteUser { username: String },
    /// Changes a user's password (read from stdin when not given).
    ChangePassword {
        username: String,
        password: Option<String>,
    },
    /// Replaces a user's tags (none given: clears them).
    SetUserTags { username: String, tags: Vec<String> },
    /// Lists users.
    ListUsers,
    /// Sets a user's limits: a JSON object with max-connections and/or max-channels.
    SetUserLimits {
        username: String,
        definition: String,
    },
    /// Clears one of a user's limits (max-connections, max-channels) or all of them.
    ClearUserLimits { username: String, limit: String },
    /// Shows a user's limits (the default user's unless --user is given).
    ListUserLimits {
        #[arg(long)]
        user: Option<String>,
    },
    /// Creates a vhost.
    AddVhost {
        vhost: String,
        /// Description.
        #[arg(long)]
        description: Option<String>,
        /// Comma-separated tags.
        #[arg(long)]
        tags: Option<String>,
        /// The queue type for declarations that name none.
        #[arg(long = "default-queue-type")]
        default_queue_type: Option<String>,
    },
    /// Deletes a vhost with everything in it.
    DeleteVhost { vhost: String },
    /// Lists vhosts.
    ListVhosts { columns: Vec<String> },
    /// Sets a user's permissions in a vhost (-p).
    SetPermissions {
        username: String,
        conf: String,
        write: String,
        read: String,
    },
    /// Removes a user's permissions in a vhost (-p).
    ClearPermissions { username: String },
    /// Lists a vhost's permissions (-p).
    ListPermissions,
    /// Lists a user's permissions.
    ListUserPermissions { username: String },
    /// Sets a user's topic permissions for an exchange (-p).
    SetTopicPermissions {
        username: String,
        exchange: String,
        write: String,
        read: String,
    },
    /// Removes a user's topic permissions (-p), for one exchange or all.
    ClearTopicPermissions {
        username: String,
        exchange: Option<String>,
    },
    /// Lists a vhost's topic permissions (-p).
    ListTopicPermissions,
    /// Lists a user's topic permissions.
    ListUserTopicPermissions { username: String },
    /// Lists queues (-p) with the given columns.
    ListQueues { columns: Vec<String> },
    /// Lists exchanges (-p).
    ListExchanges { columns: Vec<String> },
    /// Lists bindings (-p).
    ListBindings { columns: Vec<String> },
    /// Lists connections.
    ListConnections { columns: Vec<String> },
    /// Lists channels.
    ListChannels { columns: Vec<String> },
    /// Lists consumers (-p).
    ListConsumers { columns: Vec<String> },
    /// Drops a queue's ready messages (-p).
    PurgeQueue { queue: String },
    /// Deletes a queue (-p).
    DeleteQueue {
        queue: String,
        /// Only if it is empty.
        #[arg(short = 'e', long = "if-empty")]
        if_empty: bool,
        /// Only if it has no consumers.
        #[arg(short = 'u', long = "if-unused")]
        if_unused: bool,
    },
    /// Closes a connection (by the name list_connections shows).
    CloseConnection {
        connection: String,
        explanation: String,
    },
    /// Creates or replaces a policy (-p).
    SetPolicy {
        name: String,
        pattern: String,
        /// The definition, a JSON object.
        definition: String,
        /// Among matching policies the highest priority wins.
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// queues, exchanges or all.
        #[arg(long = "apply-to", default_value = "all")]
        apply_to: String,
    },
    /// Removes a policy (-p).
    ClearPolicy { name: String },
    /// Lists a vhost's policies (-p).
    ListPolicies,
    /// Creates or replaces an operator policy (-p).
    SetOperatorPolicy {
        name: String,
        pattern: String,
        /// The definition, a JSON object.
        definition: String,
        /// Among matching policies the highest priority wins.
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// queues, exchanges or all.
        #[arg(long = "apply-to", default_value = "all")]
        apply_to: String,
    },
    /// Removes an operator policy (-p).
    ClearOperatorPolicy { name: String },
    /// Lists a vhost's operator policies (-p).
    ListOperatorPolicies,
    /// Sets a runtime parameter (-p).
    SetParameter {
        component: String,
        name: String,
        /// The value, JSON.
        value: String,
    },
    /// Removes a runtime parameter (-p).
    ClearParameter { component: String, name: String },
    /// Lists every shovel with its state and counters.
    ShovelStatus,
    /// Deletes a shovel (-p): clears a dynamic shovel's parameter, stops a static one.
    DeleteShovel { name: String },
    /// Restarts a shovel's link (-p).
    RestartShovel { name: String },
    /// Lists a vhost's runtime parameters (-p).
    ListParameters,
    /// Sets a global runtime parameter.
    SetGlobalParameter {
        name: String,
        /// The value, JSON.
        value: String,
    },
    /// Removes a global runtime parameter.
    ClearGlobalParameter { name: String },
    /// Lists the global runtime parameters.
    ListGlobalParameters,
    /// Sets a vhost's limits (-p), e.g. '{"max-connections": 100}' (stored; not enforced
    /// yet).
    SetVhostLimits { definition: String },
    /// Removes a vhost's limits (-p).
    ClearVhostLimits,
    /// Writes the node's definitions to FILE ("-": stdout) in RabbitMQ's JSON format.
    ExportDefinitions { file: String },
    /// Imports definitions from FILE ("-": stdin) in RabbitMQ's JSON format.
    ImportDefinitions { file: String },
    /// Stops the Warren application, leaving the node running (for join_cluster, reset...).
    StopApp,
    /// Starts the Warren application.
    StartApp,
    /// Resets this (stopped) node and makes it a member of NODE's cluster
    /// (name@host[:dist_port]); its own definitions and messages are deleted.
    JoinCluster {
        #[arg(value_name = "NODE")]
        target: String,
        /// Join as a RAM node (definitions in memory, no vote).
        #[arg(long)]
        ram: bool,
    },
    /// Shows the cluster's disc, RAM and running nodes.
    ClusterStatus,
    /// Removes NODE from the cluster.
    ForgetClusterNode {
        #[arg(value_name = "NODE")]
        target: String,
    },
    /// Makes this (stopped) node a disc or a RAM node.
    ChangeClusterNodeType {
        #[arg(value_parser = ["disc", "disk", "ram"])]
        node_type: String,
    },
    /// Deletes this (stopped) node's data and takes it out of its cluster.
    Reset,
    /// Like reset, without asking the cluster to remove the node (the others must then
    /// forget_cluster_node it).
    ForceReset,
    /// On a stopped disc node whose cluster lost a majority of disc nodes for good: the
    /// next start_app shrinks the cluster's disc nodes to this node and the reachable ones.
    ForceBoot,
}

/// A failure and its exit code.
struct Failure(u8, String);

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Remote(r) => Failure(u8::try_from(r.code).unwrap_or(70), r.message),
            other => Failure(69, other.to_string()),
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The node's name and the address of its distribution port.
fn resolve_node(node: Option<&str>) -> Result<(String, Vec<SocketAddr>), Failure> {
    let name = node
        .map(str::to_string)
        .or_else(|| env("WARREN_NODENAME"))
        .or_else(|| env("RABBITMQ_NODENAME"))
        .unwrap_or_else(|| "warren".to_string());
    let local = warren_broker::config::short_hostname();
    let (name, rest) = match name.split_once('@') {
        Some((n, r)) => (n.to_string(), r.to_string()),
        None => (name, local.clone()),
    };
    // A port after the host names the distribution port directly.
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| Failure(64, format!("-n {rest}: '{p}' is not a port number")))?;
            (h.trim_matches(['[', ']']).to_string(), Some(port))
        }
        _ => (rest.clone(), None),
    };
    let port = match port {
        Some(p) => p,
        None => dist_port_from_env()?,
    };
    let node_name = format!("{name}@{host}");
    let mut addrs = Vec::new();
    // The node listens on loopback by default: try it first for this host's names.
    if host == local || host == "localhost" {
        addrs.push(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(resolved) = (host.as_str(), port).to_socket_addrs() {
        for a in resolved {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
    }
    if addrs.is_empty() {
        return Err(Failure(
            69,
            format!("unable to resolve host '{host}' of node '{node_name}'"),
        ));
    }
    Ok((node_name, addrs))
}

fn dist_port_from_env() -> Result<u16, Failure> {
    let parse = |var: &str, v: String| {
        v.trim()
            .parse::<u16>()
            .map_err(|_| Failure(64, format!("{var}: '{v}' is not a port number")))
    };
    for var in ["WARREN_DIST_PORT", "RABBITMQ_DIST_PORT"] {
        if let Some(v) = env(var) {
            return parse(var, v);
        }
    }
    for var in ["WARREN_NODE_PORT", "RABBITMQ_NODE_PORT"] {
        if let Some(v) = env(var) {
            let p = parse(var, v)?;
            return p
                .checked_add(20000)
                .ok_or_else(|| Failure(64, format!("{var}: {p} + 20000 is not a port")));
        }
    }
    Ok(25672)
}

fn cookie_path() -> PathBuf {
    env("WARREN_COOKIE_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(auth::default_cookie_path)
}

/// The TLS client identity for a distribution port running mutual TLS, when given.
fn dist_tls(cli: &Cli) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, Failure> {
    match (&cli.dist_certfile, &cli.dist_keyfile, &cli.dist_cacertfile) {
        (None, None, None) => Ok(None),
        (Some(c), Some(k), Some(ca)) => {
            warren_broker::tls::install_crypto_provider();
            let cfg = warren_broker::config::DistTlsConfig {
                certfile: c.clone(),
                keyfile: k.clone(),
                cacertfile: ca.clone(),
            };
            warren_broker::dist::tls_connector(&cfg)
                .map(Some)
                .map_err(|e| Failure(64, e))
        }
        _ => Err(Failure(
            64,
            "--dist-certfile, --dist-keyfile and --dist-cacertfile go together".into(),
        )),
    }
}

async fn connect(
    node: &str,
    addrs: &[SocketAddr],
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Client, Failure> {
    let path = cookie_path();
    let mut cookie = auth::read_cookie(&path).map_err(|e| Failure(69, e.to_string()))?;
    if let Some(t) = tls {
        cookie = cookie.with_tls(t.clone());
    }
    let name = format!("warrenctl-{}", std::process::id());
    let mut last = None;
    for a in addrs {
        match Client::connect(*a, &cookie, Role::Ctl, &name).await {
            Ok(c) => return Ok(c),
            Err(ClientError::Connect(e)) => last = Some(e),
            Err(ClientError::Refused(r)) if r.contains("cookie") => {
                return Err(Failure(
                    69,
                    format!(
                        "unable to perform an operation on node '{node}': {r} (cookie file {})",
                        path.display()
                    ),
                ))
            }
            Err(ClientError::Refused(r)) => {
                return Err(Failure(
                    69,
                    format!("unable to perform an operation on node '{node}': {r}"),
                ))
            }
            Err(e) => {
                return Err(Failure(
                    69,
                    format!("unable to perform an operation on node '{node}': {e}"),
                ))
            }
        }
    }
    Err(Failure(
        69,
        format!(
            "unable to perform an operation on node '{node}': {}. Is the node running, and is its distribution port the one given?",
            last.unwrap_or_else(|| "no address".into())
        ),
    ))
}

fn read_password(given: Option<String>) -> Result<String, Failure> {
    if let Some(p) = given {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Failure(65, format!("failed to read the password from stdin: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(Value::is_string) => format!(
            "[{}]",
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

fn print_table(t: &Table, formatter: Formatter) {
    match formatter {
        Formatter::Json => {
            // rabbitmqctl's layout: one object per line, keys in column order.
            println!("[");
            for (i, r) in t.rows.iter().enumerate() {
                let fields: Vec<String> = t
                    .columns
                    .iter()
                    .zip(r)
                    .map(|(c, v)| format!("{}:{}", Value::String(c.clone()), v))
                    .collect();
                let sep = if i == 0 { "" } else { "," };
                println!("{sep}{{{}}}", fields.join(","));
            }
            println!("]");
        }
        Formatter::Table => {
            let cells: Vec<Vec<String>> = t
                .rows
                .iter()
                .map(|r| r.iter().map(cell).collect())
                .collect();
            let mut widths: Vec<usize> = t.columns.iter().map(|c| c.chars().count()).collect();
            for r in &cells {
                for (i, c) in r.iter().enumerate() {
                    if let Some(w) = widths.get_mut(i) {
                        *w = (*w).max(c.chars().count());
                    }
                }
            }
            let line = |row: &[String]| {
                let mut s = String::new();
                for (i, c) in row.iter().enumerate() {
                    if i + 1 == row.len() {
                        s.push_str(c);
                    } else {
                        let pad = widths[i].saturating_sub(c.chars().count());
                        s.push_str(c);
                        s.push_str(&" ".repeat(pad + 2));
                    }
                }
                s.trim_end().to_string()
            };
            println!("{}", line(&t.columns));
            for r in &cells {
                println!("{}", line(r));
            }
        }
    }
}

fn print_document(doc: &Value, formatter: Formatter) {
    match formatter {
        Formatter::Json => println!("{}", serde_json::to_string_pretty(doc).unwrap_or_default()),
        Formatter::Table => {
            if let Value::Object(m) = doc {
                for (k, v) in m {
                    match v {
                        Value::Object(inner) => {
                            println!("{k}:");
                            for (ik, iv) in inner {
                                println!("  {ik}: {}", cell(iv));
                            }
                        }
                        Value::Array(items) if items.iter().any(Value::is_object) => {
                            println!("{k}:");
                            for item in items {
                                let parts: Vec<String> = item
                                    .as_object()
                                    .map(|o| {
                                        o.iter().map(|(a, b)| format!("{a}: {}", cell(b))).collect()
                                    })
                                    .unwrap_or_else(|| vec![cell(item)]);
                                println!("  {}", parts.join(", "));
                            }
                        }
                        other => println!("{k}: {}", cell(other)),
                    }
                }
            } else {
                println!("{}", cell(doc));
            }
        }
    }
}

/// What to say before running a command (rabbitmqctl's informational line).
fn banner(cmd: &Command, vhost: &str, node: &str) -> Option<String> {
    Some(match cmd {
        Command::Status => format!("Status of node {node} ..."),
        Command::AwaitStartup => format!("Waiting for node {node} to start ..."),
        Command::Stop => format!("Stopping and halting node {node} ..."),
        Command::AddUser { username, .. } => format!("Adding user \"{username}\" ..."),
        Command::DeleteUser { username } => format!("Deleting user \"{username}\" ..."),
        Command::ChangePassword { username, .. } => {
            format!("Changing password for user \"{username}\" ...")
        }
        Command::SetUserTags { username, tags } => {
            format!(
                "Setting tags for user \"{username}\" to [{}] ...",
                tags.join(", ")
            )
        }
        Command::ListUsers => "Listing users ...".into(),
        Command::SetUserLimits {
            username,
            definition,
        } => format!("Setting user limits to \"{definition}\" for user \"{username}\" ..."),
        Command::ClearUserLimits { username, limit } => {
            if limit == "all" {
                format!("Clearing all limits for user \"{username}\" ...")
            } else {
                format!("Clearing \"{limit}\" limit for user \"{username}\" ...")
            }
        }
        Command::ListUserLimits { user } => format!(
            "Listing limits for user \"{}\" ...",
            user.as_deref().unwrap_or("guest")
        ),
        Command::AddVhost { vhost, .. } => format!("Adding vhost \"{vhost}\" ..."),
        Command::DeleteVhost { vhost } => format!("Deleting vhost \"{vhost}\" ..."),
        Command::ListVhosts { .. } => "Listing vhosts ...".into(),
        Command::SetPermissions { username, .. } => {
            format!("Setting permissions for user \"{username}\" in vhost \"{vhost}\" ...")
        }
        Command::ClearPermissions { username } => {
            format!("Clearing permissions for user \"{username}\" in vhost \"{vhost}\" ...")
        }
        Command::ListPermissions => format!("Listing permissions for vhost \"{vhost}\" ..."),
        Command::ListUserPermissions { username } => {
            format!("Listing permissions for user \"{username}\" ...")
        }
        Command::SetTopicPermissions { username, .. } => {
            format!("Setting topic permissions on \"{vhost}\" for user \"{username}\" ...")
        }
        Command::ClearTopicPermissions { username, .. } => {
            format!("Clearing topic permissions for user \"{username}\" in vhost \"{vhost}\" ...")
        }
        Command::ListTopicPermissions => {
            format!("Listing topic permissions for vhost \"{vhost}\" ...")
        }
        Command::ListUserTopicPermissions { username } => {
            format!("Listing topic permissions for user \"{username}\" ...")
        }
        Command::ListQueues { .. } => format!("Listing queues for vhost {vhost} ..."),
        Command::ListExchanges { .. } => format!("Listing exchanges for vhost {vhost} ..."),
        Command::ListBindings { .. } => format!("Listing bindings for vhost {vhost}..."),
        Command::ListConnections { .. } => "Listing connections ...".into(),
        Command::ListChannels { .. } => "Listing channels ...".into(),
        Command::ListConsumers { .. } => format!("Listing consumers in vhost {vhost} ..."),
        Command::PurgeQueue { queue } => {
            format!("Purging queue '{queue}' in vhost '{vhost}' ...")
        }
        Command::DeleteQueue { queue, .. } => {
            format!("Deleting queue '{queue}' on vhost '{vhost}' ...")
        }
        Command::CloseConnection { connection, .. } => {
            format!("Closing connection {connection}, reason: ...")
        }
        Command::SetPolicy {
            name,
            pattern,
            definition,
            priority,
            ..
        } => format!(
            "Setting policy \"{name}\" for pattern \"{pattern}\" to \"{definition}\" with priority \"{priority}\" for vhost \"{vhost}\" ..."
        ),
        Command::ClearPolicy { name } => {
            format!("Clearing policy \"{name}\" on vhost \"{vhost}\" ...")
        }
        Command::ListPolicies => format!("Listing policies for vhost \"{vhost}\" ..."),
        Command::SetOperatorPolicy {
            name,
            pattern,
            definition,
            priority,
            ..
        } => format!(
            "Setting operator policy override \"{name}\" for pattern \"{pattern}\" to \"{definition}\" with priority \"{priority}\" for vhost \"{vhost}\" ..."
        ),
        Command::ClearOperatorPolicy { name } => {
            format!("Clearing operator policy \"{name}\" on vhost \"{vhost}\" ...")
        }
        Command::ListOperatorPolicies => {
            format!("Listing operator policy overrides for vhost \"{vhost}\" ...")
        }
        Command::SetParameter {
            component, name, ..
        } => format!(
            "Setting runtime parameter \"{name}\" for component \"{component}\" ..."
        ),
        Command::ClearParameter { component, name } => format!(
            "Clearing runtime parameter \"{name}\" for component \"{component}\" on vhost \"{vhost}\" ..."
        ),
        Command::ListParameters => {
            format!("Listing runtime parameters for vhost \"{vhost}\" ...")
        }
        Command::ShovelStatus => "Shovel status on node ...".to_owned(),
        Command::DeleteShovel { name } => {
            format!("Deleting shovel {name} in vhost {vhost}")
        }
        Command::RestartShovel { name } => {
            format!("Restarting shovel {name} in vhost {vhost}")
        }
        Command::SetGlobalParameter { name, .. } => {
            format!("Setting global runtime parameter \"{name}\" ...")
        }
        Command::ClearGlobalParameter { name } => {
            format!("Clearing global runtime parameter \"{name}\" ...")
        }
        Command::ListGlobalParameters => "Listing global runtime parameters ...".into(),
        Command::SetVhostLimits { .. } => format!("Applying limits to vhost \"{vhost}\" ..."),
        Command::ClearVhostLimits => format!("Clearing vhost \"{vhost}\" limits ..."),
        Command::ExportDefinitions { file } => {
            if file == "-" {
                return None;
            }
            format!("Exporting definitions in JSON to a file at \"{file}\" ...")
        }
        Command::ImportDefinitions { file } => {
            format!("Importing definitions in JSON from a file at \"{file}\" ...")
        }
        Command::StopApp => format!("Stopping Warren application on node {node} ..."),
        Command::StartApp => format!("Starting node {node} ..."),
        Command::JoinCluster { target: other, .. } => {
            format!("Clustering node {node} with {other}")
        }
        Command::ClusterStatus => format!("Cluster status of node {node} ..."),
        Command::ForgetClusterNode { target: other } => {
            format!("Removing node {other} from the cluster")
        }
        Command::ChangeClusterNodeType { node_type } => {
            format!("Turning {node} into a {node_type} node")
        }
        Command::Reset | Command::ForceReset => format!("Resetting node {node} ..."),
        Command::ForceBoot => format!("Forcing boot for node {node} ..."),
    })
}

fn columns(v: &[String]) -> Vec<String> {
    // rabbitmqctl also accepts comma-separated columns.
    v.iter()
        .flat_map(|c| c.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// The request for a command, read from files or stdin where it needs them.
fn request(cmd: &Command, vhost: &str) -> Result<CtlOp, Failure> {
    let vhost = vhost.to_string();
    Ok(match cmd {
        Command::Status => CtlOp::Status,
        Command::AwaitStartup => CtlOp::AwaitStartup,
        Command::Stop => CtlOp::Stop,
        Command::AddUser { username, password } => CtlOp::AddUser {
            name: username.clone(),
            password: read_password(password.clone())?,
        },
        Command::DeleteUser { username } => CtlOp::DeleteUser {
            name: username.clone(),
        },
        Command::ChangePassword { username, password } => CtlOp::ChangePassword {
            name: username.clone(),
            password: read_password(password.clone())?,
        },
        Command::SetUserLimits {
            username,
            definition,
        } => CtlOp::SetUserLimits {
            name: username.clone(),
            definition: definition.clone(),
        },
        Command::ClearUserLimits { username, limit } => CtlOp::ClearUserLimits {
            name: username.clone(),
            key: limit.clone(),
        },
        Command::ListUserLimits { user } => CtlOp::ListUserLimits { name: user.clone() },
        Command::SetUserTags { username, tags } => CtlOp::SetUserTags {
            name: username.clone(),
            tags: tags
                .iter()
                .flat_map(|t| t.split(','))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        },
        Command::ListUsers => CtlOp::ListUsers,
        Command::AddVhost {
            vhost,
            description,
            tags,
            default_queue_type,
        } => CtlOp::AddVhost {
            name: vhost.clone(),
            description: description.clone(),
            tags: tags.as_ref().map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect()
            }),
            default_queue_type: default_queue_type.clone(),
        },
        Command::DeleteVhost { vhost } => CtlOp::DeleteVhost {
            name: vhost.clone(),
        },
        Command::ListVhosts { columns: c } => CtlOp::ListVhosts {
            columns: columns(c),
        },
        Command::SetPermissions {
            username,
            conf,
            write,
            read,
        } => CtlOp::SetPermissions {
            vhost,
            user: username.clone(),
            configure: conf.clone(),
            write: write.clone(),
            read: read.clone(),
        },
        Command::ClearPermissions { username } => CtlOp::ClearPermissions {
            vhost,
            user: username.clone(),
        },
        Command::ListPermissions => CtlOp::ListPermissions { vhost },
        Command::ListUserPermissions { username } => CtlOp::ListUserPermissions {
            user: username.clone(),
        },
        Command::SetTopicPermissions {
            username,
            exchange,
            write,
            read,
        } => CtlOp::SetTopicPermissions {
            vhost,
            user: username.clone(),
            exchange: exchange.clone(),
            write: write.clone(),
            read: read.clone(),
        },
        Command::ClearTopicPermissions { username, exchange } => CtlOp::ClearTopicPermissions {
            vhost,
            user: username.clone(),
            exchange: exchange.clone(),
        },
        Command::ListTopicPermissions => CtlOp::ListTopicPermissions { vhost },
        Command::ListUserTopicPermissions { username } => CtlOp::ListUserTopicPermissions {
            user: username.clone(),
        },
        Command::ListQueues { columns: c } => CtlOp::ListQueues {
            vhost,
            columns: columns(c),
        },
        Command::ListExchanges { columns: c } => CtlOp::ListExchanges {
            vhost,
            columns: columns(c),
        },
        Command::ListBindings { columns: c } => CtlOp::ListBindings {
            vhost,
            columns: columns(c),
        },
        Command::ListConnections { columns: c } => CtlOp::ListConnections {
            columns: columns(c),
        },
        Command::ListChannels { columns: c } => CtlOp::ListChannels {
            columns: columns(c),
        },
        Command::ListConsumers { columns: c } => CtlOp::ListConsumers {
            vhost,
            columns: columns(c),
        },
        Command::PurgeQueue { queue } => CtlOp::PurgeQueue {
            vhost,
            name: queue.clone(),
        },
        Command::DeleteQueue {
            queue,
            if_empty,
            if_unused,
        } => CtlOp::DeleteQueue {
            vhost,
            name: queue.clone(),
            if_empty: *if_empty,
            if_unused: *if_unused,
        },
        Command::CloseConnection {
            connection,
            explanation,
        } => CtlOp::CloseConnection {
            name: connection.clone(),
            reason: explanation.clone(),
        },
        Command::SetPolicy {
            name,
            pattern,
            definition,
            priority,
            apply_to,
        }
        | Command::SetOperatorPolicy {
            name,
            pattern,
            definition,
            priority,
            apply_to,
        } => CtlOp::SetPolicy {
            vhost,
            name: name.clone(),
            pattern: pattern.clone(),
            definition: definition.clone(),
            priority: *priority,
            apply_to: apply_to.clone(),
            operator: matches!(cmd, Command::SetOperatorPolicy { .. }),
        },
        Command::ClearPolicy { name } | Command::ClearOperatorPolicy { name } => {
            CtlOp::ClearPolicy {
                vhost,
                name: name.clone(),
                operator: matches!(cmd, Command::ClearOperatorPolicy { .. }),
            }
        }
        Command::ListPolicies => CtlOp::ListPolicies {
            vhost,
            operator: false,
        },
        Command::ListOperatorPolicies => CtlOp::ListPolicies {
            vhost,
            operator: true,
        },
        Command::SetParameter {
            component,
            name,
            value,
        } => CtlOp::SetParameter {
            vhost,
            component: component.clone(),
            name: name.clone(),
            value: value.clone(),
        },
        Command::ClearParameter { component, name } => CtlOp::ClearParameter {
            vhost,
            component: component.clone(),
            name: name.clone(),
        },
        Command::ListParameters => CtlOp::ListParameters { vhost },
        Command::ShovelStatus => CtlOp::ShovelStatus,
        Command::DeleteShovel { name } => CtlOp::DeleteShovel {
            vhost,
            name: name.clone(),
        },
        Command::RestartShovel { name } => CtlOp::RestartShovel {
            vhost,
            name: name.clone(),
        },
        Command::SetGlobalParameter { name, value } => CtlOp::SetGlobalParameter {
            name: name.clone(),
            value: value.clone(),
        },
        Command::ClearGlobalParameter { name } => {
            CtlOp::ClearGlobalParameter { name: name.clone() }
        }
        Command::ListGlobalParameters => CtlOp::ListGlobalParameters,
        // RabbitMQ keeps vhost limits as the parameter vhost-limits/limits.
        Command::SetVhostLimits { definition } => CtlOp::SetParameter {
            vhost,
            component: "vhost-limits".into(),
            name: "limits".into(),
            value: definition.clone(),
        },
        Command::ClearVhostLimits => CtlOp::ClearParameter {
            vhost,
            component: "vhost-limits".into(),
            name: "limits".into(),
        },
        Command::ExportDefinitions { .. } => CtlOp::ExportDefinitions,
        Command::ImportDefinitions { file } => {
            let mut text = String::new();
            if file == "-" {
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| Failure(65, format!("failed to read stdin: {e}")))?;
            } else {
                text = std::fs::read_to_string(file)
                    .map_err(|e| Failure(65, format!("failed to read {file}: {e}")))?;
            }
            let definitions: Value = serde_json::from_str(&text)
                .map_err(|e| Failure(65, format!("{file} is not JSON: {e}")))?;
            CtlOp::ImportDefinitions { definitions }
        }
        Command::StopApp => CtlOp::StopApp,
        Command::StartApp => CtlOp::StartApp,
        Command::JoinCluster { target, ram } => {
            let (name, addrs) = resolve_node(Some(target))?;
            CtlOp::JoinCluster {
                node: name,
                addr: addrs[0].to_string(),
                ram: *ram,
            }
        }
        Command::ClusterStatus => CtlOp::ClusterStatus,
        Command::ForgetClusterNode { target } => CtlOp::ForgetClusterNode {
            node: resolve_node(Some(target))?.0,
        },
        Command::ChangeClusterNodeType { node_type } => CtlOp::ChangeClusterNodeType {
            ram: node_type == "ram",
        },
        Command::Reset => CtlOp::Reset,
        Command::ForceReset => CtlOp::ForceReset,
        Command::ForceBoot => CtlOp::ForceBoot,
    })
}

/// rabbitmqctl's layout of `cluster_status`.
fn print_cluster_status(doc: &Value) {
    let list = |key: &str| -> Vec<String> {
        doc.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    println!("Basics\n");
    println!(
        "Cluster name: {}",
        doc.get("cluster_name")
            .and_then(Value::as_str)
            .unwrap_or("")
    );
    if let Some(l) = doc.get("leader").and_then(Value::as_str) {
        println!("Metadata leader: {l}");
    }
    for (title, key) in [
        ("Disk Nodes", "disk_nodes"),
        ("RAM Nodes", "ram_nodes"),
        ("Running Nodes", "running_nodes"),
    ] {
        let nodes = list(key);
        if key == "ram_nodes" && nodes.is_empty() {
            continue;
        }
        println!("\n{title}\n");
        for n in nodes {
            println!("{n}");
        }
    }
    println!("\nNetwork Partitions\n\n(none)");
    if let Some(w) = doc.get("waiting_for").and_then(Value::as_str) {
        println!("\nWaiting\n\n{w}");
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let quiet = cli.quiet || cli.silent || cli.formatter == Formatter::Json;
    let (node, addrs) = resolve_node(cli.node.as_deref())?;
    if !quiet {
        if let Some(b) = banner(&cli.command, &cli.vhost, &node) {
            println!("{b}");
        }
    }
    let op = request(&cli.command, &cli.vhost)?;
    let tls = dist_tls(&cli)?;
    let timeout = Duration::from_secs(cli.timeout.unwrap_or(match cli.command {
        Command::AwaitStartup => 300,
        _ => 60,
    }));
    let mut client = if matches!(cli.command, Command::AwaitStartup) {
        // Retry until the node accepts us; a refusal (wrong cookie) is final.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match connect(&node, &addrs, tls.as_ref()).await {
                Ok(c) => break c,
                Err(f)
                    if tokio::time::Instant::now() < deadline
                        && f.1.contains("Is the node running") =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(f) => return Err(f),
            }
        }
    } else {
        connect(&node, &addrs, tls.as_ref()).await?
    };
    let reply = client.call(op, timeout).await?;
    match (&cli.command, reply) {
        (Command::Stop, _) => {
            if !client.wait_closed(timeout).await {
                return Err(Failure(
                    69,
                    format!("node {node} did not stop within {}s", timeout.as_secs()),
                ));
            }
        }
        (Command::ExportDefinitions { file }, Reply::Document(doc)) => {
            let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
            if file == "-" {
                println!("{text}");
            } else {
                std::fs::write(file, text + "\n")
                    .map_err(|e| Failure(73, format!("failed to write {file}: {e}")))?;
            }
        }
        (Command::DeleteQueue { .. }, Reply::Message(n)) => {
            if !quiet {
                println!("Queue was successfully deleted with {n} messages");
            }
        }
        (Command::PurgeQueue { .. }, Reply::Message(_)) => {}
        (Command::ClusterStatus, Reply::Document(d)) if cli.formatter == Formatter::Table => {
            print_cluster_status(&d)
        }
        // The banner already said it.
        (
            Command::StopApp
            | Command::StartApp
            | Command::JoinCluster { .. }
            | Command::ForgetClusterNode { .. }
            | Command::ChangeClusterNodeType { .. }
            | Command::Reset,
            Reply::Message(_),
        ) => {}
        (_, Reply::Done) => {}
        (_, Reply::Message(m)) => {
            if !cli.silent {
                println!("{m}");
            }
        }
        (_, Reply::Table(t)) => print_table(&t, cli.formatter),
        (_, Reply::Document(d)) => print_document(&d, cli.formatter),
        (_, other) => println!("{other:?}"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: failed to start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => {
            let _ = std::io::stdout().flush();
            ExitCode::SUCCESS
        }
        Err(Failure(code, message)) => {
            eprintln!("Error: {message}");
            ExitCode::from(code)
        }
    }
}
