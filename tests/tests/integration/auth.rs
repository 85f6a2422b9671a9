//! Authentication: PLAIN and AMQPLAIN for users made with the admin CLI, password changes,
//! RabbitMQ's SHA-512 hashes, refused logins with `authentication_failure_close`, and
//! `loopback_users` (guest only from loopback addresses). EXTERNAL is in `tls.rs`.

use lapin::{Connection, ConnectionProperties};
use std::net::IpAddr;
use warren_amqp::frame::PROTOCOL_HEADER;
use warren_tests::raw::{amqplain_response, auth_failure_close_properties, RawClient};
use warren_tests::{unique, within, TestBroker};

const REFUSED_PLAIN: &str = "ACCESS_REFUSED - Login was refused using authentication \
                             mechanism PLAIN. For details see the broker logfile.";

async fn lapin(uri: &str) -> lapin::Result<Connection> {
    within(
        10,
        "lapin connect",
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
}

fn refusal(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => (p.get_id(), p.get_message().to_string()),
        other => panic!("expected connection.close, got {other:?}"),
    }
}

/// A user with full permissions on `/`, deleted at the end on a shared broker.
struct User {
    name: String,
    external: bool,
}

impl User {
    async fn new(broker: &TestBroker, pass: &str) -> User {
        let name = unique("auth-user");
        broker.admin_ok(&["add_user", &name, pass]).await;
        broker
            .admin_ok(&["set_permissions", "-p", "/", &name, ".*", ".*", ".*"])
            .await;
        User {
            name,
            external: broker.is_external(),
        }
    }
}

impl Drop for User {
    fn drop(&mut self) {
        if self.external {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["delete_user", &self.name])
                .output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_amqplain_log_in_a_user_made_with_the_cli() {
    let broker = TestBroker::start().await;
    let u = User::new(&broker, "pa55 word").await;
    let plain = lapin(&broker.uri_for(&u.name, "pa55 word", "/"))
        .await
        .expect("PLAIN login");
    assert!(plain.status().connected());
    let amqplain = lapin(&format!(
        "{}?auth_mechanism=amqplain",
        broker.uri_for(&u.name, "pa55 word", "/")
    ))
    .await
    .expect("AMQPLAIN login");
    assert!(amqplain.status().connected());
    // A wrong password gets connection.close 403 (lapin announces
    // authentication_failure_close).
    let e = lapin(&broker.uri_for(&u.name, "wrong", "/"))
        .await
        .expect_err("refused");
    assert_eq!(refusal(&e), (403, REFUSED_PLAIN.to_string()));
    // AMQPLAIN over a raw socket, with the capability: the same refusal, naming AMQPLAIN.
    let (mut raw, _) = RawClient::start(broker.addr()).await;
    raw.start_ok(
        auth_failure_close_properties(),
        "AMQPLAIN",
        &amqplain_response(&u.name, "wrong"),
    )
    .await;
    let (code, text) = within(5, "close", raw.expect_connection_close()).await;
    assert_eq!(code, 403);
    assert!(text.contains("mechanism AMQPLAIN"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_password_takes_effect_at_the_next_login() {
    let broker = TestBroker::start().await;
    let u = User::new(&broker, "old-pw").await;
    broker
        .admin_ok(&["change_password", &u.name, "new-pw"])
        .await;
    lapin(&broker.uri_for(&u.name, "new-pw", "/"))
        .await
        .expect("the new password works");
    let e = lapin(&broker.uri_for(&u.name, "old-pw", "/"))
        .await
        .expect_err("the old one does not");
    assert_eq!(refusal(&e).0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sha512_hash_from_rabbitmq_logs_in() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    // The hash RabbitMQ 3.10.8 accepted for this password (see the definitions fixture).
    let name = unique("sha512-user");
    let defs = serde_json::json!({
        "users": [{
            "name": name,
            "password_hash": "AQIDBEVNf7VRlUhxbKoO6hqBUwyufmZqkf2Gg9AfROjQI0as3AP+78sg4pwoQu9YjLaEDzKOqNh82qFvB9LZm0GP+Eg=",
            "hashing_algorithm": "rabbit_password_hashing_sha512",
            "tags": ["policymaker"],
            "limits": {}
        }],
        "permissions": [{"user": name, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}]
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("defs.json");
    std::fs::write(&file, defs.to_string()).expect("write");
    broker
        .admin_ok(&["import_definitions", file.to_str().expect("utf-8 path")])
        .await;
    lapin(&broker.uri_for(&name, "policy-secret", "/"))
        .await
        .expect("the SHA-512 user logs in");
    let e = lapin(&broker.uri_for(&name, "policy-secreT", "/"))
        .await
        .expect_err("refused");
    assert_eq!(refusal(&e).0, 403);
}

/// Opens a raw connection from `from`, logging in as guest with the
/// authentication_failure_close capability; returns the close it got, if any.
async fn guest_from(broker: &TestBroker, from: IpAddr) -> Option<(u16, String)> {
    let mut c = RawClient::connect_from(from, broker.addr()).await;
    c.write(PROTOCOL_HEADER).await;
    let _start = c.expect_method(0).await;
    c.start_ok(auth_failure_close_properties(), "PLAIN", b"\0guest\0guest")
        .await;
    match c.expect_method(0).await {
        warren_amqp::AMQPClass::Connection(warren_amqp::connection::AMQPMethod::Tune(_)) => None,
        warren_amqp::AMQPClass::Connection(warren_amqp::connection::AMQPMethod::Close(cl)) => {
            Some((cl.reply_code, cl.reply_text.to_string()))
        }
        other => panic!("expected tune or close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_may_only_connect_from_loopback_addresses() {
    // Only 127.0.0.1 and ::1 count as loopback here, so 127.0.0.2 stands for a remote
    // client.
    let broker = TestBroker::start_with(|cfg| {
        cfg.loopback_addresses = Some(vec![
            "127.0.0.1".parse().expect("ip"),
            "::1".parse().expect("ip"),
        ]);
    })
    .await;
    if broker.is_external() {
        return;
    }
    let local: IpAddr = "127.0.0.1".parse().expect("ip");
    let remote: IpAddr = "127.0.0.2".parse().expect("ip");
    assert_eq!(guest_from(&broker, local).await, None);
    assert_eq!(
        guest_from(&broker, remote).await,
        Some((403, REFUSED_PLAIN.to_string()))
    );
    // Other users are not restricted.
    broker.admin_ok(&["add_user", "remote-bob", "pw"]).await;
    broker
        .admin_ok(&["set_permissions", "-p", "/", "remote-bob", ".*", ".*", ".*"])
        .await;
    let mut c = RawClient::connect_from(remote, broker.addr()).await;
    c.write(PROTOCOL_HEADER).await;
    let _ = c.expect_method(0).await;
    c.start_ok(
        auth_failure_close_properties(),
        "PLAIN",
        b"\0remote-bob\0pw",
    )
    .await;
    let _tune = c.expect_tune().await;

    // With loopback_users empty, guest may connect from anywhere.
    let open = TestBroker::start_with(|cfg| {
        cfg.loopback_addresses = Some(vec!["127.0.0.1".parse().expect("ip")]);
        cfg.loopback_users = Vec::new();
    })
    .await;
    assert_eq!(guest_from(&open, remote).await, None);
}
