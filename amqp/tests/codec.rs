//! Codec tests for warren-amqp: every method and frame kind through `encode_*` and
//! `decode_frame`, frames arriving in pieces, size limits, malformed and random input, and
//! basic properties.

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::BTreeSet;
use warren_amqp::frame::{
    encode_ack, encode_body, encode_content, encode_deliver, encode_get_ok, encode_header,
    encode_heartbeat, encode_method, encode_nack, method_ids, FRAME_BODY, FRAME_END, FRAME_HEADER,
    FRAME_HEARTBEAT, FRAME_METHOD, FRAME_MIN_SIZE, FRAME_OVERHEAD, PROTOCOL_HEADER,
};
use warren_amqp::properties::MalformedProperties;
use warren_amqp::{
    access, basic, channel, confirm, connection, exchange, method, queue, tx, AMQPClass, AMQPValue,
    ByteArray, ContentHeader, DecimalValue, FieldArray, FieldTable, Frame, FrameError, LongString,
    Properties, ReplyCode, ShortString,
};

/// Frames as the generic decoder gives them: a `basic.publish`, which `decode_frame` returns
/// as a [`Frame::Publish`], is compared as the method it is.
fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, FrameError> {
    warren_amqp::frame::decode_frame(buf, frame_max).map(|f| f.map(Frame::into_generic))
}

#[test]
fn basic_publish_decodes_without_the_generic_parser() {
    let m = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: name("amq.topic"),
        routing_key: name("a.b.c"),
        mandatory: true,
        immediate: false,
    }));
    let mut buf = BytesMut::from(&encoded(3, &m)[..]);
    let frame = warren_amqp::frame::decode_frame(&mut buf, FRAME_MAX)
        .expect("decodes")
        .expect("a whole frame");
    let Frame::Publish(3, p) = &frame else {
        panic!("not a publish frame: {frame:?}");
    };
    assert_eq!((p.exchange(), p.routing_key()), ("amq.topic", "a.b.c"));
    assert!(p.mandatory && !p.immediate);
    assert_eq!(frame.into_generic(), Frame::Method(3, Box::new(m)));
}

/// The frame_max RabbitMQ negotiates by default.
const FRAME_MAX: u32 = 131_072;
/// How deep Warren lets field tables and arrays nest, counting the outermost table.
const MAX_NESTING: usize = 32;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A deterministic xorshift64* generator, so that every run fuzzes the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(k.into(), v);
    }
    t
}

/// One value of every scalar type amq-protocol reads and writes in a table, at its limits.
fn every_scalar_value() -> Vec<(&'static str, AMQPValue)> {
    vec![
        ("bool", AMQPValue::Boolean(true)),
        ("i8", AMQPValue::ShortShortInt(i8::MIN)),
        ("u8", AMQPValue::ShortShortUInt(u8::MAX)),
        ("i16", AMQPValue::ShortInt(i16::MIN)),
        ("u16", AMQPValue::ShortUInt(u16::MAX)),
        ("i32", AMQPValue::LongInt(i32::MIN)),
        ("u32", AMQPValue::LongUInt(u32::MAX)),
        ("i64", AMQPValue::LongLongInt(i64::MIN)),
        ("f32", AMQPValue::Float(-1.5e-7)),
        ("f64", AMQPValue::Double(6.02214076e23)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 3,
                value: 4_294_967_295,
            }),
        ),
        (
            "longstr",
            AMQPValue::LongString(LongString::from(b"bytes \x00\xff and h\xc3\xa9".to_vec())),
        ),
        ("timestamp", AMQPValue::Timestamp(1_700_000_000)),
        (
            "bytearray",
            AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 0x7f, 0x80, 0xfe, 0xff])),
        ),
        ("void", AMQPValue::Void),
    ]
}

/// A field table holding every value type amq-protocol supports (short strings aside, see
/// `short_string_table_values_*`), nested tables and arrays, and long and non-ASCII keys.
fn every_value_table() -> FieldTable {
    let scalars = every_scalar_value();
    let array_of_everything: Vec<AMQPValue> = scalars.iter().map(|(_, v)| v.clone()).collect();
    let innermost = table(vec![
        ("x-death-count", AMQPValue::LongLongInt(3)),
        ("reason", AMQPValue::LongString("expired".into())),
    ]);
    let inner = table(vec![
        ("deep-false", AMQPValue::Boolean(false)),
        (
            "deep-array",
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::FieldTable(innermost.clone()),
                AMQPValue::FieldArray(FieldArray::from(vec![
                    AMQPValue::LongInt(-1),
                    AMQPValue::FieldArray(FieldArray::default()),
                ])),
                AMQPValue::Void,
            ])),
        ),
        ("innermost", AMQPValue::FieldTable(innermost)),
    ]);
    let mut t = table(scalars);
    t.insert(
        "array".into(),
        AMQPValue::FieldArray(FieldArray::from(array_of_everything)),
    );
    t.insert(
        "empty-array".into(),
        AMQPValue::FieldArray(FieldArray::default()),
    );
    t.insert("table".into(), AMQPValue::FieldTable(inner));
    t.insert(
        "empty-table".into(),
        AMQPValue::FieldTable(FieldTable::default()),
    );
    t.insert("clé-ünïcode".into(), AMQPValue::LongString("värde".into()));
    t.insert("k".repeat(255).into(), AMQPValue::ShortUInt(255));
    t.insert("".into(), AMQPValue::Boolean(false));
    t
}

fn name(s: &str) -> ShortString {
    ShortString::from(s)
}

/// Every method of AMQP 0-9-1 with RabbitMQ's extensions, with non-default field values.
fn every_method() -> Vec<AMQPClass> {
    use AMQPClass as C;
    let args = every_value_table();
    let long_name = "n".repeat(255);
    vec![
        // connection
        C::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: args.clone(),
            mechanisms: "PLAIN AMQPLAIN".into(),
            locales: "en_US".into(),
        })),
        C::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: args.clone(),
            mechanism: name("PLAIN"),
            response: LongString::from(b"\x00guest\x00guest".to_vec()),
            locale: name("en_US"),
        })),
        C::Connection(connection::AMQPMethod::Secure(connection::Secure {
            challenge: LongString::from(b"challenge \x00\xff".to_vec()),
        })),
        C::Connection(connection::AMQPMethod::SecureOk(connection::SecureOk {
            response: LongString::from(b"response \x01\x02".to_vec()),
        })),
        C::Connection(connection::AMQPMethod::Tune(connection::Tune {
            channel_max: 2047,
            frame_max: FRAME_MAX,
            heartbeat: 60,
        })),
        C::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: u16::MAX,
            frame_max: u32::MAX,
            heartbeat: u16::MAX,
        })),
        C::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: name("/vhost-é"),
        })),
        C::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        C::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 320,
            reply_text: name("CONNECTION_FORCED - broker forced connection closure"),
            class_id: 60,
            method_id: 40,
        })),
        C::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        C::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
            reason: name("low on memory"),
        })),
        C::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
        C::Connection(connection::AMQPMethod::UpdateSecret(
            connection::UpdateSecret {
                new_secret: LongString::from(b"new-token".to_vec()),
                reason: name("token refresh"),
            },
        )),
        C::Connection(connection::AMQPMethod::UpdateSecretOk(
            connection::UpdateSecretOk {},
        )),
        // channel
        C::Channel(channel::AMQPMethod::Open(channel::Open {})),
        C::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        C::Channel(channel::AMQPMethod::Flow(channel::Flow { active: true })),
        C::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
            active: true,
        })),
        C::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 406,
            reply_text: name("PRECONDITION_FAILED - inequivalent arg 'durable'"),
            class_id: 50,
            method_id: 10,
        })),
        C::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        // access
        C::Access(access::AMQPMethod::Request(access::Request {
            realm: name("/data"),
            exclusive: true,
            passive: false,
            active: true,
            write: false,
            read: true,
        })),
        C::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
        // exchange
        C::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: name("logs"),
            kind: name("topic"),
            passive: false,
            durable: true,
            auto_delete: true,
            internal: true,
            nowait: false,
            arguments: args.clone(),
        })),
        C::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
        C::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: name(&long_name),
            if_unused: true,
            nowait: true,
        })),
        C::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
        C::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
            destination: name("errors"),
            source: name("logs"),
            routing_key: name("#.error"),
            nowait: true,
            arguments: args.clone(),
        })),
        C::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
        C::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
            destination: name("errors"),
            source: name("logs"),
            routing_key: name("*.warn"),
            nowait: true,
            arguments: args.clone(),
        })),
        C::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
        // queue
        C::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name("orders"),
            passive: true,
            durable: true,
            exclusive: false,
            auto_delete: true,
            nowait: false,
            arguments: args.clone(),
        })),
        C::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
            queue: name("amq.gen-JzTY20BRgKO-HjmUJj0wLg"),
            message_count: u32::MAX,
            consumer_count: 17,
        })),
        C::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: name("orders"),
            exchange: name("amq.direct"),
            routing_key: name(&long_name),
            nowait: true,
            arguments: args.clone(),
        })),
        C::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
        C::Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: name("orders"),
            nowait: true,
        })),
        C::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
            message_count: 42,
        })),
        C::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: name("orders"),
            if_unused: true,
            if_empty: false,
            nowait: true,
        })),
        C::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
            message_count: 7,
        })),
        C::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
            queue: name("orders"),
            exchange: name("amq.direct"),
            routing_key: name("eu.*"),
            arguments: args.clone(),
        })),
        C::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
        // basic
        C::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 250,
            global: true,
        })),
        C::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        C::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: name("orders"),
            consumer_tag: name("ctag-1"),
            no_local: true,
            no_ack: false,
            exclusive: true,
            nowait: true,
            arguments: args.clone(),
        })),
        C::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
            consumer_tag: name("amq.ctag-x"),
        })),
        C::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: name("ctag-1"),
            nowait: true,
        })),
        C::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
            consumer_tag: name("ctag-1"),
        })),
        C::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: name("amq.topic"),
            routing_key: name("a.b.c"),
            mandatory: true,
            immediate: false,
        })),
        C::Basic(basic::AMQPMethod::Return(basic::Return {
            reply_code: 312,
            reply_text: name("NO_ROUTE"),
            exchange: name("amq.topic"),
            routing_key: name("a.b.c"),
        })),
        C::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: name("ctag-1"),
            delivery_tag: u64::MAX,
            redelivered: true,
            exchange: name(""),
            routing_key: name("orders"),
        })),
        C::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: name("orders"),
            no_ack: true,
        })),
        C::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
            delivery_tag: 9,
            redelivered: true,
            exchange: name("amq.direct"),
            routing_key: name("orders"),
            message_count: 99,
        })),
        C::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
        C::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 1 << 40,
            multiple: true,
        })),
        C::Basic(basic::AMQPMethod::Reject(basic::Reject {
            delivery_tag: 3,
            requeue: true,
        })),
        C::Basic(basic::AMQPMethod::RecoverAsync(basic::RecoverAsync {
            requeue: true,
        })),
        C::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue: true })),
        C::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
        C::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: 12,
            multiple: true,
            requeue: false,
        })),
        // tx
        C::Tx(tx::AMQPMethod::Select(tx::Select {})),
        C::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
        C::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
        C::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
        C::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})),
        C::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
        // confirm
        C::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: true,
        })),
        C::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
    ]
}

