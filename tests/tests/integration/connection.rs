//! Connections and channels: the handshake (`connection.start` and its server properties,
//! SASL PLAIN and AMQPLAIN, refused logins, `connection.tune` and what the client may lower,
//! virtual hosts), closing from either side, heartbeats, and the channel life cycle (open,
//! close, reuse, errors that close a channel or the whole connection, `channel.flow`).
//!
//! Reply codes and texts are RabbitMQ's, byte for byte. Raw-socket tests use
//! [`warren_tests::raw::RawClient`]; the others use lapin and amqprs.

use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ChannelFlowOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren_amqp::{channel, connection, AMQPClass, AMQPValue, Frame};
use warren_tests::raw::{
    amqplain_response, auth_failure_close_properties, basic_publish, header_bytes, method_bytes,
    queue_declare, RawClient, Read,
};
use warren_tests::{eventually, unique, within, TestBroker};

/// The capabilities RabbitMQ announces in `connection.start`, all `true`.
const CAPABILITIES: [&str; 9] = [
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "consumer_priorities",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
];

const ACCESS_REFUSED_PLAIN: &str = "ACCESS_REFUSED - Login was refused using authentication \
                                    mechanism PLAIN. For details see the broker logfile.";
const ACCESS_REFUSED_AMQPLAIN: &str = "ACCESS_REFUSED - Login was refused using authentication \
                                       mechanism AMQPLAIN. For details see the broker logfile.";
const UNEXPECTED_IN_RUNNING: &str = "CHANNEL_ERROR - unexpected method in connection state running";
const EXPECTED_CHANNEL_OPEN: &str = "CHANNEL_ERROR - expected 'channel.open'";

async fn lapin_connect(uri: &str) -> Connection {
    within(10, "lapin connect", async {
        Connection::connect(uri, ConnectionProperties::default())
            .await
            .expect("lapin connects")
    })
    .await
}

/// The reply code and text of a lapin protocol error.
fn lapin_reply(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(a) => (a.get_id(), a.get_message().to_string()),
        other => panic!("expected an AMQP error, got {other:?}"),
    }
}

fn amqprs_args(broker: &TestBroker) -> amqprs::connection::OpenConnectionArguments {
    let addr = broker.addr();
    amqprs::connection::OpenConnectionArguments::new(
        &addr.ip().to_string(),
        addr.port(),
        "guest",
        "guest",
    )
}

/// `amqp://guest:guest@HOST:PORT/` with the given (already encoded) vhost and query.
fn uri_with(broker: &TestBroker, vhost: &str, query: &str) -> String {
    format!("amqp://guest:guest@{}/{vhost}{query}", broker.addr())
}

/// Asserts the next `connection.close`, answers it with close-ok and checks the socket is
/// then closed by the server.
async fn expect_hard_close(
    c: &mut RawClient,
    code: u16,
    text: &str,
    class_id: u16,
    method_id: u16,
) {
    let close = within(10, "connection.close", c.expect_connection_close_method()).await;
    assert_eq!(
        (
            close.reply_code,
            close.reply_text.as_str(),
            close.class_id,
            close.method_id
        ),
        (code, text, class_id, method_id)
    );
    c.send_close_ok().await;
    // RabbitMQ closes at once after close-ok, except after a frame too large or a bad
    // frame-end octet: then it closes the socket 3 s after its connection.close, close-ok
    // or not.
    c.expect_closed(Duration::from_secs(5)).await;
}

fn channel_close_ok() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}))
}

fn channel_open() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))
}

fn channel_flow(active: bool) -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active }))
}

fn basic_get(queue: &str) -> AMQPClass {
    AMQPClass::Basic(warren_amqp::basic::AMQPMethod::Get(
        warren_amqp::basic::Get {
            queue: queue.into(),
            no_ack: true,
        },
    ))
}

