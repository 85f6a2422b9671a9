//! A shovel's definition in RabbitMQ's vocabulary: the JSON value of a dynamic shovel
//! parameter (protocol amqp091), also the shape of a `[[shovel]]` table. Parsing checks
//! everything that can be checked without connecting (keys, types, URIs, exclusive
//! options), so a bad definition is refused when it is set and a shovel never half-starts.

use crate::endpoint::Endpoint;
use serde_json::{Map, Value};
use std::fmt;
use std::time::Duration;

/// Where a shovel consumes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A named queue, declared (durable) if missing.
    Queue {
        /// The queue's name.
        name: String,
        /// Its `x-` arguments (`src-queue-args`).
        args: Map<String, Value>,
    },
    /// An exchange: the shovel declares its own exclusive queue and binds it.
    Exchange {
        /// The exchange's name.
        exchange: String,
        /// The binding key (`src-exchange-key`, `#` when absent as RabbitMQ does).
        key: String,
    },
}

/// Where a shovel publishes to.
#[derive(Clone, Debug, PartialEq)]
pub enum Destination {
    /// A queue through the default exchange, declared (durable) if missing.
    Queue {
        /// The queue's name.
        name: String,
        /// Its `x-` arguments (`dest-queue-args`).
        args: Map<String, Value>,
    },
    /// An exchange, with a fixed routing key or the message's own.
    Exchange {
        /// The exchange's name.
        exchange: String,
        /// The routing key; `None` keeps the message's.
        key: Option<String>,
    },
    /// Neither given: the message's own exchange and routing key.
    AsPublished,
}

/// When the source is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// After the destination confirmed the message (nothing is lost).
    OnConfirm,
    /// After the message was sent to the destination (lost if the destination fails
    /// before it has it).
    OnPublish,
    /// The source forgets the message on delivery (lost if the shovel fails with it).
    NoAck,
}

impl AckMode {
    /// RabbitMQ's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::OnConfirm => "on-confirm",
            AckMode::OnPublish => "on-publish",
            AckMode::NoAck => "no-ack",
        }
    }
}

/// When a shovel stops by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteAfter {
    /// Never.
    Never,
    /// After moving as many messages as the source queue held when the shovel started.
    QueueLength,
    /// After moving this many messages.
    Count(u64),
}

/// A validated shovel definition.
#[derive(Clone, Debug)]
pub struct ShovelDef {
    /// The shovel's name.
    pub name: String,
    /// Its vhost (the default vhost of `amqp://` URIs naming the local node).
    pub vhost: String,
    /// Source URIs, tried in turn.
    pub src_uris: Vec<Endpoint>,
    /// What to consume.
    pub source: Source,
    /// Deliveries in flight at once (`src-prefetch-count`; 0 is unlimited).
    pub prefetch: u16,
    /// When to stop by itself.
    pub delete_after: DeleteAfter,
    /// Destination URIs, tried in turn.
    pub dest_uris: Vec<Endpoint>,
    /// Where to publish.
    pub destination: Destination,
    /// Add an `x-shovelled` header naming the shovel and its ends.
    pub add_forward_headers: bool,
    /// Add an `x-shovelled-timestamp` header.
    pub add_timestamp_header: bool,
    /// Properties that replace the message's own (`dest-publish-properties`).
    pub publish_properties: Map<String, Value>,
    /// When the source is acknowledged.
    pub ack_mode: AckMode,
    /// The first delay before reconnecting; 0 means the shovel does not reconnect.
    pub reconnect_delay: Duration,
    /// The definition as given.
    pub value: Value,
}

/// A definition that cannot be used; the text names the offending key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefinitionError(pub String);

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DefinitionError {}

fn err<T>(text: impl Into<String>) -> Result<T, DefinitionError> {
    Err(DefinitionError(text.into()))
}

