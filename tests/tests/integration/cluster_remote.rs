//! Queues reached from other cluster nodes: a stream of publishes on one node to a queue
//! homed on another, consumed on a third, in order and exactly once; a remote consumer's
//! unacked deliveries requeued when it goes; and a home node killed mid-stream (nacks,
//! returns, RabbitMQ's "home node down" 404, then the queue back with its confirmed
//! messages once the node restarts).

use futures_lite::StreamExt;
use lapin::message::BasicReturnMessage;
use lapin::options::*;

use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::time::Duration;
use warren_tests::cluster::{ClusterNode, TestCluster};
use warren_tests::process::{free_port, ServerProcess};
use warren_tests::{eventually, unique, within};

async fn connect_uri(uri: &str) -> Connection {
    within(
        10,
        "connect",
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {uri}: {e}"))
}

async fn connect(node: &ClusterNode) -> Connection {
    connect_uri(&node.uri()).await
}

async fn declare_durable(ch: &Channel, q: &str) {
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare the queue on its home node");
}

/// Waits until `node` routes to `q` (the queue record replicated there).
async fn wait_visible(node: &ClusterNode, q: &str) {
    let shared = node.shared().expect("node runs");
    let ok = eventually(Duration::from_secs(10), || {
        let shared = shared.clone();
        async move { shared.vhost("/").and_then(|v| v.queue(q)).is_some() }
    })
    .await;
    assert!(ok, "{} sees queue {q}", node.name);
}

fn seq_of(body: &[u8]) -> u64 {
    std::str::from_utf8(body)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a body holds a sequence number: {body:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_b_consume_on_c_of_a_queue_on_a_delivers_100k_in_order_exactly_once() {
    const N: u64 = 100_000;
    let cluster = TestCluster::start(3).await;
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    let q = unique("stream");
    let conn_a = connect(a).await;
    declare_durable(&conn_a.create_channel().await.expect("channel"), &q).await;
    wait_visible(b, &q).await;
    wait_visible(c, &q).await;

    // The consumer on C: manual acks, every 100th multiple, qos 1000.
    let conn_c = connect(c).await;
    let ch_c = conn_c.create_channel().await.expect("channel");
    ch_c.basic_qos(1000, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch_c
        .basic_consume(
            q.as_str().into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume on C");
    let consuming = tokio::spawn(async move {
        let mut next = 0u64;
        while next < N {
            let d = within(20, "the next delivery", consumer.next())
                .await
                .expect("the consumer stream stays open")
                .expect("a delivery");
            let seq = seq_of(&d.data);
            assert_eq!(seq, next, "deliveries come in publish order, each once");
            assert!(!d.redelivered, "nothing is redelivered");
            next += 1;
            if next.is_multiple_of(100) {
                d.acker
                    .ack(BasicAckOptions { multiple: true })
                    .await
                    .expect("ack");
            }
        }
        ch_c
    });

    // The publisher on B: confirms, at most 1000 unconfirmed.
    let conn_b = connect(b).await;
    let ch_b = conn_b.create_channel().await.expect("channel");
    ch_b.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut window: VecDeque<PublisherConfirm> = VecDeque::new();
    let mut acked = 0u64;
    for i in 0..N {
        let confirm = ch_b
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                i.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish on B");
        window.push_back(confirm);
        if window.len() >= 1000 {
            let c = window.pop_front().expect("non-empty");
            assert!(c.await.expect("confirm").is_ack(), "the home queue took it");
            acked += 1;
        }
    }
    for c in window {
        assert!(c.await.expect("confirm").is_ack(), "the home queue took it");
        acked += 1;
    }
    assert_eq!(acked, N);
    let ch_c = within(60, "consume all", consuming)
        .await
        .expect("the consumer saw every message in order");

    // Nothing left over, nothing unacked.
    let out = a
        .ctl_ok(&[
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "--formatter",
            "json",
        ])
        .await;
    let rows: serde_json::Value = serde_json::from_str(&out).expect("json");
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == q.as_str()))
        .cloned()
        .expect("the queue is listed");
    assert_eq!(row["messages_ready"], 0, "{row}");
    assert_eq!(row["messages_unacknowledged"], 0, "{row}");
    ch_c.close(200, "bye".into()).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_consumer_closing_mid_stream_has_its_unacked_requeued_for_the_next() {
    const N: u64 = 2_000;
    let cluster = TestCluster::start(3).await;
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    let q = unique("requeue");
    let conn_a = connect(a).await;
    declare_durable(&conn_a.create_channel().await.expect("channel"), &q).await;
    wait_visible(b, &q).await;
    wait_visible(c, &q).await;

    let conn_b = connect(b).await;
    let ch_b = conn_b.create_channel().await.expect("channel");
    ch_b.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut confirms = Vec::new();
    for i in 0..N {
        confirms.push(
            ch_b.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                i.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish"),
        );
    }
    for c in confirms {
        let c = within(10, "a confirm", c).await;
        assert!(c.expect("confirm").is_ack());
    }

    // The first consumer on C acks 500, holds 50 more unacked, and closes its channel.
    let conn_c = connect(c).await;
    let first = conn_c.create_channel().await.expect("channel");
    first
        .basic_qos(50, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = first
        .basic_consume(
            q.as_str().into(),
            "first".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut acked = BTreeSet::new();
    let mut held = Vec::new();
    while acked.len() < 500 || held.len() < 50 {
        let d = within(10, "delivery", consumer.next())
            .await
            .expect("open")
            .expect("delivery");
        let seq = seq_of(&d.data);
        if acked.len() < 500 {
            d.acker.ack(BasicAckOptions::default()).await.expect("ack");
            acked.insert(seq);
        } else {
            held.push(seq);
        }
    }
    first.close(200, "going".into()).await.expect("close");

    // The next consumer (on B this time) gets everything else, the held ones marked
    // redelivered.
    let next = conn_b.create_channel().await.expect("channel");
    let mut consumer = next
        .basic_consume(
            q.as_str().into(),
            "next".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut rest = Vec::new();
    while (rest.len() as u64) < N - 500 {
        let d = within(10, "delivery", consumer.next())
            .await
            .expect("open")
            .expect("delivery");
        let seq = seq_of(&d.data);
        assert_eq!(
            d.redelivered,
            held.contains(&seq),
            "exactly the requeued deliveries are marked redelivered ({seq})"
        );
        rest.push(seq);
    }
    let mut all: BTreeSet<u64> = acked;
    for s in rest {
        assert!(all.insert(s), "message {s} delivered once after its ack");
    }
    assert_eq!(all.len() as u64, N, "every message delivered");
    let extra = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(extra.is_err(), "nothing more: {extra:?}");
}

/// The home node as a real process, so that it can be killed with SIGKILL.
struct HomeProcess {
    name: String,
    port: u16,
    dist_port: u16,
    cookie: std::path::PathBuf,
    process: Option<ServerProcess>,
}

impl HomeProcess {
    async fn start(&mut self, data: &Path) {
        let (name, dist, cookie) = (
            self.name.clone(),
            self.dist_port.to_string(),
            self.cookie.clone(),
        );
        self.process = Some(
            ServerProcess::start_with(data, self.port, move |cmd| {
                cmd.env("WARREN_NODENAME", name)
                    .env("WARREN_DIST_PORT", dist)
                    .env("WARREN_COOKIE_FILE", cookie);
            })
            .await,
        );
    }

    fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn node_arg(&self) -> String {
        format!("{}:{}", self.name, self.dist_port)
    }
}

async fn join(node: &ClusterNode, target: &str) {
    node.ctl_ok(&["stop_app"]).await;
    node.ctl_ok(&["join_cluster", target]).await;
    node.ctl_ok(&["start_app"]).await;
}

/// Publishes `body` with confirms and mandatory; the confirm and any return.
async fn publish_mandatory(
    ch: &Channel,
    q: &str,
    body: &[u8],
) -> (bool, Option<BasicReturnMessage>) {
    let confirm = ch
        .basic_publish(
            "".into(),
            q.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let acked = confirm.is_ack();
    (acked, confirm.take_message())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_home_node_nacks_in_flight_publishes_returns_mandatory_and_comes_back() {
    // B and C in this process, A (the queue's home) a process to kill.
    let mut cluster = TestCluster::standalone(2).await;
    let tag = unique("h");
    let tag = tag.rsplit('-').next().unwrap_or("x").to_string();
    let data_a = cluster.dir.path().join("home-a");
    std::fs::create_dir_all(&data_a).expect("data dir");
    let mut home = HomeProcess {
        name: format!("home{tag}@localhost"),
        port: free_port(),
        dist_port: free_port(),
        cookie: cluster.nodes[0].cookie_file.clone(),
        process: None,
    };
    within(30, "start the home node", home.start(&data_a)).await;
    let target = home.node_arg();
    within(60, "join B and C to A", async {
        join(&cluster.nodes[0], &target).await;
        join(&cluster.nodes[1], &target).await;
    })
    .await;
    let [b, c] = &mut cluster.nodes[..] else {
        unreachable!()
    };
    let q = unique("homedown");
    let conn_a = connect_uri(&home.uri()).await;
    declare_durable(&conn_a.create_channel().await.expect("channel"), &q).await;
    wait_visible(b, &q).await;
    wait_visible(c, &q).await;

    // A consumer on C that asked for cancel notifications (lapin does).
    let conn_c = connect(c).await;
    let ch_c = conn_c.create_channel().await.expect("channel");
    ch_c.basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch_c
        .basic_consume(
            q.as_str().into(),
            "watcher".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume on C");
    // It holds 10 unacked; everything else stays in the queue.

    // A stream of persistent publishes on B, confirms pipelined.
    let conn_b = connect(b).await;
    let ch_b = conn_b.create_channel().await.expect("channel");
    ch_b.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut confirmed = BTreeSet::new();
    let mut nacked = 0u64;
    let mut window: VecDeque<(u64, PublisherConfirm)> = VecDeque::new();
    let mut killed = false;
    let mut i = 0u64;
    // Publish until A was killed and a nack came back.
    while !(killed && nacked > 0) {
        assert!(i < 2_000_000, "a nack comes back after the kill");
        let confirm = ch_b
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                i.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publishing goes on: the channel stays open");
        window.push_back((i, confirm));
        i += 1;
        while window.len() > 200 || (killed && !window.is_empty()) {
            let (seq, c) = window.pop_front().expect("non-empty");
            match within(10, "a confirm", c).await.expect("confirm") {
                Confirmation::Ack(_) => {
                    confirmed.insert(seq);
                }
                Confirmation::Nack(_) => nacked += 1,
                Confirmation::NotRequested => unreachable!(),
            }
        }
        if !killed && confirmed.len() >= 2_000 {
            home.process.as_mut().expect("runs").kill();
            killed = true;
        }
    }
    assert!(
        ch_b.status().connected(),
        "the publishing channel stays open"
    );

    // C's consumer is cancelled (basic.cancel): its stream ends.
    let ended = within(10, "basic.cancel on C", async {
        loop {
            match consumer.next().await {
                None => return true,
                Some(Ok(_)) => continue,
                Some(Err(_)) => return false,
            }
        }
    })
    .await;
    assert!(ended, "the consumer was cancelled");

    // Once B knows A is gone: a mandatory publish is returned 312 NO_ROUTE and nacked.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let returned = loop {
        let (acked, r) = publish_mandatory(&ch_b, &q, b"x").await;
        assert!(
            !acked || r.is_none(),
            "never confirmed and returned at once"
        );
        if let Some(r) = r {
            assert!(!acked, "a message no live queue took is nacked");
            break Some(r);
        }
        if tokio::time::Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = returned.expect("returned");
    assert_eq!(r.reply_code, 312);
    assert_eq!(r.reply_text.as_str(), "NO_ROUTE");

    // A passive declare of the queue fails with RabbitMQ's text.
    let probe = conn_c.create_channel().await.expect("channel");
    let err = probe
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("the home node is down");
    let text = err.to_string();
    let expected = format!(
        "NOT_FOUND - home node '{}' of durable queue '{q}' in vhost '/' is down or inaccessible",
        home.name
    );
    assert!(text.contains(&expected), "{text}");
    assert!(
        ch_b.status().connected(),
        "the publishing channel is still open"
    );

    // A comes back: publishing from B is confirmed again, and C consumes every confirmed
    // message.
    within(30, "restart the home node", home.start(&data_a)).await;
    let ok = eventually(Duration::from_secs(15), || {
        let (ch, q) = (ch_b.clone(), q.clone());
        async move { matches!(publish_mandatory(&ch, &q, b"after").await, (true, None)) }
    })
    .await;
    assert!(ok, "publishing from B works again");
    let ch = conn_c.create_channel().await.expect("channel");
    let mut consumer = ch
        .basic_consume(
            q.as_str().into(),
            "again".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume again on C");
    let mut seen = BTreeSet::new();
    let mut afters = 0;
    let all = within(20, "every confirmed message", async {
        while !confirmed.is_subset(&seen) || afters == 0 {
            let d = consumer.next().await.expect("open").expect("delivery");
            match std::str::from_utf8(&d.data) {
                Ok("after") => afters += 1,
                Ok("x") => {}
                _ => {
                    seen.insert(seq_of(&d.data));
                }
            }
        }
        true
    })
    .await;
    assert!(all, "every confirmed message survived the kill");
}
