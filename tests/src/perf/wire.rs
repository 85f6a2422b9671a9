//! The hot path on the wire: what a publisher writes and what a consumer or a confirming
//! publisher reads, with as little work per message as possible.
//!
//! Outbound, a [`PublishTemplate`] holds one message already encoded by Warren's codec
//! (`basic.publish`, content header, body frames); a batch is N copies of it with the send
//! time patched into each body, so a message costs one copy and one 8-byte store. Inbound,
//! [`next_inbound`] reads `basic.deliver`, content headers and bodies, and confirm
//! acks/nacks straight from the read buffer without allocating; any other frame goes to the
//! codec's full decoder. [`ContentTracker`] reassembles a delivery from its frames.

use bytes::{Buf, BytesMut};
use warren_amqp::frame::{
    decode_frame, encode_body, encode_header, encode_method, FRAME_BODY, FRAME_END, FRAME_HEADER,
    FRAME_HEARTBEAT, FRAME_METHOD, FRAME_OVERHEAD,
};
use warren_amqp::{basic, AMQPClass, Frame, FrameError, Properties};

/// Bytes of the send timestamp at the start of every body long enough to hold it.
pub const STAMP_LEN: usize = 8;

/// Nanoseconds since this process's clock origin: the send time in message bodies and the
/// receive time at the consumer, both measured in this process.
pub fn now_ns() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

/// One message, encoded once, copied into every batch.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    bytes: Vec<u8>,
    /// Where the body starts within `bytes`, if the body can hold a timestamp.
    stamp_at: Option<usize>,
}

impl PublishTemplate {
    /// Encodes a publish of a `body_size`-byte body to `exchange` with `routing_key` on
    /// channel `ch`, split into frames of at most `frame_max` bytes.
    pub fn new(
        ch: u16,
        exchange: &str,
        routing_key: &str,
        body_size: usize,
        persistent: bool,
        frame_max: u32,
    ) -> anyhow::Result<Self> {
        let mut out = BytesMut::new();
        encode_method(
            &mut out,
            ch,
            &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory: false,
                immediate: false,
            })),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let props = if persistent {
            Properties::encode(&basic::AMQPProperties::default().with_delivery_mode(2))
        } else {
            Properties::default()
        };
        encode_header(&mut out, ch, body_size as u64, props.raw());
        let body_at = out.len() + 7;
        // The body is a recognisable filler; the timestamp overwrites its first bytes.
        let body: Vec<u8> = (0..body_size).map(|i| b'a' + (i % 26) as u8).collect();
        encode_body(&mut out, ch, &body, frame_max);
        Ok(PublishTemplate {
            bytes: out.to_vec(),
            stamp_at: (body_size >= STAMP_LEN).then_some(body_at),
        })
    }

    /// Encoded size of one message.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True for an empty template (never: a publish has at least its method frame).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends `n` messages stamped with `stamp` to `out`.
    pub fn append(&self, out: &mut BytesMut, n: usize, stamp: u64) {
        out.reserve(self.bytes.len() * n);
        for _ in 0..n {
            let start = out.len();
            out.extend_from_slice(&self.bytes);
            if let Some(at) = self.stamp_at {
                out[start + at..start + at + STAMP_LEN].copy_from_slice(&stamp.to_be_bytes());
            }
        }
    }
}

