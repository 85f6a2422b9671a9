//! `warren-shovel --config shovels.toml`: runs the shovels of a TOML file (`[[shovel]]`
//! tables, RabbitMQ's keys) as a process of its own, between any two brokers. Every URI
//! must name its host (there is no local node). Logs state changes; `--status-interval`
//! also prints every shovel's status as a JSON line on stdout. Stops on SIGINT or SIGTERM.

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use warren_shovel::{Env, Kind, Shovels};

#[derive(Parser, Debug)]
#[command(
    name = "warren-shovel",
    version,
    about = "Runs shovels between AMQP 0-9-1 brokers"
)]
struct Args {
    /// The shovels' file (TOML: `[[shovel]]` tables with RabbitMQ's shovel keys).
    #[arg(long, short)]
    config: PathBuf,
    /// Print every shovel's status as a JSON line this often, in seconds (0: never).
    #[arg(long, default_value_t = 0)]
    status_interval: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// The name written in `x-shovelled` headers.
    node_name: Option<String>,
    #[serde(default)]
    shovel: Vec<serde_json::Value>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("failed to read {}", args.config.display()))?;
    let file: File = toml::from_str(&text)
        .with_context(|| format!("failed to parse {}", args.config.display()))?;
    if file.shovel.is_empty() {
        anyhow::bail!("{}: no [[shovel]] defined", args.config.display());
    }
    // Every definition is checked before any shovel starts.
    let mut defs = Vec::new();
    for t in &file.shovel {
        let def =
            warren_shovel::parse_table(t).with_context(|| format!("{}", args.config.display()))?;
        if def
            .src_uris
            .iter()
            .chain(&def.dest_uris)
            .any(|e| e.is_local())
        {
            anyhow::bail!(
                "{}: shovel '{}': every URI needs a host in a standalone shovel",
                args.config.display(),
                def.name
            );
        }
        defs.push(def);
    }
    let shovels = Shovels::new(Env {
        node_name: file
            .node_name
            .unwrap_or_else(|| format!("warren-shovel@{}", hostname())),
        local: None,
        on_finished: None,
    });
    for def in defs {
        shovels.start(def, Kind::Static);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(args.status_interval.max(1)));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick(), if args.status_interval > 0 => {
                println!("{}", serde_json::to_string(&shovels.status())?);
            }
        }
    }
    tracing::info!("stopping");
    shovels.shutdown().await;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}