/// Basic properties with all fourteen properties set.
fn every_property() -> basic::AMQPProperties {
    basic::AMQPProperties::default()
        .with_content_type(name("application/json"))
        .with_content_encoding(name("gzip"))
        .with_headers(every_value_table())
        .with_delivery_mode(2)
        .with_priority(9)
        .with_correlation_id(name("corr-Ω"))
        .with_reply_to(name("amq.rabbitmq.reply-to"))
        .with_expiration(name("60000"))
        .with_message_id(name(&"m".repeat(255)))
        .with_timestamp(u64::MAX)
        .with_type(name("order.created"))
        .with_user_id(name("guest"))
        .with_app_id(name("warren-tests"))
        .with_cluster_id(name("cluster-a"))
}

fn encoded(channel: u16, method: &AMQPClass) -> BytesMut {
    let mut out = BytesMut::new();
    encode_method(&mut out, channel, method).expect("method encodes");
    out
}

/// Decodes every frame in `buf`, which must hold whole frames only.
fn decode_all(mut buf: BytesMut, frame_max: u32) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(frame) = decode_frame(&mut buf, frame_max).expect("valid frame") {
        frames.push(frame);
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    frames
}

/// Decodes exactly one frame from `bytes`, which must hold exactly that frame.
fn decode_one(bytes: &[u8], frame_max: u32) -> Result<Frame, FrameError> {
    let mut buf = BytesMut::from(bytes);
    let frame = decode_frame(&mut buf, frame_max)?.expect("a whole frame");
    assert!(buf.is_empty(), "{} bytes left after the frame", buf.len());
    Ok(frame)
}

fn decode_error(bytes: &[u8], frame_max: u32) -> FrameError {
    let mut buf = BytesMut::from(bytes);
    match decode_frame(&mut buf, frame_max) {
        Err(e) => e,
        Ok(other) => panic!("expected an error, decoded {other:?}"),
    }
}

/// A frame of any type around any payload.
fn raw_frame(frame_type: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![frame_type];
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
    out
}

/// The payload of an encoded method frame.
fn method_payload(method: &AMQPClass) -> Vec<u8> {
    let frame = encoded(1, method);
    frame[7..frame.len() - 1].to_vec()
}

/// A content header payload: class, weight, body size, then property bytes.
fn header_payload(class_id: u16, body_size: u64, properties: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&class_id.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes());
    p.extend_from_slice(&body_size.to_be_bytes());
    p.extend_from_slice(properties);
    p
}

fn method_frame(channel: u16, method: AMQPClass) -> Frame {
    Frame::Method(channel, Box::new(method))
}

fn assert_error(err: &FrameError, code: ReplyCode, class_id: u16, method_id: u16) {
    assert_eq!(err.code, code, "{err}");
    assert_eq!(
        (err.class_id, err.method_id),
        (class_id, method_id),
        "{err}"
    );
    assert!(
        err.text.starts_with(code.name()),
        "reply text {:?} should start with {}",
        err.text,
        code.name()
    );
    assert!(err.code.is_hard(), "frame errors close the connection");
}

// ---------------------------------------------------------------------------------------
// 1. Round trips
// ---------------------------------------------------------------------------------------

#[test]
fn every_method_round_trips_through_encode_and_decode() {
    for (i, m) in every_method().into_iter().enumerate() {
        let channel = (i as u16).wrapping_mul(997);
        let bytes = encoded(channel, &m);
        assert_eq!(bytes[0], FRAME_METHOD);
        assert_eq!(*bytes.last().expect("frame end"), FRAME_END);
        assert_eq!(
            u32::from_be_bytes([bytes[3], bytes[4], bytes[5], bytes[6]]) as usize,
            bytes.len() - FRAME_OVERHEAD
        );
        assert_eq!(
            method_ids(&bytes[7..]),
            Some(method::ids(&m)),
            "ids on the wire"
        );
        let frame = decode_one(&bytes, FRAME_MAX).expect("decodes");
        assert_eq!(frame.channel(), channel);
        assert_eq!(frame, method_frame(channel, m));
    }
}

#[test]
fn every_known_method_is_covered_by_the_round_trip() {
    let covered: BTreeSet<(u16, u16)> = every_method().iter().map(method::ids).collect();
    let known: BTreeSet<(u16, u16)> = (0..=255u16)
        .flat_map(|c| (0..=255u16).map(move |m| (c, m)))
        .filter(|&(c, m)| method::is_known(c, m))
        .collect();
    assert_eq!(covered, known);
    assert_eq!(
        covered.len(),
        66,
        "AMQP 0-9-1 has 66 methods with RabbitMQ's extensions"
    );
    for m in every_method() {
        let (c, id) = method::ids(&m);
        assert_ne!(method::name(c, id), "unknown");
    }
}

/// The same method with every field at its default: zeros, cleared flags, empty strings
/// and tables. The match is exhaustive, so a method missing here fails to compile.
fn with_default_fields(m: &AMQPClass) -> AMQPClass {
    macro_rules! defaults {
        ($($class:ident $module:ident [$($method:ident)*])*) => {
            match m {
                $($(AMQPClass::$class($module::AMQPMethod::$method(_)) => {
                    AMQPClass::$class($module::AMQPMethod::$method(Default::default()))
                })*)*
            }
        };
    }
    defaults! {
        Connection connection [Start StartOk Secure SecureOk Tune TuneOk Open OpenOk Close
            CloseOk Blocked Unblocked UpdateSecret UpdateSecretOk]
        Channel channel [Open OpenOk Flow FlowOk Close CloseOk]
        Access access [Request RequestOk]
        Exchange exchange [Declare DeclareOk Delete DeleteOk Bind BindOk Unbind UnbindOk]
        Queue queue [Declare DeclareOk Bind BindOk Purge PurgeOk Delete DeleteOk Unbind
            UnbindOk]
        Basic basic [Qos QosOk Consume ConsumeOk Cancel CancelOk Publish Return Deliver Get
            GetOk GetEmpty Ack Reject RecoverAsync Recover RecoverOk Nack]
        Tx tx [Select SelectOk Commit CommitOk Rollback RollbackOk]
        Confirm confirm [Select SelectOk]
    }
}

