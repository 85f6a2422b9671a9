//! Publisher confirms (`confirm.select`, `basic.ack`/`basic.nack` from the server, their
//! delivery tags, returns before acks, nacks from `reject-publish` queues) and transactions
//! (`tx.select`, `tx.commit`, `tx.rollback`: publishes and acknowledgements take effect only
//! at commit), including the errors for mixing the two modes or committing outside a
//! transaction.

use super::basic::rs::{self, ChanEvent};
use super::basic::{
    amqp_error, assert_channel_closed, connect, exclusive_queue, get, open_channel, publish,
    ready_count, wait_ready, Errors,
};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use warren_tests::{unique, within, TestBroker};

async fn confirm_channel(conn: &lapin::Connection) -> Channel {
    let ch = open_channel(conn).await;
    within(
        5,
        "confirm.select-ok",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    ch
}

async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    mandatory: bool,
) -> Confirmation {
    let confirm = within(
        5,
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions {
                mandatory,
                ..BasicPublishOptions::default()
            },
            body,
            BasicProperties::default(),
        ),
    )
    .await
    .expect("basic.publish");
    within(5, "publisher confirm", confirm)
        .await
        .expect("publisher confirm")
}

async fn rs_confirm_select(ch: &amqprs::channel::Channel) {
    within(
        5,
        "amqprs confirm.select",
        ch.confirm_select(amqprs::channel::ConfirmSelectArguments::new(false)),
    )
    .await
    .expect("amqprs confirm.select");
}

/// Reads confirm events until every tag in 1..=n is covered; returns the events seen.
async fn collect_confirms(events: &mut UnboundedReceiver<ChanEvent>, n: u64) -> Vec<ChanEvent> {
    let mut seen = Vec::new();
    let mut covered = BTreeSet::new();
    let mut floor = 0u64; // every tag <= floor is covered by a multiple ack
    within(30, "confirms for every publish", async {
        // Done when every tag is at or below the multiple-ack floor or acked on its own.
        while floor < n && (covered.range(floor + 1..).count() as u64) < n - floor {
            let ev = events.recv().await.expect("channel events");
            match ev {
                ChanEvent::Ack(tag, multiple) => {
                    assert!(tag >= 1 && tag <= n, "ack for a tag never used: {tag}");
                    if multiple {
                        floor = floor.max(tag);
                    } else {
                        covered.insert(tag);
                    }
                }
                ref other => panic!("unexpected channel event {other:?}"),
            }
            seen.push(ev);
        }
    })
    .await;
    seen
}