/// A frame the hot path cares about, or any other frame fully decoded.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    /// `basic.deliver`: a content follows.
    Deliver {
        /// The channel.
        channel: u16,
        /// The delivery tag to ack.
        delivery_tag: u64,
    },
    /// A content header.
    Header {
        /// The channel.
        channel: u16,
        /// Size of the body that follows.
        body_size: u64,
    },
    /// A body frame.
    Body {
        /// The channel.
        channel: u16,
        /// Bytes in this frame.
        len: usize,
        /// Its first 8 bytes as a big-endian number (a send time if this is the first frame
        /// of a body of at least 8 bytes).
        head: Option<u64>,
    },
    /// A publisher confirm.
    Confirm {
        /// The channel.
        channel: u16,
        /// The publish sequence number.
        tag: u64,
        /// All sequence numbers up to `tag`.
        multiple: bool,
        /// True for `basic.ack`, false for `basic.nack`.
        ack: bool,
    },
    /// A heartbeat.
    Heartbeat,
    /// Anything else, decoded by the codec.
    Other(Frame),
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// Takes one frame from the front of `buf`: `Ok(None)` until a whole frame is there. Errors
/// (and every frame not on the hot path) come from Warren's codec.
pub fn next_inbound(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Inbound>, FrameError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    let total = size + FRAME_OVERHEAD;
    if buf.len() < total {
        // The codec checks the announced size against frame_max and reserves room.
        return decode_frame(buf, frame_max).map(|f| f.map(Inbound::Other));
    }
    if buf[total - 1] != FRAME_END || (frame_max != 0 && size > frame_max as usize) {
        return decode_frame(buf, frame_max).map(|f| f.map(Inbound::Other));
    }
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let payload = &buf[7..total - 1];
    let hot = match buf[0] {
        FRAME_METHOD => match payload.get(..4) {
            Some([0, 60, 0, 60]) => {
                // consumer-tag (short string), then the delivery tag.
                let tag_at = 5 + usize::from(payload.get(4).copied().unwrap_or(0));
                payload
                    .get(tag_at..)
                    .and_then(be_u64)
                    .map(|delivery_tag| Inbound::Deliver {
                        channel,
                        delivery_tag,
                    })
            }
            Some([0, 60, 0, 80]) | Some([0, 60, 0, 120]) => {
                let ack = payload[3] == 80;
                match (payload.get(4..).and_then(be_u64), payload.get(12)) {
                    (Some(tag), Some(bits)) => Some(Inbound::Confirm {
                        channel,
                        tag,
                        multiple: bits & 1 != 0,
                        ack,
                    }),
                    _ => None,
                }
            }
            _ => None,
        },
        FRAME_HEADER => payload
            .get(4..)
            .and_then(be_u64)
            .map(|body_size| Inbound::Header { channel, body_size }),
        FRAME_BODY => Some(Inbound::Body {
            channel,
            len: payload.len(),
            head: be_u64(payload),
        }),
        FRAME_HEARTBEAT => Some(Inbound::Heartbeat),
        _ => None,
    };
    match hot {
        Some(frame) => {
            buf.advance(total);
            Ok(Some(frame))
        }
        // Not a hot frame, or a malformed one: the codec decodes it or names the error.
        None => decode_frame(buf, frame_max).map(|f| f.map(Inbound::Other)),
    }
}

/// A delivery whose last body frame arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Its delivery tag.
    pub delivery_tag: u64,
    /// The send time from its body, if the body held one.
    pub stamp: Option<u64>,
}

/// Reassembles deliveries on one channel: deliver, header, then body frames.
#[derive(Debug, Default)]
pub struct ContentTracker {
    delivery_tag: u64,
    /// Body bytes still expected; `None` until the header arrives.
    remaining: Option<u64>,
    first_body: bool,
    stamp: Option<u64>,
}

impl ContentTracker {
    /// A `basic.deliver` arrived.
    pub fn deliver(&mut self, delivery_tag: u64) {
        self.delivery_tag = delivery_tag;
        self.remaining = None;
        self.first_body = true;
        self.stamp = None;
    }

    /// Its content header arrived; an empty body completes the delivery.
    pub fn header(&mut self, body_size: u64) -> Option<Delivered> {
        if body_size == 0 {
            return Some(Delivered {
                delivery_tag: self.delivery_tag,
                stamp: None,
            });
        }
        self.remaining = Some(body_size);
        None
    }

