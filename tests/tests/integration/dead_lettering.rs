//! Dead-lettering, TTLs and length limits: `x-dead-letter-exchange` and
//! `x-dead-letter-routing-key` with the reasons `rejected`, `expired` and `maxlen`, the
//! `x-death` header and the `x-first-death-*` headers as RabbitMQ writes them (counts across
//! cycles, cycles without a rejection dropped), `x-message-ttl`, per-message `expiration`,
//! `x-expires`, `x-max-length` with `drop-head`, `reject-publish` and `reject-publish-dlx`.
//! Also run against RabbitMQ (`WARREN_TEST_EXTERNAL_URI`) except where marked Warren-only.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, BasicRejectOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use warren_tests::{eventually, unique, within, TestBroker};

use super::exchanges::{channel, confirm_channel, connect, s, table};

/// Declares an exclusive queue (gone with the test's connection, even on a shared broker).
pub(crate) async fn declare(ch: &Channel, name: &str, args: FieldTable) {
    within(
        10,
        "queue.declare",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            args,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("declare queue {name}: {e}"));
}

/// Ready messages in a queue (passive declare).
pub(crate) async fn count(ch: &Channel, name: &str) -> u32 {
    // Generous: a queue busy expiring and dead-lettering 100,000 messages answers its inbox
    // late in a debug build on a loaded machine.
    within(
        60,
        "passive queue.declare",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("passive declare {name}: {e}"))
    .message_count()
}

/// Publishes with properties on a confirm channel; true when acked, false when nacked.
pub(crate) async fn publish_props(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    props: BasicProperties,
) -> bool {
    let confirm = within(
        10,
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        ),
    )
    .await
    .expect("basic.publish");
    within(10, "publisher confirm", confirm)
        .await
        .expect("publisher confirm")
        .is_ack()
}

/// basic.get (with ack mode unless `no_ack`).
pub(crate) async fn get(
    ch: &Channel,
    queue: &str,
    no_ack: bool,
) -> Option<lapin::message::Delivery> {
    within(
        10,
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack }),
    )
    .await
    .expect("basic.get")
    .map(|m| m.delivery)
}

