//! Node configuration: defaults, then the config file (`warren.toml`), then environment
//! variables (RabbitMQ's names accepted as aliases), then command-line flags.
//!
//! The file is TOML with RabbitMQ's key names where RabbitMQ has one. Unknown keys and bad
//! values are refused at start with a message naming the key; docs/config.md lists every
//! key with its default.

use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the AMQP listener binds to.
    pub bind: IpAddr,
    /// AMQP port; 0 picks a free one (tests).
    pub port: u16,
    /// Distribution port (CLI and, later, other nodes); None means the AMQP port + 20000
    /// (or a free one when the AMQP port is 0).
    pub dist_port: Option<u16>,
    /// HTTP port (management API, /metrics); None means the AMQP port + 10000 (or a free
    /// one when the AMQP port is 0).
    pub http_port: Option<u16>,
    /// The cookie file; None means `$HOME/.warren.cookie`.
    pub cookie_file: Option<PathBuf>,
    /// Directory for this node's data; empty means `./warren-data/<node name>`.
    pub data_dir: PathBuf,
    /// Largest message body accepted, in bytes (RabbitMQ's `max_message_size`).
    pub max_message_size: usize,
    /// Heartbeat interval the server proposes, in seconds (0 disables).
    pub heartbeat: u16,
    /// Largest frame the server accepts and proposes, in bytes.
    pub frame_max: u32,
    /// Most channels per connection the server allows.
    pub channel_max: u16,
    /// Most client connections at once.
    pub max_connections: usize,
    /// The vhost created at first start.
    pub default_vhost: String,
    /// The default user's name, created at first start with full permissions on the
    /// default vhost.
    pub default_user: String,
    /// The default user's password.
    pub default_pass: String,
    /// The default user's tags.
    pub default_user_tags: Vec<String>,
    /// Users that may only connect from loopback addresses (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
    /// The client addresses that count as loopback for `loopback_users`; None means
    /// 127.0.0.0/8 and ::1.
    pub loopback_addresses: Option<Vec<IpAddr>>,
    /// SASL mechanisms offered, in order (EXTERNAL only on TLS connections with a client
    /// certificate).
    pub auth_mechanisms: Vec<AuthMechanism>,
    /// Which part of a client certificate names the user for EXTERNAL.
    pub ssl_cert_login_from: CertLoginFrom,
    /// How long a client has to complete the handshake, in seconds.
    pub handshake_timeout_secs: u64,
    /// The node name (`name@host`); derived from the host name when unset.
    pub node_name: Option<String>,
    /// Free disk space, in bytes, under which publishers are blocked (RabbitMQ's
    /// `disk_free_limit`).
    pub disk_free_limit: u64,
    /// Resident memory above which publishers are blocked: a fraction of physical memory
    /// (RabbitMQ's `vm_memory_high_watermark`).
    pub memory_high_watermark: f64,
    /// How often the alarms check disk and memory.
    pub alarm_interval_ms: u64,
    /// Publisher confirms for persistent messages in durable queues wait for an fsync
    /// (group commit: one fsync for everything that arrived meanwhile). When false they wait
    /// only for the write to the OS, which survives a crash of the process but not of the
    /// machine.
    pub confirm_sync: bool,
    /// How long a consumer may keep a delivery unacked before it is cancelled and its
    /// unacked messages requeued, in ms (RabbitMQ's `consumer_timeout`; 0 disables). Queues
    /// override it with `x-consumer-timeout` or a `consumer-timeout` policy.
    pub consumer_timeout_ms: u64,
    /// A definitions file (RabbitMQ's JSON format) imported at every start.
    pub load_definitions: Option<PathBuf>,
    /// Static shovels (`[[shovel]]` tables: `name`, `vhost` and RabbitMQ's shovel keys),
    /// checked when the file is read.
    pub shovels: Vec<serde_json::Value>,
    /// The AMQPS listener, when configured.
    pub tls: Option<TlsConfig>,
    /// Log filter (tracing `EnvFilter` syntax); `WARREN_LOG` overrides it.
    pub log_level: String,
    /// Cluster members this node reaches at another address than the one they advertise
    /// (`name@host` to `host:port` of their distribution port): NAT, port forwarding.
    pub cluster_peer_addresses: std::collections::BTreeMap<String, String>,
    /// The members a fresh node joins at its first start (RabbitMQ's classic config peer
    /// discovery): `name@host` or `name@host:dist_port`, tried in order.
    pub cluster_nodes: Vec<String>,
    /// The type a fresh node joins `cluster_nodes` as: a RAM node (learner) when true.
    pub cluster_node_ram: bool,
    /// How many times a fresh node tries `cluster_nodes` before it starts standalone
    /// (RabbitMQ's `cluster_formation.discovery_retry_limit`).
    pub discovery_retry_limit: u32,
    /// The pause between those tries, in ms (`cluster_formation.discovery_retry_interval`).
    pub discovery_retry_interval_ms: u64,
    /// Mutual TLS on the distribution port, when configured.
    pub dist_tls: Option<DistTlsConfig>,
}

