//! Hostile and malformed byte streams: wrong protocol headers, frames split or cut short,
//! frames on the wrong channel, unknown classes, methods and frame types, frames above
//! frame_max, bad frame-end octets, content frames out of order, stray heartbeats and
//! garbage.
//!
//! Every case asserts the reply code, text and class/method ids exactly as RabbitMQ sends
//! them (texts of frame errors included, which quote the offending octets in Erlang syntax),
//! that the socket is closed after close-ok, and that a well-behaved connection opened before
//! the hostile one still completes a publish/get round trip afterwards.

use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::io::AsyncReadExt;
use warren_amqp::frame::PROTOCOL_HEADER;
use warren_amqp::{channel, connection, AMQPClass};
use warren_tests::raw::{
    basic_publish, frame_bytes, header_bytes, method_bytes, queue_declare, RawClient,
};
use warren_tests::{unique, within, TestBroker};

const UNEXPECTED_IN_RUNNING: &str = "CHANNEL_ERROR - unexpected method in connection state running";
const EXPECTED_METHOD: &str =
    "UNEXPECTED_FRAME - expected method frame, got non method frame instead";
const EXPECTED_HEADER: &str =
    "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead";
const EXPECTED_BODY: &str =
    "UNEXPECTED_FRAME - expected content body, got non content body frame instead";

/// A well-behaved client connected before the hostile one, with its own queue.
enum Bystander {
    Lapin {
        _conn: Box<Connection>,
        ch: lapin::Channel,
        queue: String,
    },
    Amqprs {
        conn: amqprs::connection::Connection,
        ch: amqprs::channel::Channel,
        queue: String,
    },
}

impl Bystander {
    async fn lapin(broker: &TestBroker) -> Bystander {
        let conn = within(10, "bystander connect", async {
            Connection::connect(broker.uri(), ConnectionProperties::default())
                .await
                .expect("bystander connects")
        })
        .await;
        let ch = conn.create_channel().await.expect("bystander channel");
        let queue = unique("bystander");
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("bystander queue");
        Bystander::Lapin {
            _conn: Box::new(conn),
            ch,
            queue,
        }
    }

    async fn amqprs(broker: &TestBroker) -> Bystander {
        let addr = broker.addr();
        let args = amqprs::connection::OpenConnectionArguments::new(
            &addr.ip().to_string(),
            addr.port(),
            "guest",
            "guest",
        );
        let conn = within(10, "bystander connect", async {
            amqprs::connection::Connection::open(&args)
                .await
                .expect("bystander connects")
        })
        .await;
        let ch = conn.open_channel(None).await.expect("bystander channel");
        let queue = unique("bystander");
        let mut declare = amqprs::channel::QueueDeclareArguments::new(&queue);
        declare.exclusive(true);
        ch.queue_declare(declare).await.expect("bystander queue");
        Bystander::Amqprs { conn, ch, queue }
    }

