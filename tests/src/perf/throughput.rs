//! The throughput scenario: declares the queues (and an exchange), starts the consumers,
//! then the producers, prints the rates every second for `--time` seconds, and summarises
//! them (medians of the per-second rates, latency percentiles over every stamped message,
//! CPU of warren-perf and of the broker). Queues are deleted at the end.

use super::args::ThroughputArgs;
use super::client::{Connection, Durability};
use super::histogram::{Histogram, LatencySummary};
use super::proc::{CpuMeter, CpuUse, Pid};
use super::report::{self, Output};
use super::stats::{self, RateSummary};
use super::uri::AmqpUri;
use super::{consumer, publisher, run_name, Counters};
use anyhow::{anyhow, Context};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One per-second sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the producers started.
    pub t: f64,
    /// Messages published per second.
    pub published: f64,
    /// Messages confirmed per second.
    pub confirmed: f64,
    /// Messages consumed per second.
    pub consumed: f64,
    /// Median latency of the messages consumed in this second (µs).
    pub p50_us: f64,
    /// 99th percentile latency in this second (µs).
    pub p99_us: f64,
}

/// The outcome of a throughput run.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputReport {
    /// Always "throughput".
    pub scenario: &'static str,
    /// The broker's address.
    pub broker: String,
    /// The arguments of the run.
    pub args: ThroughputArgs,
    /// Seconds measured.
    pub seconds: f64,
    /// Publish rates.
    pub published: RateSummary,
    /// Confirm rates (with --confirm).
    pub confirmed: Option<RateSummary>,
    /// Messages nacked by the broker.
    pub nacked: u64,
    /// Delivery rates.
    pub consumed: RateSummary,
    /// Median consumed body bytes per second.
    pub consumed_bytes_per_s: f64,
    /// Latency over the whole run (bodies of 8 bytes or more).
    pub latency: Option<LatencySummary>,
    /// CPU used during the measured seconds.
    pub cpu: CpuUse,
    /// The broker's resident memory at the end (with --broker-pid).
    pub broker_rss_bytes: Option<u64>,
    /// Every per-second sample.
    pub per_second: Vec<Sample>,
}