/// Waits until `queue` has a message and takes it (no-ack).
pub(crate) async fn wait_get(ch: &Channel, queue: &str) -> lapin::message::Delivery {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(d) = get(ch, queue, true).await {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message arrived in {queue}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn body(d: &lapin::message::Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

/// A header's value as a string (long strings), else its debug form.
pub(crate) fn text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        other => format!("{other:?}"),
    }
}

pub(crate) fn headers(d: &lapin::message::Delivery) -> BTreeMap<String, AMQPValue> {
    d.properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// One `x-death` entry, with its fields read out.
#[derive(Debug, PartialEq)]
pub(crate) struct Death {
    pub count: i64,
    pub reason: String,
    pub queue: String,
    pub exchange: String,
    pub routing_keys: Vec<String>,
    pub original_expiration: Option<String>,
    pub has_time: bool,
}

pub(crate) fn deaths(d: &lapin::message::Delivery) -> Vec<Death> {
    let h = headers(d);
    let Some(AMQPValue::FieldArray(a)) = h.get("x-death") else {
        return Vec::new();
    };
    a.as_slice()
        .iter()
        .map(|v| {
            let AMQPValue::FieldTable(t) = v else {
                panic!("x-death entry is not a table: {v:?}");
            };
            let t = t.inner();
            let count = match t.get("count") {
                Some(AMQPValue::LongLongInt(n)) => *n,
                other => panic!("x-death count is not a long: {other:?}"),
            };
            let routing_keys = match t.get("routing-keys") {
                Some(AMQPValue::FieldArray(a)) => a.as_slice().iter().map(text).collect(),
                other => panic!("x-death routing-keys is not an array: {other:?}"),
            };
            Death {
                count,
                reason: t.get("reason").map(text).unwrap_or_default(),
                queue: t.get("queue").map(text).unwrap_or_default(),
                exchange: t.get("exchange").map(text).unwrap_or_default(),
                routing_keys,
                original_expiration: t.get("original-expiration").map(text),
                has_time: matches!(t.get("time"), Some(AMQPValue::Timestamp(_))),
            }
        })
        .collect()
}

fn death(count: i64, reason: &str, queue: &str, exchange: &str, keys: &[&str]) -> Death {
    Death {
        count,
        reason: reason.into(),
        queue: queue.into(),
        exchange: exchange.into(),
        routing_keys: keys.iter().map(|k| k.to_string()).collect(),
        original_expiration: None,
        has_time: true,
    }
}

async fn reject(ch: &Channel, tag: u64) {
    within(
        10,
        "basic.reject",
        ch.basic_reject(tag, BasicRejectOptions { requeue: false }),
    )
    .await
    .expect("basic.reject");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_message_is_dead_lettered_with_x_death_and_first_death_headers() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (q, dlq) = (unique("dl-src"), unique("dl-dst"));
    declare(&ch, &dlq, FieldTable::default()).await;
    // No dead-letter routing key: the message keeps its routing key (the source queue's
    // name), which amq.direct routes to the dead-letter queue.
    within(
        10,
        "queue.bind",
        ch.queue_bind(
            dlq.as_str().into(),
            "amq.direct".into(),
            q.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("bind");
    declare(
        &ch,
        &q,
        table(&[("x-dead-letter-exchange", s("amq.direct"))]),
    )
    .await;
    assert!(publish_props(&ch, "", &q, "m1", BasicProperties::default()).await);
    let d = get(&ch, &q, false).await.expect("a message");
    reject(&ch, d.delivery_tag).await;
    let dead = wait_get(&ch, &dlq).await;
    assert_eq!(body(&dead), "m1");
    assert_eq!(dead.exchange.as_str(), "amq.direct");
    assert_eq!(dead.routing_key.as_str(), q.as_str());
    assert_eq!(deaths(&dead), vec![death(1, "rejected", &q, "", &[&q])]);
    let h = headers(&dead);
    assert_eq!(
        h.get("x-first-death-reason").map(text).as_deref(),
        Some("rejected")
    );
    assert_eq!(h.get("x-first-death-queue").map(text), Some(q.clone()));
    assert_eq!(
        h.get("x-first-death-exchange").map(text).as_deref(),
        Some("")
    );
    assert_eq!(count(&ch, &q).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_ttl_expires_messages_and_dead_letters_them_with_the_routing_key() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (q, dlq) = (unique("ttl-src"), unique("ttl-dst"));
    declare(&ch, &dlq, FieldTable::default()).await;
    declare(
        &ch,
        &q,
        table(&[
            ("x-message-ttl", AMQPValue::LongInt(100)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&dlq)),
        ]),
    )
    .await;
    for i in 0..3 {
        assert!(publish_props(&ch, "", &q, &format!("m{i}"), BasicProperties::default()).await);
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(&ch, &dlq).await == 3
        })
        .await,
        "the expired messages were dead-lettered"
    );
    assert_eq!(count(&ch, &q).await, 0);
    for i in 0..3 {
        let d = get(&ch, &dlq, true).await.expect("a dead letter");
        assert_eq!(body(&d), format!("m{i}"), "expired in order");
        assert_eq!(d.routing_key.as_str(), dlq.as_str());
        assert_eq!(deaths(&d), vec![death(1, "expired", &q, "", &[&q])]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_message_is_never_delivered_and_keeps_original_expiration() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (q, dlq) = (unique("exp-src"), unique("exp-dst"));
    declare(&ch, &dlq, FieldTable::default()).await;
    declare(
        &ch,
        &q,
        table(&[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&dlq)),
        ]),
    )
    .await;
    let props = BasicProperties::default().with_expiration("50".into());
    assert!(publish_props(&ch, "", &q, "short", props).await);
    assert!(publish_props(&ch, "", &q, "stays", BasicProperties::default()).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = get(&ch, &q, true).await.expect("the message without TTL");
    assert_eq!(body(&d), "stays", "the expired message is not delivered");
    let dead = wait_get(&ch, &dlq).await;
    assert_eq!(body(&dead), "short");
    assert_eq!(dead.properties.expiration(), &None, "expiration removed");
    let mut want = death(1, "expired", &q, "", &[&q]);
    want.original_expiration = Some("50".into());
    assert_eq!(deaths(&dead), vec![want]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_expiration_closes_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let q = unique("bad-exp");
    let setup = channel(&conn).await;
    declare(&setup, &q, FieldTable::default()).await;
    for (exp, reason) in [
        ("-1", "{value_negative,-1}".to_string()),
        ("soon", "no_integer".to_string()),
        ("12x", "{leftover_string,\"x\"}".to_string()),
    ] {
        let ch = confirm_channel(&conn).await;
        let confirm = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default().with_expiration(exp.into()),
            )
            .await;
        let err = match confirm {
            Err(e) => e,
            Ok(c) => match within(10, "confirm", c).await {
                Err(e) => e,
                Ok(c) => panic!("expiration {exp:?} accepted: {c:?}"),
            },
        };
        let (code, text, _) = super::exchanges::amqp_error(&err);
        assert_eq!(
            (code, text),
            (
                406,
                format!("PRECONDITION_FAILED - invalid expiration '{exp}': {reason}")
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_death_counts_grow_across_cycles_that_include_a_rejection() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (q1, q2) = (unique("cycle-a"), unique("cycle-b"));
    declare(
        &ch,
        &q1,
        table(&[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&q2)),
        ]),
    )
    .await;
    declare(
        &ch,
        &q2,
        table(&[
            ("x-message-ttl", AMQPValue::LongInt(50)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&q1)),
        ]),
    )
    .await;
    assert!(publish_props(&ch, "", &q1, "round", BasicProperties::default()).await);
    // Twice: rejected from q1 into q2, expired from q2 back into q1.
    let mut last = None;
    for _ in 0..2 {
        let d = loop {
            if let Some(d) = get(&ch, &q1, false).await {
                break d;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        reject(&ch, d.delivery_tag).await;
        let back = loop {
            if let Some(d) = get(&ch, &q1, false).await {
                break d;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        last = Some(back);
        // Leave it for the next round's get.
        within(
            10,
            "basic.reject requeue",
            ch.basic_reject(
                last.as_ref().map(|d| d.delivery_tag).unwrap_or(0),
                BasicRejectOptions { requeue: true },
            ),
        )
        .await
        .expect("requeue");
    }
    let last = last.expect("the message came back");
    assert_eq!(
        deaths(&last),
        vec![
            death(2, "expired", &q2, "", &[&q2]),
            death(2, "rejected", &q1, "", &[&q1]),
        ]
    );
    let h = headers(&last);
    assert_eq!(
        h.get("x-first-death-reason").map(text).as_deref(),
        Some("rejected")
    );
    assert_eq!(h.get("x-first-death-queue").map(text), Some(q1.clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_cycle_without_rejection_is_dropped() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("self-cycle");
    declare(
        &ch,
        &q,
        table(&[
            ("x-message-ttl", AMQPValue::LongInt(30)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&q)),
        ]),
    )
    .await;
    assert!(publish_props(&ch, "", &q, "loop", BasicProperties::default()).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&ch, &q).await, 0, "the cycle was cut, not repeated");
    assert!(get(&ch, &q, true).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_head_overflow_dead_letters_the_oldest_message_as_maxlen() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (q, dlq) = (unique("maxlen-src"), unique("maxlen-dst"));
    declare(&ch, &dlq, FieldTable::default()).await;
    declare(
        &ch,
        &q,
        table(&[
            ("x-max-length", AMQPValue::LongInt(2)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&dlq)),
        ]),
    )
    .await;
    for i in 1..=3 {
        assert!(publish_props(&ch, "", &q, &format!("m{i}"), BasicProperties::default()).await);
    }
    let dead = wait_get(&ch, &dlq).await;
    assert_eq!(body(&dead), "m1");
    assert_eq!(deaths(&dead), vec![death(1, "maxlen", &q, "", &[&q])]);
    assert_eq!(count(&ch, &q).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_nacks_and_reject_publish_dlx_also_dead_letters() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let dlq = unique("rp-dst");
    declare(&ch, &dlq, FieldTable::default()).await;
    for overflow in ["reject-publish", "reject-publish-dlx"] {
        let q = unique("rp-src");
        declare(
            &ch,
            &q,
            table(&[
                ("x-max-length", AMQPValue::LongInt(1)),
                ("x-overflow", s(overflow)),
                ("x-dead-letter-exchange", s("")),
                ("x-dead-letter-routing-key", s(&dlq)),
            ]),
        )
        .await;
        assert!(publish_props(&ch, "", &q, "first", BasicProperties::default()).await);
        assert!(
            !publish_props(&ch, "", &q, "second", BasicProperties::default()).await,
            "{overflow}: the publish over the limit is nacked"
        );
        assert_eq!(count(&ch, &q).await, 1);
        if overflow == "reject-publish" {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(
                count(&ch, &dlq).await,
                0,
                "reject-publish does not dead-letter"
            );
        } else {
            let dead = wait_get(&ch, &dlq).await;
            assert_eq!(body(&dead), "second");
            assert_eq!(deaths(&dead), vec![death(1, "maxlen", &q, "", &[&q])]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_ttl_expires_messages_paged_to_disk() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (q, dlq) = (unique("ttl-paged"), unique("ttl-paged-dst"));
    declare(&ch, &dlq, FieldTable::default()).await;
    declare(
        &ch,
        &q,
        table(&[
            ("x-message-ttl", AMQPValue::LongInt(1500)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&dlq)),
        ]),
    )
    .await;
    // More than a queue keeps in memory (8192 messages), so the rest is on disk.
    const N: usize = 12_000;
    let mut confirms = Vec::with_capacity(N);
    for i in 0..N {
        confirms.push(
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish"),
        );
    }
    for c in confirms {
        assert!(within(30, "confirm", c).await.expect("confirm").is_ack());
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&ch, &dlq).await as usize == N
        })
        .await,
        "every message expired and was dead-lettered, the paged ones too"
    );
    assert_eq!(count(&ch, &q).await, 0);
}

/// Warren-only: RabbitMQ expires messages with per-message TTLs only when they reach the
/// head of the queue; Warren's expiry index expires each at its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_per_message_ttls_expire_in_order_of_expiry() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (q, dlq) = (unique("ttl-index"), unique("ttl-index-dst"));
    declare(&ch, &dlq, FieldTable::default()).await;
    declare(
        &ch,
        &q,
        table(&[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&dlq)),
        ]),
    )
    .await;
    // TTLs in a scrambled order (5 to 10 s), so nearly every expiry comes from the middle
    // of the queue. The client notes, for each message, when it sent it and when its
    // confirm came back: the broker gave it its expiry in between.
    const N: usize = 100_000;
    const BATCH: usize = 500;
    let ttl = |i: usize| 5000 + (i * 7919) % 5000;
    let started = std::time::Instant::now();
    let ms = || started.elapsed().as_millis() as usize;
    let mut sent_ms = Vec::with_capacity(N);
    let mut confirmed_ms = Vec::with_capacity(N);
    let mut confirms = Vec::with_capacity(BATCH);
    for i in 0..N {
        sent_ms.push(ms());
        confirms.push(
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default().with_expiration(ttl(i).to_string().into()),
            )
            .await
            .expect("publish"),
        );
        if confirms.len() == BATCH || i == N - 1 {
            for c in confirms.drain(..) {
                assert!(within(120, "confirm", c).await.expect("confirm").is_ack());
            }
            let now = ms();
            confirmed_ms.resize(i + 1, now);
        }
    }
    let published = started.elapsed();
    assert!(
        eventually(Duration::from_secs(60), || async {
            count(&ch, &dlq).await as usize == N
        })
        .await,
        "every message expired"
    );
    let expired_after = started.elapsed();
    assert_eq!(count(&ch, &q).await, 0);
    // The last TTL ends at most 10 s after the last publish: the expiry work is small beside
    // it (a scan of the queue per expiry would take minutes here).
    assert!(
        expired_after < published + Duration::from_secs(10 + 30),
        "expiry took {expired_after:?} (publishing took {published:?})"
    );
    let mut order = Vec::with_capacity(N);
    while let Some(d) = get(&ch, &dlq, true).await {
        order.push(body(&d).parse::<usize>().expect("index"));
    }
    assert_eq!(order.len(), N);
    // In order of expiry: no message comes out after one that surely expires later (whose
    // earliest possible expiry is past this one's latest, give or take a timer tick).
    let mut latest_earliest = 0;
    let mut late = 0;
    for (k, &i) in order.iter().enumerate() {
        let (earliest, latest) = (sent_ms[i] + ttl(i), confirmed_ms[i] + ttl(i));
        if latest + 20 < latest_earliest {
            if late < 10 {
                eprintln!("message {i} at position {k} expires by {latest} ms, after one expiring from {latest_earliest} ms");
            }
            late += 1;
        }
        latest_earliest = latest_earliest.max(earliest);
    }
    assert_eq!(late, 0, "dead-lettered in order of expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_queue_with_x_expires_is_deleted() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("expires");
    within(
        10,
        "queue.declare",
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            table(&[("x-expires", AMQPValue::LongInt(300))]),
        ),
    )
    .await
    .expect("declare");
    assert!(publish_props(&ch, "", &q, "kept?", BasicProperties::default()).await);
    let gone = eventually(Duration::from_secs(10), || async {
        let probe = channel(&conn).await;
        let res = probe
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        match res {
            Ok(_) => {
                let _ = probe.close(200, "OK".into()).await;
                // A passive declare counts as use: wait a little longer than the expiry.
                tokio::time::sleep(Duration::from_millis(400)).await;
                false
            }
            Err(_) => true,
        }
    })
    .await;
    assert!(gone, "the queue expired");
    let _ = ch
        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ttl_zero_delivers_only_to_a_waiting_consumer() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("ttl0");
    declare(&ch, &q, table(&[("x-message-ttl", AMQPValue::LongInt(0))])).await;
    assert!(publish_props(&ch, "", &q, "nobody", BasicProperties::default()).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        count(&ch, &q).await,
        0,
        "expired at once without a consumer"
    );
}
