//! Queues: server-generated names, the counts in declare-ok, passive declares, equivalence
//! checks on redeclaration, the reserved `amq.` prefix, exclusive queues (locking and deletion
//! with their connection), auto-delete queues, bind/unbind, purge, delete with its if-unused
//! and if-empty conditions, and the consumer cancel notification sent when a queue with
//! consumers is deleted, with RabbitMQ's reply codes and reply texts.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer};
use warren_tests::{eventually, unique, within, TestBroker};

use super::exchanges::{
    channel, channel_error, confirm_channel, connect, drain, publish, rs, s, table,
};

fn opts() -> QueueDeclareOptions {
    QueueDeclareOptions::default()
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

fn locked(queue: &str) -> (u16, String) {
    (
        405,
        format!(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{queue}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
        ),
    )
}

fn no_queue(queue: &str) -> (u16, String) {
    (404, format!("NOT_FOUND - no queue '{queue}' in vhost '/'"))
}

/// Declares a queue and returns (message_count, consumer_count) from declare-ok.
async fn declare(
    ch: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> (u32, u32) {
    let q = within(
        10,
        "queue.declare",
        ch.queue_declare(name.into(), options, args),
    )
    .await
    .unwrap_or_else(|e| panic!("declare queue {name}: {e}"));
    assert_eq!(q.name().as_str(), name);
    (q.message_count(), q.consumer_count())
}

/// A non-exclusive, non-durable queue with a unique name; the caller deletes it.
async fn new_queue(ch: &Channel, prefix: &str) -> String {
    let name = unique(prefix);
    declare(ch, &name, opts(), FieldTable::default()).await;
    name
}

async fn delete_queue(ch: &Channel, name: &str) -> u32 {
    within(
        10,
        "queue.delete",
        ch.queue_delete(name.into(), QueueDeleteOptions::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("delete queue {name}: {e}"))
}

/// A passive declare on a fresh channel: `None` if the queue exists, else the channel error.
async fn passive_error(conn: &Connection, name: &str) -> Option<(u16, String)> {
    let ch = channel(conn).await;
    match within(
        10,
        "passive queue.declare",
        ch.queue_declare(name.into(), passive(), FieldTable::default()),
    )
    .await
    {
        Ok(_) => {
            let _ = ch.close(200, "OK".into()).await;
            None
        }
        Err(e) => {
            let (code, text, _) = super::exchanges::amqp_error(&e);
            Some((code, text))
        }
    }
}

/// True if a passive declare finds the queue; false if it says 404 (anything else fails).
async fn queue_exists(conn: &Connection, name: &str) -> bool {
    match passive_error(conn, name).await {
        None => true,
        Some(err) => {
            assert_eq!(err, no_queue(name));
            false
        }
    }
}

/// Passive declare: (ready message count, consumer count).
async fn counts(ch: &Channel, name: &str) -> (u32, u32) {
    declare(ch, name, passive(), FieldTable::default()).await
}

async fn consume(ch: &Channel, queue: &str, tag: &str) -> Consumer {
    within(
        10,
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("consume from {queue}: {e}"))
}

/// Waits for the consumer's next delivery and returns it.
async fn next_delivery(consumer: &mut Consumer) -> lapin::message::Delivery {
    within(10, "a delivery", consumer.next())
        .await
        .expect("the consumer stream ended")
        .expect("a delivery, not an error")
}

// ---------------------------------------------------------------------------------------------
// Declaration

fn assert_server_generated(name: &str) {
    let suffix = name
        .strip_prefix("amq.gen-")
        .unwrap_or_else(|| panic!("{name:?} does not start with amq.gen-"));
    assert!(suffix.len() >= 22, "{name:?}: suffix shorter than 22");
    assert!(
        suffix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{name:?}: suffix is not url-safe base64"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_name_declares_a_server_named_amq_gen_queue() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q1 = within(
        10,
        "declare ''",
        ch.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare-ok");
    let q2 = within(
        10,
        "declare ''",
        ch.queue_declare("".into(), opts(), FieldTable::default()),
    )
    .await
    .expect("declare-ok");
    let (n1, n2) = (q1.name().to_string(), q2.name().to_string());
    assert_server_generated(&n1);
    assert_server_generated(&n2);
    assert_ne!(n1, n2);
    assert_eq!((q1.message_count(), q1.consumer_count()), (0, 0));

    // The generated name is a real queue: reachable through the default exchange, passive
    // declarable, deletable.
    publish(&ch, "", &n1, "hello", None).await;
    assert_eq!(counts(&ch, &n1).await, (1, 0));
    assert_eq!(drain(&ch, &n1).await, ["hello"]);
    assert_eq!(delete_queue(&ch, &n2).await, 0);
    assert!(!queue_exists(&conn, &n2).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_empty_name_declares_a_server_named_amq_gen_queue() {
    use amqprs::channel::{BasicGetArguments, BasicPublishArguments, QueueDeclareArguments};
    let broker = TestBroker::start().await;
    let (conn, _conn_events) = rs::connect(&broker).await;
    let (ch, _events) = rs::channel(&conn).await;
    let (name, messages, consumers) = within(
        10,
        "declare ''",
        ch.queue_declare(QueueDeclareArguments::exclusive_server_named()),
    )
    .await
    .expect("declare")
    .expect("declare-ok");
    assert_server_generated(&name);
    assert_eq!((messages, consumers), (0, 0));
    within(
        10,
        "publish",
        ch.basic_publish(
            amqprs::BasicProperties::default(),
            b"via-default".to_vec(),
            BasicPublishArguments::new("", &name),
        ),
    )
    .await
    .expect("publish");
    let got = within(10, "get", async {
        loop {
            let got = ch
                .basic_get(BasicGetArguments::new(&name).no_ack(true).finish())
                .await
                .expect("basic.get");
            if let Some(m) = got {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(got.2, b"via-default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_ok_counts_ready_messages_and_consumers() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = new_queue(&ch, "counts").await;
    for body in ["m1", "m2", "m3"] {
        publish(&ch, "", &q, body, None).await;
    }
    assert_eq!(
        declare(&ch, &q, opts(), FieldTable::default()).await,
        (3, 0)
    );

    // Two consumers with prefetch 1 and manual acks each hold one unacked message.
    let consumers_ch = channel(&conn).await;
    within(
        10,
        "basic.qos",
        consumers_ch.basic_qos(1, BasicQosOptions::default()),
    )
    .await
    .expect("qos");
    let mut c1 = consume(&consumers_ch, &q, "c1").await;
    let mut c2 = consume(&consumers_ch, &q, "c2").await;
    let d1 = next_delivery(&mut c1).await;
    let d2 = next_delivery(&mut c2).await;
    let mut bodies = [d1.data.clone(), d2.data.clone()];
    bodies.sort();
    assert_eq!(bodies, [b"m1".to_vec(), b"m2".to_vec()]);

    // Only the ready message is counted; both consumers are.
    assert_eq!(
        declare(&ch, &q, opts(), FieldTable::default()).await,
        (1, 2)
    );
    assert_eq!(counts(&ch, &q).await, (1, 2));

    // Acking one lets the third message go out: nothing is ready any more.
    within(10, "ack", d1.acker.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    let d3 = next_delivery(&mut c1).await;
    assert_eq!(d3.data, b"m3");
    assert_eq!(counts(&ch, &q).await, (0, 2));

    // Cancelling a consumer is reflected at once.
    within(
        10,
        "basic.cancel",
        consumers_ch.basic_cancel("c2".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    assert_eq!(counts(&ch, &q).await, (0, 1));
    drop((c1, c2));
    delete_queue(&ch, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_missing_queue_closes_channel_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = unique("missing-q");
    let ch = channel(&conn).await;
    let got = channel_error(
        "passive declare of a missing queue",
        ch.queue_declare(name.as_str().into(), passive(), FieldTable::default()),
    )
    .await;
    assert_eq!(got, no_queue(&name));

    // Passive with an empty name names the empty queue.
    let ch = channel(&conn).await;
    let got = channel_error(
        "passive declare of ''",
        ch.queue_declare("".into(), passive(), FieldTable::default()),
    )
    .await;
    assert_eq!(got, no_queue(""));

    // The connection is fine and the queue was not created.
    assert!(!queue_exists(&conn, &name).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_passive_declare_of_missing_queue_closes_channel_with_404() {
    use amqprs::channel::QueueDeclareArguments;
    let broker = TestBroker::start().await;
    let (conn, _conn_events) = rs::connect(&broker).await;
    let (ch, mut events) = rs::channel(&conn).await;
    let name = unique("rs-missing-q");
    let res = within(
        10,
        "passive declare",
        ch.queue_declare(QueueDeclareArguments::new(&name).passive(true).finish()),
    )
    .await;
    assert!(res.is_err(), "got {res:?}");
    let (code, text) = no_queue(&name);
    assert_eq!(
        rs::next_event(&mut events, "channel.close").await,
        rs::Event::ChannelClose(code, text)
    );
    // Another channel on the same connection still works.
    let (ch2, _events2) = rs::channel(&conn).await;
    let declared = within(
        10,
        "declare",
        ch2.queue_declare(QueueDeclareArguments::exclusive_server_named()),
    )
    .await
    .expect("declare")
    .expect("declare-ok");
    assert_server_generated(&declared.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_properties_closes_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let setup = channel(&conn).await;
    let q = unique("ineq-q");
    let ttl = |v: AMQPValue| ("x-message-ttl", v);
    declare(
        &setup,
        &q,
        opts(),
        table(&[
            ttl(AMQPValue::LongInt(1000)),
            ("x-dead-letter-exchange", s("dlx-a")),
        ]),
    )
    .await;
    let base = |extra: &[(&str, AMQPValue)]| {
        let mut entries = vec![
            ttl(AMQPValue::LongInt(1000)),
            ("x-dead-letter-exchange", s("dlx-a")),
        ];
        for (k, v) in extra {
            entries.retain(|(key, _)| key != k);
            entries.push((k, v.clone()));
        }
        table(&entries)
    };
    let with = |durable: bool, auto_delete: bool| QueueDeclareOptions {
        durable,
        auto_delete,
        ..Default::default()
    };
    let prefix = "PRECONDITION_FAILED - inequivalent arg";
    let cases: Vec<(QueueDeclareOptions, FieldTable, String)> = vec![
        (
            with(true, false),
            base(&[]),
            format!("{prefix} 'durable' for queue '{q}' in vhost '/': received 'true' but current is 'false'"),
        ),
        (
            with(false, true),
            base(&[]),
            format!("{prefix} 'auto_delete' for queue '{q}' in vhost '/': received 'true' but current is 'false'"),
        ),
        // Several differences: durable, then auto_delete, then arguments.
        (
            with(true, true),
            base(&[ttl(AMQPValue::LongInt(5))]),
            format!("{prefix} 'durable' for queue '{q}' in vhost '/': received 'true' but current is 'false'"),
        ),
        (
            with(false, true),
            base(&[ttl(AMQPValue::LongInt(5))]),
            format!("{prefix} 'auto_delete' for queue '{q}' in vhost '/': received 'true' but current is 'false'"),
        ),
        (
            opts(),
            base(&[ttl(AMQPValue::LongInt(2000))]),
            format!("{prefix} 'x-message-ttl' for queue '{q}' in vhost '/': received '2000' but current is '1000'"),
        ),
        (
            opts(),
            table(&[("x-dead-letter-exchange", s("dlx-a"))]),
            format!("{prefix} 'x-message-ttl' for queue '{q}' in vhost '/': received none but current is the value '1000' of type 'signedint'"),
        ),
        // Same printed value, different type class: still inequivalent.
        (
            opts(),
            base(&[ttl(s("1000"))]),
            format!("{prefix} 'x-message-ttl' for queue '{q}' in vhost '/': received '1000' but current is '1000'"),
        ),
        (
            opts(),
            base(&[("x-dead-letter-exchange", s("dlx-b"))]),
            format!("{prefix} 'x-dead-letter-exchange' for queue '{q}' in vhost '/': received 'dlx-b' but current is 'dlx-a'"),
        ),
        (
            opts(),
            base(&[("x-max-length", AMQPValue::LongInt(5))]),
            format!("{prefix} 'x-max-length' for queue '{q}' in vhost '/': received the value '5' of type 'signedint' but current is none"),
        ),
    ];
    for (options, args, text) in cases {
        let ch = channel(&conn).await;
        let got = channel_error(&text, ch.queue_declare(q.as_str().into(), options, args)).await;
        assert_eq!(got, (406, text.clone()));
    }

    // Equivalent: an integer of another width with the same value, an unknown x- argument,
    // and any passive declare.
    let ch = channel(&conn).await;
    let same = base(&[ttl(AMQPValue::LongLongInt(1000))]);
    assert_eq!(declare(&ch, &q, opts(), same).await, (0, 0));
    let extra = base(&[("x-whatever", s("ignored"))]);
    assert_eq!(declare(&ch, &q, opts(), extra).await, (0, 0));
    let all_different = QueueDeclareOptions {
        passive: true,
        durable: true,
        auto_delete: true,
        ..Default::default()
    };
    assert_eq!(
        declare(&ch, &q, all_different, table(&[ttl(AMQPValue::LongInt(1))])).await,
        (0, 0)
    );
    delete_queue(&ch, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_queue_arguments_close_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let q = unique("bad-args");
    let cases = [
        (
            AMQPValue::LongInt(-1),
            format!("PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
        ),
        (
            s("soon"),
            format!("PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': \"expected integer, got longstr\""),
        ),
    ];
    for (value, text) in cases {
        let ch = channel(&conn).await;
        let got = channel_error(
            &text,
            ch.queue_declare(
                q.as_str().into(),
                opts(),
                table(&[("x-message-ttl", value)]),
            ),
        )
        .await;
        assert_eq!(got, (406, text.clone()));
        assert!(!queue_exists(&conn, &q).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_exclusive_flag_closes_channel_with_405() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let setup = channel(&conn).await;
    let shared = new_queue(&setup, "shared").await;
    let exclusive = unique("exclusive");
    let excl = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    declare(&setup, &exclusive, excl, FieldTable::default()).await;

    // Same connection, non-exclusive queue redeclared exclusive.
    let ch = channel(&conn).await;
    let got = channel_error(
        "redeclare a shared queue as exclusive",
        ch.queue_declare(shared.as_str().into(), excl, FieldTable::default()),
    )
    .await;
    assert_eq!(got, locked(&shared));

    // Same connection, exclusive queue redeclared non-exclusive.
    let ch = channel(&conn).await;
    let got = channel_error(
        "redeclare an exclusive queue as shared",
        ch.queue_declare(exclusive.as_str().into(), opts(), FieldTable::default()),
    )
    .await;
    assert_eq!(got, locked(&exclusive));

    // The owner may redeclare it exclusive, and passive-declare it.
    let ch = channel(&conn).await;
    assert_eq!(
        declare(&ch, &exclusive, excl, FieldTable::default()).await,
        (0, 0)
    );
    assert_eq!(counts(&ch, &exclusive).await, (0, 0));

    // Exclusive queues are never durable: the durable flag of an exclusive declaration is
    // ignored, so durable and non-durable exclusive redeclarations are both equivalent.
    let durable_excl = QueueDeclareOptions {
        exclusive: true,
        durable: true,
        ..Default::default()
    };
    assert_eq!(
        declare(&ch, &exclusive, durable_excl, FieldTable::default()).await,
        (0, 0)
    );
    let other = unique("exclusive-durable");
    declare(&ch, &other, durable_excl, FieldTable::default()).await;
    assert_eq!(
        declare(&ch, &other, excl, FieldTable::default()).await,
        (0, 0)
    );
    delete_queue(&ch, &shared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_an_amq_prefixed_queue_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    for name in [format!("amq.{}", unique("q")), "amq.gen-abc".to_string()] {
        let ch = channel(&conn).await;
        let got = channel_error(
            "declare amq.*",
            ch.queue_declare(name.as_str().into(), opts(), FieldTable::default()),
        )
        .await;
        assert_eq!(
            got,
            (
                403,
                format!("ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'")
            )
        );
        // A passive declare is a lookup: 404, not 403.
        assert!(!queue_exists(&conn, &name).await);
    }
}

// ---------------------------------------------------------------------------------------------
// Exclusive queues

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_is_locked_to_its_connection_with_405() {
    let broker = TestBroker::start().await;
    let owner = connect(&broker).await;
    let owner_ch = confirm_channel(&owner).await;
    let q = unique("locked");
    let excl = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    declare(&owner_ch, &q, excl, FieldTable::default()).await;

    let other = connect(&broker).await;
    let ch = channel(&other).await;
    let got = channel_error(
        "declare (same flags)",
        ch.queue_declare(q.as_str().into(), excl, FieldTable::default()),
    )
    .await;
    assert_eq!(got, locked(&q), "declare");
    let ch = channel(&other).await;
    let got = channel_error(
        "declare non-exclusive",
        ch.queue_declare(q.as_str().into(), opts(), FieldTable::default()),
    )
    .await;
    assert_eq!(got, locked(&q), "declare non-exclusive");
    let ch = channel(&other).await;
    let got = channel_error(
        "passive declare",
        ch.queue_declare(q.as_str().into(), passive(), FieldTable::default()),
    )
    .await;
    assert_eq!(got, locked(&q), "passive declare");
    let ch = channel(&other).await;
    let got = channel_error(
        "basic.consume",
        ch.basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_eq!(got, locked(&q), "consume");
    let ch = channel(&other).await;
    let got = channel_error(
        "basic.get",
        ch.basic_get(q.as_str().into(), BasicGetOptions::default()),
    )
    .await;
    assert_eq!(got, locked(&q), "get");
    let ch = channel(&other).await;
    let got = channel_error(
        "queue.bind",
        ch.queue_bind(
            q.as_str().into(),
            "amq.direct".into(),
            q.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_eq!(got, locked(&q), "bind");
    let ch = channel(&other).await;
    let got = channel_error(
        "queue.purge",
        ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()),
    )
    .await;
    assert_eq!(got, locked(&q), "purge");
    let ch = channel(&other).await;
    let got = channel_error(
        "queue.delete",
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
    )
    .await;
    assert_eq!(got, locked(&q), "delete");

    // Not locked: unbind, and publishing to the queue.
    let ch = confirm_channel(&other).await;
    within(
        10,
        "queue.unbind",
        ch.queue_unbind(
            q.as_str().into(),
            "amq.direct".into(),
            q.as_str().into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("unbind from another connection is allowed");
    publish(&ch, "", &q, "from-other", None).await;

    // The owner sees the message and can do everything.
    assert_eq!(counts(&owner_ch, &q).await, (1, 0));
    assert_eq!(drain(&owner_ch, &q).await, ["from-other"]);
    assert_eq!(delete_queue(&owner_ch, &q).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_is_deleted_when_its_connection_closes() {
    let broker = TestBroker::start().await;
    let owner = connect(&broker).await;
    let ch = channel(&owner).await;
    let q = unique("excl-gone");
    declare(
        &ch,
        &q,
        QueueDeclareOptions {
            exclusive: true,
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    let other = connect(&broker).await;
    let check = channel(&other).await;
    let got = channel_error(
        "passive declare while the owner is connected",
        check.queue_declare(q.as_str().into(), passive(), FieldTable::default()),
    )
    .await;
    assert_eq!(got, locked(&q));

    within(10, "close the owner", owner.close(200, "bye".into()))
        .await
        .expect("close");
    // From another connection the queue answers 405 while it exists, then 404.
    let gone = eventually(Duration::from_secs(5), || async {
        passive_error(&other, &q).await == Some(no_queue(&q))
    })
    .await;
    assert!(gone, "exclusive queue {q} outlived its connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_exclusive_queue_is_deleted_when_its_connection_closes() {
    use amqprs::channel::QueueDeclareArguments;
    let broker = TestBroker::start().await;
    let (owner, _owner_events) = rs::connect(&broker).await;
    let (ch, _events) = rs::channel(&owner).await;
    let (q, _, _) = within(
        10,
        "declare",
        ch.queue_declare(QueueDeclareArguments::exclusive_server_named()),
    )
    .await
    .expect("declare")
    .expect("declare-ok");

    let (other, _other_events) = rs::connect(&broker).await;
    let (probe, mut probe_events) = rs::channel(&other).await;
    let res = within(
        10,
        "passive declare from another connection",
        probe.queue_declare(QueueDeclareArguments::new(&q).passive(true).finish()),
    )
    .await;
    assert!(res.is_err(), "got {res:?}");
    let (code, text) = locked(&q);
    assert_eq!(
        rs::next_event(&mut probe_events, "channel.close").await,
        rs::Event::ChannelClose(code, text)
    );

    within(10, "close the owner", owner.close())
        .await
        .expect("close");
    let lapin_conn = connect(&broker).await;
    // From another connection the queue answers 405 while it exists, then 404.
    let gone = eventually(Duration::from_secs(5), || async {
        passive_error(&lapin_conn, &q).await == Some(no_queue(&q))
    })
    .await;
    assert!(gone, "exclusive queue {q} outlived its connection");
}

// ---------------------------------------------------------------------------------------------
// Auto-delete queues

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_is_deleted_when_its_last_consumer_cancels() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("ad-q");
    let ad = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    declare(&ch, &q, ad, FieldTable::default()).await;
    // Never consumed from: it stays, even across publish and get.
    publish(&ch, "", &q, "m", None).await;
    assert_eq!(drain(&ch, &q).await, ["m"]);
    assert!(queue_exists(&conn, &q).await);

    let consumers = channel(&conn).await;
    let c1 = consume(&consumers, &q, "one").await;
    let c2 = consume(&consumers, &q, "two").await;
    assert_eq!(counts(&ch, &q).await, (0, 2));
    within(
        10,
        "cancel one",
        consumers.basic_cancel("one".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    assert!(queue_exists(&conn, &q).await, "one consumer is left");
    within(
        10,
        "cancel two",
        consumers.basic_cancel("two".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    let gone = eventually(Duration::from_secs(5), || async {
        !queue_exists(&conn, &q).await
    })
    .await;
    assert!(gone, "auto-delete queue {q} survived its last consumer");
    drop((c1, c2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_is_deleted_when_its_consumers_channel_closes() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let q = unique("ad-close");
    declare(
        &ch,
        &q,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    let consumers = channel(&conn).await;
    let c = consume(&consumers, &q, "only").await;
    assert!(queue_exists(&conn, &q).await);
    within(10, "close channel", consumers.close(200, "OK".into()))
        .await
        .expect("close");
    let gone = eventually(Duration::from_secs(5), || async {
        !queue_exists(&conn, &q).await
    })
    .await;
    assert!(
        gone,
        "auto-delete queue {q} survived its consumer's channel"
    );
    drop(c);
}

// ---------------------------------------------------------------------------------------------
// Bindings

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_and_unbind_control_routing_and_unbinding_a_missing_binding_is_ok() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = new_queue(&ch, "bind").await;
    let key = unique("k");
    let key = key.as_str();
    for what in ["bind", "bind again (idempotent)"] {
        within(
            10,
            what,
            ch.queue_bind(
                q.as_str().into(),
                "amq.direct".into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    publish(&ch, "amq.direct", key, "bound", None).await;
    let unbind = |queue: String, exchange: String, key: String| {
        ch.queue_unbind(
            queue.as_str().into(),
            exchange.as_str().into(),
            key.as_str().into(),
            FieldTable::default(),
        )
    };
    within(
        10,
        "unbind",
        unbind(q.clone(), "amq.direct".into(), key.into()),
    )
    .await
    .expect("unbind");
    publish(&ch, "amq.direct", key, "unbound", None).await;
    assert_eq!(drain(&ch, &q).await, ["bound"]);

    // Unbinding what is not bound is ok: a second time, another key, a missing exchange and
    // a missing queue.
    for (queue, exchange, k) in [
        (q.clone(), "amq.direct".to_string(), key.to_string()),
        (q.clone(), "amq.direct".to_string(), unique("never")),
        (q.clone(), unique("no-such-exchange"), "k".to_string()),
        (
            unique("no-such-queue"),
            "amq.direct".to_string(),
            "k".to_string(),
        ),
    ] {
        within(
            10,
            "unbind missing",
            unbind(queue.clone(), exchange.clone(), k.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("unbind {queue} from {exchange} with {k}: {e}"));
    }
    delete_queue(&ch, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_with_a_missing_queue_or_exchange_closes_channel_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let setup = channel(&conn).await;
    let q = new_queue(&setup, "bind-missing").await;
    let missing_x = unique("no-such-exchange");
    let missing_q = unique("no-such-queue");
    let no_exchange = (
        404,
        format!("NOT_FOUND - no exchange '{missing_x}' in vhost '/'"),
    );

    let bind = |ch: Channel, queue: String, exchange: String| async move {
        ch.queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    };
    let ch = channel(&conn).await;
    let got = channel_error("missing exchange", bind(ch, q.clone(), missing_x.clone())).await;
    assert_eq!(got, no_exchange);
    let ch = channel(&conn).await;
    let got = channel_error(
        "missing queue",
        bind(ch, missing_q.clone(), "amq.direct".into()),
    )
    .await;
    assert_eq!(got, no_queue(&missing_q));
    // Both missing: the exchange is reported.
    let ch = channel(&conn).await;
    let got = channel_error(
        "both missing",
        bind(ch, missing_q.clone(), missing_x.clone()),
    )
    .await;
    assert_eq!(got, no_exchange);
    delete_queue(&setup, &q).await;
}

// ---------------------------------------------------------------------------------------------
// Purge and delete

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_returns_the_ready_count_and_leaves_unacked_messages() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = new_queue(&ch, "purge").await;
    for i in 1..=5 {
        publish(&ch, "", &q, &format!("m{i}"), None).await;
    }
    // Two messages go out unacked.
    let holder = channel(&conn).await;
    within(10, "qos", holder.basic_qos(2, BasicQosOptions::default()))
        .await
        .expect("qos");
    let mut consumer = consume(&holder, &q, "holder").await;
    let first = next_delivery(&mut consumer).await;
    let second = next_delivery(&mut consumer).await;
    assert_eq!(
        (first.data.as_slice(), second.data.as_slice()),
        (&b"m1"[..], &b"m2"[..])
    );
    assert_eq!(counts(&ch, &q).await, (3, 1));

    let purged = within(
        10,
        "purge",
        ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()),
    )
    .await
    .expect("purge-ok");
    assert_eq!(purged, 3);
    assert_eq!(counts(&ch, &q).await, (0, 1));
    // Purging an empty queue returns 0.
    let purged = within(
        10,
        "purge",
        ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()),
    )
    .await
    .expect("purge-ok");
    assert_eq!(purged, 0);

    // The unacked messages survived: closing their channel requeues them.
    within(10, "close holder", holder.close(200, "OK".into()))
        .await
        .expect("close");
    let requeued = eventually(Duration::from_secs(5), || async {
        counts(&ch, &q).await == (2, 0)
    })
    .await;
    assert!(requeued, "the two unacked messages were not requeued");
    let got = within(
        10,
        "get",
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("get")
    .expect("a message");
    assert_eq!(got.delivery.data, b"m1");
    assert!(got.delivery.redelivered);
    assert_eq!(got.message_count, 1);
    drop(consumer);
    delete_queue(&ch, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_of_a_missing_queue_closes_channel_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let name = unique("purge-missing");
    let got = channel_error(
        "purge a missing queue",
        ch.queue_purge(name.as_str().into(), QueuePurgeOptions::default()),
    )
    .await;
    assert_eq!(got, no_queue(&name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_returns_the_ready_message_count() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = new_queue(&ch, "delete").await;
    for i in 1..=3 {
        publish(&ch, "", &q, &format!("m{i}"), None).await;
    }
    assert_eq!(delete_queue(&ch, &q).await, 3);
    assert!(!queue_exists(&conn, &q).await);

    // Unacked messages are not counted.
    let q = new_queue(&ch, "delete-unacked").await;
    for i in 1..=3 {
        publish(&ch, "", &q, &format!("m{i}"), None).await;
    }
    let getter = channel(&conn).await;
    let got = within(
        10,
        "get",
        getter.basic_get(q.as_str().into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("get")
    .expect("a message");
    assert_eq!(got.message_count, 2);
    assert_eq!(delete_queue(&ch, &q).await, 2);
    assert!(!queue_exists(&conn, &q).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_a_missing_queue_is_ok_with_zero_messages() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let name = unique("never-declared-q");
    assert_eq!(delete_queue(&ch, &name).await, 0);
    let n = within(
        10,
        "delete if-unused if-empty of a missing queue",
        ch.queue_delete(
            name.as_str().into(),
            QueueDeleteOptions {
                if_unused: true,
                if_empty: true,
                nowait: false,
            },
        ),
    )
    .await
    .expect("delete-ok");
    assert_eq!(n, 0);
    // The channel is still open.
    assert_eq!(
        declare(&ch, &name, opts(), FieldTable::default()).await,
        (0, 0)
    );
    delete_queue(&ch, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_unused_with_a_consumer_closes_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let setup = confirm_channel(&conn).await;
    let q = new_queue(&setup, "in-use-q").await;
    publish(&setup, "", &q, "m", None).await;
    let consumers = channel(&conn).await;
    let mut consumer = consume(&consumers, &q, "user").await;
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(delivery.data, b"m");

    let if_unused = QueueDeleteOptions {
        if_unused: true,
        ..Default::default()
    };
    let ch = channel(&conn).await;
    let got = channel_error(
        "delete if-unused",
        ch.queue_delete(q.as_str().into(), if_unused),
    )
    .await;
    assert_eq!(
        got,
        (
            406,
            format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' in use")
        )
    );
    assert!(queue_exists(&conn, &q).await);

    // Without consumers it is unused, whatever it holds.
    within(
        10,
        "cancel",
        consumers.basic_cancel("user".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    publish(&setup, "", &q, "m2", None).await;
    let ch = channel(&conn).await;
    let n = within(
        10,
        "delete if-unused",
        ch.queue_delete(q.as_str().into(), if_unused),
    )
    .await
    .expect("delete-ok");
    assert_eq!(n, 1);
    assert!(!queue_exists(&conn, &q).await);
    drop(consumer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_empty_with_ready_messages_closes_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let setup = confirm_channel(&conn).await;
    let q = new_queue(&setup, "not-empty").await;
    publish(&setup, "", &q, "m", None).await;
    let if_empty = QueueDeleteOptions {
        if_empty: true,
        ..Default::default()
    };
    let ch = channel(&conn).await;
    let got = channel_error(
        "delete if-empty",
        ch.queue_delete(q.as_str().into(), if_empty),
    )
    .await;
    assert_eq!(
        got,
        (
            406,
            format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty")
        )
    );
    assert_eq!(counts(&setup, &q).await, (1, 0));

    // A message that is delivered but unacked does not make the queue non-empty.
    let getter = channel(&conn).await;
    let got = within(
        10,
        "get",
        getter.basic_get(q.as_str().into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("get")
    .expect("a message");
    assert_eq!(got.delivery.data, b"m");
    let ch = channel(&conn).await;
    let n = within(
        10,
        "delete if-empty",
        ch.queue_delete(q.as_str().into(), if_empty),
    )
    .await
    .expect("delete-ok");
    assert_eq!(n, 0);
    assert!(!queue_exists(&conn, &q).await);
}

// ---------------------------------------------------------------------------------------------
// Consumer cancel notification

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_cancels_its_consumers() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = new_queue(&ch, "cancel-notify").await;
    let consumers = channel(&conn).await;
    let mut c1 = consume(&consumers, &q, "first").await;
    let mut c2 = consume(&consumers, &q, "second").await;
    publish(&ch, "", &q, "before-delete", None).await;
    let d = within(10, "a delivery", async {
        futures_lite::future::or(next_delivery(&mut c1), next_delivery(&mut c2)).await
    })
    .await;
    assert_eq!(d.data, b"before-delete");
    within(10, "ack", d.acker.ack(BasicAckOptions::default()))
        .await
        .expect("ack");

    assert_eq!(delete_queue(&ch, &q).await, 0);
    // The server sends basic.cancel for each consumer: lapin ends their streams.
    assert!(within(10, "first consumer cancelled", c1.next())
        .await
        .is_none());
    assert!(within(10, "second consumer cancelled", c2.next())
        .await
        .is_none());
    // The consumers' channel stays open.
    let probe = unique("after-cancel");
    assert_eq!(
        declare(&consumers, &probe, opts(), FieldTable::default()).await,
        (0, 0)
    );
    delete_queue(&consumers, &probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_deleting_a_queue_sends_basic_cancel_to_its_consumers() {
    use amqprs::channel::{BasicConsumeArguments, QueueDeclareArguments, QueueDeleteArguments};
    let broker = TestBroker::start().await;
    let (conn, _conn_events) = rs::connect(&broker).await;
    let (ch, _events) = rs::channel(&conn).await;
    let q = unique("rs-cancel");
    within(
        10,
        "declare",
        ch.queue_declare(QueueDeclareArguments::new(&q)),
    )
    .await
    .expect("declare");
    let (consumer_ch, mut events) = rs::channel(&conn).await;
    let (tag, _rx) = within(
        10,
        "consume",
        consumer_ch.basic_consume_rx(BasicConsumeArguments::new(&q, "rs-consumer-tag")),
    )
    .await
    .expect("consume");
    assert_eq!(tag, "rs-consumer-tag");
    let deleted = within(10, "delete", ch.queue_delete(QueueDeleteArguments::new(&q)))
        .await
        .expect("delete")
        .expect("delete-ok");
    assert_eq!(deleted, 0);
    assert_eq!(
        rs::next_event(&mut events, "basic.cancel").await,
        rs::Event::Cancel("rs-consumer-tag".to_string())
    );
    assert!(consumer_ch.is_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_declare_ok_reports_message_and_consumer_counts() {
    use amqprs::channel::{
        BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, QueueDeclareArguments,
        QueueDeleteArguments,
    };
    let broker = TestBroker::start().await;
    let (conn, _conn_events) = rs::connect(&broker).await;
    let (ch, _events) = rs::channel(&conn).await;
    let q = unique("rs-counts");
    within(
        10,
        "declare",
        ch.queue_declare(QueueDeclareArguments::new(&q)),
    )
    .await
    .expect("declare");
    for body in ["a", "b", "c"] {
        within(
            10,
            "publish",
            ch.basic_publish(
                amqprs::BasicProperties::default(),
                body.as_bytes().to_vec(),
                BasicPublishArguments::new("", &q),
            ),
        )
        .await
        .expect("publish");
    }
    let passive = QueueDeclareArguments::new(&q).passive(true).finish();
    let arrived = eventually(Duration::from_secs(5), || async {
        let got = ch.queue_declare(passive.clone()).await.expect("declare");
        got.map(|(_, m, c)| (m, c)) == Some((3, 0))
    })
    .await;
    assert!(arrived, "three ready messages");

    let (consumer_ch, _consumer_events) = rs::channel(&conn).await;
    within(
        10,
        "qos",
        consumer_ch.basic_qos(BasicQosArguments::new(0, 1, false)),
    )
    .await
    .expect("qos");
    let mut rxs = Vec::new();
    for tag in ["x", "y"] {
        let (_, mut rx) = within(
            10,
            "consume",
            consumer_ch.basic_consume_rx(BasicConsumeArguments::new(&q, tag)),
        )
        .await
        .expect("consume");
        within(10, "a delivery", rx.recv())
            .await
            .expect("a delivery");
        rxs.push(rx);
    }
    let (name, messages, consumers) = within(10, "redeclare", ch.queue_declare(passive.clone()))
        .await
        .expect("declare")
        .expect("declare-ok");
    assert_eq!((name.as_str(), messages, consumers), (q.as_str(), 1, 2));
    within(10, "delete", ch.queue_delete(QueueDeleteArguments::new(&q)))
        .await
        .expect("delete");
}

// ---------------------------------------------------------------------------------------------
// A consumer that stops taking messages

/// A consumer that stopped taking messages (prefetch full, never acking) does not hold the
/// queue's publishers back: every message is taken, confirmed and counted, and the stalled
/// consumer gets the next ones in order once it acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_does_not_hold_publishers_back() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let q = new_queue(&ch, "stalled").await;
    within(
        10,
        "basic.qos",
        ch.basic_qos(10, BasicQosOptions::default()),
    )
    .await
    .expect("basic.qos");
    let mut consumer = consume(&ch, &q, "stalled").await;
    let publisher = confirm_channel(&conn).await;
    const N: u32 = 20_000;
    let mut pending = Vec::with_capacity(N as usize);
    within(60, "20,000 publishes", async {
        for i in 0..N {
            let c = publisher
                .basic_publish(
                    "".into(),
                    q.as_str().into(),
                    lapin::options::BasicPublishOptions::default(),
                    &i.to_be_bytes(),
                    lapin::BasicProperties::default(),
                )
                .await
                .expect("basic.publish");
            pending.push(c);
        }
    })
    .await;
    within(60, "20,000 confirms", async {
        for c in pending {
            assert!(c.await.expect("confirm").is_ack(), "every publish is acked");
        }
    })
    .await;
    // Ten are held unacked by the consumer, the rest wait in the queue.
    let mut first = Vec::new();
    for _ in 0..10 {
        first.push(next_delivery(&mut consumer).await);
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            counts(&ch, &q).await == (N - 10, 1)
        })
        .await,
        "the other messages wait in the queue"
    );
    let last = first.last().expect("ten deliveries");
    within(
        10,
        "basic.ack",
        last.acker.ack(BasicAckOptions { multiple: true }),
    )
    .await
    .expect("basic.ack");
    let ids: Vec<u32> = first
        .iter()
        .map(|d| u32::from_be_bytes(d.data[..4].try_into().expect("4 bytes")))
        .collect();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    let next = next_delivery(&mut consumer).await;
    assert_eq!(
        u32::from_be_bytes(next.data[..4].try_into().expect("4 bytes")),
        10
    );
}
