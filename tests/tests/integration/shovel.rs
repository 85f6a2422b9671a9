//! Shovels between two brokers: every message published at the source arrives at the
//! destination while links are cut (a fault-injecting proxy), while the destination or the
//! source node is killed and restarted, and duplicates stay within the in-flight window;
//! bad definitions are refused naming the key; static shovels, `delete-after`,
//! `connection.blocked`, warrenctl's `shovel_status`/`delete_shovel`/`restart_shovel`, and
//! the standalone `warren-shovel` binary.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use warren_tests::process::{free_port, shovel_binary, warrenctl_binary, ServerProcess};
use warren_tests::proxy::Proxy;
use warren_tests::{eventually, unique, within, TestBroker};

async fn connect(uri: &str) -> Connection {
    Connection::connect(uri, ConnectionProperties::default())
        .await
        .expect("connect")
}

async fn declare(uri: &str, queue: &str) {
    let c = connect(uri).await;
    let ch = c.create_channel().await.expect("channel");
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let _ = c.close(200, "bye".into()).await;
}

/// Publishes messages `from..to` (the body is the number) with confirms, persistent.
async fn publish(uri: &str, queue: &str, from: u32, to: u32) {
    let c = connect(uri).await;
    let ch = c.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut pending = Vec::new();
    for i in from..to {
        let body = i.to_string();
        pending.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish"),
        );
        if pending.len() >= 200 {
            for p in pending.drain(..) {
                assert!(p.await.expect("confirm").is_ack(), "the source confirmed");
            }
        }
    }
    for p in pending {
        assert!(p.await.expect("confirm").is_ack(), "the source confirmed");
    }
    let _ = c.close(200, "bye".into()).await;
}

/// Consumes from `queue` until every number below `n` was seen; returns how often each was.
async fn collect(uri: &str, queue: &str, n: u32, secs: u64) -> HashMap<u32, u32> {
    let c = connect(uri).await;
    let ch = c.create_channel().await.expect("channel");
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "check".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut seen: HashMap<u32, u32> = HashMap::new();
    let got = tokio::time::timeout(Duration::from_secs(secs), async {
        while (seen.len() as u32) < n {
            let d = consumer.next().await.expect("a delivery").expect("ok");
            let i: u32 = std::str::from_utf8(&d.data)
                .expect("utf8")
                .parse()
                .expect("a number");
            *seen.entry(i).or_default() += 1;
        }
    })
    .await;
    // Late duplicates (redeliveries of what was in flight) are counted too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(Some(Ok(d))) =
        tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
    {
        if let Ok(i) = std::str::from_utf8(&d.data).unwrap_or("x").parse::<u32>() {
            *seen.entry(i).or_default() += 1;
        }
    }
    let _ = c.close(200, "bye".into()).await;
    assert!(
        got.is_ok(),
        "only {} of {n} messages arrived within {secs} s",
        seen.len()
    );
    seen
}

fn duplicates(seen: &HashMap<u32, u32>) -> u32 {
    seen.values().map(|c| c - 1).sum()
}

fn shovel_def(src: &str, src_queue: &str, dest: &str, dest_queue: &str, prefetch: u32) -> Value {
    json!({
        "src-uri": src,
        "src-queue": src_queue,
        "dest-uri": dest,
        "dest-queue": dest_queue,
        "src-prefetch-count": prefetch,
        "reconnect-delay": 0.1,
    })
}

/// warrenctl against a server process.
fn ctl(server: &ServerProcess, args: &[&str]) -> std::process::Output {
    std::process::Command::new(warrenctl_binary())
        .arg("-n")
        .arg(format!("warren@127.0.0.1:{}", server.dist_port()))
        .args(args)
        .env("WARREN_COOKIE_FILE", server.cookie_file())
        .output()
        .expect("run warrenctl")
}