    /// A body frame of `len` bytes starting with `head` arrived.
    pub fn body(&mut self, len: usize, head: Option<u64>) -> Option<Delivered> {
        let remaining = self.remaining?;
        if self.first_body {
            self.first_body = false;
            self.stamp = head;
        }
        let left = remaining.saturating_sub(len as u64);
        self.remaining = Some(left);
        (left == 0).then_some(Delivered {
            delivery_tag: self.delivery_tag,
            stamp: self.stamp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_amqp::frame::{encode_ack, encode_deliver, encode_nack};

    #[test]
    fn template_batches_decode_as_publishes_with_stamps() {
        let t = PublishTemplate::new(1, "", "q", 16, true, 4096).expect("template");
        let mut out = BytesMut::new();
        t.append(&mut out, 3, 0x0102_0304_0506_0708);
        assert_eq!(out.len(), 3 * t.len());
        let mut frames = Vec::new();
        while let Some(f) = decode_frame(&mut out, 4096).expect("valid frames") {
            frames.push(f);
        }
        assert_eq!(frames.len(), 9);
        match &frames[0] {
            Frame::Publish(1, p) => assert_eq!(p.routing_key(), "q"),
            other => panic!("expected a publish, got {other:?}"),
        }
        match &frames[1] {
            Frame::Header(1, h) => {
                assert_eq!(h.body_size, 16);
                assert!(h.properties.is_persistent());
            }
            other => panic!("expected a header, got {other:?}"),
        }
        match &frames[8] {
            Frame::Body(1, b) => {
                assert_eq!(&b[..8], &0x0102_0304_0506_0708u64.to_be_bytes());
                assert_eq!(&b[8..], b"ijklmnop");
            }
            other => panic!("expected a body, got {other:?}"),
        }
    }

    #[test]
    fn large_bodies_are_split_by_frame_max() {
        let t = PublishTemplate::new(1, "x", "", 10_000, false, 4096).expect("template");
        let mut out = BytesMut::new();
        t.append(&mut out, 1, 42);
        let mut tracker = ContentTracker::default();
        tracker.deliver(7);
        let mut done = None;
        let mut bodies = 0;
        while let Some(f) = next_inbound(&mut out, 4096).expect("valid") {
            match f {
                Inbound::Header { body_size, .. } => assert!(tracker.header(body_size).is_none()),
                Inbound::Body { len, head, .. } => {
                    bodies += 1;
                    done = tracker.body(len, head);
                }
                Inbound::Other(Frame::Publish(..)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(bodies, 3);
        assert_eq!(
            done,
            Some(Delivered {
                delivery_tag: 7,
                stamp: Some(42)
            })
        );
    }

    #[test]
    fn small_bodies_carry_no_stamp() {
        let t = PublishTemplate::new(1, "", "q", 4, false, 4096).expect("template");
        let mut out = BytesMut::new();
        t.append(&mut out, 1, 42);
        let body_frame = &out[out.len() - 12..];
        assert_eq!(&body_frame[7..11], b"abcd");
    }

    #[test]
    fn hot_frames_are_read_without_the_codec() {
        let mut buf = BytesMut::new();
        encode_deliver(&mut buf, 3, "ctag-1", 99, false, "ex", "rk");
        encode_header(&mut buf, 3, 16, &[0, 0]);
        encode_body(&mut buf, 3, &5u64.to_be_bytes(), 0);
        encode_ack(&mut buf, 1, 500, true);
        encode_nack(&mut buf, 1, 501, false);
        // Half of a frame stays in the buffer.
        let partial = {
            let mut b = BytesMut::new();
            encode_ack(&mut b, 1, 502, false);
            b
        };
        buf.extend_from_slice(&partial[..5]);
        let mut got = Vec::new();
        while let Some(f) = next_inbound(&mut buf, 131_072).expect("valid") {
            got.push(f);
        }
        assert_eq!(
            got,
            vec![
                Inbound::Deliver {
                    channel: 3,
                    delivery_tag: 99
                },
                Inbound::Header {
                    channel: 3,
                    body_size: 16
                },
                Inbound::Body {
                    channel: 3,
                    len: 8,
                    head: Some(5)
                },
                Inbound::Confirm {
                    channel: 1,
                    tag: 500,
                    multiple: true,
                    ack: true
                },
                Inbound::Confirm {
                    channel: 1,
                    tag: 501,
                    multiple: false,
                    ack: false
                },
            ]
        );
        assert_eq!(buf.len(), 5);
        buf.extend_from_slice(&partial[5..]);
        assert!(matches!(
            next_inbound(&mut buf, 131_072),
            Ok(Some(Inbound::Confirm { tag: 502, .. }))
        ));
    }

    #[test]
    fn other_frames_and_errors_go_through_the_codec() {
        let mut buf = BytesMut::new();
        encode_method(
            &mut buf,
            0,
            &warren_amqp::method::connection_close(320, "CONNECTION_FORCED", 0, 0),
        )
        .expect("encode");
        assert!(matches!(
            next_inbound(&mut buf, 0),
            Ok(Some(Inbound::Other(Frame::Method(0, _))))
        ));
        // A bad frame-end octet is the codec's frame error.
        let mut bad = BytesMut::from(&[3u8, 0, 1, 0, 0, 0, 1, b'x', 0][..]);
        assert!(next_inbound(&mut bad, 0).is_err());
    }

    #[test]
    fn empty_body_completes_at_the_header() {
        let mut t = ContentTracker::default();
        t.deliver(1);
        assert_eq!(
            t.header(0),
            Some(Delivered {
                delivery_tag: 1,
                stamp: None
            })
        );
        // A body frame with no header before it is ignored.
        let mut t = ContentTracker::default();
        assert_eq!(t.body(8, Some(1)), None);
    }
}
