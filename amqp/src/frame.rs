//! Frame reading and writing over byte buffers.
//!
//! [`decode_frame`] takes from the front of a `BytesMut`: it returns `Ok(None)` while the
//! buffer holds only part of a frame, and checks a frame's announced size against
//! `frame_max` *before* buffering it, so a peer cannot make the server wait for (or buffer)
//! a 4 GiB frame. Bodies come out as `Bytes` slices of the read buffer, without a copy.

use crate::tables::{self, TableError};
use crate::{properties, reply::ReplyCode, AMQPClass};
use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::{gen_class, parse_class};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Frame type octet of a method frame.
pub const FRAME_METHOD: u8 = 1;
/// Frame type octet of a content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Frame type octet of a content body frame.
pub const FRAME_BODY: u8 = 3;
/// Frame type octet of a heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// Bytes a frame adds around its payload: type, channel, size and frame-end.
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest frame_max a peer may negotiate.
pub const FRAME_MIN_SIZE: u32 = 4096;
/// The protocol header of AMQP 0-9-1, also what a server answers to a wrong header.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// The most [`decode_frame`] reserves for a frame ahead of its bytes arriving.
const RESERVE_AHEAD: usize = 1 << 20;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method on a channel (0 for the connection).
    Method(u16, Box<AMQPClass>),
    /// `basic.publish`, which comes with every published message: its names stay slices of
    /// the read buffer (no allocation). [`Frame::into_generic`] turns it into a `Method`.
    Publish(u16, PublishFrame),
    /// A content header: the properties are kept as the bytes the publisher sent.
    Header(u16, ContentHeader),
    /// A piece of a content body.
    Body(u16, Bytes),
    /// A heartbeat; the channel should be 0.
    Heartbeat(u16),
}

impl Frame {
    /// The channel the frame is on.
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method(c, _)
            | Frame::Publish(c, _)
            | Frame::Header(c, _)
            | Frame::Body(c, _)
            | Frame::Heartbeat(c) => *c,
        }
    }

    /// The frame with a `basic.publish` as a generic `Method`.
    pub fn into_generic(self) -> Frame {
        match self {
            Frame::Publish(c, p) => Frame::Method(c, Box::new(p.to_method())),
            other => other,
        }
    }
}

/// A decoded `basic.publish`: the exchange and routing key are checked UTF-8.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishFrame {
    exchange: Bytes,
    routing_key: Bytes,
    /// The mandatory flag.
    pub mandatory: bool,
    /// The immediate flag.
    pub immediate: bool,
}

impl PublishFrame {
    /// The exchange name.
    pub fn exchange(&self) -> &str {
        std::str::from_utf8(&self.exchange).unwrap_or_default()
    }

    /// The routing key.
    pub fn routing_key(&self) -> &str {
        std::str::from_utf8(&self.routing_key).unwrap_or_default()
    }

    /// The method as amq-protocol's type.
    pub fn to_method(&self) -> AMQPClass {
        use amq_protocol::protocol::basic;
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: self.exchange().into(),
            routing_key: self.routing_key().into(),
            mandatory: self.mandatory,
            immediate: self.immediate,
        }))
    }
}

/// A content header frame's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    /// The content class (60 for basic).
    pub class_id: u16,
    /// Total size of the body that follows.
    pub body_size: u64,
    /// The property flags and values exactly as they were on the wire.
    pub properties: properties::Properties,
}

/// Why a byte stream could not be decoded; the connection is closed with `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The reply code for `connection.close` (always a hard error).
    pub code: ReplyCode,
    /// The reply text, RabbitMQ style (`FRAME_ERROR - ...`).
    pub text: String,
    /// Class of the method that failed, when known.
    pub class_id: u16,
    /// Method that failed, when known.
    pub method_id: u16,
    /// Drop the connection without a `connection.close` (RabbitMQ does so for unknown
    /// class or method ids).
    pub silent: bool,
}

impl FrameError {
    fn new(code: ReplyCode, detail: impl std::fmt::Display) -> Self {
        FrameError {
            code,
            text: code.text(detail),
            class_id: 0,
            method_id: 0,
            silent: false,
        }
    }
}