fn status_of(broker: &TestBroker, name: &str) -> Option<Value> {
    let shared = broker.shared()?;
    let status = shared.shovels.get()?.status();
    status
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| serde_json::to_value(s).expect("status is JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_confirm_loses_nothing_when_links_are_cut_and_refused_mid_stream() {
    let (src, dst) = (TestBroker::start().await, TestBroker::start().await);
    if src.is_external() {
        return;
    }
    let (psrc, pdst) = (
        Proxy::start(src.addr()).await,
        Proxy::start(dst.addr()).await,
    );
    let (qs, qd, name) = (unique("sh-src"), unique("sh-dst"), unique("cut"));
    declare(src.uri(), &qs).await;
    declare(dst.uri(), &qd).await;
    let n = 3000;
    let prefetch = 100;
    let def = shovel_def(&psrc.uri(), &qs, &pdst.uri(), &qd, prefetch).to_string();
    src.admin_ok(&["set_parameter", "shovel", &name, &def])
        .await;
    let publisher = {
        let uri = src.uri().to_owned();
        let qs = qs.clone();
        tokio::spawn(async move { publish(&uri, &qs, 0, n).await })
    };
    // Faults while messages flow: cut the source link, the destination link, both, then
    // refuse the destination for a while.
    let mut cuts = 0;
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        match round % 3 {
            0 => psrc.cut(),
            1 => pdst.cut(),
            _ => {
                psrc.cut();
                pdst.cut();
            }
        }
        cuts += 1;
    }
    pdst.refuse(true);
    pdst.cut();
    cuts += 1;
    tokio::time::sleep(Duration::from_millis(500)).await;
    pdst.refuse(false);
    within(30, "publishing", publisher)
        .await
        .expect("publisher");
    let seen = collect(dst.uri(), &qd, n, 40).await;
    assert_eq!(seen.len() as u32, n, "every message arrived");
    // Each failure can duplicate at most the window in flight (one per link cut at once).
    let dups = duplicates(&seen);
    assert!(
        dups <= 2 * cuts * prefetch,
        "{dups} duplicates exceed the in-flight window"
    );
    let st = status_of(&src, &name).expect("the shovel has a status");
    assert!(st["reconnects"].as_u64().unwrap_or(0) >= 1, "{st}");
    assert!(
        st["last_error"].is_string(),
        "the last error is shown: {st}"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            status_of(&src, &name).is_some_and(|s| s["state"] == "running")
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_confirm_loses_nothing_when_the_destination_is_killed_and_restarted() {
    let src = TestBroker::start().await;
    if src.is_external() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut dst = ServerProcess::start(dir.path(), free_port()).await;
    let (qs, qd, name) = (unique("sh-src"), unique("sh-dst"), unique("dest-restart"));
    declare(src.uri(), &qs).await;
    declare(&dst.uri(), &qd).await;
    let n = 2000;
    publish(src.uri(), &qs, 0, n).await;
    let def = shovel_def("amqp://", &qs, &dst.uri(), &qd, 200).to_string();
    src.admin_ok(&["set_parameter", "shovel", &name, &def])
        .await;
    // Kill the destination while the shovel is moving the backlog.
    assert!(
        eventually(Duration::from_secs(10), || async {
            status_of(&src, &name).is_some_and(|s| s["forwarded"].as_u64().unwrap_or(0) > 0)
        })
        .await,
        "the shovel started forwarding"
    );
    dst.restart().await;
    let seen = collect(&dst.uri(), &qd, n, 40).await;
    assert_eq!(seen.len() as u32, n, "every message arrived");
    assert!(duplicates(&seen) <= 200, "duplicates within the window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_shovel_survives_a_restart_of_its_node_and_loses_nothing() {
    let dst = TestBroker::start().await;
    if dst.is_external() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut src = ServerProcess::start(dir.path(), free_port()).await;
    let (qs, qd, name) = (unique("sh-src"), unique("sh-dst"), unique("node-restart"));
    declare(&src.uri(), &qs).await;
    let n = 2000;
    publish(&src.uri(), &qs, 0, n).await;
    let def = shovel_def("amqp://", &qs, dst.uri(), &qd, 100).to_string();
    let out = ctl(&src, &["set_parameter", "shovel", &name, &def]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            let out = ctl(&src, &["shovel_status", "--formatter", "json"]);
            String::from_utf8_lossy(&out.stdout).contains("\"running\"")
        })
        .await,
        "the shovel runs"
    );
    // SIGKILL the node that runs the shovel and holds the source queue.
    src.restart().await;
    let seen = collect(dst.uri(), &qd, n, 40).await;
    assert_eq!(seen.len() as u32, n, "every message arrived");
    assert!(duplicates(&seen) <= 100, "duplicates within the window");
    let out = ctl(&src, &["shovel_status", "--formatter", "json"]);
    let rows: Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    assert_eq!(rows[0]["name"], json!(name), "{rows}");
    assert_eq!(rows[0]["type"], "dynamic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_are_refused_naming_the_key_and_start_nothing() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    let good = || json!({"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "dest-queue": "b"});
    let mut cases = Vec::new();
    let mut with = |key: &str, v: Value, expect: &str| {
        let mut d = good();
        d[key] = v;
        cases.push((d, expect.to_owned()));
    };
    with("src-fish", json!(1), "src-fish");
    with("src-exchange", json!("x"), "src-exchange");
    with("dest-exchange", json!("x"), "dest-exchange");
    with("src-uri", json!("amqp://a b"), "src-uri");
    with("src-prefetch-count", json!(-5), "src-prefetch-count");
    let mut missing = good();
    missing.as_object_mut().map(|o| o.remove("dest-uri"));
    cases.push((missing, "dest-uri".into()));
    let mut missing = good();
    missing.as_object_mut().map(|o| o.remove("src-queue"));
    cases.push((missing, "src-queue".into()));
    for (def, key) in cases {
        let out = broker
            .admin(&["set_parameter", "shovel", "bad", &def.to_string()])
            .await;
        assert_ne!(out.code, 0, "{def} was accepted");
        assert!(
            out.stderr.contains(&key),
            "the error for {def} names {key}: {}",
            out.stderr
        );
    }
    let params = broker.admin_ok(&["list_parameters"]).await;
    assert!(!params.contains("bad"), "nothing was stored: {params}");
    let status = broker
        .admin_ok(&["shovel_status", "--formatter", "json"])
        .await;
    let status: Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(status, json!([]), "no shovel started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_shovels_start_from_the_config_and_are_restarted_and_deleted_by_warrenctl() {
    let broker = TestBroker::start_with(|c| {
        c.shovels = vec![json!({
            "name": "from-config",
            "src-uri": "amqp://",
            "src-queue": "static-src",
            "dest-uri": "amqp://",
            "dest-queue": "static-dst",
            "dest-add-forward-headers": true,
            "reconnect-delay": 0.1,
        })];
    })
    .await;
    if broker.is_external() {
        return;
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            status_of(&broker, "from-config").is_some_and(|s| s["state"] == "running")
        })
        .await,
        "the static shovel runs"
    );
    publish(broker.uri(), "static-src", 0, 10).await;
    let c = connect(broker.uri()).await;
    let ch = c.create_channel().await.expect("channel");
    let mut consumer = ch
        .basic_consume(
            "static-dst".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let d = within(10, "a shovelled message", consumer.next())
        .await
        .expect("delivery")
        .expect("ok");
    let headers = d.properties.headers().clone().expect("headers");
    assert!(
        headers.inner().contains_key("x-shovelled"),
        "forward headers are added"
    );
    let table = broker
        .admin_ok(&["shovel_status", "--formatter", "json"])
        .await;
    let rows: Value = serde_json::from_str(&table).expect("JSON");
    assert_eq!(rows[0]["type"], "static");
    assert_eq!(rows[0]["state"], "running");
    let plain = broker.admin_ok(&["shovel_status"]).await;
    assert!(plain.contains("from-config"), "{plain}");
    let metrics = warren_tests::http::request(
        broker.http_addr().expect("http port"),
        "GET",
        "/metrics",
        None,
        None,
    )
    .await;
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l.starts_with("warren_shovel_forwarded_total")
                && l.contains("shovel=\"from-config\"")),
        "per-shovel metrics: {}",
        metrics.body
    );

    broker.admin_ok(&["restart_shovel", "from-config"]).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            status_of(&broker, "from-config")
                .is_some_and(|s| s["state"] == "running" && s["forwarded"] == 0)
        })
        .await,
        "restarted: running again with fresh counters"
    );
    broker.admin_ok(&["delete_shovel", "from-config"]).await;
    assert!(status_of(&broker, "from-config").is_none(), "deleted");
    let out = broker.admin(&["delete_shovel", "from-config"]).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_queue_length_moves_the_backlog_then_clears_the_parameter() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    let (qs, qd, name) = (unique("sh-src"), unique("sh-dst"), unique("once"));
    declare(broker.uri(), &qs).await;
    publish(broker.uri(), &qs, 0, 50).await;
    let def = json!({
        "src-uri": "amqp://", "src-queue": qs, "src-delete-after": "queue-length",
        "dest-uri": "amqp://", "dest-queue": qd, "src-prefetch-count": 7,
    });
    broker
        .admin_ok(&["set_parameter", "shovel", &name, &def.to_string()])
        .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            !broker.admin_ok(&["list_parameters"]).await.contains(&name)
        })
        .await,
        "the parameter is cleared when the shovel is done"
    );
    publish(broker.uri(), &qs, 50, 60).await;
    let seen = collect(broker.uri(), &qd, 50, 10).await;
    assert_eq!(seen.len(), 50, "exactly the backlog moved: {seen:?}");
    assert!(seen.keys().all(|i| *i < 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_destination_pauses_the_shovel_which_resumes_when_unblocked() {
    let (src, dst) = (TestBroker::start().await, TestBroker::start().await);
    if src.is_external() {
        return;
    }
    let (qs, qd, name) = (unique("sh-src"), unique("sh-dst"), unique("blocked"));
    declare(src.uri(), &qs).await;
    declare(dst.uri(), &qd).await;
    let def = shovel_def("amqp://", &qs, dst.uri(), &qd, 50).to_string();
    src.admin_ok(&["set_parameter", "shovel", &name, &def])
        .await;
    publish(src.uri(), &qs, 0, 10).await;
    let _ = collect(dst.uri(), &qd, 10, 10).await;
    let shared = dst.shared().expect("in-process").clone();
    shared.set_disk_free_limit(u64::MAX);
    publish(src.uri(), &qs, 10, 500).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            status_of(&src, &name).is_some_and(|s| s["state"] == "blocked")
        })
        .await,
        "the shovel shows blocked: {:?}",
        status_of(&src, &name)
    );
    let st = status_of(&src, &name).expect("status");
    assert!(st["in_flight"].as_u64().unwrap_or(0) <= 50, "bounded: {st}");
    shared.set_disk_free_limit(0);
    let seen = collect(dst.uri(), &qd, 490, 20).await;
    assert!((10..500).all(|i| seen.contains_key(&i)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_publish_and_no_ack_forward_everything_when_nothing_fails() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    for mode in ["on-publish", "no-ack"] {
        let (qs, qd, name) = (unique("sh-src"), unique("sh-dst"), unique(mode));
        declare(broker.uri(), &qs).await;
        declare(broker.uri(), &qd).await;
        let mut def = shovel_def("amqp://", &qs, "amqp://", &qd, 100);
        def["ack-mode"] = json!(mode);
        broker
            .admin_ok(&["set_parameter", "shovel", &name, &def.to_string()])
            .await;
        publish(broker.uri(), &qs, 0, 1000).await;
        let seen = collect(broker.uri(), &qd, 1000, 20).await;
        assert_eq!(
            duplicates(&seen),
            0,
            "{mode}: no duplicates without failures"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_binary_moves_messages_between_two_brokers() {
    let (src, dst) = (TestBroker::start().await, TestBroker::start().await);
    if src.is_external() {
        return;
    }
    let (qs, qd) = (unique("sh-src"), unique("sh-dst"));
    declare(src.uri(), &qs).await;
    declare(dst.uri(), &qd).await;
    publish(src.uri(), &qs, 0, 500).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("shovels.toml");
    std::fs::write(
        &file,
        format!(
            "[[shovel]]\nname = \"standalone\"\nsrc-uri = \"{}\"\nsrc-queue = \"{qs}\"\ndest-uri = [\"amqp://guest:guest@127.0.0.1:1/%2f\", \"{}\"]\ndest-queue = \"{qd}\"\n",
            src.uri(),
            dst.uri()
        ),
    )
    .expect("write config");
    let bin = tokio::task::block_in_place(shovel_binary);
    let mut child = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(&file)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start warren-shovel");
    let seen = collect(dst.uri(), &qd, 500, 20).await;
    assert_eq!(seen.len(), 500);
    let _ = child.kill().await;

    // A bad file is refused before anything starts, naming the key.
    std::fs::write(
        &file,
        "[[shovel]]\nname = \"bad\"\nsrc-uri = \"amqp://h\"\nsrc-queue = \"q\"\nsrc-exchange = \"x\"\ndest-uri = \"amqp://h\"\n",
    )
    .expect("write config");
    let out = tokio::process::Command::new(shovel_binary())
        .arg("--config")
        .arg(&file)
        .output()
        .await
        .expect("run warren-shovel");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("src-exchange"));
}

/// With RabbitMQ 3.10 (a node of the tests' own, shared by these tests): Warren's shovel
/// with RabbitMQ as source and as destination, RabbitMQ's shovel plugin moving messages
/// into and out of Warren, and RabbitMQ's shovel parameters imported into Warren as they are.
mod rabbitmq {
    use super::*;
    use warren_tests::rabbit::RabbitNode;

    fn rabbit() -> &'static RabbitNode {
        tokio::task::block_in_place(RabbitNode::shared)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn warren_shovels_move_messages_from_and_to_rabbitmq() {
        let warren = TestBroker::start().await;
        if warren.is_external() {
            return;
        }
        let rabbit = rabbit();
        let (rq_in, wq_in) = (unique("rmq-src"), unique("w-dst"));
        let (wq_out, rq_out) = (unique("w-src"), unique("rmq-dst"));
        declare(&rabbit.uri(), &rq_in).await;
        declare(warren.uri(), &wq_in).await;
        declare(warren.uri(), &wq_out).await;
        declare(&rabbit.uri(), &rq_out).await;
        publish(&rabbit.uri(), &rq_in, 0, 500).await;
        publish(warren.uri(), &wq_out, 0, 500).await;
        let from = shovel_def(&rabbit.uri(), &rq_in, "amqp://", &wq_in, 100).to_string();
        let to = shovel_def("amqp://", &wq_out, &rabbit.uri(), &rq_out, 100).to_string();
        warren
            .admin_ok(&["set_parameter", "shovel", "from-rabbit", &from])
            .await;
        warren
            .admin_ok(&["set_parameter", "shovel", "to-rabbit", &to])
            .await;
        assert_eq!(collect(warren.uri(), &wq_in, 500, 20).await.len(), 500);
        assert_eq!(collect(&rabbit.uri(), &rq_out, 500, 20).await.len(), 500);
        for q in [&rq_in, &rq_out] {
            rabbit.ctl(&["delete_queue", q]);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_shovel_plugin_moves_messages_into_and_out_of_warren_and_its_definitions_import(
    ) {
        let warren = TestBroker::start().await;
        if warren.is_external() {
            return;
        }
        let rabbit = rabbit();
        let (rq_in, wq_in) = (unique("rmq-src"), unique("w-dst"));
        let (wq_out, rq_out) = (unique("w-src"), unique("rmq-dst"));
        declare(&rabbit.uri(), &rq_in).await;
        declare(warren.uri(), &wq_in).await;
        declare(warren.uri(), &wq_out).await;
        declare(&rabbit.uri(), &rq_out).await;
        let (into, out_of) = (unique("into-warren"), unique("out-of-warren"));
        let d1 = shovel_def("amqp://", &rq_in, warren.uri(), &wq_in, 100);
        let d2 = shovel_def(warren.uri(), &wq_out, "amqp://", &rq_out, 100);
        for (name, def) in [(&into, &d1), (&out_of, &d2)] {
            let mut def = def.clone();
            // RabbitMQ takes whole seconds.
            def["reconnect-delay"] = json!(1);
            let out = tokio::task::block_in_place(|| {
                rabbit.ctl(&["set_parameter", "shovel", name, &def.to_string()])
            });
            assert!(out.status.success(), "{out:?}");
        }
        publish(&rabbit.uri(), &rq_in, 0, 500).await;
        publish(warren.uri(), &wq_out, 0, 500).await;
        assert_eq!(collect(warren.uri(), &wq_in, 500, 30).await.len(), 500);
        assert_eq!(collect(&rabbit.uri(), &rq_out, 500, 30).await.len(), 500);

        // RabbitMQ's export, shovel parameters included, imports into Warren as it is.
        let export = rabbit.dir.join(format!("{into}.json"));
        let path = export.display().to_string();
        let out = tokio::task::block_in_place(|| rabbit.ctl(&["export_definitions", &path]));
        assert!(out.status.success(), "{out:?}");
        let text = std::fs::read_to_string(&export).expect("the export");
        let other = TestBroker::start().await;
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), &text).expect("write");
        other
            .admin_ok(&["import_definitions", &file.path().display().to_string()])
            .await;
        let status = other
            .admin_ok(&["shovel_status", "--formatter", "json"])
            .await;
        let rows: Value = serde_json::from_str(&status).expect("JSON");
        let names: Vec<&str> = rows
            .as_array()
            .expect("rows")
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(
            names.contains(&into.as_str()) && names.contains(&out_of.as_str()),
            "{rows}"
        );
        other.admin_ok(&["delete_shovel", &into]).await;
        other.admin_ok(&["delete_shovel", &out_of]).await;
        tokio::task::block_in_place(|| {
            for name in [&into, &out_of] {
                rabbit.ctl(&["clear_parameter", "shovel", name]);
            }
            for q in [&rq_in, &rq_out] {
                rabbit.ctl(&["delete_queue", q]);
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqps_destination_is_reached_with_the_uri_tls_options_and_a_client_certificate() {
    use warren_broker::config::{TlsConfig, TlsVerify, TlsVersion};
    use warren_tests::certs::TestCa;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("Warren shovel CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let server = ca.server(dir.path());
    let client = ca.client(dir.path(), "shovel", "Warren");
    let dst = TestBroker::start_with(|c| {
        c.tls = Some(TlsConfig {
            bind: None,
            port: 0,
            certfile: server.cert_file.clone(),
            keyfile: server.key_file.clone(),
            cacertfile: Some(ca_file.clone()),
            verify: TlsVerify::VerifyPeer,
            fail_if_no_peer_cert: true,
            versions: vec![TlsVersion::Tls13, TlsVersion::Tls12],
        });
    })
    .await;
    let src = TestBroker::start().await;
    if src.is_external() {
        return;
    }
    let (qs, qd, name) = (unique("sh-src"), unique("sh-dst"), unique("tls"));
    declare(src.uri(), &qs).await;
    declare(dst.uri(), &qd).await;
    let port = dst.tls_addr().expect("a TLS listener").port();
    let uri = format!(
        "amqps://guest:guest@localhost:{port}/%2f?cacertfile={}&certfile={}&keyfile={}&verify=verify_peer&server_name_indication=localhost",
        ca_file.display(),
        client.cert_file.display(),
        client.key_file.display()
    );
    let def = shovel_def("amqp://", &qs, &uri, &qd, 100).to_string();
    src.admin_ok(&["set_parameter", "shovel", &name, &def])
        .await;
    publish(src.uri(), &qs, 0, 100).await;
    assert_eq!(collect(dst.uri(), &qd, 100, 20).await.len(), 100);
    let st = status_of(&src, &name).expect("status");
    assert!(
        !st["source"].as_str().unwrap_or("").contains(":guest@")
            && !st["destination"].as_str().unwrap_or("").contains(":guest@"),
        "passwords are hidden: {st}"
    );
}