/// Runs the scenario.
pub async fn run(args: ThroughputArgs) -> anyhow::Result<ThroughputReport> {
    args.validate().map_err(|e| anyhow!(e))?;
    let out = Output::new(args.common.json);
    let uri: AmqpUri = args.common.uri.parse()?;
    let producer_uri: AmqpUri = match &args.producer_uri {
        Some(u) => u.parse()?,
        None => uri.clone(),
    };
    let consumer_uri: AmqpUri = match &args.consumer_uri {
        Some(u) => u.parse()?,
        None => uri.clone(),
    };
    let base = run_name("q");
    let queues = args.queue_names(&base);
    let exchange = args
        .exchange_type
        .map(|t| run_name(&format!("x-{}", t.as_str())));
    let durability = Durability {
        durable: args.persistent,
        auto_delete: false,
    };

    let mut setup = Connection::open(&uri, "warren-perf setup").await?;
    setup.open_channel(1).await?;
    if let (Some(x), Some(t)) = (&exchange, args.exchange_type) {
        setup
            .declare_exchange(1, x, t.as_str(), durability)
            .await
            .with_context(|| format!("declare exchange {x}"))?;
    }
    for q in &queues {
        setup
            .declare_queue(1, q, durability)
            .await
            .with_context(|| format!("declare queue {q}"))?;
        if let Some(x) = &exchange {
            setup.bind_queue(1, q, x, q).await?;
        }
    }

    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let mut tasks: JoinSet<anyhow::Result<u64>> = JoinSet::new();

    // Consumers first, so that the first messages already have somewhere to go.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(args.consumers.max(1) as usize);
    let mut histograms = Vec::new();
    for i in 0..args.consumers {
        let conn = Connection::open(&consumer_uri, &format!("warren-perf consumer {i}")).await?;
        let spec = consumer::ConsumerSpec {
            queue: queues[i as usize % queues.len()].clone(),
            no_ack: args.autoack,
            prefetch: args.qos,
            multi_ack_every: args.multi_ack_every,
            limit: None,
        };
        let hist = Arc::new(Mutex::new(Histogram::new()));
        histograms.push(hist.clone());
        let (c, s, ready) = (counters.clone(), stop.clone(), ready_tx.clone());
        tasks.spawn(async move {
            let r = consumer::run(conn, spec, c, hist, s.clone(), Some(ready)).await;
            if r.is_err() {
                s.cancel();
            }
            r.with_context(|| format!("consumer {i}"))
        });
    }
    drop(ready_tx);
    for _ in 0..args.consumers {
        tokio::select! {
            r = ready_rx.recv() => if r.is_none() { break },
            _ = stop.cancelled() => break,
        }
    }
    if stop.is_cancelled() {
        return Err(first_error(&mut tasks).await);
    }

    let meter = CpuMeter::start(args.common.broker_pid)?;
    for j in 0..args.producers {
        let conn = Connection::open(&producer_uri, &format!("warren-perf producer {j}")).await?;
        let routing_key = queues[j as usize % queues.len()].clone();
        let spec = publisher::PublisherSpec {
            exchange: exchange.clone().unwrap_or_default(),
            routing_key,
            body_size: args.size,
            persistent: args.persistent,
            confirm: args.confirm,
            rate: args.rate,
            limit: None,
        };
        let (c, s) = (counters.clone(), stop.clone());
        tasks.spawn(async move {
            let r = publisher::run(conn, spec, c, s.clone()).await;
            if r.is_err() {
                s.cancel();
            }
            r.with_context(|| format!("producer {j}"))
        });
    }

    // The measured seconds.
    let start = Instant::now();
    let mut ticker =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut samples: Vec<Sample> = Vec::new();
    let mut total_latency = Histogram::new();
    let mut interval_latency = Histogram::new();
    let (mut last_t, mut last_p, mut last_c, mut last_d) = (0.0f64, 0u64, 0u64, 0u64);
    for _ in 0..args.time {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => break,
        }
        let t = start.elapsed().as_secs_f64();
        let p = counters.published.load(Ordering::Relaxed);
        let c = counters.confirmed.load(Ordering::Relaxed);
        let d = counters.consumed.load(Ordering::Relaxed);
        interval_latency.clear();
        for h in &histograms {
            let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
            interval_latency.merge(&h);
            h.clear();
        }
        total_latency.merge(&interval_latency);
        let dt = t - last_t;
        let sample = Sample {
            t,
            published: stats::rate(p - last_p, dt),
            confirmed: stats::rate(c - last_c, dt),
            consumed: stats::rate(d - last_d, dt),
            p50_us: interval_latency.percentile(50.0) as f64 / 1000.0,
            p99_us: interval_latency.percentile(99.0) as f64 / 1000.0,
        };
        out.progress(&progress_line(&sample, &args, &interval_latency));
        samples.push(sample);
        (last_t, last_p, last_c, last_d) = (t, p, c, d);
    }
    let cpu = meter.stop()?;
    let seconds = start.elapsed().as_secs_f64();
    let totals = (
        counters.published.load(Ordering::Relaxed),
        counters.confirmed.load(Ordering::Relaxed),
        counters.consumed.load(Ordering::Relaxed),
    );
    let failed = stop.is_cancelled();
    stop.cancel();
    let mut errors = Vec::new();
    let joined = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => errors.push(format!("{e:#}")),
                Err(e) => errors.push(format!("task failed: {e}")),
            }
        }
    })
    .await;
    if joined.is_err() {
        tasks.abort_all();
        errors.push("producers or consumers did not stop in 20 s".into());
    }
    if failed && !errors.is_empty() {
        return Err(anyhow!(errors.join("; ")));
    }
    for e in &errors {
        eprintln!("warning while stopping: {e}");
    }

    if !args.keep_queues {
        for q in &queues {
            setup
                .delete_queue(1, q)
                .await
                .with_context(|| format!("delete queue {q}"))?;
        }
        if let Some(x) = &exchange {
            setup.delete_exchange(1, x).await?;
        }
    }
    setup.close().await?;
    let broker_rss_bytes = args
        .common
        .broker_pid
        .map(|p| Pid::Other(p).rss())
        .transpose()?;

    let col = |f: fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<f64>>();
    let consumed = RateSummary::from_samples(&col(|s| s.consumed), totals.2, seconds);
    let report = ThroughputReport {
        scenario: "throughput",
        broker: report::broker_of(&uri),
        seconds,
        published: RateSummary::from_samples(&col(|s| s.published), totals.0, seconds),
        confirmed: args
            .confirm
            .map(|_| RateSummary::from_samples(&col(|s| s.confirmed), totals.1, seconds)),
        nacked: counters.nacked.load(Ordering::Relaxed),
        consumed_bytes_per_s: consumed.median * args.size as f64,
        consumed,
        latency: (args.size >= super::wire::STAMP_LEN && !total_latency.is_empty())
            .then(|| total_latency.summary_us()),
        cpu,
        broker_rss_bytes,
        per_second: samples,
        args,
    };
    out.summary(&report, &human_summary(&report))?;
    Ok(report)
}

