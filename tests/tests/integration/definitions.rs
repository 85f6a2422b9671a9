//! Definitions in RabbitMQ's JSON format: a file exported by RabbitMQ 3.10.8
//! (`tests/fixtures/rabbitmq-3.10.8-definitions.json`: users with SHA-256 and SHA-512
//! hashes and tags and limits, a vhost with metadata and limits, permissions, topic
//! permissions, a policy, a vhost parameter, a global parameter, queues, exchanges and
//! bindings) imports as is, exports back to the same definitions, works (logins, routing),
//! survives a restart, and loads at boot with `load_definitions`.

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;
use std::path::{Path, PathBuf};
use warren_tests::process::{free_port, ServerProcess};
use warren_tests::{within, TestBroker};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rabbitmq-3.10.8-definitions.json")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("JSON")
}

/// The definitions as comparable sets: each section sorted, the writer's version fields
/// left out, and RabbitMQ's one quirk normalized (vhost tags written as one
/// comma-separated string by its CLI, a list everywhere else).
fn normalized(mut d: Value) -> Value {
    let obj = d.as_object_mut().expect("an object");
    for k in [
        "rabbit_version",
        "rabbitmq_version",
        "product_name",
        "product_version",
    ] {
        obj.remove(k);
    }
    if let Some(Value::Array(vhosts)) = obj.get_mut("vhosts") {
        for v in vhosts {
            if let Some(tags) = v.pointer_mut("/metadata/tags") {
                if let Value::String(s) = tags {
                    *tags = Value::Array(
                        s.split(',')
                            .filter(|t| !t.is_empty())
                            .map(|t| Value::String(t.to_string()))
                            .collect(),
                    );
                }
            }
        }
    }
    for (_, section) in obj.iter_mut() {
        if let Value::Array(items) = section {
            items.sort_by_key(|a| a.to_string());
        }
    }
    d
}

async fn import_fixture(broker: &TestBroker) {
    broker
        .admin_ok(&[
            "import_definitions",
            fixture().to_str().expect("utf-8 path"),
        ])
        .await;
}