fn long_string(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("expected a long string, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// connection.start and server properties
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_start_announces_0_9_server_properties_and_all_capabilities_true() {
    let broker = TestBroker::start().await;
    let (_c, start) = within(5, "connection.start", RawClient::start(broker.addr())).await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let props = start.server_properties.inner();
    for key in ["product", "version", "platform", "copyright", "information"] {
        let value = props
            .get(key)
            .unwrap_or_else(|| panic!("server property {key} is missing: {props:?}"));
        assert!(
            !long_string(value).is_empty(),
            "server property {key} is empty"
        );
    }
    let caps = match props.get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t.inner().clone(),
        other => panic!("capabilities must be a table, got {other:?}"),
    };
    for cap in CAPABILITIES {
        assert_eq!(
            caps.get(cap),
            Some(&AMQPValue::Boolean(true)),
            "capability {cap} must be true: {caps:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_start_offers_plain_and_amqplain_and_locale_en_us() {
    let broker = TestBroker::start().await;
    let (_c, start) = within(5, "connection.start", RawClient::start(broker.addr())).await;
    let mechanisms = String::from_utf8(start.mechanisms.as_bytes().to_vec()).expect("utf-8");
    let mut offered: Vec<&str> = mechanisms.split(' ').collect();
    offered.sort_unstable();
    assert_eq!(offered, ["AMQPLAIN", "PLAIN"], "mechanisms {mechanisms:?}");
    assert_eq!(start.locales.as_bytes(), b"en_US");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_sees_every_server_capability_and_the_product() {
    let broker = TestBroker::start().await;
    let conn = within(10, "amqprs connect", async {
        amqprs::connection::Connection::open(&amqprs_args(&broker))
            .await
            .expect("amqprs connects")
    })
    .await;
    let props = conn.server_properties();
    let caps = props.capabilities();
    assert!(caps.publisher_confirms());
    assert!(caps.exchange_exchange_bindings());
    assert!(caps.basic_nack());
    assert!(caps.consumer_cancel_notify());
    assert!(caps.connection_blocked());
    assert!(caps.consumer_priorities());
    assert!(caps.authentication_failure_close());
    assert!(caps.per_consumer_qos());
    assert!(caps.direct_reply_to());
    // amqprs reports "unknown" for a missing property.
    assert_ne!(props.product(), "unknown");
    assert_ne!(props.version(), "unknown");
    conn.close().await.expect("amqprs closes");
}

// ---------------------------------------------------------------------------------------
// connection.tune
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_tune_proposes_channel_max_2047_frame_max_131072_heartbeat_60() {
    let broker = TestBroker::start().await;
    let (mut c, _) = within(5, "connection.start", RawClient::start(broker.addr())).await;
    c.start_ok(Default::default(), "PLAIN", b"\0guest\0guest")
        .await;
    let tune = within(5, "connection.tune", c.expect_tune()).await;
    assert_eq!(
        (tune.channel_max, tune.frame_max, tune.heartbeat),
        (2047, 131_072, 60)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_negotiates_the_server_defaults() {
    let broker = TestBroker::start().await;
    let conn = lapin_connect(broker.uri()).await;
    let cfg = conn.configuration();
    assert_eq!(
        (cfg.channel_max(), cfg.frame_max(), cfg.heartbeat()),
        (2047, 131_072, 60)
    );
    conn.close(200, "bye".into()).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_negotiates_the_server_defaults() {
    let broker = TestBroker::start().await;
    let conn = within(10, "amqprs connect", async {
        amqprs::connection::Connection::open(&amqprs_args(&broker))
            .await
            .expect("amqprs connects")
    })
    .await;
    assert_eq!(
        (conn.channel_max(), conn.frame_max(), conn.heartbeat()),
        (2047, 131_072, 60)
    );
    conn.close().await.expect("amqprs closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tune_ok_with_lower_frame_max_makes_the_server_split_bodies_at_that_size() {
    let broker = TestBroker::start().await;
    let mut c = within(
        5,
        "open",
        RawClient::open_tuned(broker.addr(), 2047, 4096, 0),
    )
    .await;
    c.open_channel(1).await;
    let q = c.declare_queue(1).await;
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    c.publish(1, &q, &body, 4096).await;
    let frames = within(5, "basic.get", c.get_body_frames(1, &q))
        .await
        .expect("the message is in the queue");
    // 4096 minus the 8 bytes of frame overhead per body frame.
    let sizes: Vec<usize> = frames.iter().map(Vec::len).collect();
    assert_eq!(sizes, [4088, 4088, 1824]);
    assert_eq!(frames.concat(), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_above_a_lowered_frame_max_closes_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let mut c = within(
        5,
        "open",
        RawClient::open_tuned(broker.addr(), 2047, 4096, 0),
    )
    .await;
    c.open_channel(1).await;
    // A payload of exactly frame_max is still accepted (RabbitMQ allows the 8 bytes of frame
    // overhead on top); one more byte is not.
    c.write(&warren_tests::raw::frame_bytes(3, 1, &[0u8; 4097]))
        .await;
    expect_hard_close(
        &mut c,
        501,
        "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,4097,4088}",
        0,
        0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tune_ok_with_lower_channel_max_limits_open_channels_with_530() {
    let broker = TestBroker::start().await;
    let mut c = within(
        5,
        "open",
        RawClient::open_tuned(broker.addr(), 5, 131_072, 0),
    )
    .await;
    // The limit counts open channels, whatever their numbers.
    for ch in [10, 20, 30, 40, 50] {
        c.open_channel(ch).await;
    }
    c.send_method(60, channel_open()).await;
    expect_hard_close(
        &mut c,
        530,
        "NOT_ALLOWED - number of channels opened (5) has reached the negotiated channel_max (5)",
        0,
        0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_with_lower_frame_max_and_channel_max_round_trips_a_large_message() {
    let broker = TestBroker::start().await;
    let conn = lapin_connect(&uri_with(
        &broker,
        "%2f",
        "?frame_max=8192&channel_max=16&heartbeat=30",
    ))
    .await;
    let cfg = conn.configuration();
    assert_eq!(
        (cfg.channel_max(), cfg.frame_max(), cfg.heartbeat()),
        (16, 8192, 30)
    );
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    ch.basic_publish(
        "".into(),
        q.name().clone(),
        BasicPublishOptions::default(),
        &body,
        BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("publish sent");
    let got = within(5, "basic.get", async {
        loop {
            if let Some(m) = ch
                .basic_get(q.name().clone(), BasicGetOptions { no_ack: true })
                .await
                .expect("get")
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(got.delivery.data, body);
    conn.close(200, "bye".into()).await.expect("close");
}

/// Tune-ok values outside what the server proposed: RabbitMQ refuses them without a
/// `connection.close` (the handshake is not complete): it logs "failed to negotiate connection
/// parameters: negotiated frame_max = 4095 is lower than the minimum allowed value (4096)" (or
/// "... is higher than the maximum allowed value (131072)") and, after a 3 s delay that slows
/// down misbehaving clients, closes the socket. frame_max = 0 and channel_max = 0 ("no
/// limit") count as above the server's maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tune_ok_outside_the_servers_limits_closes_the_socket_without_a_frame() {
    let broker = TestBroker::start().await;
    let cases: [(u16, u32); 6] = [
        (2047, 4095),
        (2047, 1024),
        (2047, 0),
        (2047, 131_073),
        (0, 131_072),
        (2048, 131_072),
    ];
    let mut tasks = Vec::new();
    for (channel_max, frame_max) in cases {
        let addr = broker.addr();
        tasks.push(tokio::spawn(async move {
            let (mut c, _) = RawClient::start(addr).await;
            c.start_ok(Default::default(), "PLAIN", b"\0guest\0guest")
                .await;
            c.expect_tune().await;
            c.tune_ok(channel_max, frame_max, 0).await;
            c.send_connection_open("/").await;
            c.expect_closed_without_frame(Duration::from_secs(6)).await;
        }));
    }
    for (task, case) in tasks.into_iter().zip(cases) {
        task.await
            .unwrap_or_else(|e| panic!("tune-ok {case:?}: {e}"));
    }
}

// ---------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_login_reaches_open_ok_and_the_connection_works() {
    let broker = TestBroker::start().await;
    let mut c = within(5, "PLAIN login", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    let q = c.declare_queue(1).await;
    c.publish(1, &q, b"plain", 131_072).await;
    let frames = within(5, "basic.get", c.get_body_frames(1, &q)).await;
    assert_eq!(frames, Some(vec![b"plain".to_vec()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqplain_login_reaches_open_ok_and_the_connection_works() {
    let broker = TestBroker::start().await;
    let (mut c, _) = within(5, "connection.start", RawClient::start(broker.addr())).await;
    c.start_ok(
        Default::default(),
        "AMQPLAIN",
        &amqplain_response("guest", "guest"),
    )
    .await;
    let tune = within(5, "tune", c.expect_tune()).await;
    c.tune_ok(tune.channel_max, tune.frame_max, 0).await;
    c.send_connection_open("/").await;
    match within(5, "open-ok", c.expect_method(0)).await {
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
        other => panic!("expected connection.open-ok, got {other:?}"),
    }
    c.open_channel(1).await;
    let q = c.declare_queue(1).await;
    c.publish(1, &q, b"amqplain", 131_072).await;
    let frames = within(5, "basic.get", c.get_body_frames(1, &q)).await;
    assert_eq!(frames, Some(vec![b"amqplain".to_vec()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_logs_in_with_amqplain() {
    let broker = TestBroker::start().await;
    let mut args = amqprs_args(&broker);
    args.credentials(amqprs::security::SecurityCredentials::new_amqplain(
        "guest", "guest",
    ));
    let conn = within(10, "amqprs AMQPLAIN", async {
        amqprs::connection::Connection::open(&args)
            .await
            .expect("AMQPLAIN login")
    })
    .await;
    let ch = conn.open_channel(None).await.expect("channel");
    let (q, _, _) = ch
        .queue_declare(amqprs::channel::QueueDeclareArguments::exclusive_server_named())
        .await
        .expect("declare")
        .expect("declare-ok");
    assert!(q.starts_with("amq.gen-"), "server-named queue {q}");
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_logs_in_with_amqplain() {
    let broker = TestBroker::start().await;
    let conn = lapin_connect(&uri_with(&broker, "%2f", "?auth_mechanism=amqplain")).await;
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    assert!(q.name().as_str().starts_with("amq.gen-"));
    conn.close(200, "bye".into()).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_with_authentication_failure_close_gets_403_access_refused() {
    let broker = TestBroker::start().await;
    let (mut c, _) = within(5, "connection.start", RawClient::start(broker.addr())).await;
    c.start_ok(auth_failure_close_properties(), "PLAIN", b"\0guest\0wrong")
        .await;
    expect_hard_close(&mut c, 403, ACCESS_REFUSED_PLAIN, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_amqplain_password_gets_403_naming_amqplain() {
    let broker = TestBroker::start().await;
    let (mut c, _) = within(5, "connection.start", RawClient::start(broker.addr())).await;
    c.start_ok(
        auth_failure_close_properties(),
        "AMQPLAIN",
        &amqplain_response("guest", "wrong"),
    )
    .await;
    expect_hard_close(&mut c, 403, ACCESS_REFUSED_AMQPLAIN, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_gets_the_same_403_as_a_wrong_password() {
    let broker = TestBroker::start().await;
    let (mut c, _) = within(5, "connection.start", RawClient::start(broker.addr())).await;
    let user = unique("nobody");
    let response = format!("\0{user}\0secret");
    c.start_ok(
        auth_failure_close_properties(),
        "PLAIN",
        response.as_bytes(),
    )
    .await;
    expect_hard_close(&mut c, 403, ACCESS_REFUSED_PLAIN, 0, 0).await;
}

/// Without the `authentication_failure_close` capability RabbitMQ does not explain a refused
/// login: after a 3 s delay it closes the socket without sending a frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_without_the_capability_closes_the_socket_without_a_frame() {
    let broker = TestBroker::start().await;
    let (mut c, _) = within(5, "connection.start", RawClient::start(broker.addr())).await;
    c.start_ok(Default::default(), "PLAIN", b"\0guest\0wrong")
        .await;
    c.expect_closed_without_frame(Duration::from_secs(6)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_wrong_password_fails_with_403_access_refused() {
    let broker = TestBroker::start().await;
    let uri = format!("amqp://guest:wrong@{}/%2f", broker.addr());
    let err = within(10, "lapin refused login", async {
        Connection::connect(&uri, ConnectionProperties::default())
            .await
            .expect_err("a wrong password is refused")
    })
    .await;
    assert_eq!(lapin_reply(&err), (403, ACCESS_REFUSED_PLAIN.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_wrong_password_fails_to_connect() {
    let broker = TestBroker::start().await;
    let addr = broker.addr();
    let args = amqprs::connection::OpenConnectionArguments::new(
        &addr.ip().to_string(),
        addr.port(),
        "guest",
        "wrong",
    );
    // amqprs does not announce authentication_failure_close: the socket is just closed.
    let started = Instant::now();
    let res = within(10, "amqprs refused login", async {
        amqprs::connection::Connection::open(&args).await
    })
    .await;
    assert!(res.is_err(), "a wrong password must be refused");
    assert!(started.elapsed() < Duration::from_secs(6));
}

/// A mechanism the server did not offer: RabbitMQ fails the handshake ("unknown
/// authentication mechanism 'EXTERNAL'" in its log) and, as for every handshake error before
/// the connection is open, closes the socket after 3 s without sending a frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unoffered_mechanism_closes_the_socket_without_a_frame() {
    let broker = TestBroker::start().await;
    let (mut c, _) = within(5, "connection.start", RawClient::start(broker.addr())).await;
    c.start_ok(auth_failure_close_properties(), "EXTERNAL", b"")
        .await;
    c.expect_closed_without_frame(Duration::from_secs(6)).await;
}

// ---------------------------------------------------------------------------------------
// Virtual hosts
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_an_unknown_vhost_closes_with_530_not_allowed() {
    let broker = TestBroker::start().await;
    let vhost = unique("no-such-vhost");
    let (mut c, _) = within(5, "connection.start", RawClient::start(broker.addr())).await;
    c.start_ok(Default::default(), "PLAIN", b"\0guest\0guest")
        .await;
    let tune = within(5, "tune", c.expect_tune()).await;
    c.tune_ok(tune.channel_max, tune.frame_max, 0).await;
    c.send_connection_open(&vhost).await;
    expect_hard_close(
        &mut c,
        530,
        &format!("NOT_ALLOWED - vhost {vhost} not found"),
        10,
        40,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_unknown_vhost_fails_with_530_not_allowed() {
    let broker = TestBroker::start().await;
    let vhost = unique("no-such-vhost");
    let uri = uri_with(&broker, &vhost, "");
    let err = within(10, "lapin unknown vhost", async {
        Connection::connect(&uri, ConnectionProperties::default())
            .await
            .expect_err("an unknown vhost is refused")
    })
    .await;
    assert_eq!(
        lapin_reply(&err),
        (530, format!("NOT_ALLOWED - vhost {vhost} not found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_unknown_vhost_fails_to_open() {
    let broker = TestBroker::start().await;
    let vhost = unique("no-such-vhost");
    let mut args = amqprs_args(&broker);
    args.virtual_host(&vhost);
    let res = within(10, "amqprs unknown vhost", async {
        amqprs::connection::Connection::open(&args).await
    })
    .await;
    let Err(err) = res else {
        panic!("an unknown vhost must be refused");
    };
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("NOT_ALLOWED - vhost {vhost} not found")),
        "amqprs error: {msg}"
    );
}

// ---------------------------------------------------------------------------------------
// Closing
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connection_close_is_answered_with_close_ok() {
    let broker = TestBroker::start().await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    c.send_connection_close().await;
    match within(5, "close-ok", c.expect_method(0)).await {
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {}
        other => panic!("expected connection.close-ok, got {other:?}"),
    }
    // Nothing else follows: the channel is closed silently along with the connection.
    match c.read_within(Duration::from_millis(300)).await {
        Read::TimedOut | Read::Closed => {}
        Read::Frame(f) => panic!("nothing may follow close-ok, got {f:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_and_amqprs_close_their_connections_cleanly() {
    let broker = TestBroker::start().await;
    let conn = lapin_connect(broker.uri()).await;
    let _ch = conn.create_channel().await.expect("channel");
    within(5, "lapin close", conn.close(200, "bye".into()))
        .await
        .expect("lapin close");
    assert!(
        eventually(Duration::from_secs(2), || async { conn.status().closed() }).await,
        "lapin's connection is closed after close-ok"
    );

    let conn = within(10, "amqprs connect", async {
        amqprs::connection::Connection::open(&amqprs_args(&broker))
            .await
            .expect("amqprs connects")
    })
    .await;
    let ch = conn.open_channel(None).await.expect("channel");
    within(5, "amqprs channel close", ch.close())
        .await
        .expect("amqprs channel close");
    within(5, "amqprs close", conn.close())
        .await
        .expect("amqprs close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_crossing_the_servers_close_is_answered_with_close_ok() {
    let broker = TestBroker::start().await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    c.send_method(1, channel_open()).await;
    let close = within(5, "connection.close", c.expect_connection_close_method()).await;
    assert_eq!(close.reply_code, 504);
    // The client sends its own connection.close instead of close-ok.
    c.send_connection_close().await;
    match within(5, "close-ok", c.expect_method(0)).await {
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {}
        other => panic!("expected connection.close-ok, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_after_the_servers_connection_close_are_ignored_until_close_ok() {
    let broker = TestBroker::start().await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    c.send_method(1, channel_open()).await;
    let close = within(5, "connection.close", c.expect_connection_close_method()).await;
    assert_eq!(
        (close.reply_code, close.reply_text.as_str()),
        (504, "CHANNEL_ERROR - second 'channel.open' seen")
    );
    // Everything but close-ok is discarded, including methods that would otherwise be errors.
    c.send_method(1, queue_declare("", false)).await;
    c.send_method(7, queue_declare("", false)).await;
    c.send_method(0, channel_open()).await;
    c.expect_silence(Duration::from_millis(300)).await;
    c.send_close_ok().await;
    c.expect_closed_without_frame(Duration::from_secs(3)).await;
}

// ---------------------------------------------------------------------------------------
// Heartbeats
// ---------------------------------------------------------------------------------------

/// With heartbeat = 1 the server gives up on a silent client after about two missed
/// intervals (RabbitMQ: ~3 s) and closes the socket without a `connection.close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_with_heartbeat_1_is_disconnected_after_missed_heartbeats() {
    let broker = TestBroker::start().await;
    let mut c = within(
        5,
        "open",
        RawClient::open_tuned(broker.addr(), 2047, 131_072, 1),
    )
    .await;
    let opened = Instant::now();
    loop {
        match c.read_within(Duration::from_secs(8)).await {
            Read::Frame(Frame::Heartbeat(0)) => {}
            Read::Frame(f) => panic!("only heartbeats may arrive, got {f:?}"),
            Read::Closed => break,
            Read::TimedOut => panic!("a silent client was not disconnected"),
        }
    }
    let after = opened.elapsed();
    assert!(
        after >= Duration::from_millis(1500) && after <= Duration::from_secs(5),
        "disconnected after {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sends_heartbeats_on_channel_0_when_negotiated() {
    let broker = TestBroker::start().await;
    let mut c = within(
        5,
        "open",
        RawClient::open_tuned(broker.addr(), 2047, 131_072, 1),
    )
    .await;
    let deadline = Instant::now() + Duration::from_millis(2200);
    let mut beats = 0;
    while Instant::now() < deadline {
        match c.read_within(deadline - Instant::now()).await {
            Read::Frame(Frame::Heartbeat(0)) => {
                beats += 1;
                // Answer so the server keeps the connection.
                c.write(&[8, 0, 0, 0, 0, 0, 0, 0xCE]).await;
            }
            Read::Frame(f) => panic!("only heartbeats may arrive, got {f:?}"),
            Read::Closed => panic!("closed although the client sent heartbeats"),
            Read::TimedOut => break,
        }
    }
    assert!(
        beats >= 2,
        "expected at least 2 heartbeats in 2.2 s, got {beats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_heartbeats_keep_an_idle_connection_open() {
    let broker = TestBroker::start().await;
    let mut c = within(
        5,
        "open",
        RawClient::open_tuned(broker.addr(), 2047, 131_072, 1),
    )
    .await;
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        c.write(&[8, 0, 0, 0, 0, 0, 0, 0xCE]).await;
        match c.read_within(Duration::from_millis(400)).await {
            Read::Frame(Frame::Heartbeat(0)) | Read::TimedOut => {}
            other => panic!("only heartbeats may arrive, got {other:?}"),
        }
    }
    c.open_channel(1).await;
    let q = c.declare_queue(1).await;
    assert!(q.starts_with("amq.gen-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_0_in_tune_ok_disables_server_heartbeats() {
    let broker = TestBroker::start().await;
    let mut c = within(
        5,
        "open",
        RawClient::open_tuned(broker.addr(), 2047, 131_072, 0),
    )
    .await;
    c.expect_silence(Duration::from_millis(1500)).await;
    c.open_channel(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_with_a_1s_heartbeat_stays_connected_while_idle() {
    let broker = TestBroker::start().await;
    let conn = lapin_connect(&uri_with(&broker, "%2f", "?heartbeat=1")).await;
    assert_eq!(conn.configuration().heartbeat(), 1);
    let ch = conn.create_channel().await.expect("channel");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(conn.status().connected());
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the connection still works");
    assert!(q.name().as_str().starts_with("amq.gen-"));
    conn.close(200, "bye".into()).await.expect("close");
}

// ---------------------------------------------------------------------------------------
// Channels
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_opens_100_channels_on_one_connection_and_uses_every_one() {
    let broker = TestBroker::start().await;
    let conn = lapin_connect(broker.uri()).await;
    let mut channels = Vec::new();
    for _ in 0..100 {
        channels.push(conn.create_channel().await.expect("channel"));
    }
    let mut ids: Vec<u16> = channels.iter().map(|c| c.id()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 100);
    within(20, "use 100 channels", async {
        for ch in &channels {
            let q = ch
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("declare");
            let body = format!("channel {}", ch.id());
            ch.basic_publish(
                "".into(),
                q.name().clone(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
            let got = loop {
                if let Some(m) = ch
                    .basic_get(q.name().clone(), BasicGetOptions { no_ack: true })
                    .await
                    .expect("get")
                {
                    break m;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            assert_eq!(got.delivery.data, body.as_bytes());
        }
    })
    .await;
    for ch in &channels {
        ch.close(200, "bye".into()).await.expect("channel close");
    }
    conn.close(200, "bye".into()).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_opens_closes_and_reopens_a_channel_number() {
    let broker = TestBroker::start().await;
    let conn = within(10, "amqprs connect", async {
        amqprs::connection::Connection::open(&amqprs_args(&broker))
            .await
            .expect("amqprs connects")
    })
    .await;
    for _ in 0..3 {
        let ch = conn.open_channel(Some(7)).await.expect("open channel 7");
        assert_eq!(ch.channel_id(), 7);
        let (q, _, _) = ch
            .queue_declare(amqprs::channel::QueueDeclareArguments::exclusive_server_named())
            .await
            .expect("declare")
            .expect("declare-ok");
        assert!(q.starts_with("amq.gen-"));
        ch.close().await.expect("close channel 7");
    }
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_channel_close_is_answered_and_the_number_can_be_reopened() {
    let broker = TestBroker::start().await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    c.send_method(1, warren_amqp::method::channel_close(200, "bye", 0, 0))
        .await;
    match within(5, "channel.close-ok", c.expect_method(1)).await {
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {}
        other => panic!("expected channel.close-ok, got {other:?}"),
    }
    c.open_channel(1).await;
    let q = c.declare_queue(1).await;
    assert!(q.starts_with("amq.gen-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn using_a_channel_after_its_close_ok_closes_the_connection_with_504() {
    let broker = TestBroker::start().await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    c.send_method(1, warren_amqp::method::channel_close(200, "bye", 0, 0))
        .await;
    match within(5, "channel.close-ok", c.expect_method(1)).await {
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {}
        other => panic!("expected channel.close-ok, got {other:?}"),
    }
    c.send_method(1, queue_declare("", false)).await;
    expect_hard_close(&mut c, 504, EXPECTED_CHANNEL_OPEN, 50, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_open_on_an_open_channel_closes_the_connection_with_504() {
    let broker = TestBroker::start().await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    c.send_method(1, channel_open()).await;
    expect_hard_close(
        &mut c,
        504,
        "CHANNEL_ERROR - second 'channel.open' seen",
        20,
        10,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_on_a_never_opened_channel_closes_the_connection_with_504() {
    let broker = TestBroker::start().await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.send_method(5, queue_declare("", false)).await;
    expect_hard_close(&mut c, 504, EXPECTED_CHANNEL_OPEN, 50, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_close_and_flow_on_a_never_opened_channel_close_the_connection_with_504() {
    let broker = TestBroker::start().await;
    let cases = [
        (warren_amqp::method::channel_close(200, "bye", 0, 0), 40),
        (channel_close_ok(), 41),
        (channel_flow(true), 20),
    ];
    for (method, method_id) in cases {
        let mut c = within(5, "open", RawClient::open(broker.addr())).await;
        c.send_method(9, method).await;
        expect_hard_close(&mut c, 504, EXPECTED_CHANNEL_OPEN, 20, method_id).await;
    }
}

/// A publish on a channel that was never opened is refused only once its content is complete
/// (the content frames are assembled before the method is looked at).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_a_never_opened_channel_is_refused_with_504_after_its_content() {
    let broker = TestBroker::start().await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.write(&method_bytes(7, &basic_publish("", "nowhere")))
        .await;
    c.expect_silence(Duration::from_millis(300)).await;
    c.write(&header_bytes(7, 3)).await;
    c.write(&warren_tests::raw::frame_bytes(3, 7, b"abc")).await;
    expect_hard_close(&mut c, 504, EXPECTED_CHANNEL_OPEN, 60, 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_open_on_channel_0_closes_the_connection_with_504() {
    let broker = TestBroker::start().await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.send_method(0, channel_open()).await;
    expect_hard_close(&mut c, 504, UNEXPECTED_IN_RUNNING, 20, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_methods_after_open_close_the_connection_with_504() {
    let broker = TestBroker::start().await;
    let cases: [(AMQPClass, u16); 5] = [
        (
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: Default::default(),
                mechanism: "PLAIN".into(),
                response: b"\0guest\0guest".to_vec().into(),
                locale: "en_US".into(),
            })),
            11,
        ),
        (
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 0,
            })),
            31,
        ),
        (
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
            40,
        ),
        (
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
            51,
        ),
        (
            AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "low on memory".into(),
            })),
            60,
        ),
    ];
    for (method, method_id) in cases {
        let mut c = within(5, "open", RawClient::open(broker.addr())).await;
        c.send_method(0, method).await;
        expect_hard_close(&mut c, 504, UNEXPECTED_IN_RUNNING, 10, method_id).await;
    }
}

/// RabbitMQ limits how many channels are open, not their numbers: with channel_max 2047,
/// channels 2048 and 65535 open normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_numbers_above_channel_max_open_as_only_the_count_is_limited() {
    let broker = TestBroker::start().await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(2048).await;
    c.open_channel(65535).await;
    let q = c.declare_queue(65535).await;
    assert!(q.starts_with("amq.gen-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_close_ok_on_an_open_channel_closes_the_connection_with_503() {
    let broker = TestBroker::start().await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    c.send_method(1, channel_close_ok()).await;
    expect_hard_close(
        &mut c,
        503,
        "COMMAND_INVALID - unimplemented method",
        20,
        41,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_active_true_is_answered_with_flow_ok_true() {
    let broker = TestBroker::start().await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    c.send_method(1, channel_flow(true)).await;
    match within(5, "flow-ok", c.expect_method(1)).await {
        AMQPClass::Channel(channel::AMQPMethod::FlowOk(ok)) => assert!(ok.active),
        other => panic!("expected channel.flow-ok, got {other:?}"),
    }
    // The channel is still usable.
    let q = c.declare_queue(1).await;
    assert!(q.starts_with("amq.gen-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_and_amqprs_channel_flow_true_returns_true() {
    let broker = TestBroker::start().await;
    let conn = lapin_connect(broker.uri()).await;
    let ch = conn.create_channel().await.expect("channel");
    let active = within(
        5,
        "lapin flow",
        ch.channel_flow(ChannelFlowOptions { active: true }),
    )
    .await
    .expect("flow-ok");
    assert!(active);
    conn.close(200, "bye".into()).await.expect("close");

    let conn = within(10, "amqprs connect", async {
        amqprs::connection::Connection::open(&amqprs_args(&broker))
            .await
            .expect("amqprs connects")
    })
    .await;
    let ch = conn.open_channel(None).await.expect("channel");
    let active = within(5, "amqprs flow", ch.flow(true))
        .await
        .expect("flow-ok");
    assert!(active);
    conn.close().await.expect("close");
}

/// RabbitMQ does not implement a client stopping the server's deliveries with
/// `channel.flow active=false`: it is a connection error 540.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_active_false_closes_the_connection_with_540() {
    let broker = TestBroker::start().await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    c.send_method(1, channel_flow(false)).await;
    expect_hard_close(&mut c, 540, "NOT_IMPLEMENTED - active=false", 20, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_error_closes_only_that_channel_and_its_number_is_reusable_after_close_ok() {
    let broker = TestBroker::start().await;
    let missing = unique("missing-q");
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    c.open_channel(2).await;
    c.send_method(1, queue_declare(&missing, true)).await;
    let close = match within(5, "channel.close", c.expect_method(1)).await {
        AMQPClass::Channel(channel::AMQPMethod::Close(close)) => close,
        other => panic!("expected channel.close, got {other:?}"),
    };
    assert_eq!(
        (
            close.reply_code,
            close.reply_text.to_string(),
            close.class_id,
            close.method_id
        ),
        (
            404,
            format!("NOT_FOUND - no queue '{missing}' in vhost '/'"),
            50,
            10
        )
    );
    c.send_method(1, channel_close_ok()).await;
    // Channel 2 was not affected.
    let q = c.declare_queue(2).await;
    assert!(q.starts_with("amq.gen-"));
    // Channel 1 can be opened again and works.
    c.open_channel(1).await;
    let q = c.declare_queue(1).await;
    assert!(q.starts_with("amq.gen-"));
}

/// Between the server's `channel.close` and the client's close-ok the server discards
/// whatever the client still sends on that channel (methods and content).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_on_a_channel_the_server_closed_are_discarded_until_close_ok() {
    let broker = TestBroker::start().await;
    let missing = unique("missing-q");
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    c.send_method(1, queue_declare(&missing, true)).await;
    let close = match within(5, "channel.close", c.expect_method(1)).await {
        AMQPClass::Channel(channel::AMQPMethod::Close(close)) => close,
        other => panic!("expected channel.close, got {other:?}"),
    };
    assert_eq!(close.reply_code, 404);
    c.send_method(1, queue_declare("", false)).await;
    c.send_method(1, basic_get(&missing)).await;
    c.write(&method_bytes(1, &basic_publish("", "anything")))
        .await;
    c.write(&header_bytes(1, 2)).await;
    c.write(&warren_tests::raw::frame_bytes(3, 1, b"hi")).await;
    c.expect_silence(Duration::from_millis(300)).await;
    c.send_method(1, channel_close_ok()).await;
    c.expect_silence(Duration::from_millis(200)).await;
    c.open_channel(1).await;
    let q = c.declare_queue(1).await;
    c.publish(1, &q, b"after", 131_072).await;
    let frames = within(5, "basic.get", c.get_body_frames(1, &q)).await;
    assert_eq!(frames, Some(vec![b"after".to_vec()]));
}

/// The one method not discarded on a channel awaiting close-ok is `channel.open`: it is a
/// second open of a channel that still exists, a connection error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_open_before_close_ok_of_a_server_closed_channel_closes_with_504() {
    let broker = TestBroker::start().await;
    let missing = unique("missing-q");
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    c.send_method(1, queue_declare(&missing, true)).await;
    match within(5, "channel.close", c.expect_method(1)).await {
        AMQPClass::Channel(channel::AMQPMethod::Close(close)) => assert_eq!(close.reply_code, 404),
        other => panic!("expected channel.close, got {other:?}"),
    }
    c.send_method(1, channel_open()).await;
    expect_hard_close(
        &mut c,
        504,
        "CHANNEL_ERROR - second 'channel.open' seen",
        20,
        10,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_channel_error_leaves_the_connection_and_other_channels_usable() {
    let broker = TestBroker::start().await;
    let missing = unique("missing-q");
    let conn = lapin_connect(broker.uri()).await;
    let bad = conn.create_channel().await.expect("channel");
    let good = conn.create_channel().await.expect("channel");
    let err = bad
        .queue_declare(
            missing.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("passive declare of a missing queue fails");
    assert_eq!(
        lapin_reply(&err),
        (
            404,
            format!("NOT_FOUND - no queue '{missing}' in vhost '/'")
        )
    );
    assert!(err.is_amqp_soft_error());
    assert!(conn.status().connected());
    for ch in [&good, &conn.create_channel().await.expect("new channel")] {
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare on a healthy channel");
        assert!(q.name().as_str().starts_with("amq.gen-"));
    }
    // (lapin refuses to close a connection holding the errored channel; dropping it closes
    // the socket.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_channel_error_leaves_the_connection_usable() {
    let broker = TestBroker::start().await;
    let missing = unique("missing-q");
    let conn = within(10, "amqprs connect", async {
        amqprs::connection::Connection::open(&amqprs_args(&broker))
            .await
            .expect("amqprs connects")
    })
    .await;
    let ch = conn.open_channel(None).await.expect("channel");
    let mut args = amqprs::channel::QueueDeclareArguments::new(&missing);
    args.passive(true);
    let res = within(5, "amqprs passive declare", ch.queue_declare(args)).await;
    assert!(res.is_err(), "passive declare of a missing queue fails");
    let ch2 = conn.open_channel(None).await.expect("another channel");
    let (q, _, _) = ch2
        .queue_declare(amqprs::channel::QueueDeclareArguments::exclusive_server_named())
        .await
        .expect("declare")
        .expect("declare-ok");
    assert!(q.starts_with("amq.gen-"));
    assert!(conn.is_open());
    conn.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------
// Warren-only configuration
// ---------------------------------------------------------------------------------------

/// A client that connects and never completes the handshake is dropped after
/// `handshake_timeout_secs`. RabbitMQ does the same after its 10 s `handshake_timeout`
/// (checked by hand: the socket is closed without a frame, both before the protocol header
/// is complete and while the server waits for start-ok), too slow to run here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_drops_a_client_that_never_finishes_the_handshake() {
    let broker = TestBroker::start_with(|cfg| cfg.handshake_timeout_secs = 1).await;
    if broker.is_external() {
        eprintln!("skipped: needs a 1 s handshake timeout");
        return;
    }
    let mut silent = RawClient::connect(broker.addr()).await;
    silent.write(b"AMQP").await;
    let (mut waiting, _) = RawClient::start(broker.addr()).await;
    let started = Instant::now();
    silent
        .expect_closed_without_frame(Duration::from_secs(4))
        .await;
    waiting
        .expect_closed_without_frame(Duration::from_secs(4))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(500));
}