/// The keys a definition may have. The un-prefixed ones are RabbitMQ's older spellings,
/// still found in definitions exported by RabbitMQ.
const KEYS: &[&str] = &[
    "src-protocol",
    "src-uri",
    "src-queue",
    "src-queue-args",
    "src-exchange",
    "src-exchange-key",
    "src-consumer-args",
    "src-prefetch-count",
    "prefetch-count",
    "src-delete-after",
    "delete-after",
    "dest-protocol",
    "dest-uri",
    "dest-queue",
    "dest-queue-args",
    "dest-exchange",
    "dest-exchange-key",
    "dest-add-forward-headers",
    "add-forward-headers",
    "dest-add-timestamp-header",
    "add-timestamp-header",
    "dest-publish-properties",
    "publish-properties",
    "ack-mode",
    "reconnect-delay",
];

/// The message properties `dest-publish-properties` may set, with whether each is a number.
const PROPERTIES: &[(&str, bool)] = &[
    ("content_type", false),
    ("content_encoding", false),
    ("delivery_mode", true),
    ("priority", true),
    ("correlation_id", false),
    ("reply_to", false),
    ("expiration", false),
    ("message_id", false),
    ("timestamp", true),
    ("type", false),
    ("user_id", false),
    ("app_id", false),
    ("cluster_id", false),
];

struct Reader<'a> {
    obj: &'a Map<String, Value>,
}

impl<'a> Reader<'a> {
    /// The value under `key` or its older spelling `alias`; giving both is refused.
    fn get(&self, key: &str, alias: Option<&str>) -> Result<Option<&'a Value>, DefinitionError> {
        let a = self.obj.get(key);
        let b = alias.and_then(|k| self.obj.get(k));
        match (a, b) {
            (Some(_), Some(_)) => err(format!(
                "{key} and {} are the same setting; give one",
                alias.unwrap_or_default()
            )),
            (Some(v), None) | (None, Some(v)) => Ok(Some(v).filter(|v| !v.is_null())),
            (None, None) => Ok(None),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, DefinitionError> {
        match self.get(key, None)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => err(format!("{key} should be a string, not {v}")),
        }
    }

    fn boolean(&self, key: &str, alias: &str) -> Result<bool, DefinitionError> {
        match self.get(key, Some(alias))? {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => err(format!("{key} should be true or false, not {v}")),
        }
    }

    fn table(&self, key: &str, alias: Option<&str>) -> Result<Map<String, Value>, DefinitionError> {
        match self.get(key, alias)? {
            None => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m.clone()),
            Some(v) => err(format!("{key} should be an object, not {v}")),
        }
    }

    fn uris(&self, key: &str, vhost: &str) -> Result<Vec<Endpoint>, DefinitionError> {
        let list: Vec<&Value> = match self.get(key, None)? {
            None => return err(format!("{key} is missing")),
            Some(Value::Array(a)) if a.is_empty() => {
                return err(format!("{key} should list at least one URI"))
            }
            Some(Value::Array(a)) => a.iter().collect(),
            Some(v) => vec![v],
        };
        list.into_iter()
            .map(|v| match v {
                Value::String(s) => {
                    Endpoint::parse(s, vhost).map_err(|e| DefinitionError(format!("{key}: {e}")))
                }
                v => err(format!("{key} should be a URI or a list of URIs, not {v}")),
            })
            .collect()
    }
}

