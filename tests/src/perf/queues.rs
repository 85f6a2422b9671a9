//! The queues scenario: on one channel, declares `--count` queues and binds each to an
//! exchange, then deletes them, one synchronous request at a time as applications do;
//! reports declare+bind pairs per second, delete rate and the broker's memory per queue.

use super::args::QueuesArgs;
use super::client::{Connection, Durability};
use super::proc::Pid;
use super::report::{self, Output};
use super::run_name;
use super::stats;
use super::uri::AmqpUri;
use anyhow::anyhow;
use serde::Serialize;
use std::time::Instant;

/// The outcome of a queues run.
#[derive(Debug, Clone, Serialize)]
pub struct QueuesReport {
    /// Always "queues".
    pub scenario: &'static str,
    /// The broker's address.
    pub broker: String,
    /// The arguments of the run.
    pub args: QueuesArgs,
    /// queue.declare + queue.bind pairs per second.
    pub declare_bind_rate: f64,
    /// queue.delete per second.
    pub delete_rate: f64,
    /// The broker's resident memory growth per declared and bound queue.
    pub rss_per_queue_bytes: Option<f64>,
}

/// Runs the scenario.
pub async fn run(args: QueuesArgs) -> anyhow::Result<QueuesReport> {
    if args.count == 0 {
        return Err(anyhow!("--count must be at least 1"));
    }
    let out = Output::new(args.common.json);
    let uri: AmqpUri = args.common.uri.parse()?;
    let broker = args.common.broker_pid.map(Pid::Other);
    let durability = Durability {
        durable: args.durable,
        auto_delete: false,
    };
    let mut conn = Connection::open(&uri, "warren-perf queues").await?;
    conn.open_channel(1).await?;
    let exchange = run_name("x-queues");
    conn.declare_exchange(1, &exchange, "direct", durability)
        .await?;
    let base = run_name("q");
    let names: Vec<String> = (0..args.count).map(|i| format!("{base}-{i}")).collect();

    let rss_before = broker.map(|p| p.rss()).transpose()?;
    let started = Instant::now();
    for q in &names {
        conn.declare_queue(1, q, durability).await?;
        conn.bind_queue(1, q, &exchange, q).await?;
    }
    let declare_s = started.elapsed().as_secs_f64();
    let rss_after = broker.map(|p| p.rss()).transpose()?;
    let declare_bind_rate = stats::rate(u64::from(args.count), declare_s);
    out.progress(&format!(
        "declared and bound {} queues in {declare_s:.2} s",
        args.count
    ));

    let started = Instant::now();
    for q in &names {
        conn.delete_queue(1, q).await?;
    }
    let delete_rate = stats::rate(u64::from(args.count), started.elapsed().as_secs_f64());
    conn.delete_exchange(1, &exchange).await?;
    conn.close().await?;

    let rss_per_queue_bytes = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some((a as f64 - b as f64) / f64::from(args.count)),
        _ => None,
    };
    let report = QueuesReport {
        scenario: "queues",
        broker: report::broker_of(&uri),
        declare_bind_rate,
        delete_rate,
        rss_per_queue_bytes,
        args,
    };
    let mut human = vec![format!(
        "summary: {} queues against {}: declare+bind {} /s, delete {} /s",
        report.args.count,
        report.broker,
        report::rate(declare_bind_rate),
        report::rate(delete_rate)
    )];
    if let Some(p) = rss_per_queue_bytes {
        human.push(format!("  broker rss {} per queue", report::bytes(p)));
    }
    out.summary(&report, &human)?;
    Ok(report)
}
