//! Policies and operator policies: their definitions, validation with RabbitMQ's texts,
//! which one applies to a queue or exchange (the highest-priority one whose pattern matches
//! the name and whose `apply-to` covers the kind), and a queue's *effective settings*: its
//! declare arguments merged with the applying policy and operator policy by RabbitMQ's
//! precedence rules (`rabbit_amqqueue_process:process_args_policy`,
//! `rabbit_policy:merge_operator_definitions`).

use crate::error::ChannelError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use warren_amqp::{AMQPValue, FieldTable, ReplyCode};

/// What kinds of objects a policy applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ApplyTo {
    /// Queues only.
    Queues,
    /// Exchanges only.
    Exchanges,
    /// Queues and exchanges.
    #[default]
    All,
}

impl ApplyTo {
    /// Parses `queues`, `exchanges` or `all`; the error has RabbitMQ's text.
    pub fn parse(s: &str) -> Result<Self, ChannelError> {
        match s {
            "queues" => Ok(ApplyTo::Queues),
            "exchanges" => Ok(ApplyTo::Exchanges),
            "all" => Ok(ApplyTo::All),
            other => Err(validation_failed(format!(
                "apply-to '{other}' unrecognised; should be 'queues', 'exchanges' or 'all'"
            ))),
        }
    }

    /// The name used by `rabbitmqctl` and definitions files.
    pub fn name(self) -> &'static str {
        match self {
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
            ApplyTo::All => "all",
        }
    }
}

/// A policy or operator policy as set by `set_policy` / `set_operator_policy`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyDef {
    /// The vhost it belongs to.
    pub vhost: String,
    /// Its name, unique in the vhost (per kind: policies and operator policies are apart).
    pub name: String,
    /// A regular expression matched against queue and exchange names (unanchored).
    pub pattern: String,
    /// What it applies to.
    #[serde(rename = "apply-to", alias = "apply_to", default)]
    pub apply_to: ApplyTo,
    /// Among matching policies the highest priority wins.
    #[serde(default)]
    pub priority: i64,
    /// The keys it sets (`message-ttl`, `dead-letter-exchange`, ...), a JSON object.
    pub definition: serde_json::Value,
}

/// A validated policy with its pattern compiled.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The definition.
    pub def: PolicyDef,
    re: regex::Regex,
}

/// The kind of object a policy is matched against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A queue.
    Queue,
    /// An exchange.
    Exchange,
}

fn validation_failed(detail: impl std::fmt::Display) -> ChannelError {
    ChannelError::new(
        ReplyCode::PreconditionFailed,
        format!("Validation failed\n\n{detail}\n"),
    )
}

/// A JSON value printed the way Erlang's `~p` prints the term RabbitMQ decodes it to.
/// Validates a limits object as RabbitMQ does for `set_vhost_limits` (`component`
/// `vhost-limits`, keys `max-connections`, `max-queues`) and `set_user_limits`
/// (`user-limits`, keys `max-connections`, `max-channels`): known keys, integer values.
pub fn validate_limits(
    component: &str,
    keys: &[&str],
    value: &serde_json::Value,
) -> Result<(), String> {
    let Some(obj) = value.as_object() else {
        return Err(format!(
            "{} is not a valid {component} definition",
            erlang_term(value)
        ));
    };
    let unknown: Vec<String> = obj
        .iter()
        .filter(|(k, _)| !keys.contains(&k.as_str()))
        .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", erlang_term(v)))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "Unrecognised terms [{}] in {component}",
            unknown.join(",")
        ));
    }
    for (k, v) in obj {
        if v.as_i64().is_none() {
            return Err(format!(
                "{k} should be a number, actually was {}",
                erlang_term(v)
            ));
        }
    }
    Ok(())
}

