//! The basic class: `basic.qos` (per-consumer and global prefetch), `basic.consume` and
//! `basic.cancel` (consumer tags, exclusive consumers, no-ack), publishing (mandatory returns,
//! `immediate`, missing exchanges, `user_id` validation, message size limit), `basic.get`,
//! acknowledgements (`ack`, `nack`, `reject`, `recover`, requeue on channel and connection
//! close, redelivery order) and message content (bodies split across frames, empty bodies,
//! every basic property and header field type preserved exactly).

use futures_lite::{Stream, StreamExt};
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ErrorKind, Event,
};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use warren_tests::{eventually, unique, within, TestBroker};

// ---------------------------------------------------------------------------------------------
// lapin helpers
// ---------------------------------------------------------------------------------------------

pub(super) async fn connect(broker: &TestBroker) -> Connection {
    within(
        10,
        "lapin connect",
        Connection::connect(broker.uri(), ConnectionProperties::default()),
    )
    .await
    .expect("lapin connects")
}

pub(super) async fn open_channel(conn: &Connection) -> Channel {
    within(5, "channel.open", conn.create_channel())
        .await
        .expect("channel.open")
}

/// Declares a server-side unique, connection-exclusive queue (deleted with the connection).
pub(super) async fn exclusive_queue(ch: &Channel, prefix: &str) -> String {
    let name = unique(prefix);
    within(
        5,
        "queue.declare",
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare");
    name
}

/// Declares a plain (non-exclusive) queue; the test deletes it at the end.
pub(super) async fn shared_queue(ch: &Channel, prefix: &str) -> String {
    let name = unique(prefix);
    within(
        5,
        "queue.declare",
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare");
    name
}

pub(super) async fn delete_queue(ch: &Channel, name: &str) {
    within(
        5,
        "queue.delete",
        ch.queue_delete(name.into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("queue.delete");
}

pub(super) async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish_with(ch, exchange, key, body, BasicProperties::default()).await;
}

pub(super) async fn publish_with(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    within(
        10,
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("basic.publish");
}

/// Ready messages in `queue` (RabbitMQ's declare-ok count, which excludes unacked ones).
pub(super) async fn ready_count(ch: &Channel, queue: &str) -> u32 {
    within(
        5,
        "passive queue.declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive queue.declare")
    .message_count()
}

pub(super) async fn wait_ready(ch: &Channel, queue: &str, n: u32) {
    let ok = eventually(Duration::from_secs(5), || async {
        ready_count(ch, queue).await == n
    })
    .await;
    assert!(
        ok,
        "queue {queue} should reach {n} ready messages, has {}",
        ready_count(ch, queue).await
    );
}

pub(super) async fn consume(ch: &Channel, queue: &str, tag: &str) -> Consumer {
    consume_with(ch, queue, tag, BasicConsumeOptions::default()).await
}

async fn consume_with(ch: &Channel, queue: &str, tag: &str, opts: BasicConsumeOptions) -> Consumer {
    within(
        5,
        "basic.consume",
        ch.basic_consume(queue.into(), tag.into(), opts, FieldTable::default()),
    )
    .await
    .expect("basic.consume")
}

pub(super) async fn next_delivery(consumer: &mut Consumer) -> Delivery {
    within(10, "a delivery", consumer.next())
        .await
        .expect("the consumer stream ended")
        .expect("the consumer got an error")
}

/// Asserts that no delivery arrives within a short grace period.
pub(super) async fn assert_no_delivery(consumer: &mut Consumer) {
    if let Ok(d) = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await {
        panic!("expected no delivery, got {d:?}");
    }
}

/// Everything the consumer receives within a short grace period.
async fn drain(consumer: &mut Consumer) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await
    {
        out.push(d.expect("delivery"));
    }
    out
}

pub(super) async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    within(
        5,
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions::default()),
    )
    .await
    .expect("basic.get")
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.data.clone()).expect("utf-8 body")
}

/// The reply code and text of an AMQP error returned by lapin.
pub(super) fn amqp_error(err: &lapin::Error) -> (u16, String) {
    match err.kind() {
        ErrorKind::ProtocolError(e) => (e.get_id(), e.get_message().to_string()),
        other => panic!("expected an AMQP protocol error, got {other:?}"),
    }
}

/// lapin's connection events, to observe asynchronous channel and connection closes.
pub(super) struct Errors(Pin<Box<dyn Stream<Item = Event> + Send>>);

impl Errors {
    pub(super) fn listen(conn: &Connection) -> Errors {
        Errors(Box::pin(conn.events_listener()))
    }

    /// The next channel or connection close the server sent: (reply code, reply text).
    pub(super) async fn next(&mut self) -> (u16, String) {
        within(5, "a channel or connection close from the server", async {
            loop {
                match self.0.next().await {
                    Some(Event::Error(e)) => {
                        if let ErrorKind::ProtocolError(p) = e.kind() {
                            return (p.get_id(), p.get_message().to_string());
                        }
                    }
                    Some(_) => {}
                    None => panic!("the events stream ended"),
                }
            }
        })
        .await
    }
}

pub(super) async fn assert_channel_closed(ch: &Channel) {
    assert!(
        eventually(Duration::from_secs(5), || async {
            !ch.status().connected()
        })
        .await,
        "the channel should be closed"
    );
}

async fn assert_connection_closed(conn: &Connection) {
    assert!(
        eventually(Duration::from_secs(5), || async {
            !conn.status().connected()
        })
        .await,
        "the connection should be closed"
    );
}

/// A deterministic pseudo-random body (xorshift), so large payloads are not compressible runs.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------------------------
// amqprs helpers
// ---------------------------------------------------------------------------------------------

pub(super) mod rs {
    use super::*;
    use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
    use amqprs::channel::{
        BasicConsumeArguments, BasicPublishArguments, Channel as RsChannel, ConsumerMessage,
        QueueDeclareArguments,
    };
    use amqprs::connection::{Connection as RsConnection, OpenConnectionArguments};
    use amqprs::{Ack, BasicProperties as RsProps, Cancel, Close, CloseChannel, Nack, Return};
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

    type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
    type RsResult<T> = Result<T, amqprs::error::Error>;

    /// What the server sent to a channel outside of replies and deliveries.
    #[derive(Debug, Clone, PartialEq)]
    pub enum ChanEvent {
        Close(u16, String),
        Ack(u64, bool),
        Nack(u64, bool),
        Return {
            code: u16,
            text: String,
            exchange: String,
            routing_key: String,
            body: Vec<u8>,
        },
        Cancel(String),
    }

    struct ChannelEvents(UnboundedSender<ChanEvent>);