/// Mutual TLS on the distribution port: every node and warrenctl presents a certificate
/// signed by the CA, and verifies the other end's against it.
#[derive(Debug, Clone)]
pub struct DistTlsConfig {
    /// This node's certificate chain (PEM).
    pub certfile: PathBuf,
    /// This node's private key (PEM).
    pub keyfile: PathBuf,
    /// The CA that signs every node's (and warrenctl's) certificate (PEM).
    pub cacertfile: PathBuf,
}

/// The AMQPS listener's settings (RabbitMQ's `listeners.ssl` and `ssl_options`).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Address to bind; None means the AMQP listener's.
    pub bind: Option<IpAddr>,
    /// Port; 0 picks a free one.
    pub port: u16,
    /// The server's certificate chain (PEM).
    pub certfile: PathBuf,
    /// The server's private key (PEM).
    pub keyfile: PathBuf,
    /// CA certificates that client certificates are verified against (PEM).
    pub cacertfile: Option<PathBuf>,
    /// Whether client certificates are requested and verified.
    pub verify: TlsVerify,
    /// With verify_peer: refuse clients that present no certificate.
    pub fail_if_no_peer_cert: bool,
    /// TLS versions offered.
    pub versions: Vec<TlsVersion>,
}

/// RabbitMQ's `ssl_options.verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsVerify {
    /// Request a client certificate and verify it against the CA.
    VerifyPeer,
    /// Do not request a client certificate.
    VerifyNone,
}

/// A TLS version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[serde(rename = "tlsv1.2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "tlsv1.3")]
    Tls13,
}

/// A SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthMechanism {
    /// `\0user\0password`.
    #[serde(rename = "PLAIN")]
    Plain,
    /// A field table with LOGIN and PASSWORD.
    #[serde(rename = "AMQPLAIN")]
    Amqplain,
    /// The TLS client certificate names the user.
    #[serde(rename = "EXTERNAL")]
    External,
}

impl AuthMechanism {
    /// The name sent in `connection.start`.
    pub fn name(self) -> &'static str {
        match self {
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::Amqplain => "AMQPLAIN",
            AuthMechanism::External => "EXTERNAL",
        }
    }
}

/// RabbitMQ's `ssl_cert_login_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertLoginFrom {
    /// The whole subject, `CN=alice,O=Example,C=GB` (RabbitMQ's default).
    DistinguishedName,
    /// The subject's common name.
    CommonName,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 5672,
            dist_port: None,
            http_port: None,
            cookie_file: None,
            data_dir: PathBuf::new(),
            max_message_size: 128 * 1024 * 1024,
            heartbeat: 60,
            frame_max: 131_072,
            channel_max: 2047,
            max_connections: 65_536,
            default_vhost: "/".into(),
            default_user: "guest".into(),
            default_pass: "guest".into(),
            default_user_tags: vec!["administrator".into()],
            loopback_users: vec!["guest".into()],
            loopback_addresses: None,
            auth_mechanisms: vec![AuthMechanism::Plain, AuthMechanism::Amqplain],
            ssl_cert_login_from: CertLoginFrom::DistinguishedName,
            handshake_timeout_secs: 10,
            node_name: None,
            disk_free_limit: 50_000_000,
            memory_high_watermark: 0.4,
            alarm_interval_ms: 1000,
            confirm_sync: true,
            consumer_timeout_ms: crate::policy::DEFAULT_CONSUMER_TIMEOUT_MS,
            load_definitions: None,
            shovels: Vec::new(),
            tls: None,
            log_level: "info".into(),
            cluster_peer_addresses: Default::default(),
            cluster_nodes: Vec::new(),
            cluster_node_ram: false,
            discovery_retry_limit: 10,
            discovery_retry_interval_ms: 500,
            dist_tls: None,
        }
    }
}

impl Config {
    /// Defaults for an in-process test broker: ephemeral ports on loopback, the cookie in
    /// the data directory.
    pub fn for_tests(data_dir: &Path) -> Config {
        Config {
            port: 0,
            dist_port: Some(0),
            http_port: Some(0),
            cookie_file: Some(data_dir.join(".warren.cookie")),
            data_dir: data_dir.to_path_buf(),
            alarm_interval_ms: 100,
            ..Config::default()
        }
    }

