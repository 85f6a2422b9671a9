//! Node configuration: defaults, then environment (RabbitMQ's names accepted), then flags.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the AMQP listener binds to.
    pub bind: IpAddr,
    /// AMQP port; 0 picks a free one (tests).
    pub port: u16,
    /// Directory for this node's data.
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
    /// The default user's name and password, created at first start.
    pub default_user: String,
    /// The default user's password.
    pub default_pass: String,
    /// Users that may only connect from loopback addresses (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 5672,
            data_dir: PathBuf::from("warren-data"),
            max_message_size: 128 * 1024 * 1024,
            heartbeat: 60,
            frame_max: 131_072,
            channel_max: 2047,
            max_connections: 65_536,
            default_user: "guest".into(),
            default_pass: "guest".into(),
            loopback_users: vec!["guest".into()],
            handshake_timeout_secs: 10,
            node_name: None,
            disk_free_limit: 50_000_000,
            memory_high_watermark: 0.4,
            alarm_interval_ms: 1000,
            confirm_sync: true,
            consumer_timeout_ms: crate::policy::DEFAULT_CONSUMER_TIMEOUT_MS,
        }
    }
}

impl Config {
    /// Defaults for an in-process test broker: an ephemeral port on loopback.
    pub fn for_tests(data_dir: &Path) -> Config {
        Config {
            port: 0,
            data_dir: data_dir.to_path_buf(),
            alarm_interval_ms: 100,
            ..Config::default()
        }
    }
}

impl Config {
    /// The node's name, `warren@<short hostname>` unless configured.
    pub fn node_name(&self) -> String {
        if let Some(n) = &self.node_name {
            return n.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| {
                h.trim()
                    .split('.')
                    .next()
                    .unwrap_or("localhost")
                    .to_string()
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());
        format!("warren@{host}")
    }
}