async fn assert_no_event(events: &mut UnboundedReceiver<ChanEvent>) {
    if let Ok(ev) = tokio::time::timeout(Duration::from_millis(300), events.recv()).await {
        panic!("expected no further channel event, got {ev:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Publisher confirms
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_cover_delivery_tags_1_to_n_for_every_publish() {
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, mut events) = rs::channel(&conn).await;
    let q = unique("rs-confirm");
    rs::declare(&ch, &q, true).await;
    rs_confirm_select(&ch).await;
    for i in 0..50 {
        rs::publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let seen = collect_confirms(&mut events, 50).await;
    assert!(!seen.is_empty());
    assert_no_event(&mut events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_tags_count_only_publishes_after_confirm_select() {
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, mut events) = rs::channel(&conn).await;
    let q = unique("rs-confirm-late");
    rs::declare(&ch, &q, true).await;
    rs::publish(&ch, "", &q, b"before-1").await;
    rs::publish(&ch, "", &q, b"before-2").await;
    rs_confirm_select(&ch).await;
    rs::publish(&ch, "", &q, b"after").await;
    assert_eq!(rs::next_event(&mut events).await, ChanEvent::Ack(1, false));
    assert_no_event(&mut events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_publish_resolves_as_an_ack() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = exclusive_queue(&ch, "confirm-acks").await;
    for i in 0..20 {
        let c = publish_confirmed(&ch, "", &q, format!("m{i}").as_bytes(), false).await;
        assert_eq!(c, Confirmation::Ack(None));
    }
    assert!(ch.wait_for_confirms().await.expect("confirms").is_empty());
    assert_eq!(ready_count(&ch, &q).await, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_select_twice_is_allowed() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    within(
        5,
        "second confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select again");
    let q = exclusive_queue(&ch, "confirm-twice").await;
    assert!(publish_confirmed(&ch, "", &q, b"x", false).await.is_ack());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_publish_is_still_acked() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let key = unique("nowhere");
    let c = publish_confirmed(&ch, "", &key, b"lost", false).await;
    assert_eq!(
        c,
        Confirmation::Ack(None),
        "no queue: acked, nothing returned"
    );
    let c = publish_confirmed(&ch, "amq.direct", &key, b"lost", false).await;
    assert_eq!(c, Confirmation::Ack(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_unroutable_publish_is_returned_and_then_acked() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let key = unique("nowhere");
    let c = publish_confirmed(&ch, "amq.direct", &key, b"back", true).await;
    assert!(c.is_ack(), "an unroutable mandatory message is acked");
    let returned = c.take_message().expect("the return comes with the ack");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.exchange.as_str(), "amq.direct");
    assert_eq!(returned.delivery.routing_key.as_str(), key);
    assert_eq!(returned.delivery.data, b"back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_basic_return_arrives_before_the_ack_of_the_same_publish() {
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, mut events) = rs::channel(&conn).await;
    rs_confirm_select(&ch).await;
    let q = unique("rs-routable");
    rs::declare(&ch, &q, true).await;
    let key = unique("rs-nowhere");
    rs::publish_with(
        &ch,
        "",
        &key,
        b"back",
        amqprs::BasicProperties::default(),
        true,
    )
    .await;
    rs::publish_with(
        &ch,
        "",
        &q,
        b"kept",
        amqprs::BasicProperties::default(),
        true,
    )
    .await;
    assert_eq!(
        rs::next_event(&mut events).await,
        ChanEvent::Return {
            code: 312,
            text: "NO_ROUTE".into(),
            exchange: "".into(),
            routing_key: key.clone(),
            body: b"back".to_vec(),
        }
    );
    let mut rest = vec![rs::next_event(&mut events).await];
    if rest[0] == ChanEvent::Ack(1, false) {
        rest.push(rs::next_event(&mut events).await);
    }
    assert!(
        rest == [ChanEvent::Ack(2, true)]
            || rest == [ChanEvent::Ack(1, false), ChanEvent::Ack(2, false)],
        "tags 1 and 2 acked after the return, got {rest:?}"
    );
    assert_no_event(&mut events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_routed_to_several_queues_is_acked_once() {
    use amqprs::channel::{
        BasicGetArguments, ExchangeDeclareArguments, ExchangeDeleteArguments, QueueBindArguments,
    };
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, mut events) = rs::channel(&conn).await;
    let x = unique("fanout-confirm");
    within(
        5,
        "exchange.declare",
        ch.exchange_declare(ExchangeDeclareArguments::new(&x, "fanout")),
    )
    .await
    .expect("exchange.declare");
    let queues: Vec<String> = (0..3).map(|i| unique(&format!("fan-{i}"))).collect();
    for q in &queues {
        rs::declare(&ch, q, true).await;
        within(
            5,
            "queue.bind",
            ch.queue_bind(QueueBindArguments::new(q, &x, "")),
        )
        .await
        .expect("queue.bind");
    }
    rs_confirm_select(&ch).await;
    rs::publish(&ch, &x, "", b"to-all").await;
    assert_eq!(rs::next_event(&mut events).await, ChanEvent::Ack(1, false));
    assert_no_event(&mut events).await;
    for q in &queues {
        let (_ok, _props, body) = within(
            5,
            "basic.get",
            ch.basic_get(BasicGetArguments::new(q).no_ack(true).finish()),
        )
        .await
        .expect("basic.get")
        .expect("every bound queue has the message");
        assert_eq!(body, b"to-all");
    }
    within(
        5,
        "exchange.delete",
        ch.exchange_delete(ExchangeDeleteArguments::new(&x)),
    )
    .await
    .expect("exchange.delete");
}

fn reject_publish_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_a_full_reject_publish_queue_is_nacked() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("reject-publish");
    within(
        5,
        "queue.declare",
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            reject_publish_args(),
        ),
    )
    .await
    .expect("queue.declare");
    assert_eq!(
        publish_confirmed(&ch, "", &q, b"fits", false).await,
        Confirmation::Ack(None)
    );
    assert_eq!(
        publish_confirmed(&ch, "", &q, b"overflow", false).await,
        Confirmation::Nack(None)
    );
    assert_eq!(
        publish_confirmed(&ch, "", &q, b"overflow-2", false).await,
        Confirmation::Nack(None)
    );
    assert!(ch.status().connected(), "a nack does not close the channel");
    assert_eq!(ready_count(&ch, &q).await, 1);
    let m = get(&ch, &q).await.expect("the first message");
    assert_eq!(m.delivery.data, b"fits");
    m.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    // Room again: acked.
    assert!(publish_confirmed(&ch, "", &q, b"fits-again", false)
        .await
        .is_ack());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_full_reject_publish_queue_nacks_with_the_publish_tag() {
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, mut events) = rs::channel(&conn).await;
    let q = unique("rs-reject-publish");
    let mut args = amqprs::FieldTable::new();
    args.insert(
        "x-max-length".try_into().expect("name"),
        amqprs::FieldValue::I(1),
    );
    args.insert(
        "x-overflow".try_into().expect("name"),
        "reject-publish".into(),
    );
    within(
        5,
        "queue.declare",
        ch.queue_declare(
            amqprs::channel::QueueDeclareArguments::new(&q)
                .exclusive(true)
                .arguments(args)
                .finish(),
        ),
    )
    .await
    .expect("queue.declare");
    rs_confirm_select(&ch).await;
    rs::publish(&ch, "", &q, b"one").await;
    assert_eq!(rs::next_event(&mut events).await, ChanEvent::Ack(1, false));
    rs::publish(&ch, "", &q, b"two").await;
    // RabbitMQ coalesces nacks: with nothing else outstanding it sends `multiple = true`,
    // which is equivalent here since tag 1 is already confirmed.
    match rs::next_event(&mut events).await {
        ChanEvent::Nack(2, _) => {}
        other => panic!("expected a nack for tag 2, got {other:?}"),
    }
    assert_no_event(&mut events).await;
    assert!(ch.is_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_confirmed_publishes_are_all_acked() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = exclusive_queue(&ch, "confirm-10k").await;
    let mut pending = Vec::with_capacity(10_000);
    within(60, "10,000 publishes", async {
        for i in 0..10_000u32 {
            let c = ch
                .basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions::default(),
                    &i.to_be_bytes(),
                    BasicProperties::default(),
                )
                .await
                .expect("basic.publish");
            pending.push(c);
        }
    })
    .await;
    let mut acks = 0;
    within(60, "10,000 confirms", async {
        for c in pending {
            let c = c.await.expect("confirm");
            assert_eq!(c, Confirmation::Ack(None));
            acks += 1;
        }
    })
    .await;
    assert_eq!(acks, 10_000);
    wait_ready(&ch, &q, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_ten_thousand_publishes_are_confirmed_with_tags_1_to_10000() {
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, mut events) = rs::channel(&conn).await;
    let q = unique("rs-confirm-10k");
    rs::declare(&ch, &q, true).await;
    rs_confirm_select(&ch).await;
    within(60, "10,000 publishes", async {
        for i in 0..10_000u32 {
            rs::publish(&ch, "", &q, &i.to_be_bytes()).await;
        }
    })
    .await;
    collect_confirms(&mut events, 10_000).await;
    assert_no_event(&mut events).await;
}

// ---------------------------------------------------------------------------------------------
// Mixing modes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_select_on_a_transactional_channel_closes_it_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    ch.tx_select().await.expect("tx.select");
    let err = within(
        5,
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect_err("confirm.select on a tx channel");
    assert_eq!(
        amqp_error(&err),
        (
            406,
            "PRECONDITION_FAILED - cannot switch from tx to confirm mode".to_string()
        )
    );
    assert_channel_closed(&ch).await;
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_select_on_a_confirm_channel_closes_it_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let err = within(5, "tx.select", ch.tx_select())
        .await
        .expect_err("tx.select on a confirm channel");
    assert_eq!(
        amqp_error(&err),
        (
            406,
            "PRECONDITION_FAILED - cannot switch from confirm to tx mode".to_string()
        )
    );
    assert_channel_closed(&ch).await;
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_tx_select_on_a_confirm_channel_closes_it_with_406() {
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, mut events) = rs::channel(&conn).await;
    rs_confirm_select(&ch).await;
    let _ = within(5, "tx.select", ch.tx_select()).await;
    assert_eq!(
        rs::next_event(&mut events).await,
        ChanEvent::Close(
            406,
            "PRECONDITION_FAILED - cannot switch from confirm to tx mode".to_string()
        )
    );
    assert!(conn.is_open());
}

// ---------------------------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_publishes_are_invisible_until_commit() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let tx = open_channel(&conn).await;
    let observer = open_channel(&conn).await;
    let q = exclusive_queue(&observer, "tx-commit").await;
    within(5, "tx.select-ok", tx.tx_select())
        .await
        .expect("tx.select");
    for i in 0..3 {
        publish(&tx, "", &q, format!("m{i}").as_bytes()).await;
    }
    // A synchronous round trip on the tx channel makes sure the publishes were processed.
    assert_eq!(ready_count(&tx, &q).await, 0);
    assert!(
        get(&observer, &q).await.is_none(),
        "get-empty before commit"
    );
    within(5, "tx.commit-ok", tx.tx_commit())
        .await
        .expect("tx.commit");
    assert_eq!(ready_count(&observer, &q).await, 3);
    for i in 0..3 {
        let m = get(&observer, &q).await.expect("committed message");
        assert_eq!(m.delivery.data, format!("m{i}").as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_rollback_discards_uncommitted_publishes() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let tx = open_channel(&conn).await;
    let observer = open_channel(&conn).await;
    let q = exclusive_queue(&observer, "tx-rollback").await;
    tx.tx_select().await.expect("tx.select");
    publish(&tx, "", &q, b"discarded-1").await;
    publish(&tx, "", &q, b"discarded-2").await;
    within(5, "tx.rollback-ok", tx.tx_rollback())
        .await
        .expect("tx.rollback");
    assert_eq!(ready_count(&observer, &q).await, 0);
    // The channel stays transactional: the next commit publishes only what follows.
    publish(&tx, "", &q, b"kept").await;
    tx.tx_commit().await.expect("tx.commit");
    assert_eq!(ready_count(&observer, &q).await, 1);
    let m = get(&observer, &q).await.expect("committed");
    assert_eq!(m.delivery.data, b"kept");
    assert!(get(&observer, &q).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_acks_take_effect_only_at_commit() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "tx-ack").await;
    publish(&ch, "", &q, b"m0").await;
    publish(&ch, "", &q, b"m1").await;
    ch.tx_select().await.expect("tx.select");
    let m0 = get(&ch, &q).await.expect("m0");
    let m1 = get(&ch, &q).await.expect("m1");
    assert_eq!((m0.delivery.delivery_tag, m1.delivery.delivery_tag), (1, 2));

    // Ack both, roll back: they stay unacked (not requeued, not removed).
    ch.basic_ack(2, BasicAckOptions { multiple: true })
        .await
        .expect("ack in tx");
    ch.tx_rollback().await.expect("tx.rollback");
    assert_eq!(ready_count(&ch, &q).await, 0, "still unacked, not requeued");

    // Ack only m0 and commit: m0 is gone, m1 still unacked.
    ch.basic_ack(1, BasicAckOptions::default())
        .await
        .expect("ack m0 in tx");
    ch.tx_commit().await.expect("tx.commit");
    assert!(ch.status().connected());

    // Closing the channel requeues only m1.
    ch.close(200, "bye".into()).await.expect("channel.close");
    let ch2 = open_channel(&conn).await;
    wait_ready(&ch2, &q, 1).await;
    let m = get(&ch2, &q).await.expect("m1 requeued");
    assert_eq!(m.delivery.data, b"m1");
    assert!(m.delivery.redelivered);
    assert!(get(&ch2, &q).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_rolled_back_ack_leaves_the_message_to_be_requeued_on_close() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "tx-ack-rollback").await;
    publish(&ch, "", &q, b"m0").await;
    ch.tx_select().await.expect("tx.select");
    let m = get(&ch, &q).await.expect("m0");
    ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
        .await
        .expect("ack in tx");
    ch.tx_rollback().await.expect("tx.rollback");
    ch.close(200, "bye".into()).await.expect("channel.close");
    let ch2 = open_channel(&conn).await;
    wait_ready(&ch2, &q, 1).await;
    let m = get(&ch2, &q).await.expect("m0 requeued");
    assert_eq!(m.delivery.data, b"m0");
    assert!(m.delivery.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_commit_without_tx_select_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let err = within(5, "tx.commit", ch.tx_commit())
        .await
        .expect_err("commit outside a transaction");
    assert_eq!(
        amqp_error(&err),
        (
            406,
            "PRECONDITION_FAILED - channel is not transactional".to_string()
        )
    );
    assert_channel_closed(&ch).await;
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_rollback_without_tx_select_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let err = within(5, "tx.rollback", ch.tx_rollback())
        .await
        .expect_err("rollback outside a transaction");
    assert_eq!(
        amqp_error(&err),
        (
            406,
            "PRECONDITION_FAILED - channel is not transactional".to_string()
        )
    );
    assert_channel_closed(&ch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_commits_in_a_row_on_one_channel() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let tx = open_channel(&conn).await;
    let observer = open_channel(&conn).await;
    let q = exclusive_queue(&observer, "tx-many").await;
    tx.tx_select().await.expect("tx.select");
    tx.tx_select().await.expect("tx.select again is allowed");
    for round in 1..=3u32 {
        publish(&tx, "", &q, format!("r{round}-a").as_bytes()).await;
        publish(&tx, "", &q, format!("r{round}-b").as_bytes()).await;
        assert_eq!(ready_count(&observer, &q).await, (round - 1) * 2);
        tx.tx_commit().await.expect("tx.commit");
        assert_eq!(ready_count(&observer, &q).await, round * 2);
    }
    // An empty commit is fine too.
    tx.tx_commit().await.expect("empty tx.commit");
    tx.tx_rollback().await.expect("empty tx.rollback");
    let mut bodies = Vec::new();
    while let Some(m) = get(&observer, &q).await {
        bodies.push(String::from_utf8(m.delivery.data.clone()).expect("utf-8"));
    }
    assert_eq!(bodies, ["r1-a", "r1-b", "r2-a", "r2-b", "r3-a", "r3-b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_mandatory_unroutable_publish_is_returned_at_commit_before_commit_ok() {
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, mut events) = rs::channel(&conn).await;
    within(5, "tx.select", ch.tx_select())
        .await
        .expect("tx.select");
    let key = unique("tx-nowhere");
    rs::publish_with(
        &ch,
        "",
        &key,
        b"back",
        amqprs::BasicProperties::default(),
        true,
    )
    .await;
    assert_no_event(&mut events).await;
    within(5, "tx.commit", ch.tx_commit())
        .await
        .expect("tx.commit");
    // The return is sent before tx.commit-ok: it has been handled by the time commit returns.
    assert_eq!(
        events.try_recv().expect("basic.return before tx.commit-ok"),
        ChanEvent::Return {
            code: 312,
            text: "NO_ROUTE".into(),
            exchange: "".into(),
            routing_key: key,
            body: b"back".to_vec(),
        }
    );
    assert_no_event(&mut events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_tx_commit_and_rollback() {
    use amqprs::channel::BasicGetArguments;
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (tx, _events) = rs::channel(&conn).await;
    let (observer, _oevents) = rs::channel(&conn).await;
    let q = unique("rs-tx");
    rs::declare(&observer, &q, true).await;
    within(5, "tx.select", tx.tx_select())
        .await
        .expect("tx.select");
    rs::publish(&tx, "", &q, b"rolled-back").await;
    within(5, "tx.rollback", tx.tx_rollback())
        .await
        .expect("tx.rollback");
    rs::publish(&tx, "", &q, b"committed").await;
    let before = within(
        5,
        "basic.get",
        observer.basic_get(BasicGetArguments::new(&q).no_ack(true).finish()),
    )
    .await
    .expect("basic.get");
    assert!(before.is_none(), "get-empty before commit");
    within(5, "tx.commit", tx.tx_commit())
        .await
        .expect("tx.commit");
    let (ok, _props, body) = within(
        5,
        "basic.get",
        observer.basic_get(BasicGetArguments::new(&q).no_ack(true).finish()),
    )
    .await
    .expect("basic.get")
    .expect("get-ok after commit");
    assert_eq!(body, b"committed");
    assert_eq!(
        ok.message_count(),
        0,
        "the rolled-back publish never arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_tx_commit_without_tx_select_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, mut events) = rs::channel(&conn).await;
    let _ = within(5, "tx.commit", ch.tx_commit()).await;
    assert_eq!(
        rs::next_event(&mut events).await,
        ChanEvent::Close(
            406,
            "PRECONDITION_FAILED - channel is not transactional".to_string()
        )
    );
    assert!(conn.is_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_a_missing_exchange_in_a_transaction_closes_the_channel_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    ch.tx_select().await.expect("tx.select");
    let x = unique("tx-no-such-exchange");
    let mut errors = Errors::listen(&conn);
    publish(&ch, &x, "k", b"lost").await;
    assert_eq!(
        errors.next().await,
        (404, format!("NOT_FOUND - no exchange '{x}' in vhost '/'"))
    );
    assert_channel_closed(&ch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_on_a_fanout_with_lapin_ack_each_publish() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let x = unique("lapin-fanout");
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
    let q1 = exclusive_queue(&ch, "lf-1").await;
    let q2 = exclusive_queue(&ch, "lf-2").await;
    for q in [&q1, &q2] {
        ch.queue_bind(
            q.as_str().into(),
            x.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.bind");
    }
    for i in 0..5 {
        let c = publish_confirmed(&ch, &x, "", format!("m{i}").as_bytes(), true).await;
        assert_eq!(c, Confirmation::Ack(None));
    }
    assert_eq!(ready_count(&ch, &q1).await, 5);
    assert_eq!(ready_count(&ch, &q2).await, 5);
}