async fn connect(broker: &TestBroker, user: &str, pass: &str, vhost: &str) -> Connection {
    within(
        10,
        "connect",
        Connection::connect(
            &broker.uri_for(user, pass, vhost),
            ConnectionProperties::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{user} logs in: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_export_imports_and_exports_as_the_same_definitions() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    import_fixture(&broker).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("export.json");
    broker
        .admin_ok(&["export_definitions", out.to_str().expect("utf-8 path")])
        .await;
    let exported = read_json(&out);
    assert_eq!(exported["product_name"], "Warren");
    let original = normalized(read_json(&fixture()));
    let again = normalized(exported);
    for section in [
        "users",
        "vhosts",
        "permissions",
        "topic_permissions",
        "parameters",
        "global_parameters",
        "policies",
        "queues",
        "exchanges",
        "bindings",
    ] {
        assert_eq!(
            again[section], original[section],
            "section {section} differs after the round trip"
        );
    }
    assert_eq!(again, original);
    // Importing the export again changes nothing.
    broker
        .admin_ok(&["import_definitions", out.to_str().expect("utf-8 path")])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_users_log_in_and_imported_bindings_route() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    import_fixture(&broker).await;
    // Passwords of the fixture's users (a SHA-256 hash and a SHA-512 one, made by RabbitMQ).
    let admin = connect(&broker, "fx-admin", "admin-secret", "warren-fixture").await;
    connect(&broker, "fx-policy", "policy-secret", "warren-fixture").await;
    // fx-monitor may only read ^fx-.* and configure nothing.
    let monitor = connect(&broker, "fx-monitor", "monitor-secret", "warren-fixture").await;
    let mch = monitor.create_channel().await.expect("channel");
    let e = mch
        .queue_declare("mine".into(), Default::default(), FieldTable::default())
        .await
        .expect_err("no configure permission");
    assert!(
        matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 403),
        "{e:?}"
    );
    let ch = admin.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for key in ["order.new", "audit.login", "order.x.urgent", "nothing.here"] {
        ch.basic_publish(
            "fx-events".into(),
            key.into(),
            BasicPublishOptions::default(),
            key.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    let get = |q: &'static str| {
        let ch = ch.clone();
        async move {
            ch.basic_get(q.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("get")
                .map(|m| String::from_utf8_lossy(&m.delivery.data).into_owned())
        }
    };
    // order.* and order.#.urgent to fx-orders; audit.# through the fx-audit exchange; the
    // rest to the alternate exchange fx-unrouted and its queue.
    assert_eq!(get("fx-orders").await.as_deref(), Some("order.new"));
    assert_eq!(get("fx-orders").await.as_deref(), Some("order.x.urgent"));
    assert_eq!(get("fx-audit-log").await.as_deref(), Some("audit.login"));
    assert_eq!(get("fx-unrouted-q").await.as_deref(), Some("nothing.here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_definitions_survive_a_restart_and_load_definitions_imports_at_boot() {
    if TestBroker::start().await.is_external() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("warren.toml");
    std::fs::write(
        &config,
        format!(
            "load_definitions = \"{}\"\n",
            fixture().to_str().expect("utf-8 path")
        ),
    )
    .expect("write");
    let port = free_port();
    let mut server = ServerProcess::start_with(&dir.path().join("data"), port, |cmd| {
        cmd.arg("--config").arg(&config);
    })
    .await;
    let ctl = |server: &ServerProcess, args: &[&str]| {
        let out = std::process::Command::new(warren_tests::process::warrenctl_binary())
            .arg("-n")
            .arg(format!("warren@127.0.0.1:{}", server.dist_port()))
            .args(args)
            .env("WARREN_COOKIE_FILE", server.cookie_file())
            .output()
            .expect("run warrenctl");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = ctl(&server, &["export_definitions", "-"]);
    let queues = ctl(&server, &["list_queues", "-p", "warren-fixture", "name"]);
    assert!(queues.contains("fx-orders"), "{queues}");
    // A restart replays the log (and imports the file again, which changes nothing).
    server.stop();
    server = ServerProcess::start_with(&dir.path().join("data"), port, |_| {}).await;
    let after = ctl(&server, &["export_definitions", "-"]);
    let parse = |s: &str| normalized(serde_json::from_str(s).expect("JSON"));
    // Everything but the transient exchange fx-transient and its binding.
    let mut expected = parse(&before);
    let durable = |x: &Value| x["durable"] != false;
    let keep: Vec<Value> = expected["exchanges"]
        .as_array()
        .expect("exchanges")
        .iter()
        .filter(|x| durable(x))
        .cloned()
        .collect();
    assert_eq!(
        keep.len() + 1,
        expected["exchanges"].as_array().map_or(0, Vec::len)
    );
    expected["exchanges"] = Value::Array(keep);
    let bindings: Vec<Value> = expected["bindings"]
        .as_array()
        .expect("bindings")
        .iter()
        .filter(|b| b["source"] != "fx-transient")
        .cloned()
        .collect();
    expected["bindings"] = Value::Array(bindings);
    assert_eq!(parse(&after), expected);
    assert_eq!(
        parse(&after)["policies"],
        normalized(read_json(&fixture()))["policies"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_definitions_file_is_refused_naming_the_item() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.json");
    std::fs::write(
        &file,
        r#"{"users":[{"name":"legacy","password_hash":"kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR","tags":""}]}"#,
    )
    .expect("write");
    let out = broker
        .admin(&["import_definitions", file.to_str().expect("utf-8 path")])
        .await;
    assert_eq!(out.code, 65, "{out:?}");
    assert!(out.stderr.contains("user 'legacy'"), "{}", out.stderr);
    std::fs::write(&file, "not json").expect("write");
    let out = broker
        .admin(&["import_definitions", file.to_str().expect("utf-8 path")])
        .await;
    assert_eq!(out.code, 65, "{out:?}");
}
