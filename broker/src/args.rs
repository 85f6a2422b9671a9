//! Declare and binding arguments: encoding for comparison, and RabbitMQ's equivalence rules
//! (only the arguments RabbitMQ checks must match on redeclare).

use crate::error::ChannelError;
use warren_amqp::wire::gen_field_table;
use warren_amqp::{AMQPValue, FieldTable};

/// Queue arguments that must be equal when a queue is redeclared.
pub const QUEUE_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-queue-master-locator",
];

/// Exchange arguments that must be equal when an exchange is redeclared.
pub const EXCHANGE_ARGS: &[&str] = &["alternate-exchange"];

/// A field table's wire encoding, used as a comparable key.
pub fn table_bytes(table: &FieldTable) -> Vec<u8> {
    match gen_field_table(table)(warren_amqp::wire::WriteContext::from(Vec::new())) {
        Ok(ctx) => ctx.into_inner().0,
        Err(_) => Vec::new(),
    }
}

/// RabbitMQ's name for a field value's type.
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "shortstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// A field value printed the way RabbitMQ prints it in error texts.
pub fn show(v: &AMQPValue) -> String {
    match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(i) => i.to_string(),
        AMQPValue::ShortShortUInt(i) => i.to_string(),
        AMQPValue::ShortInt(i) => i.to_string(),
        AMQPValue::ShortUInt(i) => i.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        AMQPValue::LongUInt(i) => i.to_string(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::Void => "undefined".to_string(),
        other => format!("{other:?}"),
    }
}

/// An integer argument's value, whatever integer type the client used.
pub fn as_i64(v: &AMQPValue) -> Option<i64> {
    match *v {
        AMQPValue::ShortShortInt(i) => Some(i.into()),
        AMQPValue::ShortShortUInt(i) => Some(i.into()),
        AMQPValue::ShortInt(i) => Some(i.into()),
        AMQPValue::ShortUInt(i) => Some(i.into()),
        AMQPValue::LongInt(i) => Some(i.into()),
        AMQPValue::LongUInt(i) => Some(i.into()),
        AMQPValue::LongLongInt(i) => Some(i),
        AMQPValue::Timestamp(t) => i64::try_from(t).ok(),
        _ => None,
    }
}

fn equivalent_values(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (as_i64(a), as_i64(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Checks that the arguments RabbitMQ compares are equal; the error has RabbitMQ's text.
pub fn check_equivalent_args(
    what: &str,
    name: &str,
    vhost: &str,
    current: &FieldTable,
    received: &FieldTable,
    keys: &[&str],
) -> Result<(), ChannelError> {
    for key in keys {
        let cur = current.inner().get(*key);
        let new = received.inner().get(*key);
        let same = match (cur, new) {
            (None, None) => true,
            (Some(a), Some(b)) => equivalent_values(a, b),
            _ => false,
        };
        if same {
            continue;
        }
        let text = match (cur, new) {
            (Some(c), Some(n)) => format!(
                "inequivalent arg '{key}' for {what} '{name}' in vhost '{vhost}': received '{}' but current is '{}'",
                show(n),
                show(c)
            ),
            _ => {
                let fmt = |v: Option<&AMQPValue>| match v {
                    None => "none".to_string(),
                    Some(v) => format!("the value '{}' of type '{}'", show(v), type_name(v)),
                };
                format!(
                    "inequivalent arg '{key}' for {what} '{name}' in vhost '{vhost}': received {} but current is {}",
                    fmt(new),
                    fmt(cur)
                )
            }
        };
        return Err(ChannelError::precondition(text));
    }
    Ok(())
}

/// Checks a queue's declare arguments as RabbitMQ does; the error has RabbitMQ's text
/// (`invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}`).
pub fn validate_queue_args(name: &str, vhost: &str, args: &FieldTable) -> Result<(), ChannelError> {
    /// Most milliseconds a TTL or expiry may be (RabbitMQ's timer limit).
    const MAX_EXPIRY: i64 = 4_294_967_295;
    for (key, value) in args.inner() {
        let key = key.as_str();
        let int = || as_i64(value).filter(|_| !matches!(value, AMQPValue::Timestamp(_)));
        let unacceptable = || format!("{{unacceptable_type,{}}}", type_name(value));
        let not_int = || format!("\"expected integer, got {}\"", type_name(value));
        let problem = match key {
            "x-expires" => match int() {
                None => Some(not_int()),
                Some(0) => Some("{value_zero,0}".to_string()),
                Some(v) if v < 0 => Some(format!("{{value_negative,{v}}}")),
                Some(v) if v > MAX_EXPIRY => Some(format!("{{value_too_large,{v},{MAX_EXPIRY}}}")),
                Some(_) => None,
            },
            "x-message-ttl" => match int() {
                None => Some(not_int()),
                Some(v) if v < 0 => Some(format!("{{value_negative,{v}}}")),
                Some(v) if v > MAX_EXPIRY => Some(format!("{{value_too_large,{v},{MAX_EXPIRY}}}")),
                Some(_) => None,
            },
            "x-max-length"
            | "x-max-length-bytes"
            | "x-max-in-memory-length"
            | "x-max-in-memory-bytes"
            | "x-delivery-limit"
            | "x-consumer-timeout" => match int() {
                None => Some(not_int()),
                Some(v) if v < 0 => Some(format!("{{value_negative,{v}}}")),
                Some(_) => None,
            },
            "x-max-priority" => match int() {
                None => Some(not_int()),
                Some(v) if v < 0 => Some(format!("{{value_negative,{v}}}")),
                Some(v) if v > 255 => Some(format!("{{max_value_exceeded,{v}}}")),
                Some(_) => None,
            },
            "x-dead-letter-exchange" => match value {
                AMQPValue::LongString(_) => None,
                _ => Some(unacceptable()),
            },
            "x-dead-letter-routing-key" => match value {
                AMQPValue::LongString(_)
                    if !args.inner().contains_key("x-dead-letter-exchange") =>
                {
                    Some("routing_key_but_no_dlx_defined".to_string())
                }
                AMQPValue::LongString(_) => None,
                _ => Some(unacceptable()),
            },
            "x-overflow" => match value {
                AMQPValue::LongString(s) => match s.as_bytes() {
                    b"drop-head" | b"reject-publish" | b"reject-publish-dlx" => None,
                    _ => Some("invalid_overflow".to_string()),
                },
                _ => Some(unacceptable()),
            },
            "x-queue-mode" => match value {
                AMQPValue::LongString(s) => match s.as_bytes() {
                    b"default" | b"lazy" => None,
                    other => Some(format!(
                        "{{invalid_queue_mode,<<\"{}\">>}}",
                        String::from_utf8_lossy(other)
                    )),
                },
                _ => Some(unacceptable()),
            },
            "x-single-active-consumer" => match value {
                AMQPValue::Boolean(_) => None,
                _ => Some(unacceptable()),
            },
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(ChannelError::precondition(format!(
                "invalid arg '{key}' for queue '{name}' in vhost '{vhost}': {problem}"
            )));
        }
    }
    Ok(())
}