impl ShovelDef {
    /// Validates a definition (the JSON value of a `shovel` parameter) for the shovel
    /// `name` in `vhost`.
    pub fn parse(name: &str, vhost: &str, value: &Value) -> Result<ShovelDef, DefinitionError> {
        let Some(obj) = value.as_object() else {
            return err(format!("a shovel definition is a JSON object, not {value}"));
        };
        let mut unknown: Vec<&str> = obj
            .keys()
            .map(String::as_str)
            .filter(|k| !KEYS.contains(k))
            .collect();
        unknown.sort_unstable();
        if !unknown.is_empty() {
            return err(format!(
                "Unrecognised terms [{}] in shovel",
                unknown.join(", ")
            ));
        }
        let r = Reader { obj };
        for key in ["src-protocol", "dest-protocol"] {
            match r.string(key)?.as_deref() {
                None | Some("amqp091") => {}
                Some(p) => {
                    return err(format!(
                        "{key}: protocol '{p}' is not supported (only amqp091)"
                    ))
                }
            }
        }
        let src_uris = r.uris("src-uri", vhost)?;
        let source = match (r.string("src-queue")?, r.string("src-exchange")?) {
            (Some(_), Some(_)) => {
                return err("src-queue and src-exchange are mutually exclusive; give one")
            }
            (None, None) => return err("src-queue or src-exchange is missing"),
            (Some(name), None) => {
                if obj.contains_key("src-exchange-key") {
                    return err("src-exchange-key needs src-exchange, not src-queue");
                }
                Source::Queue {
                    name,
                    args: r.table("src-queue-args", None)?,
                }
            }
            (None, Some(exchange)) => {
                if obj.contains_key("src-queue-args") {
                    return err("src-queue-args needs src-queue, not src-exchange");
                }
                Source::Exchange {
                    exchange,
                    key: r
                        .string("src-exchange-key")?
                        .unwrap_or_else(|| "#".to_owned()),
                }
            }
        };
        // Accepted and checked for RabbitMQ compatibility; consumer arguments are passed on.
        r.table("src-consumer-args", None)?;
        let prefetch = match r.get("src-prefetch-count", Some("prefetch-count"))? {
            None => 1000,
            Some(v) => match v.as_i64() {
                Some(n) if (0..=i64::from(u16::MAX)).contains(&n) => {
                    u16::try_from(n).expect("checked range")
                }
                _ => {
                    return err(format!(
                        "src-prefetch-count should be an integer from 0 to 65535, not {v}"
                    ))
                }
            },
        };
        let delete_after = match r.get("src-delete-after", Some("delete-after"))? {
            None => DeleteAfter::Never,
            Some(Value::String(s)) if s == "never" => DeleteAfter::Never,
            Some(Value::String(s)) if s == "queue-length" => DeleteAfter::QueueLength,
            Some(v) => match v.as_u64() {
                Some(n) => DeleteAfter::Count(n),
                None => {
                    return err(format!(
                        "src-delete-after should be \"never\", \"queue-length\" or a non-negative integer, not {v}"
                    ))
                }
            },
        };
        if delete_after == DeleteAfter::QueueLength && !matches!(source, Source::Queue { .. }) {
            return err("src-delete-after \"queue-length\" needs src-queue");
        }
        let dest_uris = r.uris("dest-uri", vhost)?;
        let destination = match (r.string("dest-queue")?, r.string("dest-exchange")?) {
            (Some(_), Some(_)) => {
                return err("dest-queue and dest-exchange are mutually exclusive; give one")
            }
            (Some(name), None) => {
                if obj.contains_key("dest-exchange-key") {
                    return err("dest-exchange-key needs dest-exchange, not dest-queue");
                }
                Destination::Queue {
                    name,
                    args: r.table("dest-queue-args", None)?,
                }
            }
            (None, Some(exchange)) => Destination::Exchange {
                exchange,
                key: r.string("dest-exchange-key")?,
            },
            (None, None) => {
                if obj.contains_key("dest-exchange-key") {
                    return err("dest-exchange-key needs dest-exchange");
                }
                Destination::AsPublished
            }
        };
        let publish_properties = r.table("dest-publish-properties", Some("publish-properties"))?;
        for (k, v) in &publish_properties {
            match PROPERTIES.iter().find(|(name, _)| name == k) {
                None => {
                    return err(format!(
                        "dest-publish-properties: '{k}' is not a message property"
                    ))
                }
                Some((_, true)) if v.as_u64().is_none() => {
                    return err(format!(
                        "dest-publish-properties: {k} should be a non-negative integer, not {v}"
                    ))
                }
                Some((_, false)) if !v.is_string() => {
                    return err(format!(
                        "dest-publish-properties: {k} should be a string, not {v}"
                    ))
                }
                _ => {}
            }
        }
        let ack_mode = match r.string("ack-mode")?.as_deref() {
            None | Some("on-confirm") => AckMode::OnConfirm,
            Some("on-publish") => AckMode::OnPublish,
            Some("no-ack") => AckMode::NoAck,
            Some(m) => {
                return err(format!(
                    "ack-mode should be on-confirm, on-publish or no-ack, not '{m}'"
                ))
            }
        };
        let reconnect_delay = match r.get("reconnect-delay", None)? {
            None => Duration::from_secs(5),
            Some(v) => match v.as_f64() {
                Some(s) if s >= 0.0 && s.is_finite() && s <= 86_400.0 => Duration::from_secs_f64(s),
                _ => {
                    return err(format!(
                        "reconnect-delay should be a non-negative number of seconds, not {v}"
                    ))
                }
            },
        };
        Ok(ShovelDef {
            name: name.to_owned(),
            vhost: vhost.to_owned(),
            src_uris,
            source,
            prefetch,
            delete_after,
            dest_uris,
            destination,
            add_forward_headers: r.boolean("dest-add-forward-headers", "add-forward-headers")?,
            add_timestamp_header: r.boolean("dest-add-timestamp-header", "add-timestamp-header")?,
            publish_properties,
            ack_mode,
            reconnect_delay,
            value: value.clone(),
        })
    }

