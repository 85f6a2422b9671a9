//! Dead-lettering: the message a queue republishes when it rejects, expires or drops one,
//! with RabbitMQ's `x-death` header (`rabbit_dead_letter:make_msg`), routed through the
//! vhost from the dead-letter exchange, with RabbitMQ's cycle detection.
//!
//! Hand-off: the dead-lettered message goes to each target queue over that queue's
//! *unbounded* dead-letter inbox, never its bounded publish inbox. A queue actor must never
//! wait on another queue: queue A dead-lettering into B while B dead-letters into A would
//! deadlock if both waited for room in the other's inbox. The unbounded path costs no
//! extra memory in the common case (the message left A's memory as it entered B's inbox),
//! and keeps dead letters in the order they were made, which `try_send` with a fallback
//! task would not.

use crate::message::Message;
use crate::queue::{Publish, QueueHandle};
use crate::vhost::Vhost;
use std::sync::{Arc, Weak};
use warren_amqp::{AMQPValue, FieldArray, FieldTable, LongString};

/// Why a message was dead-lettered (the `reason` of its `x-death` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// basic.reject or basic.nack with requeue=false.
    Rejected,
    /// Its TTL passed.
    Expired,
    /// The queue was over its length limit.
    Maxlen,
    /// Delivered more often than the queue's delivery limit.
    DeliveryLimit,
}

