//! Resource alarms: while free disk is under the limit, connections that publish get
//! `connection.blocked` and are not read; consumers keep draining; when the alarm clears they
//! get `connection.unblocked` and what they sent meanwhile goes through.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::time::Duration;
use warren_amqp::{connection, AMQPClass, Frame};
use warren_tests::raw::RawClient;
use warren_tests::{eventually, unique, within, TestBroker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_alarm_blocks_publishers_until_it_clears_while_consumers_drain() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        eprintln!("Warren-only: the test lowers the disk limit at run time");
        return;
    }
    let shared = broker.shared().expect("in-process broker").clone();
    let q = unique("alarm");
    let publisher = Connection::connect(broker.uri(), ConnectionProperties::default())
        .await
        .expect("connect publisher");
    let pch = publisher.create_channel().await.expect("channel");
    pch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    for i in 0..10u8 {
        pch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            &[i],
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let consumer = Connection::connect(broker.uri(), ConnectionProperties::default())
        .await
        .expect("connect consumer");
    let cch = consumer.create_channel().await.expect("channel");
    cch.basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");

    // No disk is ever this free: the alarm goes off.
    shared.set_disk_free_limit(u64::MAX);
    assert!(
        eventually(Duration::from_secs(5), || async {
            publisher.status().blocked()
        })
        .await,
        "the publishing connection is told it is blocked"
    );
    // What it publishes now is not read while blocked (lapin itself may hold it back, so the
    // publish runs in its own task).
    let held = {
        let pch = pch.clone();
        let q = q.clone();
        tokio::spawn(async move {
            pch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                &[99],
                BasicProperties::default(),
            )
            .await
            .map(|_| ())
        })
    };
    // The consumer drains the ten earlier messages, acking one at a time.
    let mut c = cch
        .basic_consume(
            q.as_str().into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for i in 0..10u8 {
        let d = within(5, "delivery while blocked", c.next())
            .await
            .expect("delivery")
            .expect("ok");
        assert_eq!(d.data, vec![i]);
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), c.next())
            .await
            .is_err(),
        "the message published while blocked has not been read"
    );
    assert!(
        !consumer.status().blocked(),
        "a connection that never published is not blocked"
    );

    shared.set_disk_free_limit(0);
    assert!(
        eventually(Duration::from_secs(5), || async {
            !publisher.status().blocked()
        })
        .await,
        "the connection is unblocked when the alarm clears"
    );
    let d = within(5, "the held message", c.next())
        .await
        .expect("delivery")
        .expect("ok");
    assert_eq!(d.data, vec![99]);
    within(5, "the held publish", held)
        .await
        .expect("publish task")
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_blocked_names_the_resource() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        eprintln!("Warren-only: the test lowers the disk limit at run time");
        return;
    }
    let shared = broker.shared().expect("in-process broker").clone();
    let mut client = RawClient::start_with_capabilities(
        broker.addr(),
        &[("connection.blocked", AMQPValue::Boolean(true))],
    )
    .await;
    client.open_channel(1).await;
    let q = client.declare_queue(1).await;
    client.publish(1, &q, b"x", 131_072).await;
    shared.set_disk_free_limit(u64::MAX);
    let blocked = within(5, "connection.blocked", async {
        loop {
            match client.read_frame().await {
                Some(Frame::Method(0, m)) => {
                    if let AMQPClass::Connection(connection::AMQPMethod::Blocked(b)) = *m {
                        return b.reason.to_string();
                    }
                }
                Some(_) => {}
                None => panic!("connection closed"),
            }
        }
    })
    .await;
    assert_eq!(blocked, "low on disk");
    shared.set_disk_free_limit(0);
    within(5, "connection.unblocked", async {
        loop {
            match client.read_frame().await {
                Some(Frame::Method(0, m)) => {
                    if let AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)) = *m {
                        return;
                    }
                }
                Some(_) => {}
                None => panic!("connection closed"),
            }
        }
    })
    .await;
}