#[test]
fn every_method_round_trips_with_default_fields() {
    for m in every_method() {
        let zeroed = with_default_fields(&m);
        assert_eq!(method::ids(&zeroed), method::ids(&m));
        let bytes = encoded(0, &zeroed);
        assert_eq!(
            decode_one(&bytes, FRAME_MAX).expect("decodes"),
            method_frame(0, zeroed)
        );
    }
}

#[test]
fn each_method_flag_round_trips_on_its_own() {
    // One flag set at a time, so that a flag decoded into its neighbour shows.
    let queue_declares = (0..5).map(|bit| queue::Declare {
        queue: name("q"),
        passive: bit == 0,
        durable: bit == 1,
        exclusive: bit == 2,
        auto_delete: bit == 3,
        nowait: bit == 4,
        arguments: FieldTable::default(),
    });
    let consumes = (0..4).map(|bit| basic::Consume {
        queue: name("q"),
        consumer_tag: name("t"),
        no_local: bit == 0,
        no_ack: bit == 1,
        exclusive: bit == 2,
        nowait: bit == 3,
        arguments: FieldTable::default(),
    });
    let mut methods: Vec<AMQPClass> = queue_declares
        .map(|d| AMQPClass::Queue(queue::AMQPMethod::Declare(d)))
        .collect();
    methods.extend(consumes.map(|c| AMQPClass::Basic(basic::AMQPMethod::Consume(c))));
    for bit in 0..5 {
        methods.push(AMQPClass::Exchange(exchange::AMQPMethod::Declare(
            exchange::Declare {
                exchange: name("x"),
                kind: name("direct"),
                passive: bit == 0,
                durable: bit == 1,
                auto_delete: bit == 2,
                internal: bit == 3,
                nowait: bit == 4,
                arguments: FieldTable::default(),
            },
        )));
        methods.push(AMQPClass::Access(access::AMQPMethod::Request(
            access::Request {
                realm: name("/data"),
                exclusive: bit == 0,
                passive: bit == 1,
                active: bit == 2,
                write: bit == 3,
                read: bit == 4,
            },
        )));
    }
    for (multiple, requeue) in [(true, false), (false, true)] {
        methods.push(AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: 1,
            multiple,
            requeue,
        })));
    }
    for m in methods {
        assert_eq!(
            decode_one(&encoded(3, &m), FRAME_MAX).expect("decodes"),
            method_frame(3, m)
        );
    }
}

#[test]
fn queue_declare_matches_the_spec_byte_layout() {
    let m = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name("q"),
        passive: false,
        durable: true,
        exclusive: false,
        auto_delete: true,
        nowait: false,
        arguments: FieldTable::default(),
    }));
    let expected = raw_frame(
        FRAME_METHOD,
        5,
        &[
            0,
            50,
            0,
            10, // queue.declare
            0,
            0, // reserved-1
            1,
            b'q',        // queue
            0b0000_1010, // durable (bit 1) and auto-delete (bit 3)
            0,
            0,
            0,
            0, // empty arguments
        ],
    );
    assert_eq!(&encoded(5, &m)[..], &expected[..]);
}

#[test]
fn basic_publish_matches_the_spec_byte_layout() {
    let m = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: name("x"),
        routing_key: name("rk"),
        mandatory: true,
        immediate: false,
    }));
    let expected = raw_frame(
        FRAME_METHOD,
        1,
        &[0, 60, 0, 40, 0, 0, 1, b'x', 2, b'r', b'k', 0b01],
    );
    assert_eq!(&encoded(1, &m)[..], &expected[..]);
}

#[test]
fn field_table_with_every_value_type_round_trips() {
    let args = every_value_table();
    let m = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name("q"),
        arguments: args.clone(),
        ..Default::default()
    }));
    let Frame::Method(_, decoded) = decode_one(&encoded(1, &m), FRAME_MAX).expect("decodes") else {
        panic!("not a method frame");
    };
    let AMQPClass::Queue(queue::AMQPMethod::Declare(d)) = *decoded else {
        panic!("not queue.declare");
    };
    // Compare entry by entry first, so that a failure names the value type.
    for (k, v) in &args {
        assert_eq!(d.arguments.inner().get(k), Some(v), "value of {k}");
    }
    assert_eq!(d.arguments, args);
}

#[test]
fn short_string_table_values_are_refused_by_encode_method() {
    // amq-protocol writes a short-string table value with the type octet `_`, which neither
    // Warren nor any client reads: encode_method reports it instead of sending such a frame.
    let nested = table(vec![(
        "inner",
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::ShortString(name("s"))])),
    )]);
    for args in [
        table(vec![("s", AMQPValue::ShortString(name("short")))]),
        table(vec![("t", AMQPValue::FieldTable(nested))]),
    ] {
        let m = AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: name("q"),
            arguments: args,
            ..Default::default()
        }));
        let mut out = BytesMut::new();
        assert!(encode_method(&mut out, 1, &m).is_err());
        assert!(out.is_empty(), "nothing is written for a refused method");
    }
}

#[test]
fn server_method_constructors_round_trip_and_cut_long_texts_on_a_character_boundary() {
    let long_text = format!("NOT_FOUND - {}", "ü".repeat(200));
    let cut = method::short(&long_text);
    assert!(cut.as_str().len() <= 255 && long_text.starts_with(cut.as_str()));
    assert_eq!(
        cut.as_str().len(),
        254,
        "the last 'ü' would end at byte 256"
    );
    for (m, ids) in [
        (method::connection_close(320, &long_text, 0, 0), (10, 50)),
        (method::channel_close(404, &long_text, 50, 10), (20, 40)),
        (
            method::basic_return(312, "NO_ROUTE", "amq.direct", &long_text),
            (60, 50),
        ),
        (method::basic_cancel(&long_text), (60, 30)),
    ] {
        assert_eq!(method::ids(&m), ids);
        assert_eq!(
            decode_one(&encoded(2, &m), FRAME_MAX).expect("decodes"),
            method_frame(2, m)
        );
    }
}

#[test]
fn encode_method_appends_after_existing_bytes() {
    let mut out = BytesMut::new();
    encode_heartbeat(&mut out);
    let methods = every_method();
    for m in &methods {
        encode_method(&mut out, 9, m).expect("encodes");
    }
    let frames = decode_all(out, FRAME_MAX);
    assert_eq!(frames[0], Frame::Heartbeat(0));
    let expected: Vec<Frame> = methods.into_iter().map(|m| method_frame(9, m)).collect();
    assert_eq!(&frames[1..], &expected[..]);
}

#[test]
fn hand_encoded_deliver_equals_the_generic_encoding_and_decodes() {
    for (channel, tag, redelivered, exchange, key, ctag) in [
        (1u16, 1u64, false, "", "orders", "ctag-1"),
        (
            u16::MAX,
            u64::MAX,
            true,
            "amq.topic",
            "a.b.c",
            "amq.ctag-ÅÄÖ",
        ),
        (0, 0, false, "", "", ""),
    ] {
        let mut out = BytesMut::new();
        encode_deliver(&mut out, channel, ctag, tag, redelivered, exchange, key);
        let m = AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: name(ctag),
            delivery_tag: tag,
            redelivered,
            exchange: name(exchange),
            routing_key: name(key),
        }));
        assert_eq!(&out[..], &encoded(channel, &m)[..]);
        assert_eq!(
            decode_one(&out, FRAME_MAX).expect("decodes"),
            method_frame(channel, m)
        );
    }
}

#[test]
fn hand_encoded_get_ok_equals_the_generic_encoding_and_decodes() {
    for (channel, tag, redelivered, exchange, key, count) in [
        (1u16, 1u64, false, "", "orders", 0u32),
        (u16::MAX, u64::MAX, true, "amq.direct", "ключ", u32::MAX),
    ] {
        let mut out = BytesMut::new();
        encode_get_ok(&mut out, channel, tag, redelivered, exchange, key, count);
        let m = AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
            delivery_tag: tag,
            redelivered,
            exchange: name(exchange),
            routing_key: name(key),
            message_count: count,
        }));
        assert_eq!(&out[..], &encoded(channel, &m)[..]);
        assert_eq!(
            decode_one(&out, FRAME_MAX).expect("decodes"),
            method_frame(channel, m)
        );
    }
}

