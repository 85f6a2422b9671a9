//! warren-perf's scenarios end to end against an in-process broker: messages flow, the
//! counters and latencies add up, and every scenario cleans up after itself.

use warren_tests::perf::args::{Cli, Command};
use warren_tests::perf::{backlog, connections, queues, throughput};
use warren_tests::{within, TestBroker};

fn command(args: &[&str]) -> Command {
    use clap::Parser;
    Cli::try_parse_from(std::iter::once("warren-perf").chain(args.iter().copied()))
        .expect("valid arguments")
        .command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_with_confirms_and_acks_counts_every_message() {
    let broker = TestBroker::start().await;
    let pid = std::process::id().to_string();
    let Command::Throughput(args) = command(&[
        "throughput",
        "--uri",
        broker.uri(),
        "--time",
        "1",
        "--confirm",
        "100",
        "--qos",
        "100",
        "--multi-ack-every",
        "10",
        "--broker-pid",
        &pid,
    ]) else {
        panic!("expected throughput");
    };
    let r = within(30, "throughput run", throughput::run(args))
        .await
        .expect("run");
    assert!(r.published.total > 0, "nothing published: {r:?}");
    assert!(r.consumed.total > 0, "nothing consumed: {r:?}");
    let confirmed = r.confirmed.expect("confirm rates");
    assert!(confirmed.total > 0 && confirmed.total <= r.published.total);
    // With a window of 100, at most 100 messages are unconfirmed at the end.
    assert!(r.published.total - confirmed.total <= 100);
    let latency = r.latency.expect("16-byte bodies carry a timestamp");
    assert!(latency.count > 0 && latency.count <= r.consumed.total);
    assert!(latency.p50_us <= latency.p99_us && latency.p99_us <= latency.max_us);
    assert!(r.cpu.broker_cpu_s.is_some());
    assert!(r.broker_rss_bytes.is_some());
    assert_eq!(r.nacked, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_each_message_to_every_queue() {
    let broker = TestBroker::start().await;
    let Command::Throughput(args) = command(&[
        "throughput",
        "--uri",
        broker.uri(),
        "--time",
        "1",
        "-y",
        "3",
        "--exchange-type",
        "fanout",
        "--queues",
        "3",
        "--autoack",
        "--rate",
        "500",
    ]) else {
        panic!("expected throughput");
    };
    let r = within(30, "fanout run", throughput::run(args))
        .await
        .expect("run");
    // Paced at 500/s for one second, then every queue's consumer drains its copy.
    assert!(
        (400..=700).contains(&r.published.total),
        "published {}",
        r.published.total
    );
    assert!(r.consumed.total >= 2 * r.published.total);
    assert!(r.consumed.total <= 3 * r.published.total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_queues_and_backlog_scenarios_complete() {
    let broker = TestBroker::start().await;
    let Command::Connections(args) = command(&[
        "connections",
        "--uri",
        broker.uri(),
        "--count",
        "20",
        "--hold",
        "0",
    ]) else {
        panic!("expected connections");
    };
    let r = within(30, "connections run", connections::run(args))
        .await
        .expect("run");
    assert!(r.open_rate > 0.0 && r.close_rate > 0.0);

    let Command::Queues(args) = command(&["queues", "--uri", broker.uri(), "--count", "20"]) else {
        panic!("expected queues");
    };
    let r = within(30, "queues run", queues::run(args))
        .await
        .expect("run");
    assert!(r.declare_bind_rate > 0.0 && r.delete_rate > 0.0);

    let pid = std::process::id().to_string();
    let Command::Backlog(args) = command(&[
        "backlog",
        "--uri",
        broker.uri(),
        "--messages",
        "5000",
        "--broker-pid",
        &pid,
    ]) else {
        panic!("expected backlog");
    };
    let r = within(60, "backlog run", backlog::run(args))
        .await
        .expect("run");
    assert!(r.publish_rate > 0.0 && r.drain_rate > 0.0);
    assert!(r.rss_peak_bytes >= r.rss_before_bytes);
}
