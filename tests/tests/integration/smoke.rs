//! End-to-end smoke: declare, publish with confirms, consume, ack, over lapin.

use futures_lite::StreamExt;
use lapin::{options::*, types::FieldTable, BasicProperties, Connection, ConnectionProperties};
use warren_tests::{unique, within, TestBroker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_confirm_consume_ack_round_trip() {
    let broker = TestBroker::start().await;
    let conn = within(
        5,
        "connect",
        Connection::connect(broker.uri(), ConnectionProperties::default()),
    )
    .await
    .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let q = unique("smoke");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm");
    for i in 0..100u32 {
        let confirm = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
    }
    let mut consumer = ch
        .basic_consume(
            q.as_str().into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for i in 0..100u32 {
        let d = within(5, "delivery", consumer.next())
            .await
            .expect("some")
            .expect("ok");
        assert_eq!(d.data, format!("m{i}").as_bytes());
        assert_eq!(d.properties.delivery_mode(), &Some(2));
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let q2 = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive");
    assert_eq!(q2.message_count(), 0);
    assert_eq!(q2.consumer_count(), 1);
    conn.close(200, "bye".into()).await.expect("close");
}
