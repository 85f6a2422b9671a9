//! The connections scenario: opens `--count` connections (a channel each), `--parallel` at a
//! time, holds them, then closes them; reports open and close rates and, with
//! `--broker-pid`, how much the broker's resident memory grew per open connection.

use super::args::ConnectionsArgs;
use super::client::Connection;
use super::proc::Pid;
use super::report::{self, Output};
use super::stats;
use super::uri::AmqpUri;
use anyhow::{anyhow, Context};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The outcome of a connections run.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsReport {
    /// Always "connections".
    pub scenario: &'static str,
    /// The broker's address.
    pub broker: String,
    /// The arguments of the run.
    pub args: ConnectionsArgs,
    /// Connections (with a channel) opened per second.
    pub open_rate: f64,
    /// Connections closed per second.
    pub close_rate: f64,
    /// The broker's resident memory before opening.
    pub rss_before_bytes: Option<u64>,
    /// The broker's resident memory with every connection open (after a settling second).
    pub rss_open_bytes: Option<u64>,
    /// `(rss_open - rss_before) / count`.
    pub rss_per_connection_bytes: Option<f64>,
}

/// Runs the scenario.
pub async fn run(args: ConnectionsArgs) -> anyhow::Result<ConnectionsReport> {
    if args.count == 0 || args.parallel == 0 {
        return Err(anyhow!("--count and --parallel must be at least 1"));
    }
    let out = Output::new(args.common.json);
    let uri: Arc<AmqpUri> = Arc::new(args.common.uri.parse()?);
    let broker = args.common.broker_pid.map(Pid::Other);
    let rss_before = broker.map(|p| p.rss()).transpose()?;

    let gate = Arc::new(Semaphore::new(args.parallel as usize));
    let mut opening: JoinSet<anyhow::Result<Connection>> = JoinSet::new();
    let started = Instant::now();
    for i in 0..args.count {
        let (uri, gate) = (uri.clone(), gate.clone());
        opening.spawn(async move {
            let _permit = gate.acquire_owned().await.context("open gate")?;
            let mut c = Connection::open(&uri, &format!("warren-perf idle {i}")).await?;
            c.open_channel(1).await?;
            Ok(c)
        });
    }
    let mut conns = Vec::with_capacity(args.count as usize);
    while let Some(r) = opening.join_next().await {
        conns.push(r.context("open task")?.context("open a connection")?);
    }
    let open_s = started.elapsed().as_secs_f64();
    let open_rate = stats::rate(u64::from(args.count), open_s);
    out.progress(&format!(
        "opened {} connections in {open_s:.2} s ({} per second)",
        args.count,
        report::rate(open_rate)
    ));
    // Let the broker finish its per-connection work before measuring its memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_open = broker.map(|p| p.rss()).transpose()?;
    tokio::time::sleep(Duration::from_secs(args.hold)).await;

    let started = Instant::now();
    let mut closing: JoinSet<anyhow::Result<()>> = JoinSet::new();
    for c in conns {
        let gate = gate.clone();
        closing.spawn(async move {
            let _permit = gate.acquire_owned().await.context("close gate")?;
            c.close().await
        });
    }
    while let Some(r) = closing.join_next().await {
        r.context("close task")?.context("close a connection")?;
    }
    let close_rate = stats::rate(u64::from(args.count), started.elapsed().as_secs_f64());

    let per_conn = match (rss_before, rss_open) {
        (Some(b), Some(o)) => Some((o as f64 - b as f64) / f64::from(args.count)),
        _ => None,
    };
    let report = ConnectionsReport {
        scenario: "connections",
        broker: report::broker_of(&uri),
        open_rate,
        close_rate,
        rss_before_bytes: rss_before,
        rss_open_bytes: rss_open,
        rss_per_connection_bytes: per_conn,
        args,
    };
    let mut human = vec![format!(
        "summary: {} connections against {}: open {} /s, close {} /s",
        report.args.count,
        report.broker,
        report::rate(open_rate),
        report::rate(close_rate)
    )];
    if let (Some(b), Some(o), Some(p)) = (rss_before, rss_open, per_conn) {
        human.push(format!(
            "  broker rss {} before, {} with all open: {} per connection",
            report::bytes(b as f64),
            report::bytes(o as f64),
            report::bytes(p)
        ));
    }
    out.summary(&report, &human)?;
    Ok(report)
}
