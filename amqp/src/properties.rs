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
    /// The `expiration` property as milliseconds, when it is a valid TTL.
    expiration: Option<u64>,
}

impl Default for Properties {
    /// No properties: property flags of zero, as they go on the wire.
    fn default() -> Self {
        Properties {
            raw: Bytes::from_static(&[0, 0]),
            delivery_mode: 0,
            priority: 0,
            expiration: None,
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
        let scanned = tables::scan_properties(&raw).map_err(|_| MalformedProperties)?;
        let expiration = scanned
            .expiration
            .and_then(|(at, len)| raw.get(at..at + len))
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|text| parse_expiration(text).ok());
        Ok(Properties {
            delivery_mode: scanned.delivery_mode,
            priority: scanned.priority,
            expiration,
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
            expiration: props
                .expiration()
                .as_ref()
                .and_then(|e| parse_expiration(e.as_str()).ok()),
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

    fn flag(&self, bit: u16) -> bool {
        self.raw.len() >= 2 && u16::from_be_bytes([self.raw[0], self.raw[1]]) & (1 << bit) != 0
    }

    /// True when the user-id property is present (checked against the login on publish).
    pub fn has_user_id(&self) -> bool {
        self.flag(4)
    }

    /// True when the headers property is present (read from the flags, nothing parsed).
    pub fn has_headers(&self) -> bool {
        self.flag(13)
    }

    /// True when the reply-to property is present.
    pub fn has_reply_to(&self) -> bool {
        self.flag(9)
    }

    /// True when the expiration property is present (valid or not).
    pub fn has_expiration(&self) -> bool {
        self.flag(8)
    }

    /// The per-message TTL in milliseconds from a valid `expiration` property.
    pub fn expiration_ms(&self) -> Option<u64> {
        self.expiration
    }

    /// The reason a present `expiration` property is refused, in RabbitMQ's words
    /// (`invalid expiration '-1': {value_negative,-1}`); None when it is absent or valid.
    pub fn expiration_error(&self) -> Option<String> {
        if !self.has_expiration() || self.expiration.is_some() {
            return None;
        }
        let parsed = self.parse();
        let text = parsed.expiration().as_ref()?.as_str().to_string();
        let reason = parse_expiration(&text).err()?;
        Some(format!("invalid expiration '{text}': {reason}"))
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

/// `props` with its headers replaced by `headers` (None: removed) and, with
/// `drop_expiration`, without its expiration; amq-protocol has setters but none that clears.
pub fn rebuild(
    props: &AMQPProperties,
    headers: Option<FieldTable>,
    drop_expiration: bool,
) -> AMQPProperties {
    let mut out = AMQPProperties::default();
    if let Some(v) = props.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = props.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(h) = headers {
        out = out.with_headers(h);
    }
    if let Some(v) = props.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = props.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = props.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = props.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let (Some(v), false) = (props.expiration(), drop_expiration) {
        out = out.with_expiration(v.clone());
    }
    if let Some(v) = props.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = props.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = props.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = props.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = props.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = props.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

/// Most milliseconds a TTL may be (RabbitMQ's timer limit).
pub const MAX_EXPIRY_MS: u64 = 4_294_967_295;

/// Parses an `expiration` property as RabbitMQ does (`string:to_integer` then a range check);
/// the error is RabbitMQ's reason term.
pub fn parse_expiration(text: &str) -> Result<u64, String> {
    let digits_start = usize::from(text.starts_with(['+', '-']));
    let digits = text[digits_start..]
        .bytes()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 {
        return Err("no_integer".to_string());
    }
    let end = digits_start + digits;
    let rest = &text[end..];
    if !rest.is_empty() {
        return Err(format!("{{leftover_string,\"{rest}\"}}"));
    }
    let value: i128 = text[..end].parse().unwrap_or(i128::MAX);
    if value < 0 {
        return Err(format!("{{value_negative,{value}}}"));
    }
    if value > i128::from(MAX_EXPIRY_MS) {
        return Err(format!("{{value_too_large,{value},{MAX_EXPIRY_MS}}}"));
    }
    Ok(value as u64)
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
            if let (Some(sc), Some(p)) = (scanned, parsed) {
                assert_eq!(sc.delivery_mode, p.delivery_mode().unwrap_or(0));
                assert_eq!(sc.priority, p.priority().unwrap_or(0));
                let text = sc.expiration.map(|(at, len)| &bytes[at..at + len]);
                assert_eq!(text, p.expiration().as_ref().map(|e| e.as_str().as_bytes()));
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