/// Erlang's rendering of a binary, as RabbitMQ's error texts show it: `<<"abc">>` when every
/// byte is printable, `<<0,20,1>>` otherwise.
pub fn erlang_binary(bytes: &[u8]) -> String {
    let printable =
        |b: u8| (32..=126).contains(&b) || b >= 160 || b"\n\r\t\x0b\x08\x0c\x1b".contains(&b);
    if !bytes.is_empty() && bytes.iter().all(|b| printable(*b)) {
        let mut s = String::from("<<\"");
        for &b in bytes {
            match b {
                b'"' => s.push_str("\\\""),
                b'\\' => s.push_str("\\\\"),
                b'\n' => s.push_str("\\n"),
                b'\r' => s.push_str("\\r"),
                b'\t' => s.push_str("\\t"),
                0x0b => s.push_str("\\v"),
                0x08 => s.push_str("\\b"),
                0x0c => s.push_str("\\f"),
                0x1b => s.push_str("\\e"),
                b => s.push(char::from(b)),
            }
        }
        s.push_str("\">>");
        s
    } else {
        let parts: Vec<String> = bytes.iter().map(|b| b.to_string()).collect();
        format!("<<{}>>", parts.join(","))
    }
}

/// RabbitMQ's description of a frame in error texts: `type 3, all octets = <<"abc">>`
/// (the first 16 octets of a longer payload).
pub fn describe_frame(frame_type: u8, payload: &[u8]) -> String {
    if payload.len() <= 16 {
        format!("type {frame_type}, all octets = {}", erlang_binary(payload))
    } else {
        format!(
            "type {frame_type}, first octets = {}",
            erlang_binary(&payload[..16])
        )
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code.code(), self.text)
    }
}

impl std::error::Error for FrameError {}

/// Takes one frame from the front of `buf`.
///
/// `Ok(None)`: the buffer holds an incomplete frame, read more and call again (nothing is
/// consumed). `frame_max` is the negotiated maximum including the 8 bytes of overhead; 0 means
/// no limit beyond `u32`.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let frame_type = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    // As RabbitMQ does, a payload may be as large as frame_max (the overhead is not counted),
    // and the size is checked from the header alone, before anything else.
    if frame_max != 0 && size > frame_max {
        return Err(FrameError::new(
            ReplyCode::FrameError,
            format!(
                "{}: {{frame_too_large,{size},{}}}",
                describe_frame(frame_type, &[]),
                (frame_max as usize).saturating_sub(FRAME_OVERHEAD)
            ),
        ));
    }
    let total = size as usize + FRAME_OVERHEAD;
    if buf.len() < total {
        // Room for the rest of the frame, but not more than RESERVE_AHEAD before the bytes
        // arrive: without a limit, 7 bytes could otherwise make us allocate 4 GiB.
        buf.reserve((total - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    let payload = &buf[7..total - 1];
    if buf[total - 1] != FRAME_END {
        return Err(FrameError::new(
            ReplyCode::FrameError,
            format!(
                "{}: {{invalid_frame_end_marker,{}}}",
                describe_frame(frame_type, payload),
                buf[total - 1]
            ),
        ));
    }
    let known = matches!(frame_type, FRAME_METHOD | FRAME_HEADER | FRAME_BODY)
        || (frame_type == FRAME_HEARTBEAT && size == 0);
    if !known {
        return Err(FrameError::new(
            ReplyCode::FrameError,
            format!("{}: unknown_frame", describe_frame(frame_type, payload)),
        ));
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(7);
    frame.truncate(size as usize);
    let payload = frame;
    match frame_type {
        FRAME_METHOD => decode_method(channel, &payload).map(Some),
        FRAME_HEADER => decode_header(channel, payload).map(Some),
        FRAME_BODY => Ok(Some(Frame::Body(channel, payload))),
        _ => Ok(Some(Frame::Heartbeat(channel))),
    }
}

/// The class and method ids at the start of a method payload, if present.
pub fn method_ids(payload: &[u8]) -> Option<(u16, u16)> {
    if payload.len() < 4 {
        return None;
    }
    Some((
        u16::from_be_bytes([payload[0], payload[1]]),
        u16::from_be_bytes([payload[2], payload[3]]),
    ))
}

/// basic.publish decoded by hand: it comes with every published message, and the generic
/// parser's combinators (and allocations) cost more than the message's routing. Returns None
/// for anything the generic parser should judge (so errors keep one source).
fn decode_publish(payload: &Bytes) -> Option<PublishFrame> {
    // class, method, reserved ticket
    let xlen = usize::from(*payload.get(6)?);
    let x_at = 7;
    let exchange = payload.get(x_at..x_at + xlen)?;
    std::str::from_utf8(exchange).ok()?;
    let rlen = usize::from(*payload.get(x_at + xlen)?);
    let r_at = x_at + xlen + 1;
    let routing_key = payload.get(r_at..r_at + rlen)?;
    std::str::from_utf8(routing_key).ok()?;
    let bits_at = r_at + rlen;
    if payload.len() != bits_at + 1 {
        return None;
    }
    let bits = *payload.get(bits_at)?;
    Some(PublishFrame {
        exchange: payload.slice(x_at..x_at + xlen),
        routing_key: payload.slice(r_at..r_at + rlen),
        mandatory: bits & 1 != 0,
        immediate: bits & 2 != 0,
    })
}

fn decode_method(channel: u16, payload: &Bytes) -> Result<Frame, FrameError> {
    if method_ids(payload) == Some((60, 40)) {
        if let Some(publish) = decode_publish(payload) {
            return Ok(Frame::Publish(channel, publish));
        }
    }
    let payload: &[u8] = payload;
    // amq-protocol drops basic.qos's prefetch-size; RabbitMQ refuses a non-zero one.
    if let (Some((60, 10)), Some(size)) = (method_ids(payload), payload.get(4..8)) {
        let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]);
        if size != 0 {
            let mut err = FrameError::new(
                ReplyCode::NotImplemented,
                format!("prefetch_size!=0 ({size})"),
            );
            err.class_id = 60;
            err.method_id = 10;
            return Err(err);
        }
    }
    let Some((class_id, method_id)) = method_ids(payload) else {
        return Err(FrameError::new(
            ReplyCode::FrameError,
            format!(
                "method frame of {} octets has no class and method ids",
                payload.len()
            ),
        ));
    };
    // Tables nested too deep are refused before amq-protocol's recursive parser sees them.
    if tables::check_method(payload) == Err(TableError::TooDeep) {
        let mut err = FrameError::new(
            ReplyCode::SyntaxError,
            format!(
                "field table of {} nested deeper than {} levels",
                crate::method::name(class_id, method_id),
                tables::MAX_NESTING
            ),
        );
        err.class_id = class_id;
        err.method_id = method_id;
        return Err(err);
    }
    match parse_class(payload) {
        Ok(([], class)) => Ok(Frame::Method(channel, Box::new(class))),
        Ok(_) | Err(_) => {
            let mut err = if crate::method::is_known(class_id, method_id) {
                FrameError::new(
                    ReplyCode::SyntaxError,
                    format!(
                        "malformed {} method frame",
                        crate::method::name(class_id, method_id)
                    ),
                )
            } else {
                let mut e = FrameError::new(
                    ReplyCode::CommandInvalid,
                    format!("unknown class/method {class_id}/{method_id}"),
                );
                e.silent = true;
                e
            };
            err.class_id = class_id;
            err.method_id = method_id;
            Err(err)
        }
    }
}

fn decode_header(channel: u16, mut payload: Bytes) -> Result<Frame, FrameError> {
    if payload.len() < 14 {
        return Err(FrameError::new(
            ReplyCode::FrameError,
            "content header frame too short",
        ));
    }
    let class_id = payload.get_u16();
    let _weight = payload.get_u16();
    let body_size = payload.get_u64();
    let properties = properties::Properties::decode(payload).map_err(|_| {
        let mut e = FrameError::new(
            ReplyCode::SyntaxError,
            "malformed content header properties",
        );
        e.class_id = class_id;
        e
    })?;
    Ok(Frame::Header(
        channel,
        ContentHeader {
            class_id,
            body_size,
            properties,
        },
    ))
}

/// Why a frame could not be encoded (a table value with no wire type, a table too large or
/// nested too deep).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError(pub String);

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot encode frame: {}", self.0)
    }
}