impl Reason {
    /// The reason as RabbitMQ writes it.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Where a queue dead-letters to.
pub(crate) struct DeadLetterer {
    /// The vhost, for routing (weak: the vhost owns the queues' handles).
    pub vhost: Weak<Vhost>,
    /// The queue's own handle (its name goes into `x-death`).
    pub queue: QueueHandle,
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn str_of(v: Option<&AMQPValue>) -> Option<String> {
    match v? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The routing keys in a `CC` or `BCC` header (RabbitMQ's `header_routes`).
pub(crate) fn header_keys(headers: &FieldTable, key: &str) -> Vec<String> {
    match headers.inner().get(key) {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .filter_map(|v| str_of(Some(v)))
            .collect(),
        _ => Vec::new(),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The message as dead-lettered from `queue` for `reason`: `x-death` updated (a new entry
/// with count 1 in front, or the entry for the same queue and reason counted up and moved to
/// the front), `x-first-death-*` set on the first death, `expiration` removed (kept as
/// `original-expiration`), routed with the dead-letter routing key if set (and `CC` removed),
/// else with the keys it was published with.
pub fn make_message(
    msg: &Message,
    reason: Reason,
    queue: &str,
    dlx: &str,
    dlrk: Option<&str>,
) -> Message {
    let props = msg.properties.parse();
    let mut headers = props.headers().clone().unwrap_or_default();
    let mut keys = vec![long_str(&msg.routing_key)];
    keys.extend(header_keys(&headers, "CC").iter().map(|k| long_str(k)));
    let mut info = FieldTable::default();
    info.insert("reason".into(), long_str(reason.name()));
    info.insert("queue".into(), long_str(queue));
    info.insert("time".into(), AMQPValue::Timestamp(now_secs()));
    info.insert("exchange".into(), long_str(&msg.exchange));
    info.insert("routing-keys".into(), AMQPValue::FieldArray(keys.into()));
    if let Some(exp) = props.expiration() {
        info.insert("original-expiration".into(), long_str(exp.as_str()));
    }
    let deaths = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => Some(a.as_slice().to_vec()),
        _ => None,
    };
    let new_deaths: Vec<AMQPValue> = match deaths {
        None => {
            headers.insert("x-first-death-exchange".into(), long_str(&msg.exchange));
            headers.insert("x-first-death-reason".into(), long_str(reason.name()));
            headers.insert("x-first-death-queue".into(), long_str(queue));
            info.insert("count".into(), AMQPValue::LongLongInt(1));
            vec![AMQPValue::FieldTable(info)]
        }
        Some(old) => {
            let same = |v: &AMQPValue| match v {
                AMQPValue::FieldTable(t) => {
                    str_of(t.inner().get("queue")).as_deref() == Some(queue)
                        && str_of(t.inner().get("reason")).as_deref() == Some(reason.name())
                }
                _ => false,
            };
            let mut first = None;
            let mut others = Vec::with_capacity(old.len());
            for v in old {
                if first.is_none() && same(&v) {
                    first = Some(v);
                } else {
                    others.push(v);
                }
            }
            let entry = match first {
                Some(AMQPValue::FieldTable(mut t)) => {
                    let n = t
                        .inner()
                        .get("count")
                        .and_then(crate::args::as_i64)
                        .unwrap_or(0);
                    t.insert("count".into(), AMQPValue::LongLongInt(n + 1));
                    t
                }
                _ => {
                    info.insert("count".into(), AMQPValue::LongLongInt(1));
                    info
                }
            };
            let mut all = vec![AMQPValue::FieldTable(entry)];
            all.extend(others);
            all
        }
    };
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(new_deaths)),
    );
    let (routing_key, extra_keys): (Arc<str>, Box<[Arc<str>]>) = match dlrk {
        Some(rk) => {
            // RabbitMQ removes CC when it routes with the dead-letter routing key.
            let mut kept = FieldTable::default();
            for (k, v) in headers.inner() {
                if k.as_str() != "CC" {
                    kept.insert(k.clone(), v.clone());
                }
            }
            headers = kept;
            (Arc::from(rk), Box::new([]))
        }
        None => (msg.routing_key.clone(), msg.extra_keys.clone()),
    };
    let new_props = warren_amqp::properties::rebuild(&props, Some(headers), true);
    Message {
        exchange: Arc::from(dlx),
        routing_key,
        extra_keys,
        properties: warren_amqp::Properties::encode(&new_props),
        body: msg.body.clone(),
    }
}

/// True when dead-lettering `msg` (already carrying its new `x-death`) into `queue` would
/// close a fully automatic cycle: `queue` is in `x-death` and no death since it was a
/// rejection (RabbitMQ's `is_cycle`).
fn is_cycle(deaths: &[AMQPValue], queue: &str) -> bool {
    for d in deaths {
        let AMQPValue::FieldTable(t) = d else {
            return false;
        };
        if str_of(t.inner().get("reason")).as_deref() == Some("rejected") {
            return false;
        }
        if str_of(t.inner().get("queue")).as_deref() == Some(queue) {
            return true;
        }
    }
    false
}

impl DeadLetterer {
    /// Dead-letters a message: builds it, routes it from `dlx` and hands it to each target
    /// queue (dropping it for targets that would close a cycle). A missing exchange or no
    /// route drops the message, as RabbitMQ's at-most-once dead-lettering does.
    pub fn publish(&self, msg: &Message, reason: Reason, dlx: &str, dlrk: Option<&str>) {
        let Some(vhost) = self.vhost.upgrade() else {
            return;
        };
        let routes = vhost.routes();
        let Some(x) = routes.exchanges.get(dlx) else {
            tracing::debug!(queue = %self.queue.name(), exchange = dlx, "dead-letter exchange does not exist: message dropped");
            return;
        };
        let dead = make_message(msg, reason, self.queue.name(), dlx, dlrk);
        let mut targets = Vec::new();
        Vhost::route(&routes, x, &dead, &mut targets);
        if targets.is_empty() {
            return;
        }
        let deaths = if reason == Reason::Rejected {
            Vec::new()
        } else {
            match dead.properties.parse().headers() {
                Some(h) => match h.inner().get("x-death") {
                    Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
                    _ => Vec::new(),
                },
                None => Vec::new(),
            }
        };
        let dead = Arc::new(dead);
        for q in targets {
            if !deaths.is_empty() && is_cycle(&deaths, q.name()) {
                tracing::debug!(queue = %q.name(), "dead-letter cycle: message dropped");
                continue;
            }
            q.dead_letter(Publish {
                msg: dead.clone(),
                confirm: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg() -> Message {
        let mut h = FieldTable::default();
        h.insert(
            "CC".into(),
            AMQPValue::FieldArray(vec![long_str("cc1")].into()),
        );
        let props = warren_amqp::basic::AMQPProperties::default()
            .with_headers(h)
            .with_expiration("5000".into());
        Message {
            exchange: Arc::from("x"),
            routing_key: Arc::from("rk"),
            extra_keys: vec![Arc::from("cc1")].into_boxed_slice(),
            properties: warren_amqp::Properties::encode(&props),
            body: Bytes::from_static(b"b"),
        }
    }

    fn deaths(m: &Message) -> Vec<FieldTable> {
        let p = m.properties.parse();
        match p.headers().as_ref().and_then(|h| h.inner().get("x-death")) {
            Some(AMQPValue::FieldArray(a)) => a
                .as_slice()
                .iter()
                .filter_map(|v| match v {
                    AMQPValue::FieldTable(t) => Some(t.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn first_death_sets_x_death_and_first_death_headers() {
        let d = make_message(&msg(), Reason::Expired, "q1", "dlx", None);
        let p = d.properties.parse();
        assert_eq!(p.expiration(), &None);
        let h = p.headers().clone().expect("headers");
        assert_eq!(
            str_of(h.inner().get("x-first-death-queue")).as_deref(),
            Some("q1")
        );
        assert_eq!(
            str_of(h.inner().get("x-first-death-reason")).as_deref(),
            Some("expired")
        );
        let x = deaths(&d);
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].inner().get("count"), Some(&AMQPValue::LongLongInt(1)));
        assert_eq!(
            str_of(x[0].inner().get("original-expiration")).as_deref(),
            Some("5000")
        );
        assert_eq!(
            x[0].inner().get("routing-keys"),
            Some(&AMQPValue::FieldArray(
                vec![long_str("rk"), long_str("cc1")].into()
            ))
        );
        assert_eq!(d.routing_keys().collect::<Vec<_>>(), vec!["rk", "cc1"]);
    }

    #[test]
    fn same_queue_and_reason_counts_up_and_moves_to_front() {
        let a = make_message(&msg(), Reason::Expired, "q1", "dlx", Some("k"));
        assert_eq!(a.routing_keys().collect::<Vec<_>>(), vec!["k"]);
        let b = make_message(&a, Reason::Rejected, "q2", "dlx", None);
        let c = make_message(&b, Reason::Expired, "q1", "dlx", None);
        let x = deaths(&c);
        assert_eq!(x.len(), 2);
        assert_eq!(str_of(x[0].inner().get("queue")).as_deref(), Some("q1"));
        assert_eq!(x[0].inner().get("count"), Some(&AMQPValue::LongLongInt(2)));
        assert_eq!(str_of(x[1].inner().get("queue")).as_deref(), Some("q2"));
        let arr: Vec<AMQPValue> = x.into_iter().map(AMQPValue::FieldTable).collect();
        assert!(
            is_cycle(&arr, "q1"),
            "q1 expired again with no rejection since"
        );
        let arr: Vec<AMQPValue> = deaths(&b).into_iter().map(AMQPValue::FieldTable).collect();
        assert!(
            !is_cycle(&arr, "q1"),
            "a rejection on the way breaks the cycle"
        );
        let d = make_message(&msg(), Reason::Expired, "q1", "dlx", None);
        let arr: Vec<AMQPValue> = deaths(&d).into_iter().map(AMQPValue::FieldTable).collect();
        assert!(is_cycle(&arr, "q1"));
        assert!(!is_cycle(&arr, "q2"));
    }
}