fn erlang_term(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => format!("<<\"{s}\">>"),
        serde_json::Value::Null => "null".to_string(),
        serde_json::Value::Array(a) => {
            format!(
                "[{}]",
                a.iter().map(erlang_term).collect::<Vec<_>>().join(",")
            )
        }
        serde_json::Value::Object(o) => format!(
            "#{{{}}}",
            o.iter()
                .map(|(k, v)| format!("<<\"{k}\">> => {}", erlang_term(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

/// Keys a policy may set, with their checks; `operator` limits them to operator-policy keys.
fn check_key(key: &str, v: &serde_json::Value, operator: bool) -> Option<Result<(), String>> {
    let int_min = |min: i64, what: &str| match v.as_i64() {
        Some(n) if n >= min => Ok(()),
        _ => Err(format!("{} is not a valid {what}", erlang_term(v))),
    };
    let string = |what: &str| match v {
        serde_json::Value::String(_) => Ok(()),
        _ => Err(format!("{} is not a valid {what}", erlang_term(v))),
    };
    let one_of = |allowed: &[&str], what: &str| match v.as_str() {
        Some(s) if allowed.contains(&s) => Ok(()),
        _ => Err(format!("{} is not a valid {what}", erlang_term(v))),
    };
    let op_key = matches!(
        key,
        "expires"
            | "message-ttl"
            | "max-length"
            | "max-length-bytes"
            | "max-in-memory-length"
            | "max-in-memory-bytes"
            | "delivery-limit"
    );
    if operator && !op_key {
        return None;
    }
    Some(match key {
        "alternate-exchange" => string("alternate exchange name"),
        "dead-letter-exchange" => string("dead letter exchange name"),
        "dead-letter-routing-key" => string("dead letter routing key"),
        "dead-letter-strategy" => one_of(
            &["at-most-once", "at-least-once"],
            "dead letter strategy value",
        ),
        "message-ttl" => int_min(0, "message TTL"),
        "expires" => int_min(1, "queue expiry"),
        "max-length" => int_min(0, "maximum length"),
        "max-length-bytes" => int_min(0, "maximum length in bytes"),
        "max-in-memory-length" | "max-in-memory-bytes" => int_min(0, "maximum memory in bytes"),
        "delivery-limit" => int_min(0, "delivery limit"),
        "consumer-timeout" => int_min(0, "consumer timeout"),
        "queue-mode" => one_of(&["default", "lazy"], "queue-mode value"),
        "queue-version" => match v.as_i64() {
            Some(1 | 2) => Ok(()),
            _ => Err(format!("{} is not a valid queue version", erlang_term(v))),
        },
        "overflow" => one_of(
            &["drop-head", "reject-publish", "reject-publish-dlx"],
            "overflow value",
        ),
        "queue-leader-locator" | "queue-master-locator" => one_of(
            &[
                "client-local",
                "random",
                "least-leaders",
                "balanced",
                "min-masters",
            ],
            "queue leader locator value",
        ),
        "initial-cluster-size" => int_min(0, "cluster size"),
        "max-age" => string("max age"),
        "stream-max-segment-size-bytes" => int_min(0, "segment size"),
        "ha-mode" => one_of(&["all", "exactly", "nodes"], "ha-mode value"),
        "ha-params"
        | "ha-sync-batch-size"
        | "ha-sync-mode"
        | "ha-promote-on-shutdown"
        | "ha-promote-on-failure" => Ok(()),
        // Federation upstreams are read by the federation links.
        "federation-upstream" | "federation-upstream-set" => string("federation upstream"),
        _ => return None,
    })
}

impl Policy {
    /// Validates a policy definition as RabbitMQ's `set_policy` does (`operator`: as
    /// `set_operator_policy`, which accepts fewer keys); the error names the offending key.
    pub fn new(def: PolicyDef, operator: bool) -> Result<Policy, ChannelError> {
        let re = regex::Regex::new(&def.pattern).map_err(|e| {
            validation_failed(format!(
                "pattern should be regular expression but is invalid: {}",
                e.to_string().replace('\n', " ")
            ))
        })?;
        let Some(obj) = def.definition.as_object() else {
            return Err(validation_failed(format!(
                "{} is not a valid policy definition",
                erlang_term(&def.definition)
            )));
        };
        if obj.is_empty() {
            return Err(validation_failed("no policy provided"));
        }
        let unknown: Vec<String> = obj
            .iter()
            .filter(|(k, v)| check_key(k, v, operator).is_none())
            .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", erlang_term(v)))
            .collect();
        if !unknown.is_empty() {
            return Err(validation_failed(format!(
                "[{}] are not recognised policy settings",
                unknown.join(",")
            )));
        }
        for (k, v) in obj {
            if let Some(Err(e)) = check_key(k, v, operator) {
                return Err(validation_failed(e));
            }
        }
        Ok(Policy { def, re })
    }

    /// True when the policy applies to an object of this kind and name.
    pub fn matches(&self, target: Target, name: &str) -> bool {
        let kind_ok = matches!(
            (self.def.apply_to, target),
            (ApplyTo::All, _)
                | (ApplyTo::Queues, Target::Queue)
                | (ApplyTo::Exchanges, Target::Exchange)
        );
        // The default exchange never gets a policy, as in RabbitMQ.
        kind_ok && !(target == Target::Exchange && name.is_empty()) && self.re.is_match(name)
    }

    fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.def.definition.as_object()?.get(key)
    }
}

/// The policy that applies to an object: the highest priority among those that match (ties
/// go to the name that sorts first, so every node picks the same one).
pub fn applying<'a>(
    policies: impl Iterator<Item = &'a Policy>,
    target: Target,
    name: &str,
) -> Option<&'a Policy> {
    let mut best: Option<&Policy> = None;
    for p in policies {
        if p.matches(target, name) && best.is_none_or(|b| p.def.priority > b.def.priority) {
            best = Some(p);
        }
    }
    best
}

/// What a full queue does with a new message (`x-overflow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest message.
    #[default]
    DropHead,
    /// Refuse the new message (nack with confirms).
    RejectPublish,
    /// Refuse it and dead-letter it.
    RejectPublishDlx,
}

/// The consumer timeout when neither the queue nor a policy sets one (RabbitMQ's default).
pub const DEFAULT_CONSUMER_TIMEOUT_MS: u64 = 30 * 60 * 1000;

/// A queue's effective settings: declare arguments merged with its policies.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct QueueSettings {
    /// Queue-wide message TTL, ms.
    pub message_ttl: Option<u64>,
    /// Queue expiry after disuse, ms.
    pub expires: Option<u64>,
    /// Most ready messages.
    pub max_length: Option<u64>,
    /// Most ready body bytes.
    pub max_length_bytes: Option<u64>,
    /// What happens when full.
    pub overflow: Overflow,
    /// Dead-letter exchange.
    pub dead_letter_exchange: Option<Arc<str>>,
    /// Dead-letter routing key.
    pub dead_letter_routing_key: Option<Arc<str>>,
    /// `x-max-priority` (0: not a priority queue).
    pub max_priority: u8,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// How long a consumer may hold an unacked delivery, ms (0: no limit).
    pub consumer_timeout: u64,
    /// The policy applied, by name.
    pub policy: Option<String>,
    /// The operator policy applied, by name.
    pub operator_policy: Option<String>,
}