impl std::error::Error for EncodeError {}

fn begin_frame(out: &mut BytesMut, frame_type: u8, channel: u16) -> usize {
    out.put_u8(frame_type);
    out.put_u16(channel);
    let at = out.len();
    out.put_u32(0);
    at
}

fn end_frame(out: &mut BytesMut, size_at: usize) {
    let size = (out.len() - size_at - 4) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

/// Appends a method frame.
pub fn encode_method(
    out: &mut BytesMut,
    channel: u16,
    method: &AMQPClass,
) -> Result<(), EncodeError> {
    let ctx = gen_class(method)(WriteContext::from(Vec::with_capacity(64)))
        .map_err(|e| EncodeError(format!("{e:?}")))?;
    let (payload, _) = ctx.into_inner();
    // Refuse what Warren would not read back: a short-string table value (amq-protocol writes
    // it with the type octet `_`, which no peer reads) or tables nested too deep.
    tables::check_method(&payload).map_err(|e| {
        EncodeError(match e {
            TableError::TooDeep => {
                format!("field table nested deeper than {}", tables::MAX_NESTING)
            }
            TableError::Malformed => {
                "field table holds a value with no wire type (a short string)".into()
            }
        })
    })?;
    out.reserve(payload.len() + FRAME_OVERHEAD);
    let at = begin_frame(out, FRAME_METHOD, channel);
    out.put_slice(&payload);
    end_frame(out, at);
    Ok(())
}

/// Appends a content header frame with the properties as raw bytes.
pub fn encode_header(out: &mut BytesMut, channel: u16, body_size: u64, properties: &[u8]) {
    out.reserve(properties.len() + 12 + FRAME_OVERHEAD);
    let at = begin_frame(out, FRAME_HEADER, channel);
    out.put_u16(60);
    out.put_u16(0);
    out.put_u64(body_size);
    out.put_slice(properties);
    end_frame(out, at);
}

/// Appends the body frames of a content, split so no frame exceeds `frame_max`.
pub fn encode_body(out: &mut BytesMut, channel: u16, body: &[u8], frame_max: u32) {
    let max_payload = if frame_max == 0 {
        usize::MAX
    } else {
        (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1)
    };
    for chunk in body.chunks(max_payload) {
        out.reserve(chunk.len() + FRAME_OVERHEAD);
        let at = begin_frame(out, FRAME_BODY, channel);
        out.put_slice(chunk);
        end_frame(out, at);
    }
}

/// Appends the start of a body frame whose `len` payload bytes the caller writes from
/// elsewhere (a vectored write of the body's own buffer), followed by [`FRAME_END`].
pub fn encode_body_frame_start(out: &mut BytesMut, channel: u16, len: u32) {
    out.put_u8(FRAME_BODY);
    out.put_u16(channel);
    out.put_u32(len);
}

/// Appends a heartbeat frame.
pub fn encode_heartbeat(out: &mut BytesMut) {
    out.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

fn put_short_str(out: &mut BytesMut, s: &str) {
    // Names are validated to 255 bytes when they enter the broker; cut defensively, on a
    // character boundary so that the peer still reads valid UTF-8.
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u8(end as u8);
    out.put_slice(&s.as_bytes()[..end]);
}

/// Appends a `basic.deliver` method frame (hand-encoded: it is on every delivery).
pub fn encode_deliver(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let at = begin_frame(out, FRAME_METHOD, channel);
    out.put_u16(60);
    out.put_u16(60);
    put_short_str(out, consumer_tag);
    out.put_u64(delivery_tag);
    out.put_u8(redelivered as u8);
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    end_frame(out, at);
}

/// Appends a `basic.get-ok` method frame.
pub fn encode_get_ok(
    out: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    message_count: u32,
) {
    let at = begin_frame(out, FRAME_METHOD, channel);
    out.put_u16(60);
    out.put_u16(71);
    out.put_u64(delivery_tag);
    out.put_u8(redelivered as u8);
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    out.put_u32(message_count);
    end_frame(out, at);
}

/// Appends a `basic.ack` (publisher confirm) method frame.
pub fn encode_ack(out: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool) {
    let at = begin_frame(out, FRAME_METHOD, channel);
    out.put_u16(60);
    out.put_u16(80);
    out.put_u64(delivery_tag);
    out.put_u8(multiple as u8);
    end_frame(out, at);
}

/// Appends a `basic.nack` (publisher confirm) method frame.
pub fn encode_nack(out: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool) {
    let at = begin_frame(out, FRAME_METHOD, channel);
    out.put_u16(60);
    out.put_u16(120);
    out.put_u64(delivery_tag);
    out.put_u8(multiple as u8);
    end_frame(out, at);
}

/// Appends a whole content: header and body frames.
pub fn encode_content(
    out: &mut BytesMut,
    channel: u16,
    properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    encode_header(out, channel, body.len() as u64, properties);
    encode_body(out, channel, body, frame_max);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand decoder of basic.publish accepts what the generic parser accepts and
    /// decodes the same values; anything else is left to the generic parser.
    #[test]
    fn publish_decoder_agrees_with_the_generic_parser() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let base = [0u8, 60, 0, 40, 0, 0, 3, b'a', b'm', b'q', 2, b'r', b'k', 3];
        for round in 0..50_000u32 {
            let mut p = base.to_vec();
            match round % 3 {
                0 => {
                    let at = 4 + (next() as usize) % (p.len() - 4);
                    p[at] = next() as u8;
                }
                1 => p.truncate(4 + (next() as usize) % (p.len() - 3)),
                _ => p.push(next() as u8),
            }
            let generic = match parse_class(&p[..]) {
                Ok(([], class)) => Some(class),
                _ => None,
            };
            if let Some(fast) = decode_publish(&Bytes::from(p.clone())) {
                assert_eq!(Some(fast.to_method()), generic, "payload {p:?}");
            }
        }
        let fast = decode_publish(&Bytes::copy_from_slice(&base)).expect("decodes");
        assert_eq!((fast.exchange(), fast.routing_key()), ("amq", "rk"));
        assert!(fast.mandatory && fast.immediate);
    }
}