#[test]
fn hand_encoded_ack_and_nack_equal_the_generic_encoding_and_decode() {
    for (channel, tag, multiple) in [(1u16, 1u64, false), (7, u64::MAX, true), (0, 0, true)] {
        let mut out = BytesMut::new();
        encode_ack(&mut out, channel, tag, multiple);
        let ack = AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple,
        }));
        assert_eq!(&out[..], &encoded(channel, &ack)[..]);
        assert_eq!(
            decode_one(&out, FRAME_MAX).expect("decodes"),
            method_frame(channel, ack)
        );

        let mut out = BytesMut::new();
        encode_nack(&mut out, channel, tag, multiple);
        let nack = AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: tag,
            multiple,
            requeue: false,
        }));
        assert_eq!(&out[..], &encoded(channel, &nack)[..]);
        assert_eq!(
            decode_one(&out, FRAME_MAX).expect("decodes"),
            method_frame(channel, nack)
        );
    }
}

#[test]
fn deliver_cuts_names_over_255_bytes_on_a_character_boundary() {
    // 'é' is two bytes: 200 of them are 400 bytes and byte 255 falls inside one.
    let long = "é".repeat(200);
    let mut out = BytesMut::new();
    encode_deliver(&mut out, 1, &long, 5, false, &long, &long);
    encode_get_ok(&mut out, 1, 5, false, &long, &long, 0);
    let cut = "é".repeat(127);
    let frames = decode_all(out, FRAME_MAX);
    assert_eq!(
        frames,
        vec![
            method_frame(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                    consumer_tag: name(&cut),
                    delivery_tag: 5,
                    redelivered: false,
                    exchange: name(&cut),
                    routing_key: name(&cut),
                }))
            ),
            method_frame(
                1,
                AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                    delivery_tag: 5,
                    redelivered: false,
                    exchange: name(&cut),
                    routing_key: name(&cut),
                    message_count: 0,
                }))
            ),
        ]
    );
    // ASCII names are cut at exactly 255 bytes.
    let mut out = BytesMut::new();
    encode_deliver(&mut out, 1, &"a".repeat(300), 1, true, "", "");
    let frames = decode_all(out, FRAME_MAX);
    let Frame::Method(_, m) = &frames[0] else {
        panic!("not a method");
    };
    let AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) = &**m else {
        panic!("not a deliver");
    };
    assert_eq!(d.consumer_tag.as_str(), "a".repeat(255));
}

/// Decodes a content (header then bodies) and checks each frame against `frame_max`.
fn decode_content(bytes: BytesMut, frame_max: u32) -> (ContentHeader, Vec<Bytes>) {
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let size = u32::from_be_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
        if frame_max != 0 {
            assert!(size + FRAME_OVERHEAD <= frame_max as usize, "frame too big");
        }
        rest = &rest[size + FRAME_OVERHEAD..];
    }
    let mut frames = decode_all(bytes, frame_max).into_iter();
    let Some(Frame::Header(4, header)) = frames.next() else {
        panic!("content starts with a header on channel 4");
    };
    let bodies = frames
        .map(|f| match f {
            Frame::Body(4, b) => b,
            other => panic!("expected a body frame on channel 4, got {other:?}"),
        })
        .collect();
    (header, bodies)
}

#[test]
fn content_body_is_split_by_frame_max_and_reassembles() {
    let props = Properties::encode(&every_property());
    let max_payload = (FRAME_MIN_SIZE as usize) - FRAME_OVERHEAD;
    let pattern = |n: usize| (0..n).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>();
    for (body_len, frame_max, body_frames) in [
        (0usize, FRAME_MIN_SIZE, 0usize),
        (1, FRAME_MIN_SIZE, 1),
        (max_payload - 1, FRAME_MIN_SIZE, 1),
        (max_payload, FRAME_MIN_SIZE, 1),
        (max_payload + 1, FRAME_MIN_SIZE, 2),
        (10 * max_payload, FRAME_MIN_SIZE, 10),
        (10 * max_payload + 3, FRAME_MIN_SIZE, 11),
        (
            1_000_000,
            FRAME_MAX,
            1_000_000usize.div_ceil(FRAME_MAX as usize - 8),
        ),
        (1_000_000, 0, 1),
    ] {
        let body = pattern(body_len);
        let mut out = BytesMut::new();
        encode_content(&mut out, 4, props.raw(), &body, frame_max);
        let (header, bodies) = decode_content(out, frame_max);
        assert_eq!(header.class_id, 60);
        assert_eq!(header.body_size, body_len as u64);
        assert_eq!(header.properties, props);
        assert_eq!(bodies.len(), body_frames, "body of {body_len} bytes");
        assert!(bodies.iter().all(|b| !b.is_empty()), "no empty body frames");
        assert_eq!(bodies.concat(), body);
    }
}

#[test]
fn header_and_body_encoders_match_encode_content() {
    let props = Properties::encode(&every_property());
    let body = vec![7u8; 10_000];
    let mut together = BytesMut::new();
    encode_content(&mut together, 4, props.raw(), &body, FRAME_MIN_SIZE);
    let mut apart = BytesMut::new();
    encode_header(&mut apart, 4, body.len() as u64, props.raw());
    encode_body(&mut apart, 4, &body, FRAME_MIN_SIZE);
    assert_eq!(together, apart);

    let mut header_only = BytesMut::new();
    encode_header(&mut header_only, 4, 0, props.raw());
    assert_eq!(header_only[0], FRAME_HEADER);
    let mut empty_body = BytesMut::new();
    encode_body(&mut empty_body, 4, &[], FRAME_MIN_SIZE);
    assert!(empty_body.is_empty(), "an empty body has no body frame");
}

#[test]
fn heartbeat_encodes_as_the_spec_frame() {
    let mut out = BytesMut::new();
    encode_heartbeat(&mut out);
    assert_eq!(&out[..], &[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
    assert_eq!(
        decode_one(&out, FRAME_MIN_SIZE).expect("decodes"),
        Frame::Heartbeat(0)
    );
}

#[test]
fn body_frame_keeps_any_bytes_and_its_channel() {
    let payload: Vec<u8> = (0..=255u8).collect();
    let frame = decode_one(&raw_frame(FRAME_BODY, 513, &payload), FRAME_MAX).expect("decodes");
    assert_eq!(frame.channel(), 513);
    assert_eq!(frame, Frame::Body(513, Bytes::from(payload)));
    let empty = decode_one(&raw_frame(FRAME_BODY, 1, &[]), FRAME_MAX).expect("decodes");
    assert_eq!(empty, Frame::Body(1, Bytes::new()));
}

// ---------------------------------------------------------------------------------------
// 2. Frames arriving in pieces
// ---------------------------------------------------------------------------------------

/// A stream of several frames of every type, with the frames it holds.
fn frame_stream() -> (Vec<u8>, Vec<Frame>) {
    let frame_max = FRAME_MIN_SIZE;
    let declare = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name("orders"),
        durable: true,
        arguments: every_value_table(),
        ..Default::default()
    }));
    let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: name("amq.direct"),
        routing_key: name("orders"),
        mandatory: true,
        immediate: false,
    }));
    let props = Properties::encode(&every_property());
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
    let split = frame_max as usize - FRAME_OVERHEAD;

    let mut out = BytesMut::new();
    encode_method(&mut out, 1, &declare).expect("encodes");
    encode_method(&mut out, 1, &publish).expect("encodes");
    encode_content(&mut out, 1, props.raw(), &body, frame_max);
    encode_heartbeat(&mut out);
    encode_deliver(&mut out, 2, "ctag", 1, false, "amq.direct", "orders");
    encode_content(&mut out, 2, props.raw(), b"", frame_max);
    encode_ack(&mut out, 1, 1, false);

    let frames = vec![
        method_frame(1, declare),
        method_frame(1, publish),
        Frame::Header(
            1,
            ContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: props.clone(),
            },
        ),
        Frame::Body(1, Bytes::copy_from_slice(&body[..split])),
        Frame::Body(1, Bytes::copy_from_slice(&body[split..])),
        Frame::Heartbeat(0),
        method_frame(
            2,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: name("ctag"),
                delivery_tag: 1,
                redelivered: false,
                exchange: name("amq.direct"),
                routing_key: name("orders"),
            })),
        ),
        Frame::Header(
            2,
            ContentHeader {
                class_id: 60,
                body_size: 0,
                properties: props,
            },
        ),
        method_frame(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 1,
                multiple: false,
            })),
        ),
    ];
    (out.to_vec(), frames)
}