    /// Publishes a message and gets it back.
    async fn assert_round_trip(&self) {
        let body = unique("still-working").into_bytes();
        within(10, "bystander round trip", async {
            match self {
                Bystander::Lapin { ch, queue, .. } => {
                    ch.basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default(),
                    )
                    .await
                    .expect("bystander publish");
                    loop {
                        if let Some(m) = ch
                            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                            .await
                            .expect("bystander get")
                        {
                            assert_eq!(m.delivery.data, body);
                            assert_eq!(m.delivery.routing_key.as_str(), queue);
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Bystander::Amqprs { conn, ch, queue } => {
                    assert!(conn.is_open());
                    ch.basic_publish(
                        amqprs::BasicProperties::default(),
                        body.clone(),
                        amqprs::channel::BasicPublishArguments::new("", queue),
                    )
                    .await
                    .expect("bystander publish");
                    loop {
                        let mut get = amqprs::channel::BasicGetArguments::new(queue);
                        get.no_ack(true);
                        if let Some((ok, _, data)) = ch.basic_get(get).await.expect("bystander get")
                        {
                            assert_eq!(data, body);
                            assert_eq!(ok.routing_key(), queue);
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        })
        .await;
    }
}

/// Reads raw bytes until the server closes the socket; panics if it stays open 5 s.
async fn read_until_closed(c: &mut RawClient) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), c.stream.read(&mut chunk)).await {
            Err(_) => panic!("socket still open after 5 s; read so far {all:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return all,
            Ok(Ok(n)) => all.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Asserts the next `connection.close`, answers close-ok and checks the socket is closed.
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

/// The common shape of a hostile case: a bystander connects, then a raw client opens
/// channel 1, writes `bytes`, must get `connection.close` with exactly these fields and be
/// disconnected after close-ok; the bystander must still work.
async fn hostile_case(
    bystander: Bystander,
    broker: &TestBroker,
    bytes: &[u8],
    expected: (u16, &str, u16, u16),
) {
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    c.write(bytes).await;
    let (code, text, class_id, method_id) = expected;
    expect_hard_close(&mut c, code, text, class_id, method_id).await;
    bystander.assert_round_trip().await;
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn publish(channel: u16, routing_key: &str) -> Vec<u8> {
    method_bytes(channel, &basic_publish("", routing_key))
}

fn body(channel: u16, data: &[u8]) -> Vec<u8> {
    frame_bytes(3, channel, data)
}

// ---------------------------------------------------------------------------------------
// Protocol header
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_header_gets_the_0_9_1_header_back_and_the_socket_closed() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::lapin(&broker).await;
    let headers: [&[u8]; 7] = [
        b"AMQP\x00\x00\x09\x02",
        b"AMQP\x00\x00\x09\x00",
        b"AMQP\x00\x00\x08\x00",
        b"AMQP\x00\x01\x00\x00",
        b"AMQP\x03\x01\x00\x00",
        b"HTTP/1.1",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for header in headers {
        let mut c = RawClient::connect(broker.addr()).await;
        c.write(header).await;
        let got = read_until_closed(&mut c).await;
        assert_eq!(
            got,
            PROTOCOL_HEADER,
            "answer to {:?}",
            String::from_utf8_lossy(header)
        );
    }
    bystander.assert_round_trip().await;
}

/// `AMQP 1 1 0 9` is the header of AMQP 0-9, which older clients send; RabbitMQ answers it
/// with the same `connection.start` (0-9) and speaks 0-9-1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_0_9_protocol_header_is_accepted_and_served_as_0_9_1() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr()).await;
    c.write(b"AMQP\x01\x01\x00\x09").await;
    let start = match within(5, "connection.start", c.expect_method(0)).await {
        AMQPClass::Connection(connection::AMQPMethod::Start(s)) => s,
        other => panic!("expected connection.start, got {other:?}"),
    };
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    c.start_ok(Default::default(), "PLAIN", b"\0guest\0guest")
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
    c.publish(1, &q, b"0-9", 131_072).await;
    let frames = within(5, "basic.get", c.get_body_frames(1, &q)).await;
    assert_eq!(frames, Some(vec![b"0-9".to_vec()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_header_and_frames_split_across_writes_are_reassembled() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr()).await;
    for piece in PROTOCOL_HEADER.chunks(3) {
        c.write(piece).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    match within(5, "connection.start", c.expect_method(0)).await {
        AMQPClass::Connection(connection::AMQPMethod::Start(_)) => {}
        other => panic!("expected connection.start, got {other:?}"),
    }
    c.start_ok(Default::default(), "PLAIN", b"\0guest\0guest")
        .await;
    let tune = within(5, "tune", c.expect_tune()).await;
    c.tune_ok(tune.channel_max, tune.frame_max, 0).await;
    c.send_connection_open("/").await;
    within(5, "open-ok", c.expect_method(0)).await;
    c.open_channel(1).await;
    let q = c.declare_queue(1).await;
    // A whole publish (method, header, body) written a few bytes at a time: an incomplete
    // frame is no error, the server waits for the rest.
    let bytes = concat(&[&publish(1, &q), &header_bytes(1, 5), &body(1, b"split")]);
    for piece in bytes.chunks(5) {
        c.write(piece).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let frames = within(5, "basic.get", c.get_body_frames(1, &q)).await;
    assert_eq!(frames, Some(vec![b"split".to_vec()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_then_disconnect_leaves_the_server_serving_others() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::amqprs(&broker).await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    let declare = method_bytes(1, &queue_declare("", false));
    // Half a frame: the server waits for the rest without answering or closing.
    c.write(&declare[..declare.len() / 2]).await;
    c.expect_silence(Duration::from_millis(300)).await;
    drop(c);
    // A frame header promising a large payload, then nothing.
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    c.write(&[3, 0, 1, 0, 1, 0, 0, b'x']).await;
    c.expect_silence(Duration::from_millis(300)).await;
    drop(c);
    bystander.assert_round_trip().await;
    let mut fresh = within(5, "open after", RawClient::open(broker.addr())).await;
    fresh.open_channel(1).await;
    let q = fresh.declare_queue(1).await;
    assert!(q.starts_with("amq.gen-"));
}

// ---------------------------------------------------------------------------------------
// Methods on the wrong channel, unknown methods
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_declare_on_channel_0_closes_the_connection_with_504() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::lapin(&broker).await;
    hostile_case(
        bystander,
        &broker,
        &method_bytes(0, &queue_declare("", false)),
        (504, UNEXPECTED_IN_RUNNING, 50, 10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_publish_with_content_on_channel_0_closes_the_connection_with_504() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::amqprs(&broker).await;
    hostile_case(
        bystander,
        &broker,
        &concat(&[&publish(0, "q"), &header_bytes(0, 3), &body(0, b"abc")]),
        (504, UNEXPECTED_IN_RUNNING, 60, 40),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_header_on_channel_0_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::lapin(&broker).await;
    hostile_case(
        bystander,
        &broker,
        &header_bytes(0, 3),
        (
            505,
            "UNEXPECTED_FRAME - type 2, all octets = <<0,60,0,0,0,0,0,0,0,0,0,3,0,0>>",
            0,
            0,
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_frame_on_channel_0_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::lapin(&broker).await;
    hostile_case(
        bystander,
        &broker,
        &body(0, b"abc"),
        (
            505,
            "UNEXPECTED_FRAME - type 3, all octets = <<\"abc\">>",
            0,
            0,
        ),
    )
    .await;
}

/// An unknown class or method id makes RabbitMQ drop the connection at once, without a
/// `connection.close` (its frame parser fails on `{unknown_method_id, ...}`), whether on
/// channel 0 or on an open channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_class_or_method_id_drops_the_connection_without_a_frame() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::lapin(&broker).await;
    let cases: [(u16, u16, u16); 5] = [
        (0, 99, 10),
        (1, 99, 10),
        (0, 10, 99),
        (1, 60, 99),
        (1, 20, 30),
    ];
    for (ch, class_id, method_id) in cases {
        let mut c = within(5, "open", RawClient::open(broker.addr())).await;
        c.open_channel(1).await;
        let mut payload = class_id.to_be_bytes().to_vec();
        payload.extend_from_slice(&method_id.to_be_bytes());
        c.write(&frame_bytes(1, ch, &payload)).await;
        c.expect_closed_without_frame(Duration::from_secs(3)).await;
    }
    bystander.assert_round_trip().await;
}

// ---------------------------------------------------------------------------------------
// Frame sizes, frame ends, frame types
// ---------------------------------------------------------------------------------------

/// The frame header alone decides: the server refuses a frame announcing more than frame_max
/// without waiting for (or buffering) its payload. RabbitMQ's text reports frame_max minus
/// the 8 bytes of frame overhead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_header_announcing_more_than_frame_max_is_refused_with_501_before_its_payload() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::lapin(&broker).await;
    let mut header = vec![1, 0, 1];
    header.extend_from_slice(&200_000u32.to_be_bytes());
    header.extend_from_slice(&[0, 50, 0, 10]);
    hostile_case(
        bystander,
        &broker,
        &header,
        (
            501,
            "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,200000,131064}",
            0,
            0,
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_frame_one_byte_above_frame_max_closes_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::amqprs(&broker).await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    let q = c.declare_queue(1).await;
    c.write(&concat(&[
        &publish(1, &q),
        &header_bytes(1, 131_073),
        &body(1, &vec![7u8; 131_073]),
    ]))
    .await;
    expect_hard_close(
        &mut c,
        501,
        "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,131073,131064}",
        0,
        0,
    )
    .await;
    bystander.assert_round_trip().await;
}

/// RabbitMQ allows a payload of frame_max bytes (the frame is then frame_max + 8 long), and
/// delivers the body again in frames of at most frame_max bytes in total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_frame_with_a_payload_of_exactly_frame_max_is_accepted() {
    let broker = TestBroker::start().await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    let q = c.declare_queue(1).await;
    let data: Vec<u8> = (0..131_072u32).map(|i| (i % 199) as u8).collect();
    c.write(&concat(&[
        &publish(1, &q),
        &header_bytes(1, data.len() as u64),
        &body(1, &data),
    ]))
    .await;
    let frames = within(5, "basic.get", c.get_body_frames(1, &q))
        .await
        .expect("the message was delivered");
    let sizes: Vec<usize> = frames.iter().map(Vec::len).collect();
    assert_eq!(sizes, [131_064, 8]);
    assert_eq!(frames.concat(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frame_end_octet_on_a_method_closes_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::lapin(&broker).await;
    let mut bytes = method_bytes(
        1,
        &AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: true })),
    );
    *bytes.last_mut().expect("frame end") = 0xFF;
    hostile_case(
        bystander,
        &broker,
        &bytes,
        (
            501,
            "FRAME_ERROR - type 1, all octets = <<0,20,0,20,1>>: {invalid_frame_end_marker,255}",
            0,
            0,
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frame_end_octet_on_a_body_closes_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::amqprs(&broker).await;
    let mut bytes = body(1, b"abc");
    *bytes.last_mut().expect("frame end") = 0;
    hostile_case(
        bystander,
        &broker,
        &bytes,
        (
            501,
            "FRAME_ERROR - type 3, all octets = <<\"abc\">>: {invalid_frame_end_marker,0}",
            0,
            0,
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_frame_type_closes_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::lapin(&broker).await;
    let cases: [(Vec<u8>, &str); 2] = [
        (
            frame_bytes(9, 1, b"abc"),
            "FRAME_ERROR - type 9, all octets = <<\"abc\">>: unknown_frame",
        ),
        (
            frame_bytes(4, 0, b""),
            "FRAME_ERROR - type 4, all octets = <<>>: unknown_frame",
        ),
    ];
    for (bytes, text) in cases {
        let mut c = within(5, "open", RawClient::open(broker.addr())).await;
        c.open_channel(1).await;
        c.write(&bytes).await;
        expect_hard_close(&mut c, 501, text, 0, 0).await;
    }
    bystander.assert_round_trip().await;
}

/// Bytes that are no frame at all: the first seven are read as a frame header, here one
/// announcing a 4 GB payload, refused from the header alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_handshake_closes_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::amqprs(&broker).await;
    hostile_case(
        bystander,
        &broker,
        &[0xDE, 0xAD, 0xBE, 0xEF].repeat(10),
        (
            501,
            "FRAME_ERROR - type 222, all octets = <<>>: {frame_too_large,4024348094,131064}",
            0,
            0,
        ),
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Heartbeat frames
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_on_a_nonzero_channel_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::lapin(&broker).await;
    hostile_case(
        bystander,
        &broker,
        &frame_bytes(8, 1, b""),
        (505, "UNEXPECTED_FRAME - type 8, all octets = <<>>", 0, 0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_with_a_payload_closes_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::amqprs(&broker).await;
    hostile_case(
        bystander,
        &broker,
        &frame_bytes(8, 0, b"xx"),
        (
            501,
            "FRAME_ERROR - type 8, all octets = <<\"xx\">>: unknown_frame",
            0,
            0,
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_on_channel_0_is_accepted_silently_when_heartbeats_are_off() {
    let broker = TestBroker::start().await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    c.write(&frame_bytes(8, 0, b"")).await;
    c.expect_silence(Duration::from_millis(300)).await;
    let q = c.declare_queue(1).await;
    assert!(q.starts_with("amq.gen-"));
}

// ---------------------------------------------------------------------------------------
// Content frames out of order
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_header_without_a_publish_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::lapin(&broker).await;
    hostile_case(
        bystander,
        &broker,
        &header_bytes(1, 3),
        (505, EXPECTED_METHOD, 0, 0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_frames_on_a_never_opened_channel_close_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::amqprs(&broker).await;
    for bytes in [header_bytes(7, 3), body(7, b"abc")] {
        let mut c = within(5, "open", RawClient::open(broker.addr())).await;
        c.write(&bytes).await;
        expect_hard_close(&mut c, 505, EXPECTED_METHOD, 0, 0).await;
    }
    bystander.assert_round_trip().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_frame_without_a_publish_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::amqprs(&broker).await;
    hostile_case(
        bystander,
        &broker,
        &body(1, b"abc"),
        (505, EXPECTED_METHOD, 0, 0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_frame_after_a_publish_without_header_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::lapin(&broker).await;
    hostile_case(
        bystander,
        &broker,
        &concat(&[&publish(1, "q"), &body(1, b"abc")]),
        (505, EXPECTED_HEADER, 60, 40),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_frame_after_a_publish_instead_of_its_header_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::amqprs(&broker).await;
    hostile_case(
        bystander,
        &broker,
        &concat(&[
            &publish(1, "q"),
            &method_bytes(1, &queue_declare("", false)),
        ]),
        (505, EXPECTED_HEADER, 60, 40),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_header_of_another_class_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::lapin(&broker).await;
    let mut payload = 50u16.to_be_bytes().to_vec();
    payload.extend_from_slice(&0u16.to_be_bytes());
    payload.extend_from_slice(&3u64.to_be_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes());
    hostile_case(
        bystander,
        &broker,
        &concat(&[&publish(1, "q"), &frame_bytes(2, 1, &payload)]),
        (
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead",
            60,
            40,
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_frame_in_the_middle_of_a_content_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::lapin(&broker).await;
    hostile_case(
        bystander,
        &broker,
        &concat(&[
            &publish(1, "q"),
            &header_bytes(1, 6),
            &body(1, b"abc"),
            &method_bytes(1, &queue_declare("", false)),
        ]),
        (505, EXPECTED_BODY, 60, 40),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_content_header_in_the_middle_of_a_content_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::amqprs(&broker).await;
    hostile_case(
        bystander,
        &broker,
        &concat(&[&publish(1, "q"), &header_bytes(1, 3), &header_bytes(1, 3)]),
        (505, EXPECTED_BODY, 60, 40),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_frame_after_a_complete_empty_content_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::lapin(&broker).await;
    hostile_case(
        bystander,
        &broker,
        &concat(&[&publish(1, "q"), &header_bytes(1, 0), &body(1, b"abc")]),
        (505, EXPECTED_METHOD, 0, 0),
    )
    .await;
}

/// A body longer than its header announced never completes the content: RabbitMQ keeps
/// waiting for body frames (the message is not routed), and the next method on the channel
/// is then "in the middle of the content".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_larger_than_announced_is_never_delivered_and_the_next_method_gets_505() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::amqprs(&broker).await;
    let mut c = within(5, "open", RawClient::open(broker.addr())).await;
    c.open_channel(1).await;
    c.open_channel(2).await;
    let q = c.declare_queue(2).await;
    c.write(&concat(&[
        &publish(1, &q),
        &header_bytes(1, 3),
        &body(1, b"abcdef"),
    ]))
    .await;
    c.expect_silence(Duration::from_millis(300)).await;
    // Nothing reached the queue.
    let frames = within(5, "basic.get", c.get_body_frames(2, &q)).await;
    assert_eq!(frames, None, "an oversized body must not be delivered");
    c.send_method(1, queue_declare("", false)).await;
    expect_hard_close(&mut c, 505, EXPECTED_BODY, 60, 40).await;
    bystander.assert_round_trip().await;
}
