//! Basic content properties, kept as the bytes the publisher sent.
//!
//! A message's properties are re-emitted verbatim on every delivery, so every property
//! (nested header tables, arrays, decimals, timestamps) reaches the consumer exactly as it
//! was published, and a delivery costs no re-encoding. The few fields the broker looks at
//! on every message are extracted once; the rest are parsed on demand.

use crate::tables::{self, TableError};
use crate::{AMQPValue, FieldTable};
use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::{gen_properties, parse_properties, AMQPProperties};
use bytes::Bytes;

/// Encoded basic properties plus the fields the broker reads on every message.
#[derive(Debug, Clone, PartialEq)]
pub struct Properties {
    raw: Bytes,
    delivery_mode: u8,
    priority: u8,
}

impl Default for Properties {
    /// No properties: property flags of zero, as they go on the wire.
    fn default() -> Self {
        Properties {
            raw: Bytes::from_static(&[0, 0]),
            delivery_mode: 0,
            priority: 0,
        }
    }
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
        // A walk over the bytes, no allocation: this runs for every published message.
        let (delivery_mode, priority) =
            tables::scan_properties(&raw).map_err(|_| MalformedProperties)?;
        Ok(Properties {
            delivery_mode,
            priority,
            raw,
        })
    }

    /// Encodes parsed properties (for messages the broker creates or rewrites). Short-string
    /// header values are written as long strings, the only string type peers read in tables.
    pub fn encode(props: &AMQPProperties) -> Self {
        let with_long_strings;
        let props = match props.headers() {
            Some(headers) if has_short_string(headers) => {
                with_long_strings = props.clone().with_headers(long_strings(headers));
                &with_long_strings
            }
            _ => props,
        };
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

    /// True when the user-id property is present (checked against the login on publish).
    pub fn has_user_id(&self) -> bool {
        self.raw.len() >= 2 && u16::from_be_bytes([self.raw[0], self.raw[1]]) & (1 << 4) != 0
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

/// True when a short-string value is somewhere in `table`.
fn has_short_string(table: &FieldTable) -> bool {
    table.into_iter().any(|(_, v)| value_has_short_string(v))
}

fn value_has_short_string(value: &AMQPValue) -> bool {
    match value {
        AMQPValue::ShortString(_) => true,
        AMQPValue::FieldTable(t) => has_short_string(t),
        AMQPValue::FieldArray(a) => a.as_slice().iter().any(value_has_short_string),
        _ => false,
    }
}

/// `table` with its short-string values as long strings: amq-protocol writes short-string
/// table values with a type octet (`_`) that no peer reads, long strings (`S`) are what
/// every client sends.
fn long_strings(table: &FieldTable) -> FieldTable {
    let mut out = FieldTable::default();
    for (k, v) in table {
        out.insert(k.clone(), long_string_value(v));
    }
    out
}

fn long_string_value(value: &AMQPValue) -> AMQPValue {
    match value {
        AMQPValue::ShortString(s) => AMQPValue::LongString(s.as_str().into()),
        AMQPValue::FieldTable(t) => AMQPValue::FieldTable(long_strings(t)),
        AMQPValue::FieldArray(a) => AMQPValue::FieldArray(
            a.as_slice()
                .iter()
                .map(long_string_value)
                .collect::<Vec<_>>()
                .into(),
        ),
        other => other.clone(),
    }
}

fn parse(raw: &[u8]) -> Result<AMQPProperties, MalformedProperties> {
    // Headers nested too deep are refused before amq-protocol's recursive parser sees them.
    if tables::check_properties(raw) == Err(TableError::TooDeep) {
        return Err(MalformedProperties);
    }
    match parse_properties(raw) {
        Ok(([], props)) => Ok(props),
        _ => Err(MalformedProperties),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allocation-free scan accepts exactly what amq-protocol's parser accepts, and
    /// reads the same delivery mode and priority.
    #[test]
    fn scan_agrees_with_the_parser_on_random_and_mutated_inputs() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut headers = crate::FieldTable::default();
        headers.insert("k".into(), crate::AMQPValue::LongString("v".into()));
        let mut nested = crate::FieldTable::default();
        nested.insert("n".into(), crate::AMQPValue::LongInt(3));
        headers.insert("t".into(), crate::AMQPValue::FieldTable(nested));
        let full = Properties::encode(
            &AMQPProperties::default()
                .with_content_type("text/plain".into())
                .with_headers(headers)
                .with_delivery_mode(2)
                .with_priority(5)
                .with_expiration("60000".into())
                .with_timestamp(1_700_000_000)
                .with_user_id("guest".into()),
        );
        for round in 0..60_000u32 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                let mut b = full.raw().to_vec();
                let at = (next() as usize) % b.len();
                b[at] = next() as u8;
                if round % 6 == 0 {
                    b.truncate((next() as usize) % (b.len() + 1));
                }
                b
            } else {
                let len = (next() % 24) as usize;
                (0..len).map(|_| next() as u8).collect()
            };
            let scanned = tables::scan_properties(&bytes).ok();
            let parsed = parse(&bytes).ok();
            assert_eq!(
                scanned.is_some(),
                parsed.is_some(),
                "scan and parser disagree on {bytes:?}"
            );
            if let (Some((dm, pr)), Some(p)) = (scanned, parsed) {
                assert_eq!(dm, p.delivery_mode().unwrap_or(0));
                assert_eq!(pr, p.priority().unwrap_or(0));
            }
        }
    }

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
