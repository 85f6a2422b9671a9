//! The HTTP port: `/metrics` in Prometheus' format without a login, and RabbitMQ's
//! management API paths behind basic auth with RabbitMQ's management tags — overview,
//! health checks, listings scoped to the user's vhosts, and the changes `rabbitmqadmin`
//! makes (vhosts, users, permissions, queues, bindings, policies, definitions).

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};
use warren_tests::http::{request, HttpResponse};
use warren_tests::{unique, within, TestBroker};

const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));

async fn get(b: &TestBroker, path: &str, auth: Option<(&str, &str)>) -> HttpResponse {
    request(b.http_addr().expect("http port"), "GET", path, auth, None).await
}

async fn send(b: &TestBroker, method: &str, path: &str, body: Value) -> HttpResponse {
    let body = body.to_string();
    request(
        b.http_addr().expect("http port"),
        method,
        path,
        GUEST,
        Some(&body),
    )
    .await
}

/// The value of the Prometheus sample whose line starts with `name{` and has every label.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn connect(uri: &str) -> Connection {
    within(
        10,
        "connect",
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_connections_queues_and_message_counts() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    let conn = connect(broker.uri()).await;
    let ch = conn.create_channel().await.expect("channel");
    let q = unique("metrics-q");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for _ in 0..10 {
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"0123456789",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    for _ in 0..4 {
        let m = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get");
        assert!(m.is_some());
    }
    let r = get(&broker, "/metrics", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    let t = &r.body;
    let ql = format!("queue=\"{q}\"");
    assert_eq!(
        sample(t, "warren_queue_messages_ready", &[&ql, "vhost=\"/\""]),
        Some(6.0),
        "{t}"
    );
    assert_eq!(
        sample(t, "warren_queue_messages_ready_bytes", &[&ql]),
        Some(60.0),
        "{t}"
    );
    assert_eq!(
        sample(t, "warren_queue_consumers", &[&ql]),
        Some(0.0),
        "{t}"
    );
    assert_eq!(sample(t, "warren_connections", &[]), Some(1.0), "{t}");
    assert_eq!(sample(t, "warren_channels", &[]), Some(1.0), "{t}");
    assert_eq!(
        sample(t, "warren_messages_published_total", &[]),
        Some(10.0),
        "{t}"
    );
    assert_eq!(
        sample(t, "warren_messages_delivered_total", &[]),
        Some(4.0),
        "{t}"
    );
    assert_eq!(
        sample(t, "warren_alarm", &["resource=\"disk\""]),
        Some(0.0),
        "{t}"
    );
    assert!(sample(t, "warren_process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));
    // A deleted queue leaves the output; counters survive the connection.
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    conn.close(200, "bye".into()).await.expect("close");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let t = get(&broker, "/metrics", None).await.body;
    assert_eq!(
        sample(&t, "warren_queue_messages_ready", &[&ql]),
        None,
        "{t}"
    );
    assert_eq!(
        sample(&t, "warren_messages_published_total", &[]),
        Some(10.0),
        "{t}"
    );
    assert_eq!(sample(&t, "warren_connections", &[]), Some(0.0), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_a_user_with_a_management_tag() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    let r = get(&broker, "/api/overview", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"RabbitMQ Management\"")
    );
    let r = get(&broker, "/api/overview", Some(("guest", "wrong"))).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("not_authorized"))
    );
    broker.admin_ok(&["add_user", "plain", "pw"]).await;
    let r = get(&broker, "/api/overview", Some(("plain", "pw"))).await;
    assert_eq!(
        (r.status, r.json()["reason"].clone()),
        (401, json!("Not management user"))
    );
    let r = get(&broker, "/api/overview", GUEST).await;
    assert_eq!(r.status, 200, "{r:?}");
    let o = r.json();
    assert_eq!(o["product_name"], "Warren");
    assert!(
        o["object_totals"]["exchanges"]
            .as_u64()
            .is_some_and(|n| n >= 6),
        "{o}"
    );
    assert!(o["listeners"]
        .as_array()
        .is_some_and(|l| l.iter().any(|x| x["protocol"] == "amqp")));
    assert_eq!(
        get(&broker, "/api/whoami", GUEST).await.json(),
        json!({"name": "guest", "tags": ["administrator"]})
    );
    // A management user sees only its vhosts and may not list users.
    broker.admin_ok(&["add_user", "mgmt", "pw"]).await;
    broker
        .admin_ok(&["set_user_tags", "mgmt", "management"])
        .await;
    let vh = unique("api-vh");
    broker.admin_ok(&["add_vhost", &vh]).await;
    broker
        .admin_ok(&["set_permissions", "-p", &vh, "mgmt", ".*", ".*", ".*"])
        .await;
    let names: Vec<Value> = get(&broker, "/api/vhosts", Some(("mgmt", "pw")))
        .await
        .json()
        .as_array()
        .expect("list")
        .iter()
        .map(|v| v["name"].clone())
        .collect();
    assert_eq!(names, vec![json!(vh)]);
    assert_eq!(
        get(&broker, "/api/users", Some(("mgmt", "pw")))
            .await
            .status,
        401
    );
    assert_eq!(get(&broker, "/api/nope", GUEST).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_answer_ok_or_503() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    for path in [
        "/api/health/checks/alarms",
        "/api/health/checks/local-alarms",
        "/api/health/checks/virtual-hosts",
        "/api/health/checks/protocol-listener/amqp",
        "/api/health/checks/protocol-listener/amqp091",
    ] {
        let r = get(&broker, path, GUEST).await;
        assert_eq!(
            (r.status, r.json()["status"].clone()),
            (200, json!("ok")),
            "{path}"
        );
    }
    let port = broker
        .uri()
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .expect("port")
        .to_string();
    let r = get(
        &broker,
        &format!("/api/health/checks/port-listener/{port}"),
        GUEST,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = get(&broker, "/api/health/checks/port-listener/1", GUEST).await;
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (503, json!("failed"))
    );
    let r = get(&broker, "/api/health/checks/protocol-listener/stomp", GUEST).await;
    assert_eq!(r.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmqadmin_style_changes_take_effect() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    let vh = unique("api-vh");
    let path = |p: &str| p.replace("VH", &vh);
    assert_eq!(
        send(
            &broker,
            "PUT",
            &path("/api/vhosts/VH"),
            json!({"description": "d"})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        send(&broker, "PUT", &path("/api/vhosts/VH"), json!({}))
            .await
            .status,
        204
    );
    assert_eq!(
        send(
            &broker,
            "PUT",
            "/api/users/bob",
            json!({"password": "pw", "tags": "management"})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        send(
            &broker,
            "PUT",
            &path("/api/permissions/VH/bob"),
            json!({"configure": ".*", "write": ".*", "read": ".*"})
        )
        .await
        .status,
        204
    );
    let r = send(
        &broker,
        "PUT",
        &path("/api/queues/VH/work"),
        json!({"durable": true, "arguments": {"x-max-length": 2}}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    // Redeclaring with other arguments is refused with RabbitMQ's text.
    let r = send(
        &broker,
        "PUT",
        &path("/api/queues/VH/work"),
        json!({"durable": true, "arguments": {"x-max-length": 3}}),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.json()["reason"]
            .as_str()
            .is_some_and(|t| t.contains("inequivalent arg 'x-max-length'")),
        "{r:?}"
    );
    let r = send(
        &broker,
        "PUT",
        &path("/api/exchanges/VH/ev"),
        json!({"type": "fanout"}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = send(
        &broker,
        "POST",
        &path("/api/bindings/VH/e/ev/q/work"),
        json!({"routing_key": "k"}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    // bob uses what the API made.
    let conn = connect(&broker.uri_for("bob", "pw", &vh)).await;
    let ch = conn.create_channel().await.expect("channel");
    for i in 0..3 {
        ch.basic_publish(
            "ev".into(),
            "".into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let ok = warren_tests::eventually(std::time::Duration::from_secs(5), || async {
        let q = get(&broker, &path("/api/queues/VH/work"), Some(("bob", "pw")))
            .await
            .json();
        q["messages"] == 2
    })
    .await;
    assert!(ok, "x-max-length 2 keeps two of three");
    let listed = get(&broker, "/api/queues", Some(("bob", "pw")))
        .await
        .json();
    assert!(
        listed
            .as_array()
            .is_some_and(|a| a.iter().all(|q| q["vhost"] == vh.as_str())),
        "{listed}"
    );
    let b = get(&broker, &path("/api/bindings/VH/e/ev/q/work"), GUEST)
        .await
        .json();
    assert_eq!(b.as_array().map(Vec::len), Some(1), "{b}");
    assert_eq!(
        send(
            &broker,
            "DELETE",
            &path("/api/queues/VH/work/contents"),
            json!({})
        )
        .await
        .status,
        204
    );
    assert_eq!(
        get(&broker, &path("/api/queues/VH/work"), GUEST)
            .await
            .json()["messages"],
        0
    );
    // Policies and definitions.
    let r = send(&broker, "PUT", &path("/api/policies/VH/short"), json!({"pattern": "^work$", "definition": {"max-length": 1}, "apply-to": "queues", "priority": 1})).await;
    assert_eq!(r.status, 204, "{r:?}");
    let r = send(
        &broker,
        "PUT",
        &path("/api/policies/VH/bad"),
        json!({"pattern": ".*", "definition": {"max-lenght": 1}}),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    let defs = get(&broker, "/api/definitions", GUEST).await.json();
    assert!(
        defs["queues"].as_array().is_some_and(|q| q
            .iter()
            .any(|q| q["name"] == "work" && q["vhost"] == vh.as_str())),
        "{defs}"
    );
    assert!(
        defs["policies"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "short")),
        "{defs}"
    );
    // A queue that does not exist is 404; deleting things answers 204.
    assert_eq!(
        get(&broker, &path("/api/queues/VH/nope"), GUEST)
            .await
            .status,
        404
    );
    assert_eq!(
        send(&broker, "DELETE", &path("/api/queues/VH/work"), json!({}))
            .await
            .status,
        204
    );
    let _ = conn.close(200, "bye".into()).await;
    assert_eq!(
        send(&broker, "DELETE", "/api/users/bob", json!({}))
            .await
            .status,
        204
    );
    assert_eq!(
        send(&broker, "DELETE", &path("/api/vhosts/VH"), json!({}))
            .await
            .status,
        204
    );
    assert_eq!(
        get(&broker, &path("/api/vhosts/VH"), GUEST).await.status,
        404
    );
}