fn arg_int(args: &FieldTable, key: &str) -> Option<u64> {
    args.inner()
        .get(key)
        .and_then(crate::args::as_i64)
        .and_then(|v| u64::try_from(v).ok())
}

fn arg_str(args: &FieldTable, key: &str) -> Option<Arc<str>> {
    crate::meta::string_arg(args, key).map(Arc::from)
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl QueueSettings {
    /// A queue's settings from its arguments and the policy and operator policy applying to
    /// it. Numeric limits take the smallest of argument, policy and operator policy; for the
    /// dead-letter keys and `overflow` the argument wins over the policy, as in RabbitMQ.
    pub fn resolve(
        args: &FieldTable,
        policy: Option<&Policy>,
        operator: Option<&Policy>,
        default_consumer_timeout: u64,
    ) -> QueueSettings {
        let pol_int =
            |p: Option<&Policy>, k: &str| p.and_then(|p| p.get(k)).and_then(|v| v.as_u64());
        let pol_str = |k: &str| {
            policy
                .and_then(|p| p.get(k))
                .and_then(|v| v.as_str())
                .map(Arc::from)
        };
        // Policy and operator policy merge by minimum for these keys.
        let merged = |k: &str| min_opt(pol_int(policy, k), pol_int(operator, k));
        let numeric = |k: &str| min_opt(merged(k), arg_int(args, &format!("x-{k}")));
        let overflow_name = crate::meta::string_arg(args, "x-overflow")
            .map(str::to_string)
            .or_else(|| {
                policy
                    .and_then(|p| p.get("overflow"))
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            });
        let overflow = match overflow_name.as_deref() {
            Some("reject-publish") => Overflow::RejectPublish,
            Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
            _ => Overflow::DropHead,
        };
        let consumer_timeout = arg_int(args, "x-consumer-timeout")
            .or_else(|| pol_int(policy, "consumer-timeout"))
            .unwrap_or(default_consumer_timeout);
        QueueSettings {
            message_ttl: numeric("message-ttl"),
            expires: numeric("expires").filter(|&v| v > 0),
            max_length: numeric("max-length"),
            max_length_bytes: numeric("max-length-bytes"),
            overflow,
            dead_letter_exchange: arg_str(args, "x-dead-letter-exchange")
                .or_else(|| pol_str("dead-letter-exchange")),
            dead_letter_routing_key: arg_str(args, "x-dead-letter-routing-key")
                .or_else(|| pol_str("dead-letter-routing-key")),
            max_priority: arg_int(args, "x-max-priority")
                .map(|v| v.min(255) as u8)
                .unwrap_or(0),
            single_active_consumer: matches!(
                args.inner().get("x-single-active-consumer"),
                Some(AMQPValue::Boolean(true))
            ),
            consumer_timeout,
            policy: policy.map(|p| p.def.name.clone()),
            operator_policy: operator.map(|p| p.def.name.clone()),
        }
    }

    /// True when a length limit is set.
    pub fn limited(&self) -> bool {
        self.max_length.is_some() || self.max_length_bytes.is_some()
    }

    /// True when `count` messages of `bytes` exceed the limits.
    pub fn over(&self, count: u64, bytes: u64) -> bool {
        self.max_length.is_some_and(|m| count > m)
            || self.max_length_bytes.is_some_and(|m| bytes > m)
    }
}

/// An exchange's alternate exchange: its `alternate-exchange` argument, else its policy's.
pub fn alternate_exchange(args: &FieldTable, policy: Option<&Policy>) -> Option<Arc<str>> {
    arg_str(args, "alternate-exchange").or_else(|| {
        policy
            .and_then(|p| p.get("alternate-exchange"))
            .and_then(|v| v.as_str())
            .map(Arc::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, pattern: &str, priority: i64, definition: serde_json::Value) -> PolicyDef {
        PolicyDef {
            vhost: "/".into(),
            name: name.into(),
            pattern: pattern.into(),
            apply_to: ApplyTo::All,
            priority,
            definition,
        }
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = Policy::new(
            def(
                "p",
                ".*",
                0,
                serde_json::json!({"foo": "bar", "message-ttl": 5}),
            ),
            false,
        )
        .expect_err("refused");
        assert!(err
            .text
            .contains("[{<<\"foo\">>,<<\"bar\">>}] are not recognised policy settings"));
        let err = Policy::new(
            def("p", ".*", 0, serde_json::json!({"message-ttl": -5})),
            false,
        )
        .expect_err("refused");
        assert!(err.text.contains("-5 is not a valid message TTL"));
        let err = Policy::new(
            def("p", ".*", 0, serde_json::json!({"overflow": "drop-head"})),
            true,
        )
        .expect_err("operator policies take fewer keys");
        assert!(err.text.contains("are not recognised policy settings"));
    }

    #[test]
    fn highest_priority_matching_policy_applies_and_arguments_merge() {
        let low = Policy::new(
            def(
                "low",
                "^q",
                1,
                serde_json::json!({"message-ttl": 100, "dead-letter-exchange": "p"}),
            ),
            false,
        )
        .expect("valid");
        let high = Policy::new(
            def("high", "^q\\.", 5, serde_json::json!({"max-length": 10})),
            false,
        )
        .expect("valid");
        let all = [low.clone(), high.clone()];
        assert_eq!(
            applying(all.iter(), Target::Queue, "q.a").map(|p| p.def.name.as_str()),
            Some("high")
        );
        assert_eq!(
            applying(all.iter(), Target::Queue, "qa").map(|p| p.def.name.as_str()),
            Some("low")
        );
        assert!(applying(all.iter(), Target::Queue, "x").is_none());
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(500));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("arg".into()),
        );
        let s = QueueSettings::resolve(&args, Some(&low), None, 0);
        assert_eq!(s.message_ttl, Some(100), "the smaller TTL wins");
        assert_eq!(
            s.dead_letter_exchange.as_deref(),
            Some("arg"),
            "argument wins"
        );
        let op = Policy::new(
            def("op", ".*", 0, serde_json::json!({"message-ttl": 50})),
            true,
        )
        .expect("valid");
        let s = QueueSettings::resolve(&FieldTable::default(), Some(&low), Some(&op), 0);
        assert_eq!(s.message_ttl, Some(50));
    }
}
