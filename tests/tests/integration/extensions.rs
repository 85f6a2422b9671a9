//! RabbitMQ's routing and consumer extensions: alternate exchanges, `CC`/`BCC` headers,
//! priority queues (`x-max-priority`, across a restart), single active consumer with
//! failover, consumer priorities (`x-priority`), the consumer timeout (cancel and requeue),
//! direct reply-to (`amq.rabbitmq.reply-to`) and RabbitMQ's 406 texts for bad arguments.

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use warren_tests::process::{free_port, ServerProcess};
use warren_tests::{unique, within, TestBroker};

use super::dead_lettering::{body, count, declare, get, headers, publish_props};
use super::exchanges::{channel, channel_error, confirm_channel, connect, s, table};

async fn consume(ch: &Channel, queue: &str, args: FieldTable, no_ack: bool) -> Consumer {
    within(
        10,
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            args,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("consume from {queue}: {e}"))
}

async fn next(consumer: &mut Consumer) -> lapin::message::Delivery {
    within(10, "a delivery", consumer.next())
        .await
        .expect("the consumer stream ended")
        .expect("a delivery")
}

async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind, args: FieldTable) {
    within(
        10,
        "exchange.declare",
        ch.exchange_declare(name.into(), kind, ExchangeDeclareOptions::default(), args),
    )
    .await
    .expect("declare exchange");
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    within(
        10,
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("bind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_exchange_argument_gets_what_the_exchange_routes_nowhere() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (x, ae) = (unique("ae-x"), unique("ae"));
    let (routed, caught) = (unique("ae-routed"), unique("ae-caught"));
    declare_exchange(&ch, &ae, ExchangeKind::Fanout, FieldTable::default()).await;
    declare_exchange(
        &ch,
        &x,
        ExchangeKind::Direct,
        table(&[("alternate-exchange", s(&ae))]),
    )
    .await;
    declare(&ch, &routed, FieldTable::default()).await;
    declare(&ch, &caught, FieldTable::default()).await;
    bind(&ch, &routed, &x, "known").await;
    bind(&ch, &caught, &ae, "").await;
    assert!(publish_props(&ch, &x, "known", "in", BasicProperties::default()).await);
    assert!(publish_props(&ch, &x, "unknown", "out", BasicProperties::default()).await);
    let d = get(&ch, &routed, true).await.expect("routed");
    assert_eq!(body(&d), "in");
    let d = get(&ch, &caught, true)
        .await
        .expect("caught by the alternate exchange");
    assert_eq!(body(&d), "out");
    assert_eq!(
        d.exchange.as_str(),
        x.as_str(),
        "delivered as published to the exchange"
    );
    assert_eq!(count(&ch, &caught).await, 0);
    for name in [&x, &ae] {
        let _ = ch
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc_and_bcc_headers_add_routing_keys_and_bcc_is_removed() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (a, b, c) = (unique("cc-a"), unique("cc-b"), unique("cc-c"));
    for q in [&a, &b, &c] {
        declare(&ch, q, FieldTable::default()).await;
        bind(&ch, q, "amq.direct", q).await;
    }
    let mut h = FieldTable::default();
    h.insert("CC".into(), AMQPValue::FieldArray(vec![s(&b)].into()));
    h.insert("BCC".into(), AMQPValue::FieldArray(vec![s(&c)].into()));
    assert!(
        publish_props(
            &ch,
            "amq.direct",
            &a,
            "copied",
            BasicProperties::default().with_headers(h)
        )
        .await
    );
    for q in [&a, &b, &c] {
        let d = get(&ch, q, true)
            .await
            .unwrap_or_else(|| panic!("{q} got a copy"));
        assert_eq!(body(&d), "copied");
        assert_eq!(
            d.routing_key.as_str(),
            a.as_str(),
            "delivered with the published key"
        );
        let h = headers(&d);
        assert_eq!(
            h.get("CC").map(|v| format!("{v:?}")),
            Some(format!("{:?}", AMQPValue::FieldArray(vec![s(&b)].into())))
        );
        assert!(!h.contains_key("BCC"), "BCC is removed");
    }
    let bad = confirm_channel(&conn).await;
    let mut h = FieldTable::default();
    h.insert("CC".into(), s(&b));
    let (code, text) = channel_error("publish with a string CC", async {
        let c = bad
            .basic_publish(
                "amq.direct".into(),
                a.as_str().into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default().with_headers(h),
            )
            .await?;
        c.await
    })
    .await;
    assert_eq!(
        (code, text.as_str()),
        (
            406,
            "PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,\"CC\",longstr}"
        )
    );
}

async fn publish_priorities(ch: &Channel, queue: &str, persistent: bool) {
    for (i, p) in [1u8, 5, 0, 9, 5, 200].into_iter().enumerate() {
        let mut props = BasicProperties::default().with_priority(p);
        if persistent {
            props = props.with_delivery_mode(2);
        }
        assert!(publish_props(ch, "", queue, &format!("p{p}-{i}"), props).await);
    }
}

/// The bodies a priority queue hands out, in order: highest priority first (priorities over
/// the maximum count as the maximum), first in first out within a priority.
const PRIORITY_ORDER: [&str; 6] = ["p200-5", "p9-3", "p5-1", "p5-4", "p1-0", "p0-2"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_delivers_higher_priorities_first() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("prio");
    declare(
        &ch,
        &q,
        table(&[("x-max-priority", AMQPValue::ShortShortUInt(10))]),
    )
    .await;
    publish_priorities(&ch, &q, false).await;
    let mut got = Vec::new();
    while let Some(d) = get(&ch, &q, true).await {
        got.push(body(&d));
    }
    assert_eq!(got, PRIORITY_ORDER);
}

/// Warren-only (a child process is restarted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_keeps_priorities_across_a_restart() {
    if std::env::var("WARREN_TEST_EXTERNAL_URI").is_ok() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ServerProcess::start(dir.path(), free_port()).await;
    let connect = |uri: String| async move {
        within(
            10,
            "connect",
            Connection::connect(&uri, ConnectionProperties::default()),
        )
        .await
        .expect("connect")
    };
    let conn = connect(server.uri()).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    within(
        10,
        "declare",
        ch.queue_declare(
            "prio-durable".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            table(&[("x-max-priority", AMQPValue::LongInt(255))]),
        ),
    )
    .await
    .expect("declare");
    publish_priorities(&ch, "prio-durable", true).await;
    drop(conn);
    server.kill();
    server.restart().await;
    let conn = connect(server.uri()).await;
    let ch = channel(&conn).await;
    let mut got = Vec::new();
    while let Some(d) = get(&ch, "prio-durable", true).await {
        got.push(body(&d));
    }
    assert_eq!(got, PRIORITY_ORDER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_fails_over_when_the_active_channel_closes() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let setup = confirm_channel(&conn).await;
    let q = unique("sac");
    declare(
        &setup,
        &q,
        table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let (ch_a, ch_b) = (channel(&conn).await, channel(&conn).await);
    let mut a = consume(&ch_a, &q, FieldTable::default(), false).await;
    let mut b = consume(&ch_b, &q, FieldTable::default(), false).await;
    for i in 0..4 {
        assert!(publish_props(&setup, "", &q, &format!("m{i}"), BasicProperties::default()).await);
    }
    for i in 0..4 {
        let d = next(&mut a).await;
        assert_eq!(
            body(&d),
            format!("m{i}"),
            "the first consumer gets everything"
        );
    }
    // (Had the waiting consumer got anything, it would come first below, not redelivered.)
    // The active consumer's channel closes unacked: its messages go to the next consumer.
    ch_a.close(200, "OK".into()).await.expect("close");
    for i in 0..4 {
        let d = next(&mut b).await;
        assert_eq!(body(&d), format!("m{i}"));
        assert!(d.redelivered);
        ch_b.basic_ack(d.delivery_tag, BasicAckOptions::default())
            .await
            .expect("ack");
    }
    assert!(publish_props(&setup, "", &q, "after", BasicProperties::default()).await);
    assert_eq!(body(&next(&mut b).await), "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_consumer_gets_messages_while_it_has_credit() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let setup = confirm_channel(&conn).await;
    let q = unique("cprio");
    declare(&setup, &q, FieldTable::default()).await;
    let (ch_high, ch_low) = (channel(&conn).await, channel(&conn).await);
    ch_high
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut high = consume(
        &ch_high,
        &q,
        table(&[("x-priority", AMQPValue::LongInt(10))]),
        false,
    )
    .await;
    let mut low = consume(
        &ch_low,
        &q,
        table(&[("x-priority", AMQPValue::LongInt(1))]),
        false,
    )
    .await;
    for i in 0..5 {
        assert!(publish_props(&setup, "", &q, &format!("m{i}"), BasicProperties::default()).await);
    }
    assert_eq!(
        body(&next(&mut high).await),
        "m0",
        "first to the high-priority consumer"
    );
    for i in 1..5 {
        assert_eq!(
            body(&next(&mut low).await),
            format!("m{i}"),
            "the rest while it is full"
        );
    }
}

/// Warren-only: RabbitMQ 3 closes the whole channel on a consumer timeout, and takes no
/// per-queue `x-consumer-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_consumer_is_cancelled_and_its_unacked_messages_requeued() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        return;
    }
    let conn = connect(&broker).await;
    let setup = confirm_channel(&conn).await;
    let q = unique("ctimeout");
    declare(
        &setup,
        &q,
        table(&[("x-consumer-timeout", AMQPValue::LongInt(300))]),
    )
    .await;
    let ch = channel(&conn).await;
    let mut c = consume(&ch, &q, FieldTable::default(), false).await;
    assert!(publish_props(&setup, "", &q, "slow", BasicProperties::default()).await);
    let d = next(&mut c).await;
    assert!(!d.redelivered);
    // No ack: the server cancels the consumer (basic.cancel ends lapin's stream).
    let ended = within(10, "the consumer is cancelled", c.next()).await;
    assert!(ended.is_none(), "the stream ended: {ended:?}");
    // The message is back in the queue, and the late ack is harmless.
    ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
        .await
        .expect("late ack");
    let again = get(&ch, &q, true).await.expect("requeued");
    assert_eq!(body(&again), "slow");
    assert!(again.redelivered);
    assert!(ch.status().connected(), "the channel stays open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_routes_replies_to_the_requesting_channel() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let server = confirm_channel(&conn).await;
    let requests = unique("rpc");
    declare(&server, &requests, FieldTable::default()).await;
    let client = confirm_channel(&conn).await;
    let mut replies = consume(
        &client,
        "amq.rabbitmq.reply-to",
        FieldTable::default(),
        true,
    )
    .await;
    assert!(
        publish_props(
            &client,
            "",
            &requests,
            "ping",
            BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into())
        )
        .await
    );
    let req = get(&server, &requests, true).await.expect("the request");
    let reply_to = req
        .properties
        .reply_to()
        .as_ref()
        .expect("reply_to")
        .as_str()
        .to_string();
    assert!(reply_to.starts_with("amq.rabbitmq.reply-to."), "{reply_to}");
    // The server can check that the requester is still there by declaring the name.
    let q = within(
        10,
        "declare the reply name",
        server.queue_declare(
            reply_to.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("the reply name exists while its consumer does");
    assert_eq!((q.message_count(), q.consumer_count()), (0, 1));
    assert!(publish_props(&server, "", &reply_to, "pong", BasicProperties::default()).await);
    let reply = next(&mut replies).await;
    assert_eq!(body(&reply), "pong");
    assert_eq!(reply.routing_key.as_str(), reply_to.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_needs_a_no_ack_consumer_first() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let (code, text) = channel_error(
        "consume with acks",
        ch.basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_eq!(
        (code, text.as_str()),
        (
            406,
            "PRECONDITION_FAILED - reply consumer cannot acknowledge"
        )
    );
    let ch = confirm_channel(&conn).await;
    let q = unique("rpc-none");
    declare(&ch, &q, FieldTable::default()).await;
    let (code, text) = channel_error("publish without a reply consumer", async {
        let c = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
            )
            .await?;
        c.await
    })
    .await;
    assert_eq!(
        (code, text.as_str()),
        (
            406,
            "PRECONDITION_FAILED - fast reply consumer does not exist"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_extension_arguments_close_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let q = unique("bad-ext");
    let cases: Vec<(FieldTable, String)> = vec![
        (
            table(&[("x-max-priority", AMQPValue::LongInt(256))]),
            format!("invalid arg 'x-max-priority' for queue '{q}' in vhost '/': {{max_value_exceeded,256}}"),
        ),
        (
            table(&[("x-overflow", s("bogus"))]),
            format!("invalid arg 'x-overflow' for queue '{q}' in vhost '/': invalid_overflow"),
        ),
        (
            table(&[("x-max-length", AMQPValue::LongInt(-1))]),
            format!("invalid arg 'x-max-length' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
        ),
        (
            table(&[("x-dead-letter-routing-key", s("k"))]),
            format!("invalid arg 'x-dead-letter-routing-key' for queue '{q}' in vhost '/': routing_key_but_no_dlx_defined"),
        ),
        (
            table(&[("x-single-active-consumer", s("yes"))]),
            format!("invalid arg 'x-single-active-consumer' for queue '{q}' in vhost '/': {{unacceptable_type,longstr}}"),
        ),
        (
            table(&[("x-expires", AMQPValue::LongInt(0))]),
            format!("invalid arg 'x-expires' for queue '{q}' in vhost '/': {{value_zero,0}}"),
        ),
    ];
    for (args, text) in cases {
        let ch = channel(&conn).await;
        let got = channel_error(
            &text,
            ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), args),
        )
        .await;
        assert_eq!(got, (406, format!("PRECONDITION_FAILED - {text}")));
    }
}