/// Decodes what `buf` holds so far, checking that an incomplete frame consumes nothing.
fn drain(buf: &mut BytesMut, frame_max: u32, into: &mut Vec<Frame>) {
    loop {
        let before = buf.len();
        match decode_frame(buf, frame_max) {
            Ok(Some(frame)) => into.push(frame),
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete frame consumes nothing");
                return;
            }
            Err(e) => panic!("error on a valid stream: {e}"),
        }
    }
}

#[test]
fn every_frame_is_incomplete_until_its_last_byte_arrives() {
    let (stream, frames) = frame_stream();
    let mut rest = &stream[..];
    for expected in frames {
        let size = u32::from_be_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
        let len = size + FRAME_OVERHEAD;
        for prefix in 0..len {
            let mut buf = BytesMut::from(&rest[..prefix]);
            assert_eq!(
                decode_frame(&mut buf, FRAME_MIN_SIZE),
                Ok(None),
                "prefix of {prefix} of {len} bytes"
            );
            assert_eq!(buf.len(), prefix);
        }
        let mut buf = BytesMut::from(&rest[..len]);
        assert_eq!(decode_frame(&mut buf, FRAME_MIN_SIZE), Ok(Some(expected)));
        assert!(buf.is_empty());
        rest = &rest[len..];
    }
    assert!(rest.is_empty());
}

#[test]
fn stream_split_at_every_byte_boundary_decodes_the_same_frames() {
    let (stream, frames) = frame_stream();
    for split in 0..=stream.len() {
        let mut buf = BytesMut::from(&stream[..split]);
        let mut got = Vec::new();
        drain(&mut buf, FRAME_MIN_SIZE, &mut got);
        assert!(got.len() < frames.len() || split == stream.len());
        buf.extend_from_slice(&stream[split..]);
        drain(&mut buf, FRAME_MIN_SIZE, &mut got);
        assert!(buf.is_empty(), "split at {split}");
        assert_eq!(got, frames, "split at {split}");
    }
}

#[test]
fn stream_fed_byte_by_byte_decodes_the_same_frames() {
    let (stream, frames) = frame_stream();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut completed_at = Vec::new();
    for (i, byte) in stream.iter().enumerate() {
        buf.put_u8(*byte);
        let before = got.len();
        drain(&mut buf, FRAME_MIN_SIZE, &mut got);
        assert!(
            got.len() - before <= 1,
            "one byte completes at most one frame"
        );
        if got.len() > before {
            completed_at.push(i + 1);
        }
    }
    assert!(buf.is_empty());
    assert_eq!(got, frames);
    // Each frame completes exactly on its frame-end octet.
    let mut ends = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let size = u32::from_be_bytes([
            stream[at + 3],
            stream[at + 4],
            stream[at + 5],
            stream[at + 6],
        ]) as usize;
        at += size + FRAME_OVERHEAD;
        ends.push(at);
    }
    assert_eq!(completed_at, ends);
}

#[test]
fn stream_fed_in_random_chunks_decodes_the_same_frames() {
    let (stream, frames) = frame_stream();
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..200 {
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let n = 1 + rng.below(300);
            let end = (at + n).min(stream.len());
            buf.extend_from_slice(&stream[at..end]);
            at = end;
            drain(&mut buf, FRAME_MIN_SIZE, &mut got);
        }
        assert!(buf.is_empty());
        assert_eq!(got, frames);
    }
}

// ---------------------------------------------------------------------------------------
// 3. Frame size limits
// ---------------------------------------------------------------------------------------

#[test]
fn oversized_frame_is_refused_before_its_payload_arrives() {
    for frame_type in [FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT] {
        for frame_max in [FRAME_MIN_SIZE, FRAME_MAX] {
            // As in RabbitMQ, the payload may fill frame_max; one byte more is refused.
            for size in [frame_max + 1, frame_max + 8, u32::MAX] {
                let mut header = vec![frame_type, 0, 1];
                header.extend_from_slice(&size.to_be_bytes());
                // Six bytes: not yet known.
                let mut buf = BytesMut::from(&header[..6]);
                assert_eq!(decode_frame(&mut buf, frame_max), Ok(None));
                // Seven bytes, no payload: refused at once.
                let err = decode_error(&header, frame_max);
                assert_error(&err, ReplyCode::FrameError, 0, 0);
                assert!(
                    err.text.contains(&format!("{{frame_too_large,{size},")),
                    "{err}"
                );
            }
        }
    }
}

#[test]
fn frame_exactly_at_frame_max_is_accepted() {
    for frame_max in [FRAME_MIN_SIZE, FRAME_MAX] {
        let payload = vec![0xAB; frame_max as usize - FRAME_OVERHEAD];
        let frame = raw_frame(FRAME_BODY, 1, &payload);
        assert_eq!(frame.len(), frame_max as usize);
        // The header alone is waited on, not refused.
        let mut buf = BytesMut::from(&frame[..7]);
        assert_eq!(decode_frame(&mut buf, frame_max), Ok(None));
        assert_eq!(
            decode_one(&frame, frame_max).expect("at the limit"),
            Frame::Body(1, Bytes::from(payload))
        );
        // And the content encoder fills frames to exactly the limit.
        let mut out = BytesMut::new();
        encode_body(&mut out, 1, &vec![1u8; frame_max as usize], frame_max);
        assert_eq!(
            u32::from_be_bytes([out[3], out[4], out[5], out[6]]),
            frame_max - FRAME_OVERHEAD as u32
        );
        assert_eq!(decode_all(out, frame_max).len(), 2);
    }
}

#[test]
fn method_frame_at_the_limit_is_accepted_and_one_byte_over_is_refused() {
    let m = AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
        queue: name("q"),
        arguments: every_value_table(),
        ..Default::default()
    }));
    let bytes = encoded(1, &m);
    // The limit applies to the payload, as RabbitMQ applies it.
    let len = bytes.len() as u32 - FRAME_OVERHEAD as u32;
    assert_eq!(
        decode_one(&bytes, len).expect("at the limit"),
        method_frame(1, m)
    );
    assert_error(
        &decode_error(&bytes[..7], len - 1),
        ReplyCode::FrameError,
        0,
        0,
    );
}

#[test]
fn without_a_limit_any_size_is_awaited_without_reserving_it_up_front() {
    let mut header = vec![FRAME_BODY, 0, 1];
    header.extend_from_slice(&(u32::MAX - 8).to_be_bytes());
    let mut buf = BytesMut::from(&header[..]);
    assert_eq!(decode_frame(&mut buf, 0), Ok(None));
    assert_eq!(buf.len(), 7);
    assert!(
        buf.capacity() <= 2 << 20,
        "reserved {} bytes for a frame whose bytes have not arrived",
        buf.capacity()
    );
    // A whole frame decodes with no limit too.
    let payload = vec![3u8; 300_000];
    assert_eq!(
        decode_one(&raw_frame(FRAME_BODY, 2, &payload), 0).expect("decodes"),
        Frame::Body(2, Bytes::from(payload))
    );
}

#[test]
fn fewer_than_seven_bytes_are_always_incomplete() {
    for bytes in [&b""[..], b"\x01", b"AMQP", b"\xff\xff\xff\xff\xff\xff"] {
        let mut buf = BytesMut::from(bytes);
        assert_eq!(decode_frame(&mut buf, FRAME_MAX), Ok(None));
        assert_eq!(&buf[..], bytes);
    }
}

// ---------------------------------------------------------------------------------------
// 4. Malformed frames
// ---------------------------------------------------------------------------------------

#[test]
fn bad_frame_end_octet_is_a_frame_error() {
    for bad in [0x00, 0xCD, 0xCF, 0xFF] {
        let mut heartbeat = raw_frame(FRAME_HEARTBEAT, 0, &[]);
        *heartbeat.last_mut().expect("end") = bad;
        assert_error(
            &decode_error(&heartbeat, FRAME_MAX),
            ReplyCode::FrameError,
            0,
            0,
        );
        let mut method = encoded(1, &every_method()[0]).to_vec();
        *method.last_mut().expect("end") = bad;
        let err = decode_error(&method, FRAME_MAX);
        assert_error(&err, ReplyCode::FrameError, 0, 0);
        assert!(
            err.text
                .contains(&format!("{{invalid_frame_end_marker,{bad}}}")),
            "{err}"
        );
    }
}

