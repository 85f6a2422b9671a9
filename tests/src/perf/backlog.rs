//! The backlog scenario: publishes `--messages` messages (with confirms) to a queue nobody
//! consumes, then drains it with one consumer; reports both rates and, with
//! `--broker-pid`, the broker's resident memory before, at its peak (sampled every 50 ms)
//! and after each phase.

use super::args::BacklogArgs;
use super::client::{Connection, Durability};
use super::histogram::Histogram;
use super::proc::{CpuMeter, CpuUse, Pid};
use super::report::{self, Output};
use super::stats;
use super::uri::AmqpUri;
use super::{consumer, publisher, run_name, Counters};
use anyhow::anyhow;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The outcome of a backlog run.
#[derive(Debug, Clone, Serialize)]
pub struct BacklogReport {
    /// Always "backlog".
    pub scenario: &'static str,
    /// The broker's address.
    pub broker: String,
    /// The arguments of the run.
    pub args: BacklogArgs,
    /// Messages published (and confirmed) per second.
    pub publish_rate: f64,
    /// Messages drained per second.
    pub drain_rate: f64,
    /// Broker memory before publishing.
    pub rss_before_bytes: Option<u64>,
    /// Broker memory with the whole backlog queued.
    pub rss_backlog_bytes: Option<u64>,
    /// Highest broker memory seen.
    pub rss_peak_bytes: Option<u64>,
    /// Broker memory after draining.
    pub rss_drained_bytes: Option<u64>,
    /// CPU used over both phases.
    pub cpu: CpuUse,
}

/// Samples a process's resident memory until stopped, keeping the highest value.
fn sample_peak(pid: Pid, stop: CancellationToken) -> Arc<AtomicU64> {
    let peak = Arc::new(AtomicU64::new(0));
    let p = peak.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            match pid.rss() {
                Ok(rss) => {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                Err(_) => break,
            }
        }
    });
    peak
}

/// Runs the scenario.
pub async fn run(args: BacklogArgs) -> anyhow::Result<BacklogReport> {
    args.validate().map_err(|e| anyhow!(e))?;
    let out = Output::new(args.common.json);
    let uri: AmqpUri = args.common.uri.parse()?;
    let broker = args.common.broker_pid.map(Pid::Other);
    let queue = run_name("backlog");
    let mut setup = Connection::open(&uri, "warren-perf setup").await?;
    setup.open_channel(1).await?;
    setup
        .declare_queue(
            1,
            &queue,
            Durability {
                durable: args.persistent,
                auto_delete: false,
            },
        )
        .await?;

    let sampler_stop = CancellationToken::new();
    let _stop_sampler = sampler_stop.clone().drop_guard();
    let peak = broker.map(|p| sample_peak(p, sampler_stop.clone()));
    let rss_before = broker.map(|p| p.rss()).transpose()?;
    let meter = CpuMeter::start(args.common.broker_pid)?;
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();

    let started = Instant::now();
    let producer = Connection::open(&uri, "warren-perf backlog producer").await?;
    let published = publisher::run(
        producer,
        publisher::PublisherSpec {
            exchange: String::new(),
            routing_key: queue.clone(),
            body_size: args.size,
            persistent: args.persistent,
            confirm: Some(args.confirm),
            rate: None,
            limit: Some(args.messages),
        },
        counters.clone(),
        stop.clone(),
    )
    .await?;
    let publish_s = started.elapsed().as_secs_f64();
    let publish_rate = stats::rate(published, publish_s);
    let rss_backlog = broker.map(|p| p.rss()).transpose()?;
    out.progress(&format!(
        "published {published} messages in {publish_s:.2} s ({} msg/s), {} nacked",
        report::rate(publish_rate),
        counters.nacked.load(Ordering::Relaxed)
    ));

    let started = Instant::now();
    let drainer = Connection::open(&uri, "warren-perf backlog consumer").await?;
    let drained = consumer::run(
        drainer,
        consumer::ConsumerSpec {
            queue: queue.clone(),
            no_ack: false,
            prefetch: Some(args.qos),
            multi_ack_every: args.multi_ack_every,
            limit: Some(published - counters.nacked.load(Ordering::Relaxed)),
        },
        counters.clone(),
        Arc::new(Mutex::new(Histogram::new())),
        stop.clone(),
        None,
    )
    .await?;
    let drain_s = started.elapsed().as_secs_f64();
    let drain_rate = stats::rate(drained, drain_s);
    out.progress(&format!(
        "drained {drained} messages in {drain_s:.2} s ({} msg/s)",
        report::rate(drain_rate)
    ));
    let cpu = meter.stop()?;
    let rss_drained = broker.map(|p| p.rss()).transpose()?;
    sampler_stop.cancel();
    setup.delete_queue(1, &queue).await?;
    setup.close().await?;

    let rss_peak = peak.map(|p| {
        p.load(Ordering::Relaxed)
            .max(rss_backlog.unwrap_or(0))
            .max(rss_drained.unwrap_or(0))
    });
    let report = BacklogReport {
        scenario: "backlog",
        broker: report::broker_of(&uri),
        publish_rate,
        drain_rate,
        rss_before_bytes: rss_before,
        rss_backlog_bytes: rss_backlog,
        rss_peak_bytes: rss_peak,
        rss_drained_bytes: rss_drained,
        cpu,
        args,
    };
    let mut human = vec![format!(
        "summary: {} messages of {} B against {}: publish {} msg/s, drain {} msg/s",
        report.args.messages,
        report.args.size,
        report.broker,
        report::rate(publish_rate),
        report::rate(drain_rate)
    )];
    if let (Some(b), Some(q), Some(p), Some(d)) = (rss_before, rss_backlog, rss_peak, rss_drained) {
        human.push(format!(
            "  broker rss {} before, {} with the backlog, {} peak, {} drained",
            report::bytes(b as f64),
            report::bytes(q as f64),
            report::bytes(p as f64),
            report::bytes(d as f64)
        ));
    }
    out.summary(&report, &human)?;
    Ok(report)
}
