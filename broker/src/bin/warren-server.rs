//! `warren-server`: runs a Warren node. Settings come from defaults, then the config file
//! (`--config` or `WARREN_CONFIG_FILE`), then environment variables, then these flags.

use clap::Parser;
use std::net::IpAddr;
use std::path::PathBuf;
use warren_broker::{Broker, Config};

/// mimalloc: messages are allocated on one worker thread and freed on another, which under
/// glibc's allocator contends on its arena locks (about a tenth of the node's CPU at high
/// message rates).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An AMQP 0-9-1 broker.
#[derive(Parser, Debug)]
#[command(name = "warren-server", version, about)]
struct Args {
    /// The config file (TOML; see docs/config.md).
    #[arg(long, env = "WARREN_CONFIG_FILE")]
    config: Option<PathBuf>,
    /// AMQP port [env: WARREN_NODE_PORT, RABBITMQ_NODE_PORT].
    #[arg(long, short = 'p')]
    port: Option<u16>,
    /// Distribution port for warrenctl [env: WARREN_DIST_PORT, RABBITMQ_DIST_PORT].
    #[arg(long)]
    dist_port: Option<u16>,
    /// HTTP port: management API and /metrics (default AMQP port + 10000) [env:
    /// WARREN_HTTP_PORT].
    #[arg(long)]
    http_port: Option<u16>,
    /// Address to listen on [env: WARREN_BIND, RABBITMQ_NODE_IP_ADDRESS].
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Data directory (default ./warren-data/<node name>) [env: WARREN_DATA_DIR,
    /// RABBITMQ_MNESIA_DIR].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Node name (name@host) [env: WARREN_NODENAME, RABBITMQ_NODENAME].
    #[arg(long)]
    nodename: Option<String>,
    /// Members a fresh node joins at its first start, comma-separated (name@host or
    /// name@host:dist_port) [env: WARREN_CLUSTER_NODES].
    #[arg(long)]
    cluster_nodes: Option<String>,
    /// The type a fresh node joins them as: disc or ram [env: WARREN_CLUSTER_NODE_TYPE].
    #[arg(long)]
    cluster_node_type: Option<String>,
    /// Largest message body accepted, in bytes.
    #[arg(long)]
    max_message_size: Option<usize>,
    /// Heartbeat interval proposed to clients, in seconds (0 disables).
    #[arg(long)]
    heartbeat: Option<u16>,
    /// Whether confirms of persistent messages wait for an fsync (true) or only for the
    /// write to the OS (false).
    #[arg(long)]
    confirm_sync: Option<bool>,
    /// Free disk space, in bytes, under which publishers are blocked.
    #[arg(long)]
    disk_free_limit: Option<u64>,
    /// Fraction of physical memory above which publishers are blocked.
    #[arg(long)]
    memory_high_watermark: Option<f64>,
    /// How long a consumer may hold an unacked delivery before it is cancelled and its
    /// messages requeued, in milliseconds (0 disables).
    #[arg(long)]
    consumer_timeout: Option<u64>,
    /// Resets the (stopped) node and exits: leaves its cluster (asking a running member to
    /// remove it), then deletes its definitions, messages and cluster membership.
    #[arg(long, conflicts_with_all = ["force_reset", "force_boot"])]
    reset: bool,
    /// Like --reset, without asking the cluster (whose members must then run
    /// forget_cluster_node for this node).
    #[arg(long, conflicts_with = "force_boot")]
    force_reset: bool,
    /// Boots a disc node whose cluster lost a majority of disc nodes for good: the
    /// cluster's disc nodes shrink to this node and those reachable now.
    #[arg(long)]
    force_boot: bool,
}

fn configure(args: &Args) -> anyhow::Result<Config> {
    let mut config = Config::default();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        config.apply_file(path, &text)?;
    }
    config.apply_env(&|k| std::env::var(k).ok())?;
    if let Some(v) = args.port {
        config.port = v;
    }
    if let Some(v) = args.dist_port {
        config.dist_port = Some(v);
    }
    if let Some(v) = args.http_port {
        config.http_port = Some(v);
    }
    if let Some(v) = args.bind {
        config.bind = v;
    }
    if let Some(v) = args.nodename.clone() {
        warren_broker::config::check_node_name(&v)
            .map_err(|m| anyhow::anyhow!("--nodename: {m}"))?;
        config.node_name = Some(v);
    }
    if let Some(v) = args.data_dir.clone() {
        config.data_dir = v;
    }
    if let Some(v) = &args.cluster_nodes {
        config
            .set_cluster_nodes(v)
            .map_err(|m| anyhow::anyhow!("--cluster-nodes: {m}"))?;
    }
    if let Some(v) = &args.cluster_node_type {
        config
            .set_cluster_node_type(v)
            .map_err(|m| anyhow::anyhow!("--cluster-node-type: {m}"))?;
    }
    if let Some(v) = args.max_message_size {
        config.max_message_size = v;
    }
    if let Some(v) = args.heartbeat {
        config.heartbeat = v;
    }
    if let Some(v) = args.confirm_sync {
        config.confirm_sync = v;
    }
    if let Some(v) = args.disk_free_limit {
        config.disk_free_limit = v;
    }
    if let Some(v) = args.consumer_timeout {
        config.consumer_timeout_ms = v;
    }
    if let Some(w) = args.memory_high_watermark {
        warren_broker::config::check_watermark(w)
            .map_err(|m| anyhow::anyhow!("--memory-high-watermark: {m}"))?;
        config.memory_high_watermark = w;
    }
    if config.data_dir.as_os_str().is_empty() {
        config.data_dir = PathBuf::from("warren-data").join(config.node_name());
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = configure(&args)?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    if args.reset || args.force_reset {
        let done = Broker::reset(config, args.force_reset).await?;
        println!("{done}");
        return Ok(());
    }
    if args.force_boot {
        std::fs::create_dir_all(&config.data_dir)?;
        std::fs::write(
            config
                .data_dir
                .join(warren_broker::cluster::node::FORCE_BOOT_FILE),
            b"",
        )?;
    }
    let broker = Broker::start(config).await?;
    match broker.node().addrs().0 {
        Some(addr) => tracing::info!(%addr, dist = %broker.dist_addr(), "Warren started"),
        None => {
            tracing::warn!(dist = %broker.dist_addr(), "Warren node started without its application")
        }
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, stopping"),
        _ = term.recv() => tracing::info!("terminated, stopping"),
        _ = broker.stopped() => tracing::info!("stop requested, stopping"),
    }
    broker.shutdown().await;
    Ok(())
}