#[test]
fn unknown_frame_type_is_a_frame_error_once_the_whole_frame_arrives() {
    for frame_type in [0u8, 4, 5, 7, 9, b'A', 0xCE, 0xFF] {
        let frame = raw_frame(frame_type, 0, b"abc");
        let mut buf = BytesMut::from(&frame[..frame.len() - 1]);
        assert_eq!(decode_frame(&mut buf, FRAME_MAX), Ok(None));
        let err = decode_error(&frame, FRAME_MAX);
        assert_error(&err, ReplyCode::FrameError, 0, 0);
        assert_eq!(
            err.text,
            format!("FRAME_ERROR - type {frame_type}, all octets = <<\"abc\">>: unknown_frame")
        );
    }
    // A protocol header sent again after the handshake.
    assert_error(
        &decode_error(PROTOCOL_HEADER, FRAME_MAX),
        ReplyCode::FrameError,
        0,
        0,
    );
}

#[test]
fn heartbeat_with_a_payload_is_a_frame_error() {
    for payload in [&[0u8][..], b"ping", &[0; 100]] {
        let err = decode_error(&raw_frame(FRAME_HEARTBEAT, 0, payload), FRAME_MAX);
        assert_error(&err, ReplyCode::FrameError, 0, 0);
        assert!(err.text.ends_with(": unknown_frame"), "{err}");
    }
}

#[test]
fn truncated_known_method_is_a_syntax_error_with_its_ids() {
    for m in every_method() {
        let ids = method::ids(&m);
        let payload = method_payload(&m);
        for cut in 4..payload.len() {
            let err = decode_error(&raw_frame(FRAME_METHOD, 1, &payload[..cut]), FRAME_MAX);
            assert_error(&err, ReplyCode::SyntaxError, ids.0, ids.1);
            assert!(
                err.text.contains(method::name(ids.0, ids.1)),
                "{err} names the method"
            );
        }
    }
}

#[test]
fn known_method_with_trailing_bytes_is_a_syntax_error() {
    for m in every_method() {
        let ids = method::ids(&m);
        let mut payload = method_payload(&m);
        payload.push(0);
        let err = decode_error(&raw_frame(FRAME_METHOD, 1, &payload), FRAME_MAX);
        assert_error(&err, ReplyCode::SyntaxError, ids.0, ids.1);
    }
}

#[test]
fn unknown_class_or_method_is_command_invalid_with_its_ids() {
    for (class_id, method_id) in [
        (0u16, 0u16),
        (99, 10),
        (10, 12),
        (20, 30),
        (40, 41),
        (50, 60),
        (60, 121),
        (85, 12),
        (90, 40),
        (u16::MAX, u16::MAX),
    ] {
        let mut payload = class_id.to_be_bytes().to_vec();
        payload.extend_from_slice(&method_id.to_be_bytes());
        for extra in [&[][..], &[0, 0, 0, 0][..]] {
            let mut p = payload.clone();
            p.extend_from_slice(extra);
            let err = decode_error(&raw_frame(FRAME_METHOD, 1, &p), FRAME_MAX);
            assert_error(&err, ReplyCode::CommandInvalid, class_id, method_id);
            assert!(
                err.text.contains(&format!("{class_id}/{method_id}")),
                "{err}"
            );
        }
    }
}

#[test]
fn method_frame_too_short_for_its_ids_is_a_frame_error() {
    for payload in [&[][..], &[0, 60], &[0, 60, 0]] {
        let err = decode_error(&raw_frame(FRAME_METHOD, 1, payload), FRAME_MAX);
        assert_error(&err, ReplyCode::FrameError, 0, 0);
    }
}

#[test]
fn invalid_utf8_in_a_short_string_is_a_syntax_error() {
    // queue.declare whose queue name is 0xFF 0xFE.
    let payload = [0, 50, 0, 10, 0, 0, 2, 0xFF, 0xFE, 0, 0, 0, 0, 0];
    let err = decode_error(&raw_frame(FRAME_METHOD, 1, &payload), FRAME_MAX);
    assert_error(&err, ReplyCode::SyntaxError, 50, 10);
}

#[test]
fn unknown_field_value_type_is_a_syntax_error() {
    for kind in [b'_', b'z', b'N', 0u8, 0xFF] {
        // queue.declare with arguments {"k": <kind> 0}.
        let payload = [0, 50, 0, 10, 0, 0, 1, b'q', 0, 0, 0, 0, 4, 1, b'k', kind, 0];
        let err = decode_error(&raw_frame(FRAME_METHOD, 1, &payload), FRAME_MAX);
        assert_error(&err, ReplyCode::SyntaxError, 50, 10);
    }
}

#[test]
fn content_header_shorter_than_fourteen_bytes_is_a_frame_error() {
    let full = header_payload(60, 5, &[0, 0]);
    assert_eq!(full.len(), 14);
    for len in 0..14 {
        let err = decode_error(&raw_frame(FRAME_HEADER, 1, &full[..len]), FRAME_MAX);
        assert_error(&err, ReplyCode::FrameError, 0, 0);
    }
    assert_eq!(
        decode_one(&raw_frame(FRAME_HEADER, 1, &full), FRAME_MAX).expect("14 bytes decode"),
        Frame::Header(
            1,
            ContentHeader {
                class_id: 60,
                body_size: 5,
                properties: Properties::decode(Bytes::from_static(&[0, 0])).expect("no flags"),
            }
        )
    );
}

#[test]
fn malformed_property_flags_or_values_are_a_syntax_error() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // content-type announced, no value.
        ("missing content-type", vec![0x80, 0x00]),
        // content-type announced longer than the bytes.
        ("short content-type", vec![0x80, 0x00, 5, b'a', b'b']),
        // every property announced, none present.
        ("all flags, no values", vec![0xFF, 0xFC]),
        // headers announced with a table longer than the frame.
        (
            "truncated headers",
            vec![0x20, 0x00, 0, 0, 0, 10, 1, b'k', b't'],
        ),
        // headers with a value type no one defines.
        (
            "unknown header value type",
            vec![0x20, 0x00, 0, 0, 0, 4, 1, b'k', b'?', 0],
        ),
        // timestamp announced with 4 of its 8 bytes.
        ("short timestamp", vec![0x00, 0x40, 0, 0, 0, 1]),
        // delivery-mode present, then bytes no flag accounts for.
        ("trailing bytes", vec![0x10, 0x00, 2, 0xAA]),
        // no flags but a value.
        ("value without flag", vec![0x00, 0x00, 1]),
        // content-type not UTF-8.
        ("invalid utf-8", vec![0x80, 0x00, 2, 0xC3, 0x28]),
    ];
    for (what, props) in cases {
        assert_eq!(
            Properties::decode(Bytes::from(props.clone())),
            Err(MalformedProperties),
            "{what}"
        );
        let err = decode_error(
            &raw_frame(FRAME_HEADER, 1, &header_payload(60, 0, &props)),
            FRAME_MAX,
        );
        assert_eq!(err.code, ReplyCode::SyntaxError, "{what}: {err}");
        assert_eq!(err.class_id, 60, "{what}");
    }
}

/// Whether the container at `level` (1 is the outer table, always a table) is an array
/// when nesting alternates between tables and arrays, starting with `first_array` at level 2.
fn is_array_level(level: usize, first_array: bool) -> bool {
    level >= 2 && level.is_multiple_of(2) == first_array
}

/// Raw bytes of a field table with `depth` levels of tables and arrays, alternating, each
/// holding the next one (under the key `k` in tables).
fn nested_table_bytes(depth: usize, first_array: bool) -> Vec<u8> {
    // Built from the inside out: `body` holds the contents of the container at `level`.
    let mut body: Vec<u8> = Vec::new();
    for level in (2..=depth).rev() {
        let mut value = vec![if is_array_level(level, first_array) {
            b'A'
        } else {
            b'F'
        }];
        value.extend_from_slice(&(body.len() as u32).to_be_bytes());
        value.extend_from_slice(&body);
        body = if is_array_level(level - 1, first_array) {
            value
        } else {
            let mut entry = vec![1, b'k'];
            entry.extend_from_slice(&value);
            entry
        };
    }
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// The same nesting as [`nested_table_bytes`], as values.
fn nested_table(depth: usize, first_array: bool) -> FieldTable {
    let mut inner: Option<AMQPValue> = None;
    for level in (2..=depth).rev() {
        let value = if is_array_level(level, first_array) {
            AMQPValue::FieldArray(FieldArray::from(inner.into_iter().collect::<Vec<_>>()))
        } else {
            AMQPValue::FieldTable(inner.map_or_else(FieldTable::default, |v| table(vec![("k", v)])))
        };
        inner = Some(value);
    }
    inner.map_or_else(FieldTable::default, |v| table(vec![("k", v)]))
}

/// A basic.consume payload with `arguments` as raw table bytes.
fn consume_payload(arguments: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 60, 0, 20, 0, 0, 1, b'q', 1, b't', 0];
    p.extend_from_slice(arguments);
    p
}

