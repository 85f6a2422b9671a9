//! Clustering: nodes on one machine formed into a cluster with `warrenctl join_cluster`,
//! definitions replicated through Raft (declared on one node, seen on all), the cookie
//! checked between nodes, a minority refusing definition changes at once while it keeps
//! serving its queues, and whole-cluster restarts in any order.

use crate::cluster_common::{connect, json, status};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::time::{Duration, Instant};
use warren_tests::cluster::{ClusterNode, TestCluster};
use warren_tests::{eventually, unique, within};

async fn queue_names(node: &ClusterNode) -> Vec<(String, String)> {
    let out = node
        .ctl_ok(&["list_queues", "name", "node", "--formatter", "json"])
        .await;
    let rows = json(&out);
    let mut v: Vec<(String, String)> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r["node"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

async fn sees_queue(node: &ClusterNode, q: &str, home: &str) -> bool {
    queue_names(node)
        .await
        .contains(&(q.to_string(), home.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_and_replicate_definitions() {
    let cluster = TestCluster::start(3).await;
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    // Every node reports the same members and running nodes.
    let mut names = vec![a.name.clone(), b.name.clone(), c.name.clone()];
    names.sort();
    let expected = serde_json::json!(names);
    for n in [a, b, c] {
        let ok = eventually(Duration::from_secs(10), || async {
            let s = status(n).await;
            s["disk_nodes"] == expected && s["running_nodes"] == expected
        })
        .await;
        assert!(ok, "cluster_status on {}: {}", n.name, status(n).await);
    }
    let (sa, sb, sc) = (status(a).await, status(b).await, status(c).await);
    assert_eq!(sa, sb);
    assert_eq!(sb, sc);
    assert_eq!(sa["ram_nodes"], serde_json::json!([]));
    let table = b.ctl_ok(&["cluster_status"]).await;
    assert!(table.contains("Disk Nodes"), "{table}");
    assert!(
        table.contains(&a.name) && table.contains(&c.name),
        "{table}"
    );

    // A queue, an exchange and a binding declared on A are seen on B and C; the queue's
    // home is A.
    let q = unique("repl");
    let x = unique("repl-x");
    let conn = connect(a).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare on A");
    ch.exchange_declare(
        x.as_str().into(),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange on A");
    ch.queue_bind(
        q.as_str().into(),
        x.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind on A");
    for n in [b, c] {
        assert!(sees_queue(n, &q, &a.name).await, "{} lists {q}", n.name);
        let xs = n.ctl_ok(&["list_exchanges", "name"]).await;
        assert!(xs.contains(&x), "{} lists {x}: {xs}", n.name);
        let bs = n.ctl_ok(&["list_bindings"]).await;
        assert!(
            bs.contains(&x) && bs.contains(&q),
            "{} lists the binding: {bs}",
            n.name
        );
    }
    // A user added through warrenctl on C can log in on A.
    c.ctl_ok(&["add_user", "carol", "secret"]).await;
    c.ctl_ok(&["set_permissions", "carol", ".*", ".*", ".*"])
        .await;
    let uri = format!("amqp://carol:secret@127.0.0.1:{}/%2f", a.amqp_port);
    within(
        10,
        "carol connects to A",
        Connection::connect(&uri, ConnectionProperties::default()),
    )
    .await
    .expect("carol logs in on A");
    // Deleting on B removes it everywhere.
    b.ctl_ok(&["delete_queue", &q]).await;
    for n in [a, b, c] {
        assert!(!queue_names(n).await.iter().any(|(name, _)| *name == q));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_cookie_is_refused() {
    let cluster = TestCluster::standalone(1).await;
    let dir = tempfile::tempdir().expect("dir");
    let other_cookie = dir.path().join("other.cookie");
    let mut stranger = ClusterNode::new(dir.path(), &unique("stranger"), other_cookie);
    stranger.start().await;
    stranger.ctl_ok(&["stop_app"]).await;
    let target = cluster.nodes[0].node_arg();
    let out = stranger.ctl(&["join_cluster", &target]).await;
    assert_eq!(out.code, 69, "{out:?}");
    assert!(
        out.stderr.contains("cookie does not match"),
        "the refusal names the cookie: {}",
        out.stderr
    );
    // Nothing was deleted or changed: the stranger starts as it was, the target is alone.
    stranger.ctl_ok(&["start_app"]).await;
    let s = status(&cluster.nodes[0]).await;
    assert_eq!(s["disk_nodes"], serde_json::json!([cluster.nodes[0].name]));
    stranger.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_refuses_definition_changes_at_once_and_serves_its_queues() {
    let mut cluster = TestCluster::start(3).await;
    // A queue homed on C, with messages.
    let q = unique("minority");
    {
        let c = &cluster.nodes[2];
        let conn = connect(c).await;
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare on C");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        for i in 0..3 {
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        }
    }
    cluster.nodes[0].stop().await;
    cluster.nodes[1].stop().await;
    let c = &cluster.nodes[2];
    // A definition change fails quickly with an error naming the missing majority.
    let conn = connect(c).await;
    let ch = conn.create_channel().await.expect("channel");
    let started = Instant::now();
    let err = ch
        .queue_declare(
            unique("refused").as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("a minority refuses a declaration");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(7),
        "refused after {elapsed:?}"
    );
    let text = format!("{err}");
    assert!(
        text.contains("no majority of disc nodes") && text.contains("2 of 3"),
        "the error names the missing majority: {text}"
    );
    // The queue homed on C still serves: publish and get on a new connection.
    let conn = connect(c).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_publish(
        "".into(),
        q.as_str().into(),
        BasicPublishOptions::default(),
        b"during",
        BasicProperties::default(),
    )
    .await
    .expect("publish on the minority");
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
            .expect("a message");
        got.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    assert_eq!(got, ["m0", "m1", "m2", "during"]);
    // cluster_status and await_startup say what the node waits for.
    let waiting = eventually(Duration::from_secs(5), || async {
        let s = status(c).await;
        s["running_nodes"] == serde_json::json!([c.name])
            && s["waiting_for"]
                .as_str()
                .is_some_and(|w| w.contains("majority"))
    })
    .await;
    assert!(waiting, "{}", status(c).await);
    let out = c.ctl_ok(&["await_startup"]).await;
    assert!(out.contains("waiting for a majority"), "{out}");
    // A majority back: changes are accepted again.
    cluster.nodes[0].start().await;
    let c = &cluster.nodes[2];
    let ok = eventually(Duration::from_secs(15), || async {
        c.ctl(&["add_vhost", "after-majority"]).await.code == 0
    })
    .await;
    assert!(ok, "definition changes are accepted with a majority back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_restarts_in_any_order() {
    let mut cluster = TestCluster::start(3).await;
    let q = unique("restart");
    {
        let b = &cluster.nodes[1];
        let conn = connect(b).await;
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare on B");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"kept",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    for n in cluster.nodes.iter_mut() {
        n.stop().await;
    }
    // The first node stopped comes back last; B (the queue's home) first, alone: it serves
    // its queue before any peer is up.
    cluster.nodes[1].start().await;
    {
        let b = &cluster.nodes[1];
        let conn = connect(b).await;
        let ch = conn.create_channel().await.expect("channel");
        let m = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .expect("get")
            .expect("the durable message survived");
        assert_eq!(&m.delivery.data[..], b"kept");
        m.delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .expect("requeue");
    }
    cluster.nodes[2].start().await;
    let b = &cluster.nodes[1];
    let ok = eventually(Duration::from_secs(15), || async {
        b.ctl(&["add_vhost", "after-restart"]).await.code == 0
    })
    .await;
    assert!(ok, "C and B form a majority and accept changes");
    cluster.nodes[0].start().await;
    let a = &cluster.nodes[0];
    let ok = eventually(Duration::from_secs(15), || async {
        a.ctl_ok(&["list_vhosts"]).await.contains("after-restart")
    })
    .await;
    assert!(ok, "A catches up with what changed while it was down");
    assert!(sees_queue(a, &q, &cluster.nodes[1].name).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_on_one_node_is_used_from_the_others_in_order_with_acks_and_prefetch() {
    let cluster = TestCluster::start(3).await;
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    let q = unique("remote");
    let conn_a = connect(a).await;
    let ch_a = conn_a.create_channel().await.expect("channel");
    ch_a.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare on A");
    assert!(sees_queue(b, &q, &a.name).await);

    // Publish 50 persistent messages on B, confirmed once A has them.
    let conn_b = connect(b).await;
    let ch_b = conn_b.create_channel().await.expect("channel");
    ch_b.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut confirms = Vec::new();
    for i in 0..50 {
        confirms.push(
            ch_b.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish on B"),
        );
    }
    for c in confirms {
        assert!(c.await.expect("confirm").is_ack(), "acked by the home node");
    }
    // The home node counts them; a passive declare on C sees them too.
    let info = ch_a
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive on A");
    assert_eq!(info.message_count(), 50);
    let conn_c = connect(c).await;
    let ch_c = conn_c.create_channel().await.expect("channel");
    let info = ch_c
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive on C");
    assert_eq!(info.message_count(), 50);

    // Consume on C with prefetch 5: never more than 5 unacked, all in order.
    ch_c.basic_qos(5, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch_c
        .basic_consume(
            q.as_str().into(),
            "c-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume on C");
    use futures_lite::StreamExt;
    let mut got = Vec::new();
    let mut held = Vec::new();
    // Take 5 without acking: a sixth does not come.
    for _ in 0..5 {
        let d = within(10, "delivery", consumer.next())
            .await
            .expect("a delivery")
            .expect("ok");
        got.push(String::from_utf8_lossy(&d.data).into_owned());
        held.push(d);
    }
    let sixth = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
    assert!(sixth.is_err(), "prefetch 5 holds the sixth back");
    let out = a
        .ctl_ok(&[
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .await;
    let line = out.lines().find(|l| l.starts_with(&q)).expect("listed");
    assert!(
        line.ends_with("45  5")
            || line.split_whitespace().collect::<Vec<_>>() == [q.as_str(), "45", "5"],
        "{line}"
    );
    // Nack the first with requeue: it comes back, redelivered, after the others in flight.
    let first = held.remove(0);
    first
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .expect("nack");
    got.remove(0);
    for d in held {
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let mut redelivered = None;
    while got.len() < 50 {
        let d = within(10, "delivery", consumer.next())
            .await
            .expect("a delivery")
            .expect("ok");
        let body = String::from_utf8_lossy(&d.data).into_owned();
        if d.redelivered {
            assert_eq!(body, "0");
            redelivered = Some(body.clone());
        }
        got.push(body);
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert_eq!(
        redelivered.as_deref(),
        Some("0"),
        "the nacked message came back"
    );
    let mut in_order: Vec<String> = got.iter().filter(|b| *b != "0").cloned().collect();
    let expected: Vec<String> = (1..50).map(|i| i.to_string()).collect();
    assert_eq!(in_order.len(), 49);
    in_order.truncate(49);
    assert_eq!(in_order, expected, "order per queue is kept");
    assert!(
        eventually(Duration::from_secs(5), || async {
            let out = a.ctl_ok(&["list_queues", "name", "messages"]).await;
            out.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [q.as_str(), "0"])
        })
        .await,
        "every message acked on the home node"
    );

    // basic.get on B, purge on C, delete on B (the consumer on C cancelled first).
    ch_c.basic_cancel("c-consumer".into(), BasicCancelOptions::default())
        .await
        .expect("cancel on C");
    ch_b.basic_publish(
        "".into(),
        q.as_str().into(),
        BasicPublishOptions::default(),
        b"get-me",
        BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    let m = ch_b
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get on B")
        .expect("a message");
    assert_eq!(&m.delivery.data[..], b"get-me");
    m.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack the get");
    for _ in 0..3 {
        ch_b.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"purge-me",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    let conn_c2 = connect(c).await;
    let ch_c2 = conn_c2.create_channel().await.expect("channel");
    let purged = ch_c2
        .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
        .await
        .expect("purge on C");
    assert_eq!(purged, 3);
    drop(consumer);
    let deleted = ch_b
        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete on B");
    assert_eq!(deleted, 0);
    for n in [a, b, c] {
        assert!(!queue_names(n).await.iter().any(|(name, _)| *name == q));
    }
}
