//! `warrenctl` against a running node: every command, its table and JSON output, its
//! errors and exit codes (rabbitmqctl's), the cookie handshake (a wrong cookie is refused
//! at once), `-n name@host[:port]` and the port variables, and `status` /
//! `await_startup` / `stop` against a node in its own process.

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::process::Command;
use std::time::{Duration, Instant};
use warren_tests::process::{free_port, warrenctl_binary, ServerProcess};
use warren_tests::{eventually, unique, within, TestBroker};

async fn guest(broker: &TestBroker) -> Connection {
    within(
        10,
        "connect",
        Connection::connect(broker.uri(), ConnectionProperties::default()),
    )
    .await
    .expect("guest connects")
}

/// The rows of a JSON listing.
fn rows(json: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    let out = broker.admin_ok(&["add_user", "carl", "pw1"]).await;
    assert_eq!(out, "Adding user \"carl\" ...\n");
    broker
        .admin_ok(&["set_user_tags", "carl", "monitoring", "policymaker"])
        .await;
    let table = broker.admin_ok(&["list_users"]).await;
    assert_eq!(
        table,
        "Listing users ...\nuser   tags\ncarl   [monitoring, policymaker]\nguest  [administrator]\n"
    );
    let json = broker
        .admin_ok(&["list_users", "--formatter", "json"])
        .await;
    assert_eq!(
        rows(&json),
        vec![
            serde_json::json!({"user": "carl", "tags": ["monitoring", "policymaker"]}),
            serde_json::json!({"user": "guest", "tags": ["administrator"]}),
        ]
    );
    broker.admin_ok(&["change_password", "carl", "pw2"]).await;
    broker
        .admin_ok(&["set_permissions", "carl", ".*", ".*", ".*"])
        .await;
    let conn = Connection::connect(
        &broker.uri_for("carl", "pw2", "/"),
        ConnectionProperties::default(),
    )
    .await
    .expect("the new password");
    drop(conn);
    let again = broker.admin(&["add_user", "carl", "x"]).await;
    assert_eq!(again.code, 70);
    assert_eq!(again.stderr, "Error: User \"carl\" already exists\n");
    broker.admin_ok(&["delete_user", "carl"]).await;
    let missing = broker.admin(&["delete_user", "carl"]).await;
    assert_eq!(missing.code, 67);
    assert!(missing.stderr.contains("User \"carl\" does not exist"));
    let missing = broker.admin(&["change_password", "nobody", "x"]).await;
    assert_eq!(missing.code, 67);
    let usage = broker.admin(&["add_user"]).await;
    assert_eq!(usage.code, 64, "{usage:?}");
    let quiet = broker.admin_ok(&["-q", "list_users"]).await;
    assert!(quiet.starts_with("user "), "{quiet}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_and_permission_commands() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    broker
        .admin_ok(&[
            "add_vhost",
            "staging",
            "--description",
            "pre-production",
            "--tags",
            "qa,eu",
        ])
        .await;
    let vhosts = broker
        .admin_ok(&[
            "list_vhosts",
            "name",
            "description",
            "tags",
            "--formatter",
            "json",
        ])
        .await;
    assert_eq!(
        rows(&vhosts),
        vec![
            serde_json::json!({"name": "/", "description": "", "tags": []}),
            serde_json::json!({"name": "staging", "description": "pre-production", "tags": ["qa", "eu"]}),
        ]
    );
    broker.admin_ok(&["add_user", "dana", "pw"]).await;
    broker
        .admin_ok(&[
            "set_permissions",
            "-p",
            "staging",
            "dana",
            "^dana-",
            ".*",
            "",
        ])
        .await;
    let perms = broker
        .admin_ok(&["list_permissions", "-p", "staging"])
        .await;
    assert_eq!(
        perms,
        "Listing permissions for vhost \"staging\" ...\nuser  configure  write  read\ndana  ^dana-     .*\n"
    );
    let mine = broker
        .admin_ok(&["list_user_permissions", "dana", "--formatter", "json"])
        .await;
    assert_eq!(
        rows(&mine),
        vec![
            serde_json::json!({"vhost": "staging", "configure": "^dana-", "write": ".*", "read": ""})
        ]
    );
    broker
        .admin_ok(&[
            "set_topic_permissions",
            "-p",
            "staging",
            "dana",
            "amq.topic",
            "^dana\\.",
            ".*",
        ])
        .await;
    let topics = broker
        .admin_ok(&[
            "list_topic_permissions",
            "-p",
            "staging",
            "--formatter",
            "json",
        ])
        .await;
    assert_eq!(
        rows(&topics),
        vec![
            serde_json::json!({"user": "dana", "exchange": "amq.topic", "write": "^dana\\.", "read": ".*"})
        ]
    );
    let user_topics = broker
        .admin_ok(&["list_user_topic_permissions", "dana", "-q"])
        .await;
    assert!(user_topics.contains("staging  amq.topic"), "{user_topics}");
    broker
        .admin_ok(&["clear_topic_permissions", "-p", "staging", "dana"])
        .await;
    assert!(!broker
        .admin_ok(&["list_topic_permissions", "-p", "staging"])
        .await
        .contains("dana"));
    // Errors: a bad expression, a missing vhost or user.
    let bad = broker
        .admin(&["set_permissions", "-p", "staging", "dana", "(", ".*", ".*"])
        .await;
    assert_eq!(bad.code, 65);
    assert!(
        bad.stderr.contains("regular expression '(' is invalid"),
        "{}",
        bad.stderr
    );
    let no_vhost = broker
        .admin(&["set_permissions", "-p", "nowhere", "dana", ".*", ".*", ".*"])
        .await;
    assert_eq!(no_vhost.code, 69);
    let no_user = broker
        .admin(&[
            "set_permissions",
            "-p",
            "staging",
            "nobody",
            ".*",
            ".*",
            ".*",
        ])
        .await;
    assert_eq!(no_user.code, 67);
    broker
        .admin_ok(&["clear_permissions", "-p", "staging", "dana"])
        .await;
    assert_eq!(
        broker
            .admin_ok(&["list_permissions", "-p", "staging", "-q"])
            .await,
        "user  configure  write  read\n"
    );
    broker.admin_ok(&["delete_vhost", "staging"]).await;
    let gone = broker.admin(&["delete_vhost", "staging"]).await;
    assert_eq!(gone.code, 65);
    // add_vhost is idempotent.
    broker.admin_ok(&["add_vhost", "/"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_purging_deleting_and_closing() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    let conn = guest(&broker).await;
    let ch = conn.create_channel().await.expect("channel");
    let q = unique("ctl-q");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.exchange_declare(
        "ctl-x".into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.queue_bind(
        q.as_str().into(),
        "ctl-x".into(),
        "a.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    for _ in 0..3 {
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    // One delivered and unacked to a consumer with prefetch 1.
    let cch = conn.create_channel().await.expect("channel");
    cch.basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let _consumer = cch
        .basic_consume(
            q.as_str().into(),
            "ctl-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let columns = [
        "list_queues",
        "name",
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        "durable",
        "--formatter",
        "json",
    ];
    assert!(
        eventually(Duration::from_secs(5), || async {
            let out = broker.admin_ok(&columns).await;
            out.contains(&format!(
                r#"{{"name":"{q}","messages":3,"messages_ready":2,"messages_unacknowledged":1,"consumers":1,"durable":true}}"#
            ))
        })
        .await,
        "{}",
        broker.admin_ok(&columns).await
    );
    let table = broker.admin_ok(&["list_queues"]).await;
    assert!(
        table.starts_with("Listing queues for vhost / ...\nname"),
        "{table}"
    );
    let bad = broker.admin(&["list_queues", "colour"]).await;
    assert_eq!(bad.code, 64);
    let exchanges = broker.admin_ok(&["list_exchanges", "-q"]).await;
    assert!(exchanges.contains("ctl-x        topic"), "{exchanges}");
    let bindings = broker
        .admin_ok(&["list_bindings", "--formatter", "json"])
        .await;
    let bindings = rows(&bindings);
    assert!(bindings.contains(&serde_json::json!({
        "source_name": "ctl-x", "source_kind": "exchange", "destination_name": q,
        "destination_kind": "queue", "routing_key": "a.#", "arguments": {}
    })));
    assert!(bindings.contains(&serde_json::json!({
        "source_name": "", "source_kind": "exchange", "destination_name": q,
        "destination_kind": "queue", "routing_key": q, "arguments": {}
    })));
    let connections = rows(
        &broker
            .admin_ok(&[
                "list_connections",
                "name",
                "user",
                "vhost",
                "channels",
                "ssl",
                "--formatter",
                "json",
            ])
            .await,
    );
    assert_eq!(connections.len(), 1, "{connections:?}");
    assert_eq!(connections[0]["user"], "guest");
    assert_eq!(connections[0]["channels"], 2);
    assert_eq!(connections[0]["ssl"], false);
    let name = connections[0]["name"].as_str().expect("a name").to_string();
    let channels = rows(
        &broker
            .admin_ok(&[
                "list_channels",
                "number",
                "consumer_count",
                "messages_unacknowledged",
                "prefetch_count",
                "--formatter",
                "json",
            ])
            .await,
    );
    assert!(
        channels.contains(&serde_json::json!({
            "number": 2, "consumer_count": 1, "messages_unacknowledged": 1, "prefetch_count": 1
        })),
        "{channels:?}"
    );
    let consumers = rows(
        &broker
            .admin_ok(&["list_consumers", "--formatter", "json"])
            .await,
    );
    assert_eq!(consumers.len(), 1, "{consumers:?}");
    assert_eq!(consumers[0]["consumer_tag"], "ctl-consumer");
    assert_eq!(consumers[0]["queue_name"], q.as_str());
    assert_eq!(consumers[0]["ack_required"], true);
    assert_eq!(consumers[0]["channel_pid"], format!("{name} (2)"));
    // purge_queue drops the ready messages; delete_queue the queue.
    broker.admin_ok(&["purge_queue", &q]).await;
    let after = broker
        .admin_ok(&[
            "list_queues",
            "name",
            "messages_ready",
            "--formatter",
            "json",
        ])
        .await;
    assert!(
        after.contains(&format!(r#"{{"name":"{q}","messages_ready":0}}"#)),
        "{after}"
    );
    let not_empty = broker.admin(&["delete_queue", &q, "--if-unused"]).await;
    assert_eq!(not_empty.code, 70, "{not_empty:?}");
    let deleted = broker.admin_ok(&["delete_queue", &q]).await;
    assert!(
        deleted.contains("Queue was successfully deleted with 0 messages"),
        "{deleted}"
    );
    let missing = broker.admin(&["delete_queue", &q]).await;
    assert_eq!(missing.code, 69);
    // close_connection: the client gets 320 with the explanation.
    let mut events = Box::pin(conn.events_listener());
    broker
        .admin_ok(&["close_connection", &name, "go away please"])
        .await;
    use futures_lite::StreamExt;
    let close = within(5, "connection.close", async {
        loop {
            if let Some(lapin::Event::Error(e)) = events.next().await {
                if let lapin::ErrorKind::ProtocolError(p) = e.kind() {
                    return (p.get_id(), p.get_message().to_string());
                }
            }
        }
    })
    .await;
    assert_eq!(
        close,
        (320, "CONNECTION_FORCED - go away please".to_string())
    );
    let unknown = broker.admin(&["close_connection", "nope", "x"]).await;
    assert_eq!(unknown.code, 69);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_definitions_through_files_and_stdio() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    broker.admin_ok(&["add_vhost", "exported"]).await;
    broker.admin_ok(&["add_user", "erin", "pw"]).await;
    broker
        .admin_ok(&[
            "set_permissions",
            "-p",
            "exported",
            "erin",
            ".*",
            ".*",
            ".*",
        ])
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("defs.json");
    let path = file.to_str().expect("utf-8 path");
    let out = broker.admin_ok(&["export_definitions", path]).await;
    assert_eq!(
        out,
        format!("Exporting definitions in JSON to a file at \"{path}\" ...\n")
    );
    let stdout = broker.admin_ok(&["export_definitions", "-"]).await;
    let from_file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("JSON");
    let from_stdout: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(from_file, from_stdout);
    // Into a second node.
    let other = TestBroker::start().await;
    let out = other.admin_ok(&["import_definitions", path]).await;
    assert!(out.contains("2 users, 2 vhosts"), "{out}");
    let users = other.admin_ok(&["list_users", "-q"]).await;
    assert!(users.contains("erin"), "{users}");
    Connection::connect(
        &other.uri_for("erin", "pw", "exported"),
        ConnectionProperties::default(),
    )
    .await
    .expect("the imported user logs in with the exported hash");
}

fn ctl(
    server: &ServerProcess,
    node: &str,
    args: &[&str],
    env: &[(&str, String)],
) -> std::process::Output {
    let mut cmd = Command::new(warrenctl_binary());
    cmd.arg("-n")
        .arg(node)
        .args(args)
        .env("WARREN_COOKIE_FILE", server.cookie_file())
        .env_remove("WARREN_DIST_PORT")
        .env_remove("WARREN_NODE_PORT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run warrenctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_await_startup_and_stop_against_a_node_process() {
    if TestBroker::start().await.is_external() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ServerProcess::start(dir.path(), free_port()).await;
    let node = format!("warren@127.0.0.1:{}", server.dist_port());
    let out = tokio::task::block_in_place(|| ctl(&server, &node, &["await_startup"], &[]));
    assert!(out.status.success(), "{out:?}");
    let out = tokio::task::block_in_place(|| {
        ctl(&server, &node, &["status", "--formatter", "json"], &[])
    });
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(status["running"], true);
    assert_eq!(status["pid"], server.pid().expect("pid"));
    let listeners = status["listeners"].to_string();
    assert!(
        listeners.contains(&server.addr().to_string()),
        "{listeners}"
    );
    let text = tokio::task::block_in_place(|| ctl(&server, &node, &["status"], &[]));
    assert!(String::from_utf8_lossy(&text.stdout).contains("Status of node "));
    // The port may come from WARREN_DIST_PORT instead of -n.
    let out = tokio::task::block_in_place(|| {
        ctl(
            &server,
            "warren@localhost",
            &["list_vhosts"],
            &[("WARREN_DIST_PORT", server.dist_port().to_string())],
        )
    });
    assert!(out.status.success(), "{out:?}");
    // stop: the process exits cleanly, and warrenctl returns once it has.
    let started = Instant::now();
    let out = tokio::task::block_in_place(|| ctl(&server, &node, &["stop"], &[]));
    assert!(out.status.success(), "{out:?}");
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(10)))
        .expect("the node exits after stop");
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Nothing listens any more: a clear error, not a hang.
    let out = tokio::task::block_in_place(|| ctl(&server, &node, &["status"], &[]));
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unable to perform an operation on node"));
    let out =
        tokio::task::block_in_place(|| ctl(&server, &node, &["await_startup", "-t", "1"], &[]));
    assert_eq!(out.status.code(), Some(69));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_dist_port_is_the_amqp_port_plus_20000() {
    if TestBroker::start().await.is_external() {
        return;
    }
    // An AMQP port whose +20000 is free too.
    let port = loop {
        let p = free_port();
        if p <= 45535 && std::net::TcpListener::bind(("127.0.0.1", p + 20000)).is_ok() {
            break p;
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start_with(dir.path(), port, |cmd| {
        cmd.env_remove("WARREN_DIST_PORT");
    })
    .await;
    let out = tokio::task::block_in_place(|| {
        ctl(
            &server,
            "warren@localhost",
            &["list_users", "-q"],
            &[("RABBITMQ_NODE_PORT", port.to_string())],
        )
    });
    assert!(out.status.success(), "{out:?}");
    let out = tokio::task::block_in_place(|| {
        ctl(
            &server,
            &format!("warren@127.0.0.1:{}", port + 20000),
            &["list_users", "-q"],
            &[],
        )
    });
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cookie_is_refused_at_once() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let wrong = dir.path().join("cookie");
    std::fs::write(&wrong, "NOTTHECOOKIE").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let dist = broker.dist_addr().expect("dist");
    let bin = tokio::task::block_in_place(warrenctl_binary);
    let run = |cookie: &std::path::Path| {
        Command::new(&bin)
            .arg("-n")
            .arg(format!("warren@{dist}"))
            .arg("list_users")
            .env("WARREN_COOKIE_FILE", cookie)
            .output()
            .expect("run warrenctl")
    };
    let started = Instant::now();
    let out = tokio::task::block_in_place(|| run(&wrong));
    assert!(started.elapsed() < Duration::from_secs(5), "no hang");
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("authentication failed: the cookie does not match"),
        "{err}"
    );
    // A cookie file others can read is refused before anything is sent.
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = tokio::task::block_in_place(|| run(&wrong));
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be accessible by its owner only"));
    // The right cookie works.
    let right = broker.cookie_file().expect("cookie");
    let out = tokio::task::block_in_place(|| run(&right));
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_parameter_commands() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    broker
        .admin_ok(&[
            "set_policy",
            "--priority",
            "2",
            "--apply-to",
            "queues",
            "short",
            "^short\\.",
            r#"{"max-length": 1}"#,
        ])
        .await;
    let policies = broker
        .admin_ok(&["list_policies", "--formatter", "json"])
        .await;
    assert_eq!(
        rows(&policies),
        vec![serde_json::json!({
            "vhost": "/", "name": "short", "pattern": "^short\\.", "apply-to": "queues",
            "definition": {"max-length": 1}, "priority": 2
        })]
    );
    // The policy applies: a queue it matches keeps one message.
    let conn = guest(&broker).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare("short.q".into(), Default::default(), FieldTable::default())
        .await
        .expect("declare");
    for _ in 0..3 {
        ch.basic_publish(
            "".into(),
            "short.q".into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            broker
                .admin_ok(&["list_queues", "name", "messages", "--formatter", "json"])
                .await
                .contains(r#"{"name":"short.q","messages":1}"#)
        })
        .await
    );
    let bad = broker
        .admin(&["set_policy", "bad", ".*", r#"{"max-lengthh": 1}"#])
        .await;
    assert_eq!(bad.code, 69, "{bad:?}");
    let bad = broker.admin(&["set_policy", "bad", ".*", "{bad"]).await;
    assert_eq!(bad.code, 69, "{bad:?}");
    assert!(bad.stderr.contains("JSON decoding error"), "{}", bad.stderr);
    broker.admin_ok(&["clear_policy", "short"]).await;
    assert_eq!(broker.admin(&["clear_policy", "short"]).await.code, 69);
    broker
        .admin_ok(&["set_operator_policy", "cap", ".*", r#"{"max-length": 10}"#])
        .await;
    assert!(broker
        .admin_ok(&["list_operator_policies", "-q"])
        .await
        .contains("cap"));
    broker.admin_ok(&["clear_operator_policy", "cap"]).await;
    // Parameters, global parameters and vhost limits are stored and exported.
    broker
        .admin_ok(&[
            "set_parameter",
            "federation-upstream",
            "up",
            r#"{"uri": "amqp://remote"}"#,
        ])
        .await;
    broker
        .admin_ok(&["set_global_parameter", "cluster_name", r#""warren-test""#])
        .await;
    broker
        .admin_ok(&["set_vhost_limits", r#"{"max-connections": 100}"#])
        .await;
    let params = broker
        .admin_ok(&["list_parameters", "--formatter", "json"])
        .await;
    assert_eq!(
        rows(&params),
        vec![
            serde_json::json!({"component": "federation-upstream", "name": "up", "value": {"uri": "amqp://remote"}}),
            serde_json::json!({"component": "vhost-limits", "name": "limits", "value": {"max-connections": 100}}),
        ]
    );
    let globals = broker.admin_ok(&["list_global_parameters", "-q"]).await;
    assert!(globals.contains("cluster_name  warren-test"), "{globals}");
    let exported: serde_json::Value =
        serde_json::from_str(&broker.admin_ok(&["export_definitions", "-"]).await).expect("JSON");
    assert_eq!(
        exported["vhosts"][0]["limits"],
        serde_json::json!([["max-connections", 100]])
    );
    broker.admin_ok(&["clear_vhost_limits"]).await;
    broker
        .admin_ok(&["clear_parameter", "federation-upstream", "up"])
        .await;
    broker
        .admin_ok(&["clear_global_parameter", "cluster_name"])
        .await;
    assert_eq!(
        broker.admin_ok(&["list_parameters", "-q"]).await,
        "component  name  value\n"
    );
}