#[test]
fn nested_table_bytes_are_what_amq_protocol_writes_for_that_nesting() {
    for depth in 1..8 {
        for first_array in [false, true] {
            let m = AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: name("q"),
                consumer_tag: name("t"),
                arguments: nested_table(depth, first_array),
                ..Default::default()
            }));
            assert_eq!(
                method_payload(&m),
                consume_payload(&nested_table_bytes(depth, first_array)),
                "depth {depth}, first_array {first_array}"
            );
        }
    }
}

#[test]
fn deeply_nested_method_tables_are_refused_without_overflowing_the_stack() {
    // Thousands of nested tables fit in one small frame; parsing them recursively would
    // overflow the decoding thread's stack and abort the broker.
    for first_array in [false, true] {
        for depth in [MAX_NESTING + 1, 1_000, 20_000] {
            let payload = consume_payload(&nested_table_bytes(depth, first_array));
            assert!(payload.len() < FRAME_MAX as usize);
            let err = decode_error(&raw_frame(FRAME_METHOD, 1, &payload), FRAME_MAX);
            assert_error(&err, ReplyCode::SyntaxError, 60, 20);
            assert!(err.text.contains("nested"), "{err}");
        }
        // The limit itself, counting the arguments table, is accepted.
        let payload = consume_payload(&nested_table_bytes(MAX_NESTING, first_array));
        let frame = decode_one(&raw_frame(FRAME_METHOD, 1, &payload), FRAME_MAX)
            .expect("nesting at the limit decodes");
        assert!(matches!(frame, Frame::Method(1, _)));
    }
    // Every method that carries a table is checked.
    let deep = nested_table_bytes(5_000, false);
    let prefixes: Vec<(u16, u16, Vec<u8>)> = vec![
        (10, 10, vec![0, 9]),
        (10, 11, vec![]),
        (
            40,
            10,
            vec![0, 0, 1, b'x', 5, b't', b'o', b'p', b'i', b'c', 0],
        ),
        (40, 30, vec![0, 0, 1, b'd', 1, b's', 0, 0]),
        (40, 40, vec![0, 0, 1, b'd', 1, b's', 0, 0]),
        (50, 10, vec![0, 0, 1, b'q', 0]),
        (50, 20, vec![0, 0, 1, b'q', 1, b'x', 2, b'r', b'k', 0]),
        (50, 50, vec![0, 0, 1, b'q', 1, b'x', 0]),
        (60, 20, vec![0, 0, 0, 0, 0]),
    ];
    for (class_id, method_id, prefix) in prefixes {
        let mut payload = class_id.to_be_bytes().to_vec();
        payload.extend_from_slice(&method_id.to_be_bytes());
        payload.extend_from_slice(&prefix);
        payload.extend_from_slice(&deep);
        let err = decode_error(&raw_frame(FRAME_METHOD, 1, &payload), FRAME_MAX);
        assert_error(&err, ReplyCode::SyntaxError, class_id, method_id);
    }
}

#[test]
fn wire_nesting_check_refuses_what_frames_refuse() {
    // For field tables parsed outside a frame (an AMQPLAIN response, say).
    for first_array in [false, true] {
        assert!(warren_amqp::wire::field_table_within_limit(
            &nested_table_bytes(MAX_NESTING, first_array)
        ));
        for depth in [MAX_NESTING + 1, 20_000] {
            assert!(!warren_amqp::wire::field_table_within_limit(
                &nested_table_bytes(depth, first_array)
            ));
        }
    }
    // Malformed bytes are left to the parser to refuse.
    assert!(warren_amqp::wire::field_table_within_limit(&[0, 0]));
}

#[test]
fn deeply_nested_headers_are_refused_without_overflowing_the_stack() {
    for depth in [MAX_NESTING + 1, 20_000] {
        // content-type, then headers.
        let mut props = vec![0xA0, 0x00, 4, b't', b'e', b'x', b't'];
        props.extend_from_slice(&nested_table_bytes(depth, true));
        assert_eq!(
            Properties::decode(Bytes::from(props.clone())),
            Err(MalformedProperties)
        );
        let err = decode_error(
            &raw_frame(FRAME_HEADER, 1, &header_payload(60, 0, &props)),
            FRAME_MAX,
        );
        assert_eq!(err.code, ReplyCode::SyntaxError, "{err}");
    }
    let mut props = vec![0x20, 0x00];
    props.extend_from_slice(&nested_table_bytes(MAX_NESTING, false));
    let p = Properties::decode(Bytes::from(props.clone())).expect("nesting at the limit decodes");
    assert_eq!(&p.raw()[..], &props[..]);
}

#[test]
fn nesting_within_the_limit_encodes_and_round_trips() {
    let mut value = AMQPValue::LongString("bottom".into());
    for level in 0..MAX_NESTING - 2 {
        value = if level % 2 == 0 {
            AMQPValue::FieldArray(FieldArray::from(vec![value]))
        } else {
            AMQPValue::FieldTable(table(vec![("k", value)]))
        };
    }
    // The arguments table, the table holding the chain and the chain: MAX_NESTING levels.
    let arguments = table(vec![(
        "k",
        AMQPValue::FieldTable(table(vec![("k", value)])),
    )]);
    let m = AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
        queue: name("q"),
        exchange: name("x"),
        routing_key: name("r"),
        nowait: false,
        arguments: arguments.clone(),
    }));
    assert_eq!(
        decode_one(&encoded(1, &m), FRAME_MAX).expect("decodes"),
        method_frame(1, m)
    );
    // One level more is refused when encoding too, as Warren would refuse to read it.
    let deeper = table(vec![("k", AMQPValue::FieldTable(arguments))]);
    let m = AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
        arguments: deeper,
        ..Default::default()
    }));
    assert!(encode_method(&mut BytesMut::new(), 1, &m).is_err());
}

/// Decodes `bytes` until it needs more or errors; only Ok and Err are allowed outcomes.
fn decode_anything(bytes: &[u8], frame_max: u32) -> usize {
    let mut buf = BytesMut::from(bytes);
    let mut frames = 0;
    loop {
        let before = buf.len();
        match decode_frame(&mut buf, frame_max) {
            Ok(Some(_)) => {
                frames += 1;
                assert!(buf.len() < before, "a decoded frame consumes bytes");
            }
            Ok(None) => {
                assert_eq!(buf.len(), before);
                return frames;
            }
            Err(e) => {
                assert!(e.code.is_hard());
                assert!(!e.text.is_empty());
                return frames;
            }
        }
    }
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for i in 0..20_000 {
        let frame_max = [0, FRAME_MIN_SIZE, FRAME_MAX, 16][i % 4];
        let len = rng.below(64);
        let garbage = rng.bytes(len);
        decode_anything(&garbage, frame_max);
    }
}

#[test]
fn random_payloads_in_valid_frames_never_panic() {
    // Valid envelopes make the random bytes reach the method, header and property parsers.
    let known: Vec<(u16, u16)> = every_method().iter().map(method::ids).collect();
    let mut rng = Rng(0xfeed_face_dead_beef);
    let mut decoded = 0;
    for _ in 0..30_000 {
        let frame_type = [FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT][rng.below(4)];
        let mut payload = Vec::new();
        match frame_type {
            FRAME_METHOD => {
                let (c, m) = known[rng.below(known.len())];
                payload.extend_from_slice(&c.to_be_bytes());
                payload.extend_from_slice(&m.to_be_bytes());
            }
            FRAME_HEADER => {
                payload.extend_from_slice(&header_payload(60, rng.next(), &[]));
            }
            _ => {}
        }
        let extra = if frame_type == FRAME_HEARTBEAT {
            rng.below(2)
        } else {
            rng.below(40)
        };
        // Small values make plausible lengths and flags.
        for _ in 0..extra {
            payload.push(if rng.below(2) == 0 {
                rng.byte() % 4
            } else {
                rng.byte()
            });
        }
        let frame = raw_frame(frame_type, rng.byte() as u16, &payload);
        decoded += decode_anything(&frame, FRAME_MAX);
    }
    assert!(decoded > 1_000, "the fuzzer should also hit valid frames");
}