/// The error of the first task that failed.
async fn first_error(tasks: &mut JoinSet<anyhow::Result<u64>>) -> anyhow::Error {
    let mut found = None;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Err(e)) => {
                    found = Some(e);
                    break;
                }
                Err(e) => {
                    found = Some(anyhow!("task failed: {e}"));
                    break;
                }
                Ok(Ok(_)) => {}
            }
        }
    })
    .await;
    tasks.abort_all();
    found.unwrap_or_else(|| anyhow!("the run was stopped"))
}

fn progress_line(s: &Sample, args: &ThroughputArgs, h: &Histogram) -> String {
    let mut line = format!(
        "time {:5.1} s  sent {:>9} msg/s",
        s.t,
        report::rate(s.published)
    );
    if args.confirm.is_some() {
        line.push_str(&format!(
            "  confirmed {:>9} msg/s",
            report::rate(s.confirmed)
        ));
    }
    line.push_str(&format!("  received {:>9} msg/s", report::rate(s.consumed)));
    if !h.is_empty() {
        line.push_str(&format!(
            "  latency p50 {} p99 {} max {}",
            report::micros(s.p50_us),
            report::micros(s.p99_us),
            report::micros(h.max() as f64 / 1000.0)
        ));
    }
    line
}

fn rate_line(name: &str, r: &RateSummary) -> String {
    format!(
        "  {name:<10} median {:>9} msg/s  mean {:>9}  min {:>9}  max {:>9}  total {}",
        report::rate(r.median),
        report::rate(r.mean),
        report::rate(r.min),
        report::rate(r.max),
        r.total
    )
}

/// The human-readable summary of a run.
pub fn human_summary(r: &ThroughputReport) -> Vec<String> {
    let mut lines = vec![format!(
        "summary: {} producers, {} consumers, {} B bodies, {:.1} s against {}",
        r.args.producers, r.args.consumers, r.args.size, r.seconds, r.broker
    )];
    lines.push(rate_line("published", &r.published));
    if let Some(c) = &r.confirmed {
        lines.push(rate_line("confirmed", c));
        if r.nacked > 0 {
            lines.push(format!("  nacked     {}", r.nacked));
        }
    }
    lines.push(rate_line("consumed", &r.consumed));
    lines.push(format!(
        "  bytes      {}/s consumed (median)",
        report::bytes(r.consumed_bytes_per_s)
    ));
    if let Some(l) = &r.latency {
        lines.push(format!(
            "  latency    p50 {}  p95 {}  p99 {}  max {}  ({} samples)",
            report::micros(l.p50_us),
            report::micros(l.p95_us),
            report::micros(l.p99_us),
            report::micros(l.max_us),
            l.count
        ));
    }
    let mut cpu = format!(
        "  cpu        warren-perf {:.1} s ({:.0}% of a core)",
        r.cpu.tool_cpu_s, r.cpu.tool_core_pct
    );
    if let (Some(s), Some(p)) = (r.cpu.broker_cpu_s, r.cpu.broker_core_pct) {
        cpu.push_str(&format!(", broker {s:.1} s ({p:.0}% of a core)"));
    }
    cpu.push_str(&format!(
        ", other processes {:.0}% of a core",
        r.cpu.others_core_pct
    ));
    lines.push(cpu);
    if let Some(rss) = r.broker_rss_bytes {
        lines.push(format!("  broker rss {}", report::bytes(rss as f64)));
    }
    lines
}
