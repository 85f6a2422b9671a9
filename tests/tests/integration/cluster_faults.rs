//! Clustering under faults: `warren-server` processes whose distribution links each pass
//! through a fault-injecting proxy (`TestCluster::start_proxied`). A node partitioned from
//! the others (both directions), the whole cluster stopped and started again in every
//! order, a node killed with SIGKILL while thousands of definitions change, and links with
//! added latency.

use crate::cluster_common::{connect, json, status};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::time::{Duration, Instant};
use warren_tests::cluster::{ClusterNode, TestCluster};
use warren_tests::{eventually, unique, within};

async fn channel(node: &ClusterNode) -> (Connection, Channel) {
    let conn = connect(node).await;
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// The index of the Raft leader, as node `asked` sees it (waits until it knows one).
async fn leader_index(cluster: &TestCluster, asked: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(&cluster.nodes[asked]).await;
        let found = s["leader"]
            .as_str()
            .and_then(|l| cluster.nodes.iter().position(|n| n.name == l));
        if let Some(i) = found {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "node {} knows no leader: {s}",
            cluster.nodes[asked].name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sorted_names(nodes: &[&ClusterNode]) -> serde_json::Value {
    let mut v: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    v.sort();
    serde_json::json!(v)
}

async fn declare_durable(ch: &Channel, q: &str) -> Result<(), lapin::Error> {
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map(|_| ())
}

/// Declares `q` on a fresh connection to `node`.
async fn try_declare(node: &ClusterNode, q: &str) -> Result<(), lapin::Error> {
    let conn = Connection::connect(&node.uri(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let r = declare_durable(&ch, q).await;
    let _ = conn.close(200, "bye".into()).await;
    r
}

/// Publishes persistent messages to `q` through the default exchange, each confirmed.
async fn publish_persistent(ch: &Channel, q: &str, bodies: &[&str]) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for b in bodies {
        let confirm = ch
            .basic_publish(
                "".into(),
                q.into(),
                BasicPublishOptions::default(),
                b.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "publish to {q} confirmed");
    }
}

/// The message count of `q` as `node` reports it (a passive declare).
async fn message_count(node: &ClusterNode, q: &str) -> u32 {
    let (conn, ch) = channel(node).await;
    let info = ch
        .queue_declare(
            q.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("passive declare of {q} on {}: {e}", node.name));
    let _ = conn.close(200, "bye".into()).await;
    info.message_count()
}

/// The names of the queues `node` lists.
async fn queue_names(node: &ClusterNode) -> Vec<String> {
    let rows = json(
        &node
            .ctl_ok(&["list_queues", "name", "--formatter", "json"])
            .await,
    );
    rows.as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect()
}

/// Takes every message of `q` on `node` (basic.get, acked), in order.
async fn drain(node: &ClusterNode, q: &str) -> Vec<String> {
    let (conn, ch) = channel(node).await;
    let mut got = Vec::new();
    while let Some(m) = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        got.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    let _ = conn.close(200, "bye".into()).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_refuses_definitions_while_the_majority_continues_and_catches_up_after_heal(
) {
    let cluster = TestCluster::start_proxied(3).await;
    let nodes = &cluster.nodes;
    // Partition the leader: the majority has to elect another one.
    let m = leader_index(&cluster, 0).await;
    let (x, y) = ((m + 1) % 3, (m + 2) % 3);
    let (minority, a, b) = (&nodes[m], &nodes[x], &nodes[y]);
    let home_q = unique("part-home");
    {
        let (_conn, ch) = channel(minority).await;
        declare_durable(&ch, &home_q).await.expect("declare");
        publish_persistent(&ch, &home_q, &["m0", "m1"]).await;
    }

    cluster.partition(m);
    let cut_at = Instant::now();
    // The majority elects a leader and accepts definitions within seconds.
    let maj_q = unique("part-maj");
    let ok = eventually(Duration::from_secs(10), || async {
        try_declare(a, &maj_q).await.is_ok()
    })
    .await;
    assert!(ok, "the majority accepts a declaration within 10 s");
    let took = cut_at.elapsed();
    eprintln!("majority accepted definitions {took:?} after the partition");
    // A change forwarded to the cut-off leader goes to the new one once it is elected,
    // rather than waiting out the 5 s forwarding timeout.
    assert!(
        took < Duration::from_millis(4500),
        "majority accepted definitions only {took:?} after the partition"
    );
    let user = unique("part-user");
    b.ctl_ok(&["add_user", &user, "secret"]).await;
    let x_name = unique("part-x");
    {
        let (_conn, ch) = channel(b).await;
        ch.exchange_declare(
            x_name.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange on the majority");
        ch.queue_bind(
            maj_q.as_str().into(),
            x_name.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind on the majority");
    }

    // The minority notices, then refuses at once with the 541 text naming the majority.
    let noticed = eventually(Duration::from_secs(10), || async {
        status(minority).await["waiting_for"]
            .as_str()
            .is_some_and(|w| w.contains("no majority of disc nodes"))
    })
    .await;
    assert!(noticed, "{}", status(minority).await);
    let started = Instant::now();
    let err = try_declare(minority, &unique("part-refused"))
        .await
        .expect_err("the minority refuses a declaration");
    let took = started.elapsed();
    let text = err.to_string();
    assert!(took < Duration::from_secs(2), "refused after {took:?}");
    assert!(
        text.contains("INTERNAL_ERROR")
            && text.contains("no majority of disc nodes is reachable from node")
            && text.contains(&minority.name)
            && text.contains("2 of 3"),
        "{text}"
    );
    let out = minority.ctl(&["add_user", &unique("refused"), "x"]).await;
    assert_eq!(out.code, 70, "{out:?}");
    assert!(out.stderr.contains("no majority"), "{out:?}");

    // It keeps serving its own queue: publish and consume on it.
    {
        let (_conn, ch) = channel(minority).await;
        publish_persistent(&ch, &home_q, &["during"]).await;
        ch.basic_qos(10, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = ch
            .basic_consume(
                home_q.as_str().into(),
                "part-consumer".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume on the minority");
        use futures_lite::StreamExt;
        let mut got = Vec::new();
        for _ in 0..3 {
            let d = within(10, "delivery", consumer.next())
                .await
                .expect("a delivery")
                .expect("ok");
            got.push(String::from_utf8_lossy(&d.data).into_owned());
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        assert_eq!(got, ["m0", "m1", "during"]);
    }

    // Each side's cluster_status says what it sees.
    let s = status(minority).await;
    assert_eq!(s["running_nodes"], sorted_names(&[minority]), "{s}");
    assert!(s["waiting_for"].is_string(), "{s}");
    for n in [a, b] {
        let ok = eventually(Duration::from_secs(5), || async {
            let s = status(n).await;
            s["running_nodes"] == sorted_names(&[a, b])
                && s["waiting_for"].is_null()
                && (s["leader"] == a.name.as_str() || s["leader"] == b.name.as_str())
        })
        .await;
        assert!(ok, "status on {}: {}", n.name, status(n).await);
    }

    cluster.heal(m);
    let healed_at = Instant::now();
    // The minority catches up with what changed meanwhile and accepts changes again.
    let caught_up = eventually(Duration::from_secs(20), || async {
        queue_names(minority).await.contains(&maj_q)
            && minority.ctl_ok(&["list_users"]).await.contains(&user)
            && minority.ctl_ok(&["list_bindings"]).await.contains(&x_name)
    })
    .await;
    assert!(caught_up, "the healed node sees the majority's definitions");
    let vhost = unique("after-heal");
    let ok = eventually(Duration::from_secs(15), || async {
        minority.ctl(&["add_vhost", &vhost]).await.code == 0
    })
    .await;
    assert!(ok, "the healed node accepts definition changes");
    eprintln!(
        "the healed node caught up and accepted changes {:?} after the heal",
        healed_at.elapsed()
    );
    for n in [a, b] {
        assert!(n.ctl_ok(&["list_vhosts"]).await.contains(&vhost));
    }
    let all = sorted_names(&[minority, a, b]);
    for n in [minority, a, b] {
        let ok = eventually(Duration::from_secs(10), || async {
            let s = status(n).await;
            s["running_nodes"] == all && s["waiting_for"].is_null()
        })
        .await;
        assert!(ok, "status on {}: {}", n.name, status(n).await);
    }
    // Its queue is reachable from the others again.
    assert_eq!(message_count(a, &home_q).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_restarts_in_every_order_once_a_majority_of_disc_nodes_is_up() {
    let mut cluster = TestCluster::start_proxied(3).await;
    // A durable queue homed on each node, with persistent messages.
    let mut homes = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        let q = unique(&format!("order-home{i}"));
        let (_conn, ch) = channel(n).await;
        declare_durable(&ch, &q).await.expect("declare");
        publish_persistent(&ch, &q, &["p0", "p1", "p2"]).await;
        homes.push(q);
    }
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let mut declared: Vec<String> = Vec::new();
    for (round, order) in orders.iter().enumerate() {
        let leader = leader_index(&cluster, 0).await;
        for n in cluster.nodes.iter_mut() {
            n.stop().await;
        }
        // The first node up alone serves its own queue and refuses definitions.
        cluster.nodes[order[0]].start().await;
        let first = &cluster.nodes[order[0]];
        assert_eq!(message_count(first, &homes[order[0]]).await, 3);
        cluster.nodes[order[1]].start().await;
        let majority_up = Instant::now();
        let (first, second) = (&cluster.nodes[order[0]], &cluster.nodes[order[1]]);
        let q = unique(&format!("order-r{round}"));
        let ok = eventually(Duration::from_secs(10), || async {
            try_declare(second, &q).await.is_ok()
        })
        .await;
        assert!(
            ok,
            "round {round} (order {order:?}, leader before the stop: {leader}): no declaration accepted within 10 s of a majority being up"
        );
        eprintln!(
            "order {order:?} (leader before: {leader}): definitions accepted {:?} after the second node was up",
            majority_up.elapsed()
        );
        // Both nodes up serve both durable queues, from either node.
        for via in [first, second] {
            for home in [order[0], order[1]] {
                assert_eq!(
                    message_count(via, &homes[home]).await,
                    3,
                    "round {round}: queue homed on node {home} seen from {}",
                    via.name
                );
            }
        }
        cluster.nodes[order[2]].start().await;
        declared.push(q);
        let third = &cluster.nodes[order[2]];
        let caught_up = eventually(Duration::from_secs(15), || async {
            let names = queue_names(third).await;
            declared.iter().chain(&homes).all(|q| names.contains(q))
        })
        .await;
        assert!(caught_up, "round {round}: the last node up catches up");
        assert_eq!(message_count(third, &homes[order[2]]).await, 3);
        assert_eq!(message_count(third, &homes[order[0]]).await, 3);
    }
    // The messages are all there, in order, after six restarts.
    for (i, q) in homes.iter().enumerate() {
        assert_eq!(
            drain(&cluster.nodes[(i + 1) % 3], q).await,
            ["p0", "p1", "p2"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_catches_up_with_thousands_of_changes_made_while_it_was_down() {
    let mut cluster = TestCluster::start_proxied(3).await;
    let leader = leader_index(&cluster, 0).await;
    let victim = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let home_q = unique("killed-home");
    {
        let (_conn, ch) = channel(&cluster.nodes[victim]).await;
        declare_durable(&ch, &home_q).await.expect("declare");
        publish_persistent(&ch, &home_q, &["k0", "k1", "k2", "k3", "k4"]).await;
    }
    cluster.nodes[victim].kill();

    // 2,000 queue declarations (more than the snapshot interval: the survivors build
    // snapshots and purge the log the killed node would need), a user, some deletions.
    let prefix = unique("many");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..8 {
        let via = if c % 2 == 0 { leader } else { other };
        let conn = connect(&cluster.nodes[via]).await;
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            let ch = conn.create_channel().await.expect("channel");
            for i in (c..2000).step_by(8) {
                declare_durable(&ch, &format!("{prefix}-{i:04}"))
                    .await
                    .expect("declare while a node is down");
            }
            conn
        }));
    }
    let mut conns = Vec::new();
    for t in tasks {
        conns.push(t.await.expect("declaring task"));
    }
    eprintln!(
        "2000 declarations with a node down took {:?}",
        started.elapsed()
    );
    {
        let ch = conns[0].create_channel().await.expect("channel");
        for i in 0..10 {
            ch.queue_delete(
                format!("{prefix}-{i:04}").as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await
            .expect("delete");
        }
    }
    let user = unique("killed-user");
    cluster.nodes[other]
        .ctl_ok(&["add_user", &user, "pw"])
        .await;

    let restarted = Instant::now();
    cluster.nodes[victim].start().await;
    let v = &cluster.nodes[victim];
    let expected: Vec<String> = (10..2000).map(|i| format!("{prefix}-{i:04}")).collect();
    let caught_up = eventually(Duration::from_secs(30), || async {
        let names = queue_names(v).await;
        let mine: Vec<&String> = names.iter().filter(|n| n.starts_with(&prefix)).collect();
        mine.len() == expected.len() && v.ctl_ok(&["list_users"]).await.contains(&user)
    })
    .await;
    let names = queue_names(v).await;
    let mut mine: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    mine.sort();
    let users = v.ctl_ok(&["list_users"]).await;
    assert!(
        caught_up && mine == expected && users.contains(&user),
        "the restarted node has every change: {} of {} queues, users {users}",
        mine.len(),
        expected.len()
    );
    eprintln!(
        "the killed node caught up {:?} after its restart",
        restarted.elapsed()
    );
    // It serves: its own durable queue with its persistent messages, and new definitions.
    assert_eq!(message_count(v, &home_q).await, 5);
    assert_eq!(
        message_count(&cluster.nodes[leader], &home_q).await,
        5,
        "its queue is reachable from the others again"
    );
    let q = unique("killed-after");
    let ok = eventually(Duration::from_secs(10), || async {
        try_declare(v, &q).await.is_ok()
    })
    .await;
    assert!(ok, "the restarted node accepts definition changes");
    assert!(queue_names(&cluster.nodes[leader]).await.contains(&q));
    assert_eq!(drain(v, &home_q).await, ["k0", "k1", "k2", "k3", "k4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_replicate_over_slow_links_and_the_leader_stays_the_same() {
    let t = Instant::now();
    let cluster = TestCluster::start_proxied(3).await;
    eprintln!("cluster formed in {:?}", t.elapsed());
    let leader = leader_index(&cluster, 0).await;
    let leader_name = cluster.nodes[leader].name.clone();
    cluster.delay_links(Duration::from_millis(50));
    // Every connection is opened again over the slow links (authentication included).
    cluster.cut_links();
    // Declarations on every node (followers forward to the leader: several 100 ms round
    // trips each) replicate to every node.
    let mut declared = Vec::new();
    for n in &cluster.nodes {
        let (_conn, ch) = channel(n).await;
        for _ in 0..5 {
            let q = unique("slow");
            within(
                10,
                "a declaration over slow links",
                declare_durable(&ch, &q),
            )
            .await
            .expect("declare over slow links");
            declared.push(q);
        }
    }
    for n in &cluster.nodes {
        let ok = eventually(Duration::from_secs(10), || async {
            let names = queue_names(n).await;
            declared.iter().all(|q| names.contains(q))
        })
        .await;
        assert!(ok, "{} sees every declaration", n.name);
    }
    // A queue on one node used from another over the slow link.
    let q = declared[0].clone();
    {
        let (_conn, ch) = channel(&cluster.nodes[2]).await;
        publish_persistent(&ch, &q, &["s0", "s1"]).await;
    }
    assert_eq!(drain(&cluster.nodes[1], &q).await, ["s0", "s1"]);
    // No election for the whole time: every node names the same leader, sampled for a
    // few seconds.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        for n in &cluster.nodes {
            let s = status(n).await;
            assert_eq!(
                s["leader"],
                leader_name.as_str(),
                "the leader changed over slow links: {} says {s}",
                n.name
            );
            assert!(s["waiting_for"].is_null(), "{} says {s}", n.name);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