#[test]
fn mutated_valid_frames_never_panic() {
    let mut corpus: Vec<Vec<u8>> = every_method()
        .iter()
        .map(|m| encoded(1, m).to_vec())
        .collect();
    let (stream, _) = frame_stream();
    corpus.push(stream);
    let mut rng = Rng(0xdec0_de00_0000_0001);
    for i in 0..20_000 {
        let mut bytes = corpus[i % corpus.len()].clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(4) {
                0 => {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.byte();
                }
                1 => {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
                2 => {
                    let at = rng.below(bytes.len() + 1);
                    bytes.truncate(at.max(1));
                }
                _ => {
                    let at = rng.below(bytes.len() + 1);
                    bytes.insert(at, rng.byte());
                }
            }
        }
        decode_anything(&bytes, [FRAME_MAX, FRAME_MIN_SIZE, 0][i % 3]);
    }
}

#[test]
fn random_property_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let valid = Properties::encode(&every_property()).raw().to_vec();
    for i in 0..20_000 {
        let bytes = if i % 2 == 0 {
            let len = rng.below(48);
            let mut b = rng.bytes(len);
            // Mostly few flags, so that values get parsed.
            if b.len() >= 2 && rng.below(2) == 0 {
                b[0] &= 0xF0;
                b[1] = 0;
            }
            b
        } else {
            let mut b = valid.clone();
            let at = rng.below(b.len());
            b[at] = rng.byte();
            b.truncate(rng.below(b.len() + 1));
            b
        };
        if let Ok(p) = Properties::decode(Bytes::from(bytes.clone())) {
            assert_eq!(&p.raw()[..], &bytes[..]);
            let _ = p.parse();
        }
    }
}

// ---------------------------------------------------------------------------------------
// 5. Properties
// ---------------------------------------------------------------------------------------

#[test]
fn every_basic_property_round_trips_with_identical_bytes() {
    let input = every_property();
    let encoded = Properties::encode(&input);
    assert_eq!(
        u16::from_be_bytes([encoded.raw()[0], encoded.raw()[1]]),
        0xFFFC,
        "all fourteen flags set, the two reserved bits clear"
    );
    let decoded = Properties::decode(encoded.raw().clone()).expect("valid");
    assert_eq!(decoded.raw(), encoded.raw());
    assert_eq!(decoded, encoded);
    assert_eq!(decoded.parse(), input);
    assert_eq!(encoded.parse(), input);
    assert_eq!(decoded.delivery_mode(), 2);
    assert!(decoded.is_persistent());
    assert_eq!(decoded.priority(), 9);

    // Through a content header frame, the bytes are kept as they were sent.
    let mut out = BytesMut::new();
    encode_header(&mut out, 3, 42, encoded.raw());
    let Frame::Header(3, header) = decode_one(&out, FRAME_MAX).expect("decodes") else {
        panic!("not a header on channel 3");
    };
    assert_eq!(header.class_id, 60);
    assert_eq!(header.body_size, 42);
    assert_eq!(header.properties.raw(), encoded.raw());
    assert_eq!(header.properties.parse(), input);
}

#[test]
fn each_basic_property_alone_sets_its_spec_flag_bit() {
    let none = basic::AMQPProperties::default();
    let cases: Vec<(u16, basic::AMQPProperties)> = vec![
        (15, none.clone().with_content_type(name("text/plain"))),
        (14, none.clone().with_content_encoding(name("utf-8"))),
        (13, none.clone().with_headers(every_value_table())),
        (12, none.clone().with_delivery_mode(1)),
        (11, none.clone().with_priority(0)),
        (10, none.clone().with_correlation_id(name("c"))),
        (9, none.clone().with_reply_to(name("r"))),
        (8, none.clone().with_expiration(name("0"))),
        (7, none.clone().with_message_id(name(""))),
        (6, none.clone().with_timestamp(0)),
        (5, none.clone().with_type(name("t"))),
        (4, none.clone().with_user_id(name("u"))),
        (3, none.clone().with_app_id(name("a"))),
        (2, none.clone().with_cluster_id(name("cl"))),
    ];
    for (bit, props) in cases {
        let p = Properties::encode(&props);
        assert_eq!(
            u16::from_be_bytes([p.raw()[0], p.raw()[1]]),
            1 << bit,
            "{props:?}"
        );
        let again = Properties::decode(p.raw().clone()).expect("valid");
        assert_eq!(again.raw(), p.raw());
        assert_eq!(again.parse(), props);
    }
}

#[test]
fn no_properties_encode_as_two_zero_bytes() {
    let p = Properties::encode(&basic::AMQPProperties::default());
    assert_eq!(&p.raw()[..], &[0, 0]);
    assert_eq!(
        p,
        Properties::decode(Bytes::from_static(&[0, 0])).expect("valid")
    );
    assert_eq!(p.delivery_mode(), 0);
    assert_eq!(p.priority(), 0);
    assert!(!p.is_persistent());
    assert_eq!(p.parse(), basic::AMQPProperties::default());
}

#[test]
fn default_properties_are_an_empty_property_list_on_the_wire() {
    let p = Properties::default();
    assert_eq!(&p.raw()[..], &[0, 0]);
    assert_eq!(p, Properties::encode(&basic::AMQPProperties::default()));
    let mut out = BytesMut::new();
    encode_content(&mut out, 1, p.raw(), b"body", FRAME_MAX);
    let frames = decode_all(out, FRAME_MAX);
    assert_eq!(
        frames[0],
        Frame::Header(
            1,
            ContentHeader {
                class_id: 60,
                body_size: 4,
                properties: p,
            }
        )
    );
}

#[test]
fn transient_delivery_mode_is_not_persistent() {
    for (mode, persistent) in [(1u8, false), (2, true), (0, false), (3, false)] {
        let p = Properties::decode(Bytes::from(vec![0x10, 0x00, mode])).expect("valid");
        assert_eq!(p.delivery_mode(), mode);
        assert_eq!(p.is_persistent(), persistent);
    }
}

#[test]
fn short_string_header_values_are_sent_as_long_strings() {
    // amq-protocol would write them with the type octet `_`, which no peer reads.
    let headers = table(vec![
        ("s", AMQPValue::ShortString(name("short"))),
        (
            "nested",
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(table(vec![
                ("s", AMQPValue::ShortString(name("deep"))),
            ]))])),
        ),
        ("n", AMQPValue::LongInt(1)),
    ]);
    let props = basic::AMQPProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    let p = Properties::encode(&props);
    let decoded = Properties::decode(p.raw().clone()).expect("peers can read it");
    let expected = table(vec![
        ("s", AMQPValue::LongString("short".into())),
        (
            "nested",
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(table(vec![
                ("s", AMQPValue::LongString("deep".into())),
            ]))])),
        ),
        ("n", AMQPValue::LongInt(1)),
    ]);
    assert_eq!(decoded.parse().headers(), &Some(expected));
    assert!(decoded.is_persistent());
}

#[test]
fn decoded_properties_keep_the_publishers_bytes() {
    // Bytes another client wrote: `l` for a 64-bit integer, `U` for a 16-bit one. Warren
    // re-sends them as they came, not as amq-protocol would write them.
    let props = vec![
        0x20, 0x00, // headers
        0, 0, 0, 16, // table length
        1, b'a', b'l', 0, 0, 0, 0, 0, 0, 0, 7, // a: 64-bit 7
        1, b'b', b'U', 0xFF, 0xFE, // b: 16-bit -2
    ];
    let p = Properties::decode(Bytes::from(props.clone())).expect("valid");
    assert_eq!(&p.raw()[..], &props[..]);
    let mut out = BytesMut::new();
    encode_header(&mut out, 1, 0, p.raw());
    let Frame::Header(_, header) = decode_one(&out, FRAME_MAX).expect("decodes") else {
        panic!("not a header");
    };
    assert_eq!(&header.properties.raw()[..], &props[..]);
    assert_eq!(
        header.properties.parse().headers(),
        &Some(table(vec![
            ("a", AMQPValue::LongLongInt(7)),
            ("b", AMQPValue::ShortInt(-2)),
        ]))
    );
}