    impl ChannelCallback for ChannelEvents {
        fn close<'a, 'b, 'c>(
            &'a mut self,
            _channel: &'b RsChannel,
            close: CloseChannel,
        ) -> BoxFuture<'c, RsResult<()>>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            let _ = self.0.send(ChanEvent::Close(
                close.reply_code(),
                close.reply_text().clone(),
            ));
            Box::pin(async { Ok(()) })
        }

        fn cancel<'a, 'b, 'c>(
            &'a mut self,
            _channel: &'b RsChannel,
            cancel: Cancel,
        ) -> BoxFuture<'c, RsResult<()>>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            let _ = self
                .0
                .send(ChanEvent::Cancel(cancel.consumer_tag().clone()));
            Box::pin(async { Ok(()) })
        }

        fn flow<'a, 'b, 'c>(
            &'a mut self,
            _channel: &'b RsChannel,
            active: bool,
        ) -> BoxFuture<'c, RsResult<bool>>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            Box::pin(async move { Ok(active) })
        }

        fn publish_ack<'a, 'b, 'c>(
            &'a mut self,
            _channel: &'b RsChannel,
            ack: Ack,
        ) -> BoxFuture<'c, ()>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            let _ = self
                .0
                .send(ChanEvent::Ack(ack.delivery_tag(), ack.mutiple()));
            Box::pin(async {})
        }

        fn publish_nack<'a, 'b, 'c>(
            &'a mut self,
            _channel: &'b RsChannel,
            nack: Nack,
        ) -> BoxFuture<'c, ()>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            let _ = self
                .0
                .send(ChanEvent::Nack(nack.delivery_tag(), nack.multiple()));
            Box::pin(async {})
        }

        fn publish_return<'a, 'b, 'c>(
            &'a mut self,
            _channel: &'b RsChannel,
            ret: Return,
            _basic_properties: RsProps,
            content: Vec<u8>,
        ) -> BoxFuture<'c, ()>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            let _ = self.0.send(ChanEvent::Return {
                code: ret.reply_code(),
                text: ret.reply_text().clone(),
                exchange: ret.exchange().clone(),
                routing_key: ret.routing_key().clone(),
                body: content,
            });
            Box::pin(async {})
        }
    }

    struct ConnectionEvents(UnboundedSender<(u16, String)>);

    impl ConnectionCallback for ConnectionEvents {
        fn close<'a, 'b, 'c>(
            &'a mut self,
            _connection: &'b RsConnection,
            close: Close,
        ) -> BoxFuture<'c, RsResult<()>>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            let _ = self
                .0
                .send((close.reply_code(), close.reply_text().clone()));
            Box::pin(async { Ok(()) })
        }

        fn blocked<'a, 'b, 'c>(
            &'a mut self,
            _connection: &'b RsConnection,
            _reason: String,
        ) -> BoxFuture<'c, ()>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            Box::pin(async {})
        }

        fn unblocked<'a, 'b, 'c>(&'a mut self, _connection: &'b RsConnection) -> BoxFuture<'c, ()>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            Box::pin(async {})
        }

        fn secret_updated<'a, 'b, 'c>(
            &'a mut self,
            _connection: &'b RsConnection,
        ) -> BoxFuture<'c, ()>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            Box::pin(async {})
        }
    }

    /// An amqprs connection as guest, with the server's connection.close forwarded.
    pub async fn connect(broker: &TestBroker) -> (RsConnection, UnboundedReceiver<(u16, String)>) {
        let addr = broker.addr();
        let args =
            OpenConnectionArguments::new(&addr.ip().to_string(), addr.port(), "guest", "guest");
        let conn = within(10, "amqprs connect", RsConnection::open(&args))
            .await
            .expect("amqprs connects");
        let (tx, rx) = unbounded_channel();
        conn.register_callback(ConnectionEvents(tx))
            .await
            .expect("register connection callback");
        (conn, rx)
    }

    /// An amqprs channel with closes, confirms, returns and cancels forwarded.
    pub async fn channel(conn: &RsConnection) -> (RsChannel, UnboundedReceiver<ChanEvent>) {
        let ch = within(5, "amqprs channel.open", conn.open_channel(None))
            .await
            .expect("amqprs channel.open");
        let (tx, rx) = unbounded_channel();
        ch.register_callback(ChannelEvents(tx))
            .await
            .expect("register channel callback");
        (ch, rx)
    }

    pub async fn declare(ch: &RsChannel, name: &str, exclusive: bool) {
        within(
            5,
            "amqprs queue.declare",
            ch.queue_declare(
                QueueDeclareArguments::new(name)
                    .exclusive(exclusive)
                    .finish(),
            ),
        )
        .await
        .expect("amqprs queue.declare");
    }

    pub async fn publish(ch: &RsChannel, exchange: &str, key: &str, body: &[u8]) {
        publish_with(ch, exchange, key, body, RsProps::default(), false).await;
    }

    pub async fn publish_with(
        ch: &RsChannel,
        exchange: &str,
        key: &str,
        body: &[u8],
        props: RsProps,
        mandatory: bool,
    ) {
        let mut args = BasicPublishArguments::new(exchange, key);
        args.mandatory(mandatory);
        within(
            10,
            "amqprs basic.publish",
            ch.basic_publish(props, body.to_vec(), args),
        )
        .await
        .expect("amqprs basic.publish");
    }

    pub async fn consume(
        ch: &RsChannel,
        queue: &str,
        tag: &str,
        manual_ack: bool,
    ) -> (String, UnboundedReceiver<ConsumerMessage>) {
        within(
            5,
            "amqprs basic.consume",
            ch.basic_consume_rx(
                BasicConsumeArguments::new(queue, tag)
                    .manual_ack(manual_ack)
                    .finish(),
            ),
        )
        .await
        .expect("amqprs basic.consume")
    }

    pub async fn next_message(rx: &mut UnboundedReceiver<ConsumerMessage>) -> ConsumerMessage {
        within(10, "an amqprs delivery", rx.recv())
            .await
            .expect("the amqprs consumer ended")
    }

    pub async fn next_event(rx: &mut UnboundedReceiver<ChanEvent>) -> ChanEvent {
        within(5, "an amqprs channel event", rx.recv())
            .await
            .expect("the amqprs channel event stream ended")
    }
}