    /// The node's name, `warren@<short hostname>` unless configured.
    pub fn node_name(&self) -> String {
        if let Some(n) = &self.node_name {
            return n.clone();
        }
        format!("warren@{}", short_hostname())
    }

    /// The distribution port: configured, or the AMQP port + 20000 (a free one when the
    /// AMQP port is 0). An AMQP port above 45535 has no default distribution port: it
    /// must be configured.
    pub fn dist_port(&self) -> Result<u16, ConfigError> {
        match self.dist_port {
            Some(p) => Ok(p),
            None if self.port == 0 => Ok(0),
            None => self.port.checked_add(20000).ok_or_else(|| {
                ConfigError(format!(
                    "key `dist_port`: the default (AMQP port {} + 20000) is not a port; set dist_port, --dist-port or WARREN_DIST_PORT",
                    self.port
                ))
            }),
        }
    }

    /// The HTTP port: configured, or the AMQP port + 10000 (a free one when the AMQP port
    /// is 0). An AMQP port above 55535 has no default HTTP port: it must be configured.
    pub fn http_port(&self) -> Result<u16, ConfigError> {
        match self.http_port {
            Some(p) => Ok(p),
            None if self.port == 0 => Ok(0),
            None => self.port.checked_add(10000).ok_or_else(|| {
                ConfigError(format!(
                    "key `http_port`: the default (AMQP port {} + 10000) is not a port; set http_port, --http-port or WARREN_HTTP_PORT",
                    self.port
                ))
            }),
        }
    }

    /// The cookie file: configured, or `$HOME/.warren.cookie`.
    pub fn cookie_file(&self) -> PathBuf {
        self.cookie_file
            .clone()
            .unwrap_or_else(crate::dist::auth::default_cookie_path)
    }

    /// True when `ip` counts as a loopback address for `loopback_users`.
    pub fn is_loopback(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match &self.loopback_addresses {
            Some(list) => list.contains(&ip),
            None => ip.is_loopback(),
        }
    }
}

/// The host name up to its first dot.
pub fn short_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .split('.')
                .next()
                .unwrap_or("localhost")
                .to_string()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// A configuration that could not be used; the message names the key or variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The config file as written: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_name: Option<String>,
    data_dir: Option<PathBuf>,
    bind: Option<IpAddr>,
    port: Option<u16>,
    dist_port: Option<u16>,
    http_port: Option<u16>,
    cookie_file: Option<PathBuf>,
    max_connections: Option<usize>,
    heartbeat: Option<u16>,
    frame_max: Option<u32>,
    channel_max: Option<u16>,
    max_message_size: Option<usize>,
    handshake_timeout: Option<u64>,
    default_vhost: Option<String>,
    default_user: Option<String>,
    default_pass: Option<String>,
    default_user_tags: Option<Vec<String>>,
    loopback_users: Option<Vec<String>>,
    loopback_addresses: Option<Vec<IpAddr>>,
    auth_mechanisms: Option<Vec<AuthMechanism>>,
    ssl_cert_login_from: Option<CertLoginFrom>,
    disk_free_limit: Option<u64>,
    vm_memory_high_watermark: Option<f64>,
    confirm_sync: Option<bool>,
    consumer_timeout: Option<u64>,
    load_definitions: Option<PathBuf>,
    log_level: Option<String>,
    tls: Option<FileTls>,
    shovel: Option<Vec<serde_json::Value>>,
    cluster_peer_addresses: Option<std::collections::BTreeMap<String, String>>,
    cluster_nodes: Option<Vec<String>>,
    cluster_node_type: Option<NodeType>,
    cluster_formation: Option<FileFormation>,
    dist_tls: Option<FileDistTls>,
}

/// A node type as the config file names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum NodeType {
    #[serde(alias = "disk")]
    Disc,
    Ram,
}

