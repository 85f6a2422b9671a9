//! `warren-server`: runs a Warren node.

use clap::Parser;
use std::net::IpAddr;
use std::path::PathBuf;
use warren_broker::{Broker, Config};

/// An AMQP 0-9-1 broker.
#[derive(Parser, Debug)]
#[command(name = "warren-server", version, about)]
struct Args {
    /// AMQP port.
    #[arg(long, short = 'p', env = "WARREN_NODE_PORT")]
    port: Option<u16>,
    /// Address to listen on.
    #[arg(long, env = "WARREN_BIND")]
    bind: Option<IpAddr>,
    /// Data directory (default ./warren-data/<node name>).
    #[arg(long, env = "WARREN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Node name (name@host).
    #[arg(long, env = "WARREN_NODENAME")]
    nodename: Option<String>,
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
}

fn env_alias(name: &str, alias: &str) -> Option<String> {
    std::env::var(name).or_else(|_| std::env::var(alias)).ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut config = Config::default();
    // RabbitMQ's variable names are accepted where Warren's are not set.
    if let Some(port) = args.port {
        config.port = port;
    } else if let Some(p) = env_alias("WARREN_NODE_PORT", "RABBITMQ_NODE_PORT") {
        config.port = p
            .parse()
            .map_err(|_| anyhow::anyhow!("RABBITMQ_NODE_PORT: not a port number: {p}"))?;
    }
    if let Some(bind) = args.bind {
        config.bind = bind;
    }
    config.node_name = args
        .nodename
        .or_else(|| env_alias("WARREN_NODENAME", "RABBITMQ_NODENAME"));
    config.data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from("warren-data").join(config.node_name()));
    if let Some(n) = args.max_message_size {
        config.max_message_size = n;
    }
    if let Some(h) = args.heartbeat {
        config.heartbeat = h;
    }
    if let Some(sync) = args.confirm_sync {
        config.confirm_sync = sync;
    }
    if let Some(t) = args.consumer_timeout {
        config.consumer_timeout_ms = t;
    }
    if let Some(limit) = args.disk_free_limit {
        config.disk_free_limit = limit;
    }
    if let Some(w) = args.memory_high_watermark {
        anyhow::ensure!(
            w > 0.0 && w <= 1.0,
            "--memory-high-watermark must be a fraction in (0, 1], got {w}"
        );
        config.memory_high_watermark = w;
    }
    let broker = Broker::start(config).await?;
    tracing::info!(addr = %broker.local_addr(), "Warren started");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, stopping"),
        _ = term.recv() => tracing::info!("terminated, stopping"),
        _ = broker.stopped() => {}
    }
    broker.shutdown().await;
    Ok(())
}