// ---------------------------------------------------------------------------------------------
// basic.qos
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_prefetch_count_limits_unacked_deliveries_until_acked() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "qos").await;
    for i in 0..10 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    wait_ready(&ch, &q, 10).await;

    ch.basic_qos(2, BasicQosOptions { global: false })
        .await
        .expect("basic.qos");
    let mut c = consume(&ch, &q, "").await;
    let d1 = next_delivery(&mut c).await;
    let d2 = next_delivery(&mut c).await;
    assert_eq!((d1.delivery_tag, body(&d1).as_str()), (1, "m0"));
    assert_eq!((d2.delivery_tag, body(&d2).as_str()), (2, "m1"));
    assert_no_delivery(&mut c).await;
    assert_eq!(ready_count(&ch, &q).await, 8);

    // One ack frees one slot: exactly one more message.
    ch.basic_ack(1, BasicAckOptions::default())
        .await
        .expect("ack");
    let d3 = next_delivery(&mut c).await;
    assert_eq!((d3.delivery_tag, body(&d3).as_str()), (3, "m2"));
    assert_no_delivery(&mut c).await;

    // A multiple ack of both outstanding deliveries frees two slots.
    ch.basic_ack(3, BasicAckOptions { multiple: true })
        .await
        .expect("ack multiple");
    let d4 = next_delivery(&mut c).await;
    let d5 = next_delivery(&mut c).await;
    assert_eq!((d4.delivery_tag, body(&d4).as_str()), (4, "m3"));
    assert_eq!((d5.delivery_tag, body(&d5).as_str()), (5, "m4"));
    assert_no_delivery(&mut c).await;
    assert_eq!(ready_count(&ch, &q).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_non_global_prefetch_applies_to_each_consumer_separately() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q1 = exclusive_queue(&ch, "qos-a").await;
    let q2 = exclusive_queue(&ch, "qos-b").await;
    for i in 0..5 {
        publish(&ch, "", &q1, format!("a{i}").as_bytes()).await;
        publish(&ch, "", &q2, format!("b{i}").as_bytes()).await;
    }
    wait_ready(&ch, &q1, 5).await;
    wait_ready(&ch, &q2, 5).await;

    ch.basic_qos(2, BasicQosOptions { global: false })
        .await
        .expect("basic.qos");
    let mut c1 = consume(&ch, &q1, "c1").await;
    let mut c2 = consume(&ch, &q2, "c2").await;
    let got1: Vec<String> = drain(&mut c1).await.iter().map(body).collect();
    let got2: Vec<String> = drain(&mut c2).await.iter().map(body).collect();
    assert_eq!(got1, ["a0", "a1"]);
    assert_eq!(got2, ["b0", "b1"]);
    assert_eq!(ready_count(&ch, &q1).await, 3);
    assert_eq!(ready_count(&ch, &q2).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_global_prefetch_is_shared_by_all_consumers_on_the_channel() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q1 = exclusive_queue(&ch, "gqos-a").await;
    let q2 = exclusive_queue(&ch, "gqos-b").await;
    for i in 0..5 {
        publish(&ch, "", &q1, format!("a{i}").as_bytes()).await;
        publish(&ch, "", &q2, format!("b{i}").as_bytes()).await;
    }
    wait_ready(&ch, &q1, 5).await;
    wait_ready(&ch, &q2, 5).await;

    ch.basic_qos(3, BasicQosOptions { global: true })
        .await
        .expect("basic.qos global");
    let mut c1 = consume(&ch, &q1, "c1").await;
    let mut c2 = consume(&ch, &q2, "c2").await;
    let got1 = drain(&mut c1).await;
    let got2 = drain(&mut c2).await;
    assert_eq!(
        got1.len() + got2.len(),
        3,
        "at most 3 unacked on the whole channel, got {} + {}",
        got1.len(),
        got2.len()
    );
    assert_eq!(ready_count(&ch, &q1).await + ready_count(&ch, &q2).await, 7);
    let mut tags: Vec<u64> = got1.iter().chain(&got2).map(|d| d.delivery_tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, [1, 2, 3]);

    // Acking one delivery lets exactly one more message through, from either queue.
    ch.basic_ack(1, BasicAckOptions::default())
        .await
        .expect("ack");
    let more = drain(&mut c1).await.len() + drain(&mut c2).await.len();
    assert_eq!(more, 1);
    assert_eq!(ready_count(&ch, &q1).await + ready_count(&ch, &q2).await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_qos_prefetch_one_delivers_the_next_message_only_after_ack() {
    use amqprs::channel::{BasicAckArguments, BasicQosArguments};
    let broker = TestBroker::start().await;
    let (conn, _conn_events) = rs::connect(&broker).await;
    let (ch, _events) = rs::channel(&conn).await;
    let q = unique("rs-qos");
    rs::declare(&ch, &q, true).await;
    for i in 0..3 {
        rs::publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    ch.basic_qos(BasicQosArguments::new(0, 1, false))
        .await
        .expect("basic.qos");
    let (_tag, mut rx) = rs::consume(&ch, &q, "", true).await;
    let m = rs::next_message(&mut rx).await;
    let deliver = m.deliver.expect("deliver");
    assert_eq!(deliver.delivery_tag(), 1);
    assert_eq!(m.content.expect("content"), b"m0");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "prefetch 1: no second delivery before the ack"
    );
    ch.basic_ack(BasicAckArguments::new(1, false))
        .await
        .expect("ack");
    let m = rs::next_message(&mut rx).await;
    assert_eq!(m.deliver.expect("deliver").delivery_tag(), 2);
    assert_eq!(m.content.expect("content"), b"m1");
}

// ---------------------------------------------------------------------------------------------
// basic.consume / basic.cancel
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_without_tag_gets_a_server_generated_amq_ctag() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "ctag").await;
    let c1 = consume(&ch, &q, "").await;
    let c2 = consume(&ch, &q, "").await;
    let (t1, t2) = (c1.tag().to_string(), c2.tag().to_string());
    assert!(t1.starts_with("amq.ctag-"), "server tag {t1}");
    assert!(t2.starts_with("amq.ctag-"), "server tag {t2}");
    assert!(t1.len() > "amq.ctag-".len());
    assert_ne!(t1, t2, "generated tags are unique");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_deliveries_carry_the_server_generated_consumer_tag() {
    let broker = TestBroker::start().await;
    let (conn, _conn_events) = rs::connect(&broker).await;
    let (ch, _events) = rs::channel(&conn).await;
    let q = unique("rs-ctag");
    rs::declare(&ch, &q, true).await;
    let (tag, mut rx) = rs::consume(&ch, &q, "", false).await;
    assert!(tag.starts_with("amq.ctag-"), "server tag {tag}");
    rs::publish(&ch, "", &q, b"hello").await;
    let m = rs::next_message(&mut rx).await;
    let deliver = m.deliver.expect("deliver");
    assert_eq!(deliver.consumer_tag(), &tag);
    assert_eq!(deliver.delivery_tag(), 1);
    assert!(!deliver.redelivered());
    assert_eq!(deliver.exchange(), "");
    assert_eq!(deliver.routing_key(), &q);
    assert_eq!(m.content.expect("content"), b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_with_client_tag_uses_that_tag_in_consume_ok_and_deliveries() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "client-tag").await;
    let c = consume(&ch, &q, "my-consumer").await;
    assert_eq!(c.tag().as_str(), "my-consumer");

    // amqprs exposes the tag of each delivery.
    let (rconn, _ce) = rs::connect(&broker).await;
    let (rch, _events) = rs::channel(&rconn).await;
    let rq = unique("rs-client-tag");
    rs::declare(&rch, &rq, true).await;
    let (tag, mut rx) = rs::consume(&rch, &rq, "rs-consumer", false).await;
    assert_eq!(tag, "rs-consumer");
    rs::publish(&rch, "", &rq, b"x").await;
    let m = rs::next_message(&mut rx).await;
    assert_eq!(m.deliver.expect("deliver").consumer_tag(), "rs-consumer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_consumer_tag_on_a_channel_closes_the_connection_with_530() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "dup-tag").await;
    let _c = consume(&ch, &q, "dup").await;
    let mut errors = Errors::listen(&conn);
    let err = within(
        5,
        "second basic.consume",
        ch.basic_consume(
            q.as_str().into(),
            "dup".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("a reused consumer tag is refused");
    let expected = (
        530,
        "NOT_ALLOWED - attempt to reuse consumer tag 'dup'".to_string(),
    );
    assert_eq!(amqp_error(&err), expected);
    assert_eq!(errors.next().await, expected);
    assert_connection_closed(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_consumer_tag_on_two_channels_is_allowed() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch1 = open_channel(&conn).await;
    let ch2 = open_channel(&conn).await;
    let q = exclusive_queue(&ch1, "tag-two-ch").await;
    let c1 = consume(&ch1, &q, "same").await;
    let c2 = consume(&ch2, &q, "same").await;
    assert_eq!(c1.tag().as_str(), "same");
    assert_eq!(c2.tag().as_str(), "same");
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_consume_on_a_queue_with_a_consumer_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch1 = open_channel(&conn).await;
    let ch2 = open_channel(&conn).await;
    let q = exclusive_queue(&ch1, "excl-consume").await;
    let _c = consume(&ch1, &q, "first").await;
    let err = within(
        5,
        "exclusive basic.consume",
        ch2.basic_consume(
            q.as_str().into(),
            "second".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("exclusive consume refused");
    assert_eq!(
        amqp_error(&err),
        (
            403,
            format!("ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use")
        )
    );
    assert_channel_closed(&ch2).await;
    assert!(
        ch1.status().connected(),
        "only the offending channel closes"
    );
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_on_a_queue_with_an_exclusive_consumer_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch1 = open_channel(&conn).await;
    let ch2 = open_channel(&conn).await;
    let q = exclusive_queue(&ch1, "excl-consumer-exists").await;
    let _c = consume_with(
        &ch1,
        &q,
        "owner",
        BasicConsumeOptions {
            exclusive: true,
            ..BasicConsumeOptions::default()
        },
    )
    .await;
    let err = within(
        5,
        "basic.consume",
        ch2.basic_consume(
            q.as_str().into(),
            "other".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("consume next to an exclusive consumer refused");
    assert_eq!(
        amqp_error(&err),
        (
            403,
            format!("ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use")
        )
    );
    assert_channel_closed(&ch2).await;
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_on_a_missing_queue_closes_the_channel_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = unique("no-such-queue");
    let err = within(
        5,
        "basic.consume",
        ch.basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("consume on a missing queue");
    assert_eq!(
        amqp_error(&err),
        (404, format!("NOT_FOUND - no queue '{q}' in vhost '/'"))
    );
    assert_channel_closed(&ch).await;
    assert!(conn.status().connected());
    // The connection is still usable.
    let ch2 = open_channel(&conn).await;
    let _ = exclusive_queue(&ch2, "after-404").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_consume_removes_messages_on_delivery() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "no-ack").await;
    for i in 0..3 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let mut c = consume_with(
        &ch,
        &q,
        "auto",
        BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        },
    )
    .await;
    for i in 0..3u64 {
        let d = next_delivery(&mut c).await;
        assert_eq!(d.delivery_tag, i + 1);
        assert_eq!(body(&d), format!("m{i}"));
        assert!(!d.redelivered);
    }
    ch.basic_cancel("auto".into(), BasicCancelOptions::default())
        .await
        .expect("basic.cancel");
    assert_eq!(ready_count(&ch, &q).await, 0);
    // Nothing was left unacked: closing the channel requeues nothing.
    ch.close(200, "bye".into()).await.expect("channel.close");
    let ch2 = open_channel(&conn).await;
    assert_eq!(ready_count(&ch2, &q).await, 0);
    assert!(get(&ch2, &q).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_returns_cancel_ok_and_stops_deliveries() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "cancel").await;
    let mut c = consume(&ch, &q, "to-cancel").await;
    publish(&ch, "", &q, b"before").await;
    let d = next_delivery(&mut c).await;
    assert_eq!(body(&d), "before");
    d.ack(BasicAckOptions::default()).await.expect("ack");

    within(
        5,
        "basic.cancel-ok",
        ch.basic_cancel("to-cancel".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("basic.cancel");
    // The stream ends after cancel-ok.
    assert!(within(5, "consumer end", c.next()).await.is_none());

    publish(&ch, "", &q, b"after-1").await;
    publish(&ch, "", &q, b"after-2").await;
    wait_ready(&ch, &q, 2).await;
    let m = get(&ch, &q).await.expect("message still in the queue");
    assert_eq!(m.delivery.data, b"after-1");
    assert_eq!(m.message_count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_of_a_cancelled_consumer_stay_unacked_until_acked_or_channel_close() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "cancel-unacked").await;
    for i in 0..3 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    ch.basic_qos(2, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut c = consume(&ch, &q, "c").await;
    let d1 = next_delivery(&mut c).await;
    let d2 = next_delivery(&mut c).await;
    assert_eq!((body(&d1).as_str(), body(&d2).as_str()), ("m0", "m1"));
    ch.basic_cancel("c".into(), BasicCancelOptions::default())
        .await
        .expect("basic.cancel");
    // Cancelling does not requeue: m0 and m1 are still unacked, only m2 is ready.
    assert_eq!(ready_count(&ch, &q).await, 1);

    // Acking after the cancel is valid.
    ch.basic_ack(d1.delivery_tag, BasicAckOptions::default())
        .await
        .expect("ack after cancel");
    assert_eq!(ready_count(&ch, &q).await, 1);
    assert!(ch.status().connected());

    // Closing the channel requeues the one still unacked, ahead of m2.
    ch.close(200, "bye".into()).await.expect("channel.close");
    let ch2 = open_channel(&conn).await;
    wait_ready(&ch2, &q, 2).await;
    let m = get(&ch2, &q).await.expect("requeued m1");
    assert_eq!(m.delivery.data, b"m1");
    assert!(m.delivery.redelivered);
    let m = get(&ch2, &q).await.expect("m2");
    assert_eq!(m.delivery.data, b"m2");
    assert!(!m.delivery.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_cancel_returns_the_consumer_tag_and_stops_deliveries() {
    use amqprs::channel::{BasicCancelArguments, BasicGetArguments};
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, _events) = rs::channel(&conn).await;
    let q = unique("rs-cancel");
    rs::declare(&ch, &q, true).await;
    let (tag, mut rx) = rs::consume(&ch, &q, "rs-c", false).await;
    rs::publish(&ch, "", &q, b"one").await;
    let m = rs::next_message(&mut rx).await;
    assert_eq!(m.content.expect("content"), b"one");
    let cancelled = within(
        5,
        "amqprs basic.cancel",
        ch.basic_cancel(BasicCancelArguments::new(&tag)),
    )
    .await
    .expect("basic.cancel");
    assert_eq!(cancelled, "rs-c");
    rs::publish(&ch, "", &q, b"two").await;
    let got = within(
        5,
        "amqprs basic.get",
        ch.basic_get(BasicGetArguments::new(&q).no_ack(true).finish()),
    )
    .await
    .expect("basic.get")
    .expect("the message published after the cancel stays in the queue");
    assert_eq!(got.2, b"two");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .map_or(true, |m| m.is_none()),
        "no delivery after cancel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_distributed_round_robin_between_consumers() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "round-robin").await;
    let mut c1 = consume(&ch, &q, "c1").await;
    let mut c2 = consume(&ch, &q, "c2").await;
    for i in 0..10 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let mut got1 = Vec::new();
    let mut got2 = Vec::new();
    for _ in 0..5 {
        got1.push(body(&next_delivery(&mut c1).await));
        got2.push(body(&next_delivery(&mut c2).await));
    }
    assert_no_delivery(&mut c1).await;
    assert_no_delivery(&mut c2).await;
    assert_eq!(got1, ["m0", "m2", "m4", "m6", "m8"]);
    assert_eq!(got2, ["m1", "m3", "m5", "m7", "m9"]);
}

// ---------------------------------------------------------------------------------------------
// basic.publish
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_publish_to_an_unroutable_key_is_returned_with_312_no_route() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let key = unique("nowhere");
    // Not mandatory: silently dropped, nothing returned.
    publish(&ch, "", &key, b"dropped").await;
    let props = BasicProperties::default()
        .with_message_id("mid-1".into())
        .with_content_type("text/plain".into());
    within(
        5,
        "mandatory basic.publish",
        ch.basic_publish(
            "amq.direct".into(),
            key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            b"returned",
            props.clone(),
        ),
    )
    .await
    .expect("basic.publish");
    let returned = within(5, "basic.return", async {
        loop {
            let r = ch.wait_for_confirms().await.expect("returned messages");
            if !r.is_empty() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(returned.len(), 1, "only the mandatory message comes back");
    let r = &returned[0];
    assert_eq!(r.reply_code, 312);
    assert_eq!(r.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(r.delivery.exchange.as_str(), "amq.direct");
    assert_eq!(r.delivery.routing_key.as_str(), key);
    assert_eq!(r.delivery.data, b"returned");
    assert_eq!(r.delivery.properties, props);
    assert!(
        ch.status().connected(),
        "a return does not close the channel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_mandatory_publish_to_the_default_exchange_is_returned() {
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, mut events) = rs::channel(&conn).await;
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
    assert_eq!(
        rs::next_event(&mut events).await,
        rs::ChanEvent::Return {
            code: 312,
            text: "NO_ROUTE".into(),
            exchange: "".into(),
            routing_key: key.clone(),
            body: b"back".to_vec(),
        }
    );
    assert!(ch.is_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_immediate_closes_the_connection_with_540_not_implemented() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "immediate").await;
    let mut errors = Errors::listen(&conn);
    let _ = ch
        .basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions {
                immediate: true,
                ..BasicPublishOptions::default()
            },
            b"now",
            BasicProperties::default(),
        )
        .await;
    assert_eq!(
        errors.next().await,
        (540, "NOT_IMPLEMENTED - immediate=true".to_string())
    );
    assert_connection_closed(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_publish_with_immediate_closes_the_connection_with_540() {
    use amqprs::channel::BasicPublishArguments;
    let broker = TestBroker::start().await;
    let (conn, mut conn_events) = rs::connect(&broker).await;
    let (ch, _events) = rs::channel(&conn).await;
    let mut args = BasicPublishArguments::new("", "whatever");
    args.immediate(true);
    ch.basic_publish(amqprs::BasicProperties::default(), b"now".to_vec(), args)
        .await
        .expect("publish is sent");
    let close = within(5, "connection.close", conn_events.recv())
        .await
        .expect("connection.close");
    assert_eq!(close, (540, "NOT_IMPLEMENTED - immediate=true".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_a_missing_exchange_closes_the_channel_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let other = open_channel(&conn).await;
    let x = unique("no-such-exchange");
    let mut errors = Errors::listen(&conn);
    publish(&ch, &x, "key", b"lost").await;
    assert_eq!(
        errors.next().await,
        (404, format!("NOT_FOUND - no exchange '{x}' in vhost '/'"))
    );
    assert_channel_closed(&ch).await;
    assert!(other.status().connected(), "other channels stay open");
    assert!(conn.status().connected());
    let _ = exclusive_queue(&other, "still-usable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_publish_to_a_missing_exchange_closes_the_channel_with_404() {
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, mut events) = rs::channel(&conn).await;
    let x = unique("rs-no-such-exchange");
    rs::publish(&ch, &x, "key", b"lost").await;
    assert_eq!(
        rs::next_event(&mut events).await,
        rs::ChanEvent::Close(404, format!("NOT_FOUND - no exchange '{x}' in vhost '/'"))
    );
    assert!(conn.is_open());
    let (ch2, _e2) = rs::channel(&conn).await;
    rs::declare(&ch2, &unique("rs-after-404"), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_equal_to_the_authenticated_user_is_delivered() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "user-id").await;
    let props = BasicProperties::default().with_user_id("guest".into());
    publish_with(&ch, "", &q, b"mine", props.clone()).await;
    let m = get(&ch, &q).await.expect("delivered");
    assert_eq!(m.delivery.properties, props);
    assert_eq!(m.delivery.data, b"mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_different_from_the_authenticated_user_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "user-id-bob").await;
    let mut errors = Errors::listen(&conn);
    publish_with(
        &ch,
        "",
        &q,
        b"spoofed",
        BasicProperties::default().with_user_id("bob".into()),
    )
    .await;
    assert_eq!(
        errors.next().await,
        (
            406,
            "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'guest'"
                .to_string()
        )
    );
    assert_channel_closed(&ch).await;
    let ch2 = open_channel(&conn).await;
    assert_eq!(
        ready_count(&ch2, &q).await,
        0,
        "the message was not enqueued"
    );
}

/// RabbitMQ checks the body size against `max_message_size` (default 128 MiB) and closes the
/// channel with `406 PRECONDITION_FAILED - message size N is larger than configured max size M`
/// (checked by hand on RabbitMQ 3.10.8 with `application:set_env(rabbit, max_message_size, 1000)`:
/// a 1001-byte body gave exactly that text with N=1001, M=1000; a 1000-byte body is accepted).
/// Sending 128 MiB to RabbitMQ in a test is too slow, so this runs against Warren only, with a
/// small configured limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_larger_than_max_message_size_closes_the_channel_with_406() {
    let broker = TestBroker::start_with(|cfg| cfg.max_message_size = 1000).await;
    if broker.is_external() {
        eprintln!("skipped: needs a broker configured with max_message_size = 1000");
        return;
    }
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "max-size").await;
    // Exactly the limit is accepted.
    publish(&ch, "", &q, &[7u8; 1000]).await;
    wait_ready(&ch, &q, 1).await;
    let mut errors = Errors::listen(&conn);
    publish(&ch, "", &q, &[7u8; 1001]).await;
    assert_eq!(
        errors.next().await,
        (
            406,
            "PRECONDITION_FAILED - message size 1001 is larger than configured max size 1000"
                .to_string()
        )
    );
    assert_channel_closed(&ch).await;
    let ch2 = open_channel(&conn).await;
    assert_eq!(ready_count(&ch2, &q).await, 1);
}

// ---------------------------------------------------------------------------------------------
// basic.get
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_returns_messages_in_order_with_the_remaining_count_then_get_empty() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "get").await;
    assert!(get(&ch, &q).await.is_none(), "get-empty on an empty queue");
    for i in 0..3 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    for i in 0..3u32 {
        let m = get(&ch, &q).await.expect("get-ok");
        assert_eq!(m.delivery.data, format!("m{i}").as_bytes());
        assert_eq!(m.delivery.delivery_tag, u64::from(i) + 1);
        assert_eq!(m.message_count, 2 - i, "remaining after this one");
        assert_eq!(m.delivery.exchange.as_str(), "");
        assert_eq!(m.delivery.routing_key.as_str(), q);
        assert!(!m.delivery.redelivered);
    }
    assert!(get(&ch, &q).await.is_none(), "get-empty once drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_on_a_missing_queue_closes_the_channel_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = unique("get-missing");
    let err = within(
        5,
        "basic.get",
        ch.basic_get(q.as_str().into(), BasicGetOptions::default()),
    )
    .await
    .expect_err("get on a missing queue");
    assert_eq!(
        amqp_error(&err),
        (404, format!("NOT_FOUND - no queue '{q}' in vhost '/'"))
    );
    assert_channel_closed(&ch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_get_reports_the_remaining_count_and_get_empty() {
    use amqprs::channel::BasicGetArguments;
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, _events) = rs::channel(&conn).await;
    let q = unique("rs-get");
    rs::declare(&ch, &q, true).await;
    rs::publish(&ch, "", &q, b"a").await;
    rs::publish(&ch, "", &q, b"b").await;
    let (ok, _props, content) = within(
        5,
        "basic.get",
        ch.basic_get(BasicGetArguments::new(&q).no_ack(true).finish()),
    )
    .await
    .expect("basic.get")
    .expect("get-ok");
    assert_eq!(content, b"a");
    assert_eq!(ok.message_count(), 1);
    assert_eq!(ok.delivery_tag(), 1);
    assert!(!ok.redelivered());
    assert_eq!(ok.routing_key(), &q);
    let (ok, _props, content) = within(
        5,
        "basic.get",
        ch.basic_get(BasicGetArguments::new(&q).no_ack(true).finish()),
    )
    .await
    .expect("basic.get")
    .expect("get-ok");
    assert_eq!(content, b"b");
    assert_eq!(ok.message_count(), 0);
    assert_eq!(ok.delivery_tag(), 2);
    let empty = within(
        5,
        "basic.get",
        ch.basic_get(BasicGetArguments::new(&q).no_ack(true).finish()),
    )
    .await
    .expect("basic.get");
    assert!(empty.is_none(), "get-empty");
}

// ---------------------------------------------------------------------------------------------
// Acknowledgements
// ---------------------------------------------------------------------------------------------

/// Publishes `m0..m{n-1}` and fetches them all without acking, returning their tags 1..=n.
async fn publish_and_get_unacked(ch: &Channel, q: &str, n: usize) {
    for i in 0..n {
        publish(ch, "", q, format!("m{i}").as_bytes()).await;
    }
    for i in 0..n {
        let m = get(ch, q).await.expect("get-ok");
        assert_eq!(m.delivery.data, format!("m{i}").as_bytes());
        assert_eq!(m.delivery.delivery_tag, i as u64 + 1);
    }
}

/// Drains `q` with basic.get (no-ack) on `ch`, returning (body, redelivered) pairs.
async fn get_all(ch: &Channel, q: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(m) = within(
        5,
        "basic.get",
        ch.basic_get(q.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get")
    {
        out.push((
            String::from_utf8(m.delivery.data.clone()).expect("utf-8"),
            m.delivery.redelivered,
        ));
    }
    out
}

fn pairs(v: &[(&str, bool)]) -> Vec<(String, bool)> {
    v.iter().map(|(b, r)| (b.to_string(), *r)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_multiple_acknowledges_every_delivery_up_to_the_tag() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "ack-multiple").await;
    publish_and_get_unacked(&ch, &q, 5).await;
    ch.basic_ack(3, BasicAckOptions { multiple: true })
        .await
        .expect("ack multiple");
    ch.close(200, "bye".into()).await.expect("channel.close");
    // Only m3 and m4 were still unacked: they come back, redelivered.
    let ch2 = open_channel(&conn).await;
    wait_ready(&ch2, &q, 2).await;
    assert_eq!(
        get_all(&ch2, &q).await,
        pairs(&[("m3", true), ("m4", true)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_acks_remove_exactly_the_acked_deliveries() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "ack-single").await;
    publish_and_get_unacked(&ch, &q, 4).await;
    ch.basic_ack(2, BasicAckOptions::default())
        .await
        .expect("ack 2");
    ch.basic_ack(4, BasicAckOptions::default())
        .await
        .expect("ack 4");
    ch.close(200, "bye".into()).await.expect("channel.close");
    let ch2 = open_channel(&conn).await;
    wait_ready(&ch2, &q, 2).await;
    assert_eq!(
        get_all(&ch2, &q).await,
        pairs(&[("m0", true), ("m2", true)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_with_requeue_puts_messages_back_in_their_original_position() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "nack-order").await;
    for i in 1..=5 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    // Take m1..m4 (tags 1..4), leave m5 in the queue.
    for i in 1..=4u64 {
        let m = get(&ch, &q).await.expect("get-ok");
        assert_eq!(m.delivery.delivery_tag, i);
    }
    // Requeue m3 then m2: they go back ahead of m5, in publish order, not nack order.
    ch.basic_nack(
        3,
        BasicNackOptions {
            multiple: false,
            requeue: true,
        },
    )
    .await
    .expect("nack 3");
    ch.basic_nack(
        2,
        BasicNackOptions {
            multiple: false,
            requeue: true,
        },
    )
    .await
    .expect("nack 2");
    let mut c = consume(&ch, &q, "after-nack").await;
    let got: Vec<(String, bool, u64)> = drain(&mut c)
        .await
        .iter()
        .map(|d| (body(d), d.redelivered, d.delivery_tag))
        .collect();
    assert_eq!(
        got,
        [
            ("m2".to_string(), true, 5),
            ("m3".to_string(), true, 6),
            ("m5".to_string(), false, 7)
        ]
    );
    // m1 and m4 are still unacked under their original tags.
    ch.basic_ack(4, BasicAckOptions::default())
        .await
        .expect("ack m4");
    ch.basic_ack(1, BasicAckOptions::default())
        .await
        .expect("ack m1");
    ch.basic_ack(7, BasicAckOptions { multiple: true })
        .await
        .expect("ack the rest");
    assert!(ch.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_multiple_with_requeue_redelivers_all_up_to_the_tag_in_order() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "nack-multiple").await;
    publish_and_get_unacked(&ch, &q, 5).await;
    ch.basic_nack(
        4,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    )
    .await
    .expect("nack multiple");
    wait_ready(&ch, &q, 4).await;
    // m0..m3 are back, in order, redelivered; m4 (tag 5) is still unacked.
    let mut redelivered = Vec::new();
    for i in 0..4u64 {
        let m = get(&ch, &q).await.expect("get-ok");
        assert_eq!(m.delivery.delivery_tag, 6 + i, "tags keep increasing");
        redelivered.push((body(&m.delivery), m.delivery.redelivered));
    }
    assert_eq!(
        redelivered,
        pairs(&[("m0", true), ("m1", true), ("m2", true), ("m3", true)])
    );
    assert!(get(&ch, &q).await.is_none());
    ch.basic_ack(5, BasicAckOptions::default())
        .await
        .expect("m4 still unacked under tag 5");
    ch.basic_ack(9, BasicAckOptions { multiple: true })
        .await
        .expect("ack the redeliveries");
    assert!(ch.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_with_requeue_redelivers_the_message_with_redelivered_set() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "reject-requeue").await;
    publish(&ch, "", &q, b"first").await;
    publish(&ch, "", &q, b"second").await;
    let mut c = consume(&ch, &q, "c").await;
    let d1 = next_delivery(&mut c).await;
    let d2 = next_delivery(&mut c).await;
    assert_eq!((body(&d1).as_str(), d1.redelivered), ("first", false));
    assert_eq!((body(&d2).as_str(), d2.redelivered), ("second", false));
    d1.reject(BasicRejectOptions { requeue: true })
        .await
        .expect("reject");
    let again = next_delivery(&mut c).await;
    assert_eq!(body(&again), "first");
    assert!(again.redelivered);
    assert_eq!(again.delivery_tag, 3);
    again.ack(BasicAckOptions::default()).await.expect("ack");
    d2.ack(BasicAckOptions::default()).await.expect("ack");
    assert_no_delivery(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_and_reject_without_requeue_drop_the_messages() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "drop").await;
    publish_and_get_unacked(&ch, &q, 4).await;
    ch.basic_reject(1, BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    ch.basic_nack(
        3,
        BasicNackOptions {
            multiple: true,
            requeue: false,
        },
    )
    .await
    .expect("nack multiple");
    ch.basic_nack(
        4,
        BasicNackOptions {
            multiple: false,
            requeue: false,
        },
    )
    .await
    .expect("nack");
    assert_eq!(ready_count(&ch, &q).await, 0);
    ch.close(200, "bye".into()).await.expect("channel.close");
    let ch2 = open_channel(&conn).await;
    assert_eq!(
        ready_count(&ch2, &q).await,
        0,
        "nothing was left to requeue"
    );
    assert!(get(&ch2, &q).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_nack_or_reject_of_an_unknown_delivery_tag_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let mut errors = Errors::listen(&conn);
    let expected = (
        406,
        "PRECONDITION_FAILED - unknown delivery tag 42".to_string(),
    );

    let ch = open_channel(&conn).await;
    ch.basic_ack(42, BasicAckOptions::default())
        .await
        .expect("ack sent");
    assert_eq!(errors.next().await, expected);
    assert_channel_closed(&ch).await;

    let ch = open_channel(&conn).await;
    ch.basic_nack(42, BasicNackOptions::default())
        .await
        .expect("nack sent");
    assert_eq!(errors.next().await, expected);
    assert_channel_closed(&ch).await;

    let ch = open_channel(&conn).await;
    ch.basic_reject(42, BasicRejectOptions::default())
        .await
        .expect("reject sent");
    assert_eq!(errors.next().await, expected);
    assert_channel_closed(&ch).await;
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acking_the_same_delivery_twice_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "double-ack").await;
    publish_and_get_unacked(&ch, &q, 1).await;
    let mut errors = Errors::listen(&conn);
    ch.basic_ack(1, BasicAckOptions::default())
        .await
        .expect("first ack");
    ch.basic_ack(1, BasicAckOptions::default())
        .await
        .expect("second ack sent");
    assert_eq!(
        errors.next().await,
        (
            406,
            "PRECONDITION_FAILED - unknown delivery tag 1".to_string()
        )
    );
    assert_channel_closed(&ch).await;
    let ch2 = open_channel(&conn).await;
    assert_eq!(ready_count(&ch2, &q).await, 0, "the first ack took effect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acking_a_no_ack_delivery_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "ack-no-ack").await;
    publish(&ch, "", &q, b"auto").await;
    let m = within(
        5,
        "basic.get",
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get")
    .expect("get-ok");
    assert_eq!(m.delivery.delivery_tag, 1);
    let mut errors = Errors::listen(&conn);
    ch.basic_ack(1, BasicAckOptions::default())
        .await
        .expect("ack sent");
    assert_eq!(
        errors.next().await,
        (
            406,
            "PRECONDITION_FAILED - unknown delivery tag 1".to_string()
        )
    );
    assert_channel_closed(&ch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_multiple_with_tag_zero_acknowledges_everything_outstanding() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "ack-all").await;
    publish_and_get_unacked(&ch, &q, 3).await;
    ch.basic_ack(0, BasicAckOptions { multiple: true })
        .await
        .expect("ack everything");
    ch.close(200, "bye".into()).await.expect("channel.close");
    let ch2 = open_channel(&conn).await;
    assert_eq!(ready_count(&ch2, &q).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_with_requeue_redelivers_unacked_messages_with_redelivered_set() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "recover").await;
    let mut c = consume(&ch, &q, "c").await;
    for i in 0..3 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let first: Vec<(String, bool, u64)> = [
        next_delivery(&mut c).await,
        next_delivery(&mut c).await,
        next_delivery(&mut c).await,
    ]
    .iter()
    .map(|d| (body(d), d.redelivered, d.delivery_tag))
    .collect();
    assert_eq!(
        first,
        [
            ("m0".to_string(), false, 1),
            ("m1".to_string(), false, 2),
            ("m2".to_string(), false, 3)
        ]
    );
    ch.basic_ack(2, BasicAckOptions::default())
        .await
        .expect("ack m1");
    within(
        5,
        "basic.recover-ok",
        ch.basic_recover(BasicRecoverOptions { requeue: true }),
    )
    .await
    .expect("basic.recover");
    let again: Vec<(String, bool, u64)> = drain(&mut c)
        .await
        .iter()
        .map(|d| (body(d), d.redelivered, d.delivery_tag))
        .collect();
    assert_eq!(
        again,
        [("m0".to_string(), true, 4), ("m2".to_string(), true, 5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_async_requeues_unacked_messages() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "recover-async").await;
    publish_and_get_unacked(&ch, &q, 2).await;
    assert_eq!(ready_count(&ch, &q).await, 0);
    ch.basic_recover_async(BasicRecoverAsyncOptions { requeue: true })
        .await
        .expect("basic.recover-async");
    wait_ready(&ch, &q, 2).await;
    assert_eq!(get_all(&ch, &q).await, pairs(&[("m0", true), ("m1", true)]));
    assert!(ch.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_without_requeue_closes_the_connection_with_540() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let err = within(
        5,
        "basic.recover",
        ch.basic_recover(BasicRecoverOptions { requeue: false }),
    )
    .await
    .expect_err("requeue=false is not implemented");
    assert_eq!(
        amqp_error(&err),
        (540, "NOT_IMPLEMENTED - requeue=false".to_string())
    );
    assert_connection_closed(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_recover_redelivers_unacked_messages() {
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, _events) = rs::channel(&conn).await;
    let q = unique("rs-recover");
    rs::declare(&ch, &q, true).await;
    let (_tag, mut rx) = rs::consume(&ch, &q, "", true).await;
    rs::publish(&ch, "", &q, b"x").await;
    let m = rs::next_message(&mut rx).await;
    let d = m.deliver.expect("deliver");
    assert_eq!((d.delivery_tag(), d.redelivered()), (1, false));
    within(5, "basic.recover-ok", ch.basic_recover(true))
        .await
        .expect("basic.recover");
    let m = rs::next_message(&mut rx).await;
    let d = m.deliver.expect("deliver");
    assert_eq!((d.delivery_tag(), d.redelivered()), (2, true));
    assert_eq!(m.content.expect("content"), b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_are_requeued_in_order_when_the_channel_closes() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let other = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "requeue-on-close").await;
    for i in 0..4 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let mut c = consume(&ch, &q, "c").await;
    let got: Vec<String> = [
        next_delivery(&mut c).await,
        next_delivery(&mut c).await,
        next_delivery(&mut c).await,
        next_delivery(&mut c).await,
    ]
    .iter()
    .map(body)
    .collect();
    assert_eq!(got, ["m0", "m1", "m2", "m3"]);
    ch.basic_ack(2, BasicAckOptions::default())
        .await
        .expect("ack m1");
    let mut c2 = consume(&other, &q, "c2").await;
    assert_no_delivery(&mut c2).await;
    ch.close(200, "bye".into()).await.expect("channel.close");
    let again: Vec<(String, bool)> = [
        next_delivery(&mut c2).await,
        next_delivery(&mut c2).await,
        next_delivery(&mut c2).await,
    ]
    .iter()
    .map(|d| (body(d), d.redelivered))
    .collect();
    assert_eq!(again, pairs(&[("m0", true), ("m2", true), ("m3", true)]));
    assert_no_delivery(&mut c2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_unacked_messages_are_requeued_in_order_when_the_connection_closes() {
    let broker = TestBroker::start().await;
    let q = unique("requeue-conn-close");
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, _events) = rs::channel(&conn).await;
    rs::declare(&ch, &q, false).await;
    for i in 0..3 {
        rs::publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let (_tag, mut rx) = rs::consume(&ch, &q, "", true).await;
    for i in 0..3 {
        let m = rs::next_message(&mut rx).await;
        assert_eq!(m.content.expect("content"), format!("m{i}").as_bytes());
    }

    let (conn2, _ce2) = rs::connect(&broker).await;
    let (ch2, _events2) = rs::channel(&conn2).await;
    let (_tag2, mut rx2) = rs::consume(&ch2, &q, "", false).await;
    within(5, "connection.close", conn.close())
        .await
        .expect("connection.close");
    let mut again = Vec::new();
    for _ in 0..3 {
        let m = rs::next_message(&mut rx2).await;
        let d = m.deliver.expect("deliver");
        again.push((
            String::from_utf8(m.content.expect("content")).expect("utf-8"),
            d.redelivered(),
        ));
    }
    assert_eq!(again, pairs(&[("m0", true), ("m1", true), ("m2", true)]));

    // Clean up the shared queue.
    let lconn = connect(&broker).await;
    let lch = open_channel(&lconn).await;
    delete_queue(&lch, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_get_messages_are_requeued_when_the_connection_closes() {
    let broker = TestBroker::start().await;
    let admin = connect(&broker).await;
    let ach = open_channel(&admin).await;
    let q = shared_queue(&ach, "requeue-get-conn").await;
    {
        let conn = connect(&broker).await;
        let ch = open_channel(&conn).await;
        publish_and_get_unacked(&ch, &q, 3).await;
        assert_eq!(ready_count(&ach, &q).await, 0);
        conn.close(200, "bye".into())
            .await
            .expect("connection.close");
    }
    wait_ready(&ach, &q, 3).await;
    assert_eq!(
        get_all(&ach, &q).await,
        pairs(&[("m0", true), ("m1", true), ("m2", true)])
    );
    delete_queue(&ach, &q).await;
}

// ---------------------------------------------------------------------------------------------
// Content: bodies and properties
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_larger_than_frame_max_round_trip_intact() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let frame_max = conn.configuration().frame_max();
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "large").await;
    let one = random_bytes(1024 * 1024, 0x9E37_79B9_7F4A_7C15);
    let five = random_bytes(5 * 1024 * 1024, 0xD1B5_4A32_D192_ED03);
    let just_over = random_bytes(frame_max as usize - 7, 42); // one byte over a single frame
    assert!(one.len() > frame_max as usize);
    publish(&ch, "", &q, &one).await;
    publish(&ch, "", &q, &five).await;
    publish(&ch, "", &q, &just_over).await;
    let mut c = consume(&ch, &q, "big").await;
    for expected in [&one, &five, &just_over] {
        let d = next_delivery(&mut c).await;
        assert_eq!(d.data.len(), expected.len());
        assert!(d.data == *expected, "body bytes differ");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    // And through basic.get.
    ch.basic_cancel("big".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    publish(&ch, "", &q, &one).await;
    wait_ready(&ch, &q, 1).await;
    let m = get(&ch, &q).await.expect("get-ok");
    assert!(m.delivery.data == one, "body bytes differ via basic.get");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_body_round_trips() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "empty").await;
    let props = BasicProperties::default().with_message_id("empty-1".into());
    publish_with(&ch, "", &q, b"", props.clone()).await;
    publish_with(&ch, "", &q, b"", props.clone()).await;
    let m = get(&ch, &q).await.expect("get-ok");
    assert!(m.delivery.data.is_empty());
    assert_eq!(m.delivery.properties, props);
    let mut c = consume(&ch, &q, "").await;
    let d = next_delivery(&mut c).await;
    assert!(d.data.is_empty());
    assert_eq!(d.properties, props);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_empty_body_round_trips() {
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, _events) = rs::channel(&conn).await;
    let q = unique("rs-empty");
    rs::declare(&ch, &q, true).await;
    let (_tag, mut rx) = rs::consume(&ch, &q, "", false).await;
    rs::publish(&ch, "", &q, b"").await;
    rs::publish(&ch, "", &q, b"after").await;
    let m = rs::next_message(&mut rx).await;
    assert_eq!(m.content.expect("content"), b"");
    let m = rs::next_message(&mut rx).await;
    assert_eq!(m.content.expect("content"), b"after");
}

fn every_field_type_table() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("inner-string".into(), AMQPValue::LongString("deep".into()));
    nested.insert("inner-int".into(), AMQPValue::LongInt(-7));
    let mut deeper = FieldTable::default();
    deeper.insert("level".into(), AMQPValue::ShortShortUInt(3));
    nested.insert("deeper".into(), AMQPValue::FieldTable(deeper));

    let array = FieldArray::from(vec![
        AMQPValue::LongString("one".into()),
        AMQPValue::LongInt(2),
        AMQPValue::Boolean(true),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Double(0.5)])),
        AMQPValue::FieldTable(nested.clone()),
        AMQPValue::Void,
    ]);

    let mut t = FieldTable::default();
    t.insert("bool-true".into(), AMQPValue::Boolean(true));
    t.insert("bool-false".into(), AMQPValue::Boolean(false));
    t.insert("i8".into(), AMQPValue::ShortShortInt(i8::MIN));
    t.insert("u8".into(), AMQPValue::ShortShortUInt(u8::MAX));
    t.insert("i16".into(), AMQPValue::ShortInt(i16::MIN));
    t.insert("u16".into(), AMQPValue::ShortUInt(u16::MAX));
    t.insert("i32".into(), AMQPValue::LongInt(i32::MIN));
    t.insert("u32".into(), AMQPValue::LongUInt(u32::MAX));
    t.insert("i64".into(), AMQPValue::LongLongInt(i64::MIN));
    t.insert("f32".into(), AMQPValue::Float(1.5));
    t.insert("f64".into(), AMQPValue::Double(-2.25e300));
    t.insert(
        "decimal".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12345,
        }),
    );
    t.insert(
        "long-string".into(),
        AMQPValue::LongString(LongString::from("héllo wörld".as_bytes().to_vec())),
    );
    t.insert(
        "binary-string".into(),
        AMQPValue::LongString(LongString::from(vec![0u8, 255, 1, 254])),
    );
    t.insert("timestamp".into(), AMQPValue::Timestamp(1_700_000_000));
    t.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 2, 3, 250])),
    );
    t.insert("void".into(), AMQPValue::Void);
    t.insert("array".into(), AMQPValue::FieldArray(array));
    t.insert(
        "empty-array".into(),
        AMQPValue::FieldArray(FieldArray::default()),
    );
    t.insert("table".into(), AMQPValue::FieldTable(nested));
    t.insert(
        "empty-table".into(),
        AMQPValue::FieldTable(FieldTable::default()),
    );
    t
}

fn every_property() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(every_field_type_table())
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-123".into())
        .with_reply_to("reply-queue".into())
        .with_expiration("86400000".into())
        .with_message_id("msg-456".into())
        .with_timestamp(1_650_000_000)
        .with_type("order.created".into())
        .with_user_id("guest".into())
        .with_app_id("warren-tests".into())
        .with_cluster_id("cluster-a".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_basic_property_and_header_type_is_preserved() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q = exclusive_queue(&ch, "props").await;
    let props = every_property();
    publish_with(&ch, "", &q, b"{\"ok\":true}", props.clone()).await;
    publish_with(&ch, "", &q, b"{\"ok\":true}", props.clone()).await;
    // Only the headers set: every other flag is absent on the way out too.
    let headers_only = BasicProperties::default().with_headers(every_field_type_table());
    publish_with(&ch, "", &q, b"h", headers_only.clone()).await;

    let m = get(&ch, &q).await.expect("get-ok");
    assert_eq!(m.delivery.properties, props, "via basic.get");
    assert_eq!(m.delivery.data, b"{\"ok\":true}");
    let mut c = consume(&ch, &q, "").await;
    let d = next_delivery(&mut c).await;
    assert_eq!(d.properties, props, "via basic.deliver");
    let d = next_delivery(&mut c).await;
    assert_eq!(d.properties, headers_only);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_every_basic_property_and_header_type_is_preserved() {
    use amqprs::{DecimalValue as RsDecimal, FieldArray as RsArray, FieldTable as RsTable};
    use amqprs::{FieldValue as V, LongStr};
    fn key(s: &str) -> amqprs::FieldName {
        s.try_into().expect("field name")
    }
    let mut nested = RsTable::new();
    nested.insert(key("inner"), V::S(LongStr::try_from("deep").expect("str")));
    nested.insert(key("n"), V::I(-7));
    let array = RsArray::try_from(vec![
        V::S(LongStr::try_from("one").expect("str")),
        V::I(2),
        V::t(false),
        V::F(nested.clone()),
    ])
    .expect("array");
    let mut headers = RsTable::new();
    headers.insert(key("t"), V::t(true));
    headers.insert(key("b"), V::b(-128));
    headers.insert(key("B"), V::B(255));
    headers.insert(key("s"), V::s(-32768));
    headers.insert(key("u"), V::u(65535));
    headers.insert(key("I"), V::I(i32::MIN));
    headers.insert(key("i"), V::i(u32::MAX));
    headers.insert(key("l"), V::l(i64::MAX));
    headers.insert(key("f"), V::f(0.25));
    headers.insert(key("d"), V::d(1e-300));
    headers.insert(key("D"), V::D(RsDecimal::new(3, -1234)));
    headers.insert(
        key("S"),
        V::S(LongStr::try_from("long string").expect("str")),
    );
    headers.insert(key("A"), V::A(array));
    headers.insert(key("T"), V::T(1_700_000_001));
    headers.insert(key("F"), V::F(nested));
    headers.insert(key("V"), V::V);
    headers.insert(
        key("x"),
        V::x(vec![9u8, 8, 7].try_into().expect("byte array")),
    );

    let props = amqprs::BasicProperties::default()
        .with_content_type("text/plain")
        .with_content_encoding("utf-8")
        .with_headers(headers.clone())
        .with_delivery_mode(1)
        .with_priority(3)
        .with_correlation_id("c-1")
        .with_reply_to("r-1")
        .with_expiration("3600000")
        .with_message_id("m-1")
        .with_timestamp(1_600_000_000)
        .with_message_type("t-1")
        .with_user_id("guest")
        .with_app_id("a-1")
        .with_cluster_id("cl-1")
        .finish();

    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, _events) = rs::channel(&conn).await;
    let q = unique("rs-props");
    rs::declare(&ch, &q, true).await;
    let (_tag, mut rx) = rs::consume(&ch, &q, "", false).await;
    rs::publish_with(&ch, "", &q, b"body", props, false).await;
    let m = rs::next_message(&mut rx).await;
    let p = m.basic_properties.expect("properties");
    assert_eq!(p.content_type().map(String::as_str), Some("text/plain"));
    assert_eq!(p.content_encoding().map(String::as_str), Some("utf-8"));
    assert_eq!(p.headers(), Some(&headers));
    assert_eq!(p.delivery_mode(), Some(1));
    assert_eq!(p.priority(), Some(3));
    assert_eq!(p.correlation_id().map(String::as_str), Some("c-1"));
    assert_eq!(p.reply_to().map(String::as_str), Some("r-1"));
    assert_eq!(p.expiration().map(String::as_str), Some("3600000"));
    assert_eq!(p.message_id().map(String::as_str), Some("m-1"));
    assert_eq!(p.timestamp(), Some(1_600_000_000));
    assert_eq!(p.message_type().map(String::as_str), Some("t-1"));
    assert_eq!(p.user_id().map(String::as_str), Some("guest"));
    assert_eq!(p.app_id().map(String::as_str), Some("a-1"));
    assert_eq!(p.cluster_id().map(String::as_str), Some("cl-1"));
    assert_eq!(m.content.expect("content"), b"body");
}

// ---------------------------------------------------------------------------------------------
// More basic.qos / consumer lifecycle details
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_with_nonzero_prefetch_size_closes_the_connection_with_540() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    // lapin cannot set prefetch_size; amqprs can.
    let (rconn, mut conn_events) = rs::connect(&broker).await;
    let (rch, _events) = rs::channel(&rconn).await;
    let _ = rch
        .basic_qos(amqprs::channel::BasicQosArguments::new(4096, 10, false))
        .await;
    let close = within(5, "connection.close", conn_events.recv())
        .await
        .expect("connection.close");
    assert_eq!(
        close,
        (540, "NOT_IMPLEMENTED - prefetch_size!=0 (4096)".to_string())
    );
    // The other connection is unaffected.
    let _ = exclusive_queue(&ch, "qos-size-other").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_change_applies_only_to_consumers_started_after_it() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    let q1 = exclusive_queue(&ch, "qos-before").await;
    let q2 = exclusive_queue(&ch, "qos-after").await;
    for i in 0..5 {
        publish(&ch, "", &q1, format!("a{i}").as_bytes()).await;
        publish(&ch, "", &q2, format!("b{i}").as_bytes()).await;
    }
    wait_ready(&ch, &q1, 5).await;
    wait_ready(&ch, &q2, 5).await;
    ch.basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos 1");
    let mut c1 = consume(&ch, &q1, "c1").await;
    ch.basic_qos(3, BasicQosOptions::default())
        .await
        .expect("qos 3");
    let mut c2 = consume(&ch, &q2, "c2").await;
    assert_eq!(drain(&mut c1).await.len(), 1, "c1 keeps prefetch 1");
    assert_eq!(drain(&mut c2).await.len(), 3, "c2 got prefetch 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_sends_basic_cancel_to_its_consumers() {
    let broker = TestBroker::start().await;
    let (conn, _ce) = rs::connect(&broker).await;
    let (ch, mut events) = rs::channel(&conn).await;
    let (ch2, _events2) = rs::channel(&conn).await;
    let q = unique("rs-deleted-under-consumer");
    rs::declare(&ch, &q, true).await;
    let (tag, _rx) = rs::consume(&ch, &q, "watcher", false).await;
    within(
        5,
        "queue.delete",
        ch2.queue_delete(amqprs::channel::QueueDeleteArguments::new(&q)),
    )
    .await
    .expect("queue.delete");
    assert_eq!(
        rs::next_event(&mut events).await,
        rs::ChanEvent::Cancel(tag)
    );
    assert!(ch.is_open(), "the consumer's channel stays open");

    // lapin sees its consumer stream end.
    let lconn = connect(&broker).await;
    let lch = open_channel(&lconn).await;
    let lq = exclusive_queue(&lch, "deleted-under-lapin").await;
    let mut c = consume(&lch, &lq, "").await;
    delete_queue(&lch, &lq).await;
    assert!(
        within(5, "consumer end", c.next()).await.is_none(),
        "the consumer stream ends on the server's basic.cancel"
    );
    assert!(lch.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_an_unknown_consumer_tag_still_replies_cancel_ok() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = open_channel(&conn).await;
    within(
        5,
        "basic.cancel-ok",
        ch.basic_cancel("never-registered".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel-ok for an unknown tag");
    assert!(ch.status().connected());
    let _ = exclusive_queue(&ch, "after-unknown-cancel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_tags_are_per_channel_and_shared_by_get_and_consume() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch1 = open_channel(&conn).await;
    let ch2 = open_channel(&conn).await;
    let q = exclusive_queue(&ch1, "tags").await;
    for i in 0..4 {
        publish(&ch1, "", &q, format!("m{i}").as_bytes()).await;
    }
    let a = get(&ch1, &q).await.expect("get-ok");
    let b = get(&ch2, &q).await.expect("get-ok");
    assert_eq!(a.delivery.delivery_tag, 1);
    assert_eq!(b.delivery.delivery_tag, 1, "each channel counts from 1");
    // A consumer on ch1 continues ch1's sequence.
    let mut c = consume(&ch1, &q, "c").await;
    let d = next_delivery(&mut c).await;
    assert_eq!((body(&d).as_str(), d.delivery_tag), ("m2", 2));
    let d = next_delivery(&mut c).await;
    assert_eq!((body(&d).as_str(), d.delivery_tag), ("m3", 3));
}