/// RabbitMQ's `cluster_formation.*` keys, as a table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormation {
    peer_discovery_backend: Option<String>,
    node_type: Option<NodeType>,
    discovery_retry_limit: Option<u32>,
    discovery_retry_interval: Option<u64>,
    classic_config: Option<FileClassicConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClassicConfig {
    nodes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDistTls {
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
    cacertfile: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    bind: Option<IpAddr>,
    port: Option<u16>,
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
    cacertfile: Option<PathBuf>,
    verify: Option<TlsVerify>,
    fail_if_no_peer_cert: Option<bool>,
    versions: Option<Vec<TlsVersion>>,
}

/// The largest message size RabbitMQ allows (512 MiB).
pub const MAX_MESSAGE_SIZE_LIMIT: usize = 512 * 1024 * 1024;

impl Config {
    /// Applies a config file's text; `path` is named in errors, and relative paths in the
    /// file are read from the file's directory.
    pub fn apply_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let err = |key: &str, msg: &str| {
            ConfigError(format!(
                "config file {}: key `{key}`: {msg}",
                path.display()
            ))
        };
        let de = toml::Deserializer::parse(text).map_err(|e| {
            ConfigError(format!(
                "config file {}: {}",
                path.display(),
                e.to_string().trim_end()
            ))
        })?;
        let file: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.inner().message().trim_end().to_string();
            if key == "." || key.is_empty() {
                ConfigError(format!("config file {}: {inner}", path.display()))
            } else {
                err(&key, &inner)
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        if let Some(v) = file.node_name {
            check_node_name(&v).map_err(|m| err("node_name", &m))?;
            self.node_name = Some(v);
        }
        if let Some(v) = file.data_dir {
            self.data_dir = resolve(v);
        }
        if let Some(v) = file.bind {
            self.bind = v;
        }
        if let Some(v) = file.port {
            self.port = v;
        }
        if let Some(v) = file.http_port {
            self.http_port = Some(v);
        }
        if let Some(v) = file.dist_port {
            self.dist_port = Some(v);
        }
        if let Some(v) = file.cookie_file {
            self.cookie_file = Some(resolve(v));
        }
        if let Some(v) = file.max_connections {
            if v == 0 {
                return Err(err("max_connections", "must be at least 1"));
            }
            self.max_connections = v;
        }
        if let Some(v) = file.heartbeat {
            self.heartbeat = v;
        }
        if let Some(v) = file.frame_max {
            if v < warren_amqp::frame::FRAME_MIN_SIZE {
                return Err(err(
                    "frame_max",
                    &format!("must be at least {}", warren_amqp::frame::FRAME_MIN_SIZE),
                ));
            }
            self.frame_max = v;
        }
        if let Some(v) = file.channel_max {
            if v == 0 {
                return Err(err("channel_max", "must be at least 1"));
            }
            self.channel_max = v;
        }
        if let Some(v) = file.max_message_size {
            if v == 0 || v > MAX_MESSAGE_SIZE_LIMIT {
                return Err(err(
                    "max_message_size",
                    &format!("must be between 1 and {MAX_MESSAGE_SIZE_LIMIT} bytes"),
                ));
            }
            self.max_message_size = v;
        }
        if let Some(ms) = file.handshake_timeout {
            if ms == 0 {
                return Err(err("handshake_timeout", "must be at least 1 ms"));
            }
            self.handshake_timeout_secs = ms.div_ceil(1000);
        }
        if let Some(v) = file.default_vhost {
            if v.is_empty() {
                return Err(err("default_vhost", "must not be empty"));
            }
            self.default_vhost = v;
        }
        if let Some(v) = file.default_user {
            if v.is_empty() {
                return Err(err("default_user", "must not be empty"));
            }
            self.default_user = v;
        }
        if let Some(v) = file.default_pass {
            self.default_pass = v;
        }
        if let Some(v) = file.default_user_tags {
            self.default_user_tags = v;
        }
        if let Some(v) = file.loopback_users {
            self.loopback_users = v;
        }
        if let Some(v) = file.loopback_addresses {
            self.loopback_addresses = Some(v);
        }
        if let Some(v) = file.auth_mechanisms {
            if v.is_empty() {
                return Err(err("auth_mechanisms", "must name at least one mechanism"));
            }
            self.auth_mechanisms = v;
        }
        if let Some(v) = file.ssl_cert_login_from {
            self.ssl_cert_login_from = v;
        }
        if let Some(v) = file.disk_free_limit {
            self.disk_free_limit = v;
        }
        if let Some(v) = file.vm_memory_high_watermark {
            check_watermark(v).map_err(|m| err("vm_memory_high_watermark", &m))?;
            self.memory_high_watermark = v;
        }
        if let Some(v) = file.confirm_sync {
            self.confirm_sync = v;
        }
        if let Some(v) = file.consumer_timeout {
            self.consumer_timeout_ms = v;
        }
        if let Some(v) = file.load_definitions {
            self.load_definitions = Some(resolve(v));
        }
        if let Some(shovels) = file.shovel {
            let mut names = std::collections::HashSet::new();
            for t in &shovels {
                let def = warren_shovel::parse_table(t).map_err(|e| err("shovel", &e.0))?;
                if !names.insert((def.vhost.clone(), def.name.clone())) {
                    return Err(err(
                        "shovel",
                        &format!("shovel '{}' is defined twice", def.name),
                    ));
                }
            }
            self.shovels = shovels;
        }
        if let Some(v) = file.log_level {
            tracing_subscriber::EnvFilter::try_new(&v)
                .map_err(|e| err("log_level", &e.to_string()))?;
            self.log_level = v;
        }
        if let Some(peers) = file.cluster_peer_addresses {
            for (name, addr) in &peers {
                let key = format!("cluster_peer_addresses.{name}");
                if !name.contains('@') {
                    return Err(err(
                        &key,
                        &format!("'{name}' is not a node name (expected name@host)"),
                    ));
                }
                check_node_name(name).map_err(|m| err(&key, &m))?;
                check_peer_address(addr).map_err(|m| err(&key, &m))?;
            }
            self.cluster_peer_addresses = peers;
        }
        let mut nodes = file.cluster_nodes;
        let mut node_type = file.cluster_node_type;
        if let Some(f) = file.cluster_formation {
            if let Some(b) = f.peer_discovery_backend {
                let known = ["classic_config", "rabbit_peer_discovery_classic_config"];
                if !known.contains(&b.as_str()) {
                    return Err(err(
                        "cluster_formation.peer_discovery_backend",
                        &format!("'{b}' is not supported (only classic_config)"),
                    ));
                }
            }
            if let Some(c) = f.classic_config.and_then(|c| c.nodes) {
                if nodes.is_some() {
                    return Err(err(
                        "cluster_formation.classic_config.nodes",
                        "cluster_nodes is set too; use one of them",
                    ));
                }
                nodes = Some(c);
            }
            node_type = f.node_type.or(node_type);
            if let Some(v) = f.discovery_retry_limit {
                self.discovery_retry_limit = v;
            }
            if let Some(v) = f.discovery_retry_interval {
                self.discovery_retry_interval_ms = v;
            }
        }
        if let Some(list) = nodes {
            for n in &list {
                parse_member(n).map_err(|m| err("cluster_nodes", &m))?;
            }
            self.cluster_nodes = list;
        }
        if let Some(t) = node_type {
            self.cluster_node_ram = t == NodeType::Ram;
        }
        if let Some(t) = file.dist_tls {
            let need = |v: Option<PathBuf>, key: &str| {
                v.map(resolve).ok_or_else(|| {
                    err(
                        &format!("dist_tls.{key}"),
                        "missing (mutual TLS on the distribution port needs certfile, keyfile and cacertfile)",
                    )
                })
            };
            self.dist_tls = Some(DistTlsConfig {
                certfile: need(t.certfile, "certfile")?,
                keyfile: need(t.keyfile, "keyfile")?,
                cacertfile: need(t.cacertfile, "cacertfile")?,
            });
        }
        if let Some(t) = file.tls {
            let certfile = t
                .certfile
                .ok_or_else(|| err("tls.certfile", "missing (the [tls] listener needs it)"))?;
            let keyfile = t
                .keyfile
                .ok_or_else(|| err("tls.keyfile", "missing (the [tls] listener needs it)"))?;
            let verify = t.verify.unwrap_or(TlsVerify::VerifyNone);
            if verify == TlsVerify::VerifyPeer && t.cacertfile.is_none() {
                return Err(err(
                    "tls.cacertfile",
                    "missing (verify = \"verify_peer\" needs the CA that signs client certificates)",
                ));
            }
            let versions = t
                .versions
                .unwrap_or_else(|| vec![TlsVersion::Tls13, TlsVersion::Tls12]);
            if versions.is_empty() {
                return Err(err("tls.versions", "must name at least one version"));
            }
            self.tls = Some(TlsConfig {
                bind: t.bind,
                port: t.port.unwrap_or(5671),
                certfile: resolve(certfile),
                keyfile: resolve(keyfile),
                cacertfile: t.cacertfile.map(resolve),
                verify,
                fail_if_no_peer_cert: t.fail_if_no_peer_cert.unwrap_or(false),
                versions,
            });
        }
        Ok(())
    }

    /// Applies environment variables; `var` looks one up (std::env::var in the server).
    /// Warren's names win over RabbitMQ's.
    pub fn apply_env(&mut self, var: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |name: &'static str, alias: Option<&'static str>| {
            var(name)
                .map(|v| (name, v))
                .or_else(|| alias.and_then(|a| var(a).map(|v| (a, v))))
        };
        let port = |(name, v): (&str, String)| {
            v.trim().parse::<u16>().map_err(|_| {
                ConfigError(format!(
                    "environment variable {name}: not a port number: '{v}'"
                ))
            })
        };
        if let Some(v) = get("WARREN_NODE_PORT", Some("RABBITMQ_NODE_PORT")) {
            self.port = port(v)?;
        }
        if let Some(v) = get("WARREN_HTTP_PORT", None) {
            self.http_port = Some(port(v)?);
        }
        if let Some(v) = get("WARREN_DIST_PORT", Some("RABBITMQ_DIST_PORT")) {
            self.dist_port = Some(port(v)?);
        }
        if let Some((name, v)) = get("WARREN_NODENAME", Some("RABBITMQ_NODENAME")) {
            check_node_name(&v)
                .map_err(|m| ConfigError(format!("environment variable {name}: {m}")))?;
            self.node_name = Some(v);
        }
        if let Some((_, v)) = get("WARREN_DATA_DIR", Some("RABBITMQ_MNESIA_DIR")) {
            self.data_dir = PathBuf::from(v);
        }
        if let Some((name, v)) = get("WARREN_BIND", Some("RABBITMQ_NODE_IP_ADDRESS")) {
            self.bind = v.trim().parse().map_err(|_| {
                ConfigError(format!(
                    "environment variable {name}: not an IP address: '{v}'"
                ))
            })?;
        }
        if let Some((_, v)) = get("WARREN_COOKIE_FILE", None) {
            self.cookie_file = Some(PathBuf::from(v));
        }
        if let Some((_, v)) = get("WARREN_DEFAULT_USER", Some("RABBITMQ_DEFAULT_USER")) {
            self.default_user = v;
        }
        if let Some((_, v)) = get("WARREN_DEFAULT_PASS", Some("RABBITMQ_DEFAULT_PASS")) {
            self.default_pass = v;
        }
        if let Some((_, v)) = get("WARREN_DEFAULT_VHOST", Some("RABBITMQ_DEFAULT_VHOST")) {
            self.default_vhost = v;
        }
        if let Some((name, v)) = get("WARREN_CLUSTER_NODES", None) {
            self.set_cluster_nodes(&v)
                .map_err(|m| ConfigError(format!("environment variable {name}: {m}")))?;
        }
        if let Some((name, v)) = get("WARREN_CLUSTER_NODE_TYPE", None) {
            self.set_cluster_node_type(&v)
                .map_err(|m| ConfigError(format!("environment variable {name}: {m}")))?;
        }
        Ok(())
    }

    /// Sets `cluster_nodes` from a comma- or space-separated list (the environment
    /// variable's and the flag's form).
    pub fn set_cluster_nodes(&mut self, list: &str) -> Result<(), String> {
        let nodes: Vec<String> = list
            .split([',', ' '])
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect();
        for n in &nodes {
            parse_member(n)?;
        }
        self.cluster_nodes = nodes;
        Ok(())
    }

    /// Sets `cluster_node_type` from `disc` or `ram`.
    pub fn set_cluster_node_type(&mut self, t: &str) -> Result<(), String> {
        self.cluster_node_ram = match t.trim() {
            "disc" | "disk" => false,
            "ram" => true,
            other => return Err(format!("'{other}' is not a node type (disc or ram)")),
        };
        Ok(())
    }
}

/// The default distribution port of a member named without one (RabbitMQ's 25672).
pub const DEFAULT_DIST_PORT: u16 = 25672;

/// Reads a member as `cluster_nodes` and warrenctl name it: `name@host` or
/// `name@host:dist_port`; returns the node name and its distribution address `host:port`.
pub fn parse_member(entry: &str) -> Result<(String, String), String> {
    let bad = || format!("'{entry}' is not a node name (expected name@host or name@host:port)");
    let (name, rest) = entry.split_once('@').ok_or_else(bad)?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse::<u16>().map_err(|_| bad())?),
        _ => (rest, DEFAULT_DIST_PORT),
    };
    if name.is_empty() || host.is_empty() || host.contains('@') {
        return Err(bad());
    }
    Ok((format!("{name}@{host}"), format!("{host}:{port}")))
}