    /// The source, for status lines: `queue q` or `exchange x (key)`.
    pub fn source_text(&self) -> String {
        match &self.source {
            Source::Queue { name, .. } => format!("queue '{name}'"),
            Source::Exchange { exchange, key } => format!("exchange '{exchange}' ({key})"),
        }
    }

    /// The destination, for status lines.
    pub fn destination_text(&self) -> String {
        match &self.destination {
            Destination::Queue { name, .. } => format!("queue '{name}'"),
            Destination::Exchange { exchange, key } => match key {
                Some(k) => format!("exchange '{exchange}' ({k})"),
                None => format!("exchange '{exchange}'"),
            },
            Destination::AsPublished => "as published".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ShovelDef, DefinitionError> {
        ShovelDef::parse("s", "/", &v)
    }

    fn refused(v: Value) -> String {
        match parse(v) {
            Ok(_) => panic!("accepted a bad definition"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn a_complete_definition_is_read_with_rabbitmq_defaults() {
        let d = parse(json!({
            "src-uri": ["amqp://a", "amqp://b:5673/v"],
            "src-queue": "q",
            "dest-uri": "amqp://c",
            "dest-exchange": "x",
        }))
        .expect("valid");
        assert_eq!(d.src_uris.len(), 2);
        assert_eq!(d.prefetch, 1000);
        assert_eq!(d.ack_mode, AckMode::OnConfirm);
        assert_eq!(d.delete_after, DeleteAfter::Never);
        assert_eq!(d.reconnect_delay, Duration::from_secs(5));
        assert_eq!(
            d.destination,
            Destination::Exchange {
                exchange: "x".into(),
                key: None
            }
        );
    }

    #[test]
    fn bad_definitions_are_refused_naming_the_key() {
        let base = || json!({"src-uri": "amqp://a", "src-queue": "q", "dest-uri": "amqp://b", "dest-queue": "d"});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            b
        };
        assert!(refused(with("src-fish", json!(1))).contains("src-fish"));
        assert!(refused(with("src-exchange", json!("x"))).contains("src-exchange"));
        assert!(refused(with("dest-exchange", json!("x"))).contains("dest-exchange"));
        assert!(refused(with("src-prefetch-count", json!(-1))).contains("src-prefetch-count"));
        assert!(refused(with("src-uri", json!("http://a"))).contains("src-uri"));
        assert!(refused(with("dest-uri", json!("amqp://a b"))).contains("dest-uri"));
        assert!(refused(with("ack-mode", json!("sometimes"))).contains("ack-mode"));
        assert!(refused(with("src-delete-after", json!("later"))).contains("src-delete-after"));
        assert!(refused(with("reconnect-delay", json!(-2))).contains("reconnect-delay"));
        let mut no_dest = base();
        no_dest.as_object_mut().map(|o| o.remove("dest-uri"));
        assert!(refused(no_dest).contains("dest-uri"));
        let mut no_src = base();
        no_src.as_object_mut().map(|o| o.remove("src-queue"));
        assert!(refused(no_src).contains("src-queue"));
        assert!(refused(json!("text")).contains("JSON object"));
    }
}
