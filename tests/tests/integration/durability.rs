//! Durability, with the broker in a child process: what a confirm promises survives `kill -9`
//! and a clean stop; definitions come back as RabbitMQ brings them back; long queues live on
//! disk rather than in memory.
//!
//! Guarantees checked here: a persistent message to a durable queue that was confirmed is
//! there after a restart, exactly once; an unconfirmed one may be missing (never duplicated,
//! as the publisher does not retry); a message acked before the crash (and settled by a
//! later synchronous round trip on its channel) does not come back; a message delivered and
//! not acked comes back with `redelivered` set; transient messages, transient queues and
//! exclusive queues do not survive.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::collections::{HashSet, VecDeque};
use std::time::Duration;
use warren_tests::process::{free_port, ServerProcess};
use warren_tests::within;

async fn connect(server: &ServerProcess) -> Connection {
    within(
        10,
        "connect",
        Connection::connect(&server.uri(), ConnectionProperties::default()),
    )
    .await
    .expect("connect")
}

async fn durable_queue(ch: &Channel, name: &str, args: FieldTable) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("declare durable queue");
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Takes every message with basic.get: (index in the body, redelivered).
async fn drain(ch: &Channel, queue: &str) -> Vec<(u32, bool)> {
    let mut out = Vec::new();
    loop {
        let got = within(
            10,
            "basic.get",
            ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get");
        let Some(msg) = got else {
            return out;
        };
        let body: [u8; 4] = msg.delivery.data[..4].try_into().expect("4-byte index");
        out.push((u32::from_be_bytes(body), msg.delivery.redelivered));
    }
}

/// Publishes `count` persistent messages with confirms, up to 256 outstanding, until done or
/// the broker goes away; returns the indexes the broker confirmed.
async fn publish_confirmed(ch: Channel, queue: String, count: u32) -> HashSet<u32> {
    let mut confirmed = HashSet::new();
    let mut window = VecDeque::new();
    for i in 0..count {
        let mut body = i.to_be_bytes().to_vec();
        body.resize(100, 0xAB);
        let Ok(pending) = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                persistent(),
            )
            .await
        else {
            break;
        };
        window.push_back((i, pending));
        if window.len() >= 256 {
            let (i, pending) = window.pop_front().expect("non-empty window");
            match pending.await {
                Ok(c) if c.is_ack() => {
                    confirmed.insert(i);
                }
                _ => break,
            }
        }
    }
    while let Some((i, pending)) = window.pop_front() {
        if let Ok(c) = pending.await {
            if c.is_ack() {
                confirmed.insert(i);
            }
        }
    }
    confirmed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_persistent_messages_survive_kill_9_at_random_moments() {
    // Kill delays in ms: different moments of the same publishing run.
    for (seed, kill_after_ms) in [(1u32, 150u64), (2, 400), (3, 900)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = ServerProcess::start(dir.path(), free_port()).await;
        let conn = connect(&server).await;
        let ch = conn.create_channel().await.expect("channel");
        let queue = format!("crash-{seed}");
        durable_queue(&ch, &queue, FieldTable::default()).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        let publisher = tokio::spawn(publish_confirmed(ch, queue.clone(), 50_000));
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        server.kill();
        let confirmed = within(30, "publisher ends", publisher)
            .await
            .expect("publisher task");
        drop(conn);

        server.restart().await;
        let conn = connect(&server).await;
        let ch = conn.create_channel().await.expect("channel");
        let got = drain(&ch, &queue).await;
        let ids: Vec<u32> = got.iter().map(|(i, _)| *i).collect();
        let unique: HashSet<u32> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "seed {seed}: no message twice");
        let lost: Vec<&u32> = confirmed.difference(&unique).collect();
        assert!(
            lost.is_empty(),
            "seed {seed}: {} confirmed messages lost (of {} confirmed), e.g. {:?}",
            lost.len(),
            confirmed.len(),
            &lost[..lost.len().min(5)]
        );
        assert!(
            !confirmed.is_empty(),
            "seed {seed}: the kill came before any confirm; the test proves nothing"
        );
        eprintln!(
            "seed {seed}: killed after {kill_after_ms} ms; {} confirmed, {} recovered",
            confirmed.len(),
            ids.len()
        );
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted, "seed {seed}: queue order kept");
        assert!(
            got.iter().all(|(_, redelivered)| !redelivered),
            "seed {seed}: never-delivered messages are not marked redelivered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_stay_gone_and_unacked_ones_come_back_redelivered_after_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ServerProcess::start(dir.path(), free_port()).await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    durable_queue(&ch, "consumed", FieldTable::default()).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let confirmed = publish_confirmed(ch.clone(), "consumed".into(), 2000).await;
    assert_eq!(confirmed.len(), 2000);

    let consumer_ch = conn.create_channel().await.expect("channel");
    consumer_ch
        .basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = consumer_ch
        .basic_consume(
            "consumed".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    // Ack the first 500, one by one; 100 more arrive and stay unacked (prefetch).
    for expected in 0..500u32 {
        let d = within(10, "delivery", consumer.next())
            .await
            .expect("a delivery")
            .expect("delivery ok");
        assert_eq!(&d.data[..4], &expected.to_be_bytes());
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    // A synchronous round trip on the channel: every ack before it has been handled.
    consumer_ch
        .basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos round trip");
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    drop(conn);

    server.restart().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    let got = drain(&ch, "consumed").await;
    let ids: Vec<u32> = got.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        ids,
        (500..2000).collect::<Vec<u32>>(),
        "acked ones gone, the rest in order"
    );
    for (i, redelivered) in got {
        assert_eq!(
            redelivered,
            i < 600,
            "message {i}: delivered before the crash (500..600) is redelivered, later ones are not"
        );
    }
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

async fn exists(conn: &Connection, queue: Option<&str>, exchange: Option<&str>) -> bool {
    let ch = conn.create_channel().await.expect("channel");
    let r = if let Some(q) = queue {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|_| ())
    } else {
        ch.exchange_declare(
            exchange.expect("a queue or an exchange").into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    };
    r.is_ok()
}

/// Declares a mix of durable and transient definitions and messages.
async fn declare_mix(conn: &Connection) {
    let ch = conn.create_channel().await.expect("channel");
    ch.exchange_declare(
        "d-topic".into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table(&[(
            "alternate-exchange",
            AMQPValue::LongString("amq.fanout".into()),
        )]),
    )
    .await
    .expect("durable exchange");
    ch.exchange_declare(
        "t-direct".into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("transient exchange");
    durable_queue(
        &ch,
        "d-queue",
        table(&[("x-max-length", AMQPValue::LongInt(1000))]),
    )
    .await;
    ch.queue_declare(
        "t-queue".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("transient queue");
    ch.queue_declare(
        "x-queue".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exclusive queue");
    for (queue, exchange, key) in [("d-queue", "d-topic", "a.#"), ("t-queue", "d-topic", "a.#")] {
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    }
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for (i, props) in [
        (0u32, persistent()),
        (1, BasicProperties::default()),
        (2, persistent()),
    ] {
        let c = ch
            .basic_publish(
                "d-topic".into(),
                "a.b".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(c.is_ack());
    }
}

async fn check_mix_after_restart(server: &ServerProcess) {
    let conn = connect(server).await;
    assert!(
        exists(&conn, Some("d-queue"), None).await,
        "durable queue back"
    );
    assert!(
        exists(&conn, None, Some("d-topic")).await,
        "durable exchange back"
    );
    assert!(
        !exists(&conn, Some("t-queue"), None).await,
        "transient queue gone"
    );
    assert!(
        !exists(&conn, Some("x-queue"), None).await,
        "exclusive queue gone"
    );
    assert!(
        !exists(&conn, None, Some("t-direct")).await,
        "transient exchange gone"
    );
    let ch = conn.create_channel().await.expect("channel");
    // Arguments came back: an equivalent redeclare works, a different one is refused.
    durable_queue(
        &ch,
        "d-queue",
        table(&[("x-max-length", AMQPValue::LongInt(1000))]),
    )
    .await;
    let got = drain(&ch, "d-queue").await;
    assert_eq!(
        got,
        vec![(0, false), (2, false)],
        "only the persistent messages"
    );
    // The binding came back: publishing through it still reaches the queue.
    ch.basic_publish(
        "d-topic".into(),
        "a.c".into(),
        BasicPublishOptions::default(),
        &7u32.to_be_bytes(),
        persistent(),
    )
    .await
    .expect("publish");
    assert_eq!(drain(&ch, "d-queue").await, vec![(7, false)]);
    let err = ch
        .queue_declare(
            "d-queue".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            table(&[("x-max-length", AMQPValue::LongInt(5))]),
        )
        .await
        .expect_err("inequivalent redeclare");
    assert!(
        err.to_string().contains("inequivalent arg 'x-max-length'"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_definitions_and_persistent_messages_survive_a_clean_stop() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ServerProcess::start(dir.path(), free_port()).await;
    let conn = connect(&server).await;
    declare_mix(&conn).await;
    server.stop();
    drop(conn);
    server.restart().await;
    check_mix_after_restart(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_definitions_and_persistent_messages_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ServerProcess::start(dir.path(), free_port()).await;
    let conn = connect(&server).await;
    declare_mix(&conn).await;
    server.kill();
    drop(conn);
    server.restart().await;
    check_mix_after_restart(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_durable_queue_stays_deleted_and_a_new_one_of_that_name_starts_empty() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ServerProcess::start(dir.path(), free_port()).await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    durable_queue(&ch, "again", FieldTable::default()).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let confirmed = publish_confirmed(ch.clone(), "again".into(), 10).await;
    assert_eq!(confirmed.len(), 10);
    ch.queue_delete("again".into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    durable_queue(&ch, "again", FieldTable::default()).await;
    ch.basic_publish(
        "".into(),
        "again".into(),
        BasicPublishOptions::default(),
        &99u32.to_be_bytes(),
        persistent(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    server.kill();
    drop(conn);
    server.restart().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    assert_eq!(drain(&ch, "again").await, vec![(99, false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_queue_keeps_its_bodies_on_disk_not_in_memory() {
    // 120,000 messages of 2 KiB: 234 MiB of bodies, published with no consumer.
    const COUNT: u32 = 120_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(dir.path(), free_port()).await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "long".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let mut window = VecDeque::new();
    for i in 0..COUNT {
        let mut body = i.to_be_bytes().to_vec();
        body.resize(2048, (i % 251) as u8);
        let pending = ch
            .basic_publish(
                "".into(),
                "long".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        window.push_back(pending);
        if window.len() > 512 {
            let c = window.pop_front().expect("window").await.expect("confirm");
            assert!(c.is_ack());
        }
    }
    for pending in window {
        assert!(pending.await.expect("confirm").is_ack());
    }
    let rss = server.rss_bytes().expect("read the broker's RSS");
    eprintln!(
        "broker RSS with {COUNT} x 2 KiB queued: {} MiB",
        rss / (1024 * 1024)
    );
    assert!(
        rss < 200 * 1024 * 1024,
        "broker RSS {} MiB with 234 MiB queued: bodies must be on disk",
        rss / (1024 * 1024)
    );
    // Everything comes back, in order, intact.
    ch.basic_qos(1000, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch
        .basic_consume(
            "long".into(),
            "drain".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for i in 0..COUNT {
        let d = within(30, "delivery", consumer.next())
            .await
            .expect("a delivery")
            .expect("delivery ok");
        assert_eq!(&d.data[..4], &i.to_be_bytes(), "message {i} in order");
        assert_eq!(d.data.len(), 2048);
        assert_eq!(d.data[2047], (i % 251) as u8);
    }
}

/// Bytes a directory tree takes on disk (allocated blocks, so sparse files count as written).
fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// The largest files under `dir`, for failure messages.
fn largest_files(dir: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if let Ok(m) = e.metadata() {
                if m.is_dir() {
                    stack.push(e.path());
                } else {
                    files.push((m.blocks() * 512, e.path()));
                }
            }
        }
    }
    files.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
    files
        .iter()
        .take(8)
        .map(|(size, path)| format!("{} KiB {}", size / 1024, path.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Publishes `count` messages of 4 KiB with confirms, up to 512 outstanding. The bodies are
/// incompressible (each starts with its index), so disk figures are what messages really take.
async fn publish_incompressible(ch: &Channel, queue: &str, count: u32, props: BasicProperties) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let mut window = VecDeque::new();
    for i in 0..count {
        let mut body = i.to_be_bytes().to_vec();
        let mut x = u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        while body.len() < 4096 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            body.extend_from_slice(&x.to_le_bytes());
        }
        let pending = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await
            .expect("publish");
        window.push_back(pending);
        if window.len() > 512 {
            assert!(window
                .pop_front()
                .expect("window")
                .await
                .expect("confirm")
                .is_ack());
        }
    }
    for pending in window {
        assert!(pending.await.expect("confirm").is_ack());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_space_comes_back_after_a_queue_is_drained() {
    // 20,000 persistent messages of 4 KiB: 78 MiB of bodies.
    const COUNT: u32 = 20_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(dir.path(), free_port()).await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    durable_queue(&ch, "reclaim", FieldTable::default()).await;
    publish_incompressible(&ch, "reclaim", COUNT, persistent()).await;
    let full = disk_usage(dir.path());
    let drained = drain(&ch, "reclaim").await;
    assert_eq!(drained.len(), COUNT as usize);
    assert_disk_shrinks(dir.path(), full, COUNT).await;
}

/// Waits (up to 30 s) for the store under `dir` to use less than half of `full` bytes, as
/// it must once the `count` messages of 4 KiB it held are consumed.
async fn assert_disk_shrinks(dir: &std::path::Path, full: u64, count: u32) {
    let reclaimed = warren_tests::eventually(Duration::from_secs(30), || async {
        disk_usage(dir) < full / 2
    })
    .await;
    let after = disk_usage(dir);
    eprintln!(
        "store on disk: {} MiB with {count} x 4 KiB queued, {} MiB after draining",
        full / (1024 * 1024),
        after / (1024 * 1024)
    );
    assert!(
        reclaimed,
        "disk use went from {full} to {after} bytes after draining: the space must come back; \
         files: {}",
        largest_files(dir)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_space_comes_back_after_a_paged_out_backlog_is_drained_and_the_queue_stays() {
    // 30,000 transient messages of 4 KiB (117 MiB) to a transient queue with no consumer:
    // what does not fit in the queue's memory (32 MiB) is paged out to the store.
    const COUNT: u32 = 30_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(dir.path(), free_port()).await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "paged".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    publish_incompressible(&ch, "paged", COUNT, BasicProperties::default()).await;
    // Paged-out bodies are confirmed before they reach the disk: wait for most of them.
    let paged = warren_tests::eventually(Duration::from_secs(30), || async {
        disk_usage(dir.path()) > 64 * 1024 * 1024
    })
    .await;
    let full = disk_usage(dir.path());
    assert!(paged, "only {full} bytes on disk with 117 MiB queued");
    let drained = drain(&ch, "paged").await;
    assert_eq!(drained.len(), COUNT as usize);
    assert!(
        drained.iter().enumerate().all(|(i, (n, _))| *n == i as u32),
        "messages come back in order"
    );
    // The queue is still there: its loaded-back records must still leave the disk.
    assert_disk_shrinks(dir.path(), full, COUNT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_at_the_journal_tail_is_dropped_and_the_node_starts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ServerProcess::start(dir.path(), free_port()).await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    durable_queue(&ch, "torn", FieldTable::default()).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let confirmed = publish_confirmed(ch, "torn".into(), 500).await;
    assert_eq!(confirmed.len(), 500);
    server.kill();
    drop(conn);
    // A half-written record after the last good one, as a crash during a write leaves it.
    let journals: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path().join("store"))
        .expect("store dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .collect();
    let newest = journals.iter().max().expect("a journal file");
    let len = std::fs::metadata(newest).expect("journal").len();
    let mut bytes = std::fs::read(newest).expect("read journal");
    // The journal is preallocated; the garbage goes right after the written part.
    let end = bytes
        .iter()
        .rposition(|b| *b != 0)
        .map(|p| p + 1)
        .unwrap_or(0);
    for (i, b) in bytes.iter_mut().skip(end).take(37).enumerate() {
        *b = 0x5A ^ (i as u8);
    }
    std::fs::write(newest, &bytes).expect("write journal");
    assert_eq!(std::fs::metadata(newest).expect("journal").len(), len);

    server.restart().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    let got: HashSet<u32> = drain(&ch, "torn")
        .await
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        got, confirmed,
        "every confirmed message survives the torn tail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_node_can_be_started_again_on_its_data_dir_after_shutdown() {
    let dir = tempfile::tempdir().expect("temp dir");
    for round in 0..3u32 {
        let node = warren_broker::Broker::start(warren_broker::Config::for_tests(dir.path()))
            .await
            .unwrap_or_else(|e| panic!("start {round}: {e}"));
        let conn = Connection::connect(
            &format!("amqp://guest:guest@{}/%2f", node.local_addr()),
            ConnectionProperties::default(),
        )
        .await
        .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        durable_queue(&ch, "kept", FieldTable::default()).await;
        ch.basic_publish(
            "".into(),
            "kept".into(),
            BasicPublishOptions::default(),
            &round.to_be_bytes(),
            persistent(),
        )
        .await
        .expect("publish");
        let count = ch
            .queue_declare(
                "kept".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count();
        assert_eq!(count, round + 1, "round {round}: earlier messages are back");
        // The client is still connected: shutdown closes it and releases the store.
        within(20, "shutdown", node.shutdown()).await;
    }
}