/// Checks a node name: `name@host`, or a bare name.
pub fn check_node_name(name: &str) -> Result<(), String> {
    let (n, host) = name.split_once('@').unwrap_or((name, "x"));
    if n.is_empty() || host.is_empty() || host.contains('@') {
        return Err(format!("'{name}' is not a node name (expected name@host)"));
    }
    Ok(())
}

/// Checks a peer's distribution address: `host:port`, a port number after the last colon
/// (`[v6]:port` for an IPv6 address).
pub fn check_peer_address(addr: &str) -> Result<(), String> {
    let bad = || format!("'{addr}' is not host:port");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || !port.parse::<u16>().is_ok_and(|p| p != 0) {
        return Err(bad());
    }
    Ok(())
}

/// Checks a memory watermark fraction.
pub fn check_watermark(w: f64) -> Result<(), String> {
    if w > 0.0 && w <= 1.0 {
        Ok(())
    } else {
        Err(format!("must be a fraction in (0, 1], got {w}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        c.apply_file(Path::new("/etc/warren/warren.toml"), text)?;
        Ok(c)
    }

    #[test]
    fn reads_every_kind_of_key() {
        let c = apply(
            r#"
            port = 5673
            bind = "0.0.0.0"
            heartbeat = 30
            vm_memory_high_watermark = 0.5
            loopback_users = []
            auth_mechanisms = ["PLAIN", "EXTERNAL"]
            ssl_cert_login_from = "common_name"
            handshake_timeout = 2500
            load_definitions = "defs.json"
            [tls]
            port = 5674
            certfile = "/certs/server.pem"
            keyfile = "server.key"
            cacertfile = "ca.pem"
            verify = "verify_peer"
            fail_if_no_peer_cert = true
            versions = ["tlsv1.3"]
            "#,
        )
        .expect("valid");
        assert_eq!(c.port, 5673);
        assert_eq!(c.dist_port(), Ok(25673));
        assert_eq!(c.heartbeat, 30);
        assert!(c.loopback_users.is_empty());
        assert_eq!(
            c.auth_mechanisms,
            vec![AuthMechanism::Plain, AuthMechanism::External]
        );
        assert_eq!(c.handshake_timeout_secs, 3);
        assert_eq!(
            c.load_definitions,
            Some(PathBuf::from("/etc/warren/defs.json"))
        );
        let tls = c.tls.expect("tls");
        assert_eq!(tls.port, 5674);
        assert_eq!(tls.keyfile, PathBuf::from("/etc/warren/server.key"));
        assert_eq!(tls.verify, TlsVerify::VerifyPeer);
        assert_eq!(tls.versions, vec![TlsVersion::Tls13]);
    }

    #[test]
    fn peer_addresses_map_node_names_to_host_and_port() {
        let c = apply(
            "[cluster_peer_addresses]\n\"hare@h2\" = \"10.0.0.5:25673\"\n\"fox@h3\" = \"[::1]:25674\"",
        )
        .expect("valid");
        assert_eq!(
            c.cluster_peer_addresses.get("hare@h2").map(String::as_str),
            Some("10.0.0.5:25673")
        );
        assert_eq!(c.cluster_peer_addresses.len(), 2);
        let e =
            apply("cluster_peer_addresses = { \"hare@h2\" = \"10.0.0.5\" }").expect_err("no port");
        assert!(e.0.contains("key `cluster_peer_addresses.hare@h2`"), "{e}");
        let e = apply("cluster_peer_addresses = { \"hare\" = \"h:1\" }").expect_err("bare name");
        assert!(e.0.contains("expected name@host"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = apply("prot = 5672").expect_err("unknown key");
        assert!(e.0.contains("prot"), "{e}");
        let e = apply("port = \"five\"").expect_err("bad type");
        assert!(e.0.contains("key `port`"), "{e}");
        let e = apply("port = 70000").expect_err("out of range");
        assert!(e.0.contains("key `port`"), "{e}");
        let e = apply("[tls]\ncertfile = \"a\"\nkeyfile = \"b\"\nverify = \"verify_all\"")
            .expect_err("bad enum");
        assert!(e.0.contains("key `tls.verify`"), "{e}");
        let e = apply("[tls]\ncertfile = \"a\"\nkeyfile = \"b\"\ncolour = 1").expect_err("nested");
        assert!(e.0.contains("colour"), "{e}");
        let e = apply("vm_memory_high_watermark = 1.5").expect_err("range");
        assert!(e.0.contains("key `vm_memory_high_watermark`"), "{e}");
        let e = apply("[tls]\nkeyfile = \"b\"").expect_err("missing");
        assert!(e.0.contains("key `tls.certfile`"), "{e}");
        let e = apply("port = ").expect_err("syntax");
        assert!(e.0.contains("warren.toml"), "{e}");
    }

    #[test]
    fn cluster_nodes_and_node_type_come_from_the_environment_too() {
        let mut c = Config::default();
        let env = |k: &str| match k {
            "WARREN_CLUSTER_NODES" => Some("rabbit@h1, hare@h2:25999 ".to_string()),
            "WARREN_CLUSTER_NODE_TYPE" => Some("ram".to_string()),
            _ => None,
        };
        c.apply_env(&env).expect("valid");
        assert_eq!(c.cluster_nodes, vec!["rabbit@h1", "hare@h2:25999"]);
        assert!(c.cluster_node_ram);
        let bad = |k: &str| (k == "WARREN_CLUSTER_NODES").then(|| "nohost".to_string());
        let e = Config::default().apply_env(&bad).expect_err("bad name");
        assert!(
            e.0.contains("WARREN_CLUSTER_NODES") && e.0.contains("nohost"),
            "{e}"
        );
        let bad = |k: &str| (k == "WARREN_CLUSTER_NODE_TYPE").then(|| "tape".to_string());
        let e = Config::default().apply_env(&bad).expect_err("bad type");
        assert!(
            e.0.contains("WARREN_CLUSTER_NODE_TYPE") && e.0.contains("disc or ram"),
            "{e}"
        );
    }

    #[test]
    fn environment_uses_rabbitmq_names_as_aliases() {
        let mut c = Config::default();
        let env = |k: &str| match k {
            "RABBITMQ_NODE_PORT" => Some("5700".to_string()),
            "RABBITMQ_DIST_PORT" => Some("25800".to_string()),
            "WARREN_NODENAME" => Some("a@b".to_string()),
            "RABBITMQ_NODENAME" => Some("ignored@b".to_string()),
            "RABBITMQ_MNESIA_DIR" => Some("/data".to_string()),
            _ => None,
        };
        c.apply_env(&env).expect("valid");
        assert_eq!(c.port, 5700);
        assert_eq!(c.dist_port(), Ok(25800));
        let high = Config {
            port: 50000,
            ..Config::default()
        };
        assert!(high.dist_port().is_err());
        assert_eq!(c.node_name(), "a@b");
        assert_eq!(c.data_dir, PathBuf::from("/data"));
        let bad = |k: &str| (k == "WARREN_NODE_PORT").then(|| "x".to_string());
        let e = Config::default().apply_env(&bad).expect_err("bad port");
        assert!(e.0.contains("WARREN_NODE_PORT"), "{e}");
    }

    #[test]
    fn cluster_formation_keys_and_their_rabbitmq_names() {
        let c = apply(
            "cluster_nodes = [\"rabbit@h1\", \"hare@h2:25999\"]\ncluster_node_type = \"ram\"",
        )
        .expect("valid");
        assert_eq!(c.cluster_nodes, vec!["rabbit@h1", "hare@h2:25999"]);
        assert!(c.cluster_node_ram);
        assert_eq!(
            parse_member("hare@h2:25999"),
            Ok(("hare@h2".into(), "h2:25999".into()))
        );
        assert_eq!(
            parse_member("rabbit@h1"),
            Ok(("rabbit@h1".into(), "h1:25672".into()))
        );
        let c = apply(
            "[cluster_formation]\npeer_discovery_backend = \"classic_config\"\nnode_type = \"disc\"\ndiscovery_retry_limit = 3\n[cluster_formation.classic_config]\nnodes = [\"a@h\"]",
        )
        .expect("valid");
        assert_eq!(c.cluster_nodes, vec!["a@h"]);
        assert!(!c.cluster_node_ram);
        assert_eq!(c.discovery_retry_limit, 3);
        let e = apply("cluster_nodes = [\"nohost\"]").expect_err("bad name");
        assert!(e.0.contains("key `cluster_nodes`"), "{e}");
        let e = apply("cluster_node_type = \"tape\"").expect_err("bad type");
        assert!(e.0.contains("cluster_node_type"), "{e}");
        let e = apply("[dist_tls]\ncertfile = \"a\"").expect_err("incomplete");
        assert!(e.0.contains("dist_tls.keyfile"), "{e}");
    }

    #[test]
    fn loopback_addresses_can_be_narrowed() {
        let mut c = Config::default();
        assert!(c.is_loopback("127.0.0.2".parse().expect("ip")));
        c.loopback_addresses = Some(vec!["127.0.0.1".parse().expect("ip")]);
        assert!(c.is_loopback("127.0.0.1".parse().expect("ip")));
        assert!(c.is_loopback("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!c.is_loopback("127.0.0.2".parse().expect("ip")));
    }
}
