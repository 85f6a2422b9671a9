//! Basic content properties, kept as the bytes the publisher sent.
//!
//! A message's properties are re-emitted verbatim on every delivery, so every property
//! (nested header tables, arrays, decimals, timestamps) reaches the consumer exactly as it
//! was published, and a delivery costs no re-encoding. The few fields the broker looks at
//! on every message are extracted once; the rest are parsed on demand.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::{gen_properties, parse_properties, AMQPProperties};
use bytes::Bytes;

/// Encoded basic properties plus the fields the broker reads on every message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Properties {
    raw: Bytes,
    delivery_mode: u8,
    priority: u8,
}

/// The property bytes could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedProperties;

impl std::fmt::Display for MalformedProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed basic properties")
    }
}

impl std::error::Error for MalformedProperties {}

impl Properties {
    /// Validates and wraps property bytes (flags then values) from a content header.
    pub fn decode(raw: Bytes) -> Result<Self, MalformedProperties> {
        let parsed = parse(&raw)?;
        Ok(Properties {
            delivery_mode: parsed.delivery_mode().unwrap_or(0),
            priority: parsed.priority().unwrap_or(0),
            raw,
        })
    }

    /// Encodes parsed properties (for messages the broker creates or rewrites).
    pub fn encode(props: &AMQPProperties) -> Self {
        let raw = match gen_properties(props)(WriteContext::from(Vec::with_capacity(32))) {
            Ok(ctx) => ctx.into_inner().0,
            // Only strings over 255 bytes fail, and parsed properties cannot hold those.
            Err(_) => vec![0, 0],
        };
        Properties {
            delivery_mode: props.delivery_mode().unwrap_or(0),
            priority: props.priority().unwrap_or(0),
            raw: Bytes::from(raw),
        }
    }

    /// The bytes to put in a content header frame.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// 2 for persistent, 1 or 0 for transient.
    pub fn delivery_mode(&self) -> u8 {
        self.delivery_mode
    }

    /// True when the publisher asked for the message to be persisted.
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == 2
    }

    /// The message priority (0 when absent).
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Parses all properties (allocates; for the paths that need headers or strings).
    pub fn parse(&self) -> AMQPProperties {
        // The bytes were validated when this value was made.
        parse(&self.raw).unwrap_or_default()
    }
}

fn parse(raw: &[u8]) -> Result<AMQPProperties, MalformedProperties> {
    match parse_properties(raw) {
        Ok((rest, props)) if rest.is_empty() => Ok(props),
        _ => Err(MalformedProperties),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AMQPValue, FieldTable};

    #[test]
    fn round_trip_keeps_every_byte() {
        let mut headers = FieldTable::default();
        headers.insert("a".into(), AMQPValue::LongInt(-5));
        let props = AMQPProperties::default()
            .with_delivery_mode(2)
            .with_priority(7)
            .with_headers(headers)
            .with_content_type("text/plain".into());
        let p = Properties::encode(&props);
        let again = Properties::decode(p.raw().clone()).expect("valid");
        assert_eq!(again.raw(), p.raw());
        assert_eq!(again.parse(), props);
        assert!(again.is_persistent());
        assert_eq!(again.priority(), 7);
    }

    #[test]
    fn truncated_properties_are_rejected() {
        let props = AMQPProperties::default().with_content_type("text/plain".into());
        let p = Properties::encode(&props);
        let cut = p.raw().slice(..p.raw().len() - 1);
        assert_eq!(Properties::decode(cut), Err(MalformedProperties));
    }
}
