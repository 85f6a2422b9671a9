//! Exchanges: the default exchange, the predeclared `amq.*` exchanges, declaration of every
//! built-in type with its flags and arguments, equivalence checks on redeclaration, deletion,
//! internal exchanges, exchange-to-exchange bindings (chains and cycles), auto-delete, and the
//! routing rules of direct, fanout, topic and headers exchanges, with RabbitMQ's reply codes
//! and reply texts.

use std::collections::BTreeMap;
use std::future::Future;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeUnbindOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use warren_tests::{unique, within, TestBroker};

// ---------------------------------------------------------------------------------------------
// lapin helpers (also used by the queues module)

pub(crate) async fn connect(broker: &TestBroker) -> Connection {
    within(
        10,
        "lapin connect",
        Connection::connect(broker.uri(), ConnectionProperties::default()),
    )
    .await
    .expect("lapin connects")
}

pub(crate) async fn channel(conn: &Connection) -> Channel {
    within(10, "open channel", conn.create_channel())
        .await
        .expect("open a channel")
}

/// A channel in confirm mode, so that a publish can be awaited until the broker has routed it.
pub(crate) async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = channel(conn).await;
    within(
        10,
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    ch
}

/// The reply code, reply text and hardness (connection-level) of a broker error.
pub(crate) fn amqp_error(err: &lapin::Error) -> (u16, String, bool) {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => (
            e.get_id(),
            e.get_message().to_string(),
            err.is_amqp_hard_error(),
        ),
        other => panic!("expected an AMQP error from the broker, got {other:?}"),
    }
}

/// Awaits `fut`, expects it to fail with a channel-level error, and returns code and text.
pub(crate) async fn channel_error<T: std::fmt::Debug>(
    what: &str,
    fut: impl Future<Output = lapin::Result<T>>,
) -> (u16, String) {
    let res = within(10, what, fut).await;
    let err = match res {
        Ok(v) => panic!("{what}: expected a channel error, got Ok({v:?})"),
        Err(e) => e,
    };
    let (code, text, hard) = amqp_error(&err);
    assert!(
        !hard,
        "{what}: expected a channel error, got connection error {code} {text}"
    );
    (code, text)
}

/// Awaits `fut`, expects it to fail with a connection-level error, and returns code and text.
pub(crate) async fn connection_error<T: std::fmt::Debug>(
    what: &str,
    fut: impl Future<Output = lapin::Result<T>>,
) -> (u16, String) {
    let res = within(10, what, fut).await;
    let err = match res {
        Ok(v) => panic!("{what}: expected a connection error, got Ok({v:?})"),
        Err(e) => e,
    };
    let (code, text, hard) = amqp_error(&err);
    assert!(
        hard,
        "{what}: expected a connection error, got channel error {code} {text}"
    );
    (code, text)
}

fn opts() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions::default()
}

fn passive() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

pub(crate) fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

pub(crate) fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    declare_exchange_with(ch, name, kind, opts(), FieldTable::default()).await;
}

async fn declare_exchange_with(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
    args: FieldTable,
) {
    within(
        10,
        "exchange.declare",
        ch.exchange_declare(name.into(), kind, options, args),
    )
    .await
    .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
}

async fn exchange_exists(conn: &Connection, name: &str) -> bool {
    let ch = channel(conn).await;
    match within(
        10,
        "passive exchange.declare",
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            passive(),
            FieldTable::default(),
        ),
    )
    .await
    {
        Ok(()) => {
            let _ = ch.close(200, "OK".into()).await;
            true
        }
        Err(e) => {
            let (code, text, _) = amqp_error(&e);
            assert_eq!(
                (code, text.as_str()),
                (
                    404,
                    format!("NOT_FOUND - no exchange '{name}' in vhost '/'").as_str()
                )
            );
            false
        }
    }
}

async fn delete_exchange(ch: &Channel, name: &str) {
    within(
        10,
        "exchange.delete",
        ch.exchange_delete(name.into(), ExchangeDeleteOptions::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("delete exchange {name}: {e}"));
}

/// Declares a fresh exclusive queue (so that it disappears with the test's connection).
async fn declare_queue(ch: &Channel, prefix: &str) -> String {
    let name = unique(prefix);
    within(
        10,
        "queue.declare",
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare queue");
    name
}

async fn bind_queue(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    within(
        10,
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            args,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("bind {queue} to {exchange} with {key:?}: {e}"));
}

async fn bind_exchange(ch: &Channel, destination: &str, source: &str, key: &str) {
    within(
        10,
        "exchange.bind",
        ch.exchange_bind(
            destination.into(),
            source.into(),
            key.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("bind exchange {destination} to {source} with {key:?}: {e}"));
}

/// Publishes on a confirm-mode channel and waits for the broker's ack, so that routing is
/// complete (the message is in every queue it was routed to) when this returns.
pub(crate) async fn publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    headers: Option<FieldTable>,
) {
    let mut props = BasicProperties::default();
    if let Some(h) = headers {
        props = props.with_headers(h);
    }
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
    let confirmation = within(10, "publisher confirm", confirm)
        .await
        .expect("publisher confirm");
    assert!(confirmation.is_ack(), "publish of {body:?} was not acked");
}

/// Takes every ready message out of `queue` (basic.get with no-ack) and returns the bodies.
pub(crate) async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let got = within(
            10,
            "basic.get",
            ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get");
        match got {
            Some(m) => bodies.push(String::from_utf8(m.delivery.data).expect("utf-8 body")),
            None => return bodies,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// amqprs helpers (also used by the queues module)

pub(crate) mod rs {
    use std::future::Future;
    use std::pin::Pin;

    use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
    use amqprs::channel::Channel;
    use amqprs::connection::{Connection, OpenConnectionArguments};
    use amqprs::error::Error;
    use amqprs::{Ack, BasicProperties, Cancel, Close, CloseChannel, Nack, Return};
    use tokio::sync::mpsc;
    use warren_tests::{within, TestBroker};

    type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

    /// What the broker told the client asynchronously.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Event {
        /// `channel.close` from the server: code and text.
        ChannelClose(u16, String),
        /// `connection.close` from the server: code and text.
        ConnectionClose(u16, String),
        /// `basic.cancel` from the server: consumer tag.
        Cancel(String),
        /// `basic.ack` (publisher confirm): delivery tag and multiple flag.
        Ack(u64, bool),
    }

    /// Forwards what the server sends on its own initiative to the test, as [`Event`]s.
    /// (The callback traits are `async_trait`s; their methods are written out desugared.)
    pub struct Recorder(pub mpsc::UnboundedSender<Event>);

    impl Recorder {
        fn send(&self, e: Event) {
            let _ = self.0.send(e);
        }
    }

    impl ChannelCallback for Recorder {
        fn close<'a, 'b, 'async_trait>(
            &'a mut self,
            _channel: &'b Channel,
            close: CloseChannel,
        ) -> BoxFut<'async_trait, Result<(), Error>>
        where
            'a: 'async_trait,
            'b: 'async_trait,
            Self: 'async_trait,
        {
            self.send(Event::ChannelClose(
                close.reply_code(),
                close.reply_text().clone(),
            ));
            Box::pin(std::future::ready(Ok(())))
        }

        fn cancel<'a, 'b, 'async_trait>(
            &'a mut self,
            _channel: &'b Channel,
            cancel: Cancel,
        ) -> BoxFut<'async_trait, Result<(), Error>>
        where
            'a: 'async_trait,
            'b: 'async_trait,
            Self: 'async_trait,
        {
            self.send(Event::Cancel(cancel.consumer_tag().clone()));
            Box::pin(std::future::ready(Ok(())))
        }

        fn flow<'a, 'b, 'async_trait>(
            &'a mut self,
            _channel: &'b Channel,
            active: bool,
        ) -> BoxFut<'async_trait, Result<bool, Error>>
        where
            'a: 'async_trait,
            'b: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(std::future::ready(Ok(active)))
        }

        fn publish_ack<'a, 'b, 'async_trait>(
            &'a mut self,
            _channel: &'b Channel,
            ack: Ack,
        ) -> BoxFut<'async_trait, ()>
        where
            'a: 'async_trait,
            'b: 'async_trait,
            Self: 'async_trait,
        {
            self.send(Event::Ack(ack.delivery_tag(), ack.mutiple()));
            Box::pin(std::future::ready(()))
        }

        fn publish_nack<'a, 'b, 'async_trait>(
            &'a mut self,
            _channel: &'b Channel,
            _nack: Nack,
        ) -> BoxFut<'async_trait, ()>
        where
            'a: 'async_trait,
            'b: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(std::future::ready(()))
        }

        fn publish_return<'a, 'b, 'async_trait>(
            &'a mut self,
            _channel: &'b Channel,
            _ret: Return,
            _basic_properties: BasicProperties,
            _content: Vec<u8>,
        ) -> BoxFut<'async_trait, ()>
        where
            'a: 'async_trait,
            'b: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(std::future::ready(()))
        }
    }

    impl ConnectionCallback for Recorder {
        fn close<'a, 'b, 'async_trait>(
            &'a mut self,
            _connection: &'b Connection,
            close: Close,
        ) -> BoxFut<'async_trait, Result<(), Error>>
        where
            'a: 'async_trait,
            'b: 'async_trait,
            Self: 'async_trait,
        {
            self.send(Event::ConnectionClose(
                close.reply_code(),
                close.reply_text().clone(),
            ));
            Box::pin(std::future::ready(Ok(())))
        }

        fn blocked<'a, 'b, 'async_trait>(
            &'a mut self,
            _connection: &'b Connection,
            _reason: String,
        ) -> BoxFut<'async_trait, ()>
        where
            'a: 'async_trait,
            'b: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(std::future::ready(()))
        }

        fn unblocked<'a, 'b, 'async_trait>(
            &'a mut self,
            _connection: &'b Connection,
        ) -> BoxFut<'async_trait, ()>
        where
            'a: 'async_trait,
            'b: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(std::future::ready(()))
        }

        fn secret_updated<'a, 'b, 'async_trait>(
            &'a mut self,
            _connection: &'b Connection,
        ) -> BoxFut<'async_trait, ()>
        where
            'a: 'async_trait,
            'b: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(std::future::ready(()))
        }
    }

    /// Opens an amqprs connection whose server-initiated events arrive on the receiver.
    pub async fn connect(broker: &TestBroker) -> (Connection, mpsc::UnboundedReceiver<Event>) {
        let addr = broker.addr();
        let args =
            OpenConnectionArguments::new(&addr.ip().to_string(), addr.port(), "guest", "guest");
        let conn = within(10, "amqprs connect", Connection::open(&args))
            .await
            .expect("amqprs connects");
        let (tx, rx) = mpsc::unbounded_channel();
        conn.register_callback(Recorder(tx))
            .await
            .expect("register connection callback");
        (conn, rx)
    }

    /// Opens a channel whose server-initiated events arrive on the receiver.
    pub async fn channel(conn: &Connection) -> (Channel, mpsc::UnboundedReceiver<Event>) {
        let ch = within(10, "amqprs open channel", conn.open_channel(None))
            .await
            .expect("amqprs opens a channel");
        let (tx, rx) = mpsc::unbounded_channel();
        ch.register_callback(Recorder(tx))
            .await
            .expect("register channel callback");
        (ch, rx)
    }

    /// Waits for the next event.
    pub async fn next_event(rx: &mut mpsc::UnboundedReceiver<Event>, what: &str) -> Event {
        within(10, what, rx.recv())
            .await
            .unwrap_or_else(|| panic!("{what}: event stream ended"))
    }
}

// ---------------------------------------------------------------------------------------------
// The default exchange

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_exchange_routes_to_the_queue_named_by_the_routing_key() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q1 = declare_queue(&ch, "default-x-1").await;
    let q2 = declare_queue(&ch, "default-x-2").await;

    publish(&ch, "", &q1, "to-q1", None).await;
    publish(&ch, "", &q2, "to-q2", None).await;
    publish(&ch, "", &unique("no-such-queue"), "to-nowhere", None).await;
    publish(&ch, "", &q1, "to-q1-again", None).await;

    assert_eq!(drain(&ch, &q1).await, ["to-q1", "to-q1-again"]);
    assert_eq!(drain(&ch, &q2).await, ["to-q2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_exchange_cannot_be_declared_deleted_or_bound_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let setup = channel(&conn).await;
    let q = declare_queue(&setup, "default-x-bind").await;
    let x = unique("default-x-peer");
    declare_exchange(&setup, &x, ExchangeKind::Direct).await;
    let expected = (
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange".to_string(),
    );

    let ch = channel(&conn).await;
    let got = channel_error(
        "declare the default exchange",
        ch.exchange_declare(
            "".into(),
            ExchangeKind::Direct,
            opts(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_eq!(got, expected, "exchange.declare ''");

    // Even a passive declare of "" is refused.
    let ch = channel(&conn).await;
    let got = channel_error(
        "passive declare of the default exchange",
        ch.exchange_declare(
            "".into(),
            ExchangeKind::Direct,
            passive(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_eq!(got, expected, "passive exchange.declare ''");

    let ch = channel(&conn).await;
    let got = channel_error(
        "delete the default exchange",
        ch.exchange_delete("".into(), ExchangeDeleteOptions::default()),
    )
    .await;
    assert_eq!(got, expected, "exchange.delete ''");

    let ch = channel(&conn).await;
    let got = channel_error(
        "bind a queue to the default exchange",
        ch.queue_bind(
            q.as_str().into(),
            "".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_eq!(got, expected, "queue.bind to ''");

    let ch = channel(&conn).await;
    let got = channel_error(
        "unbind a queue's implicit binding from the default exchange",
        ch.queue_unbind(
            q.as_str().into(),
            "".into(),
            q.as_str().into(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_eq!(got, expected, "queue.unbind from ''");

    let ch = channel(&conn).await;
    let got = channel_error(
        "exchange.bind with the default exchange as destination",
        ch.exchange_bind(
            "".into(),
            x.as_str().into(),
            "k".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_eq!(got, expected, "exchange.bind destination ''");

    let ch = channel(&conn).await;
    let got = channel_error(
        "exchange.bind with the default exchange as source",
        ch.exchange_bind(
            x.as_str().into(),
            "".into(),
            "k".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_eq!(got, expected, "exchange.bind source ''");

    // The connection and the other channels are unaffected; the default exchange still routes.
    let ch = confirm_channel(&conn).await;
    publish(&ch, "", &q, "still-routed", None).await;
    assert_eq!(drain(&ch, &q).await, ["still-routed"]);
    delete_exchange(&setup, &x).await;
}

// ---------------------------------------------------------------------------------------------
// Predeclared exchanges

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predeclared_amq_exchanges_exist_with_their_types() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let all = [
        ("amq.direct", ExchangeKind::Direct, "direct"),
        ("amq.fanout", ExchangeKind::Fanout, "fanout"),
        ("amq.topic", ExchangeKind::Topic, "topic"),
        ("amq.headers", ExchangeKind::Headers, "headers"),
        ("amq.match", ExchangeKind::Headers, "headers"),
    ];
    for (name, kind, _) in &all {
        let ch = channel(&conn).await;
        // Passive: the type in the request is not checked.
        within(
            10,
            "passive declare",
            ch.exchange_declare(
                (*name).into(),
                ExchangeKind::Fanout,
                passive(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("passive declare of {name}: {e}"));
        // An equivalent redeclaration (durable, same type) is allowed despite the amq. prefix.
        within(
            10,
            "equivalent declare",
            ch.exchange_declare(
                (*name).into(),
                kind.clone(),
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("equivalent declare of {name}: {e}"));
    }
    for (name, _, current) in &all {
        let wrong = if *current == "topic" {
            ExchangeKind::Direct
        } else {
            ExchangeKind::Topic
        };
        let wrong_name = if *current == "topic" {
            "direct"
        } else {
            "topic"
        };
        let ch = channel(&conn).await;
        let got = channel_error(
            "declare a predeclared exchange with another type",
            ch.exchange_declare(
                (*name).into(),
                wrong,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await;
        assert_eq!(
            got,
            (
                406,
                format!(
                    "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{name}' in vhost '/': received '{wrong_name}' but current is '{current}'"
                )
            )
        );
    }
    // The predeclared exchanges are durable: a non-durable redeclaration is inequivalent.
    let ch = channel(&conn).await;
    let got = channel_error(
        "declare amq.direct non-durable",
        ch.exchange_declare(
            "amq.direct".into(),
            ExchangeKind::Direct,
            opts(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_eq!(
        got,
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'amq.direct' in vhost '/': received 'false' but current is 'true'".to_string()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predeclared_amq_exchanges_cannot_be_deleted_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    for name in [
        "amq.direct",
        "amq.fanout",
        "amq.topic",
        "amq.headers",
        "amq.match",
    ] {
        let ch = channel(&conn).await;
        let got = channel_error(
            "delete a predeclared exchange",
            ch.exchange_delete(name.into(), ExchangeDeleteOptions::default()),
        )
        .await;
        assert_eq!(
            got,
            (
                403,
                format!("ACCESS_REFUSED - deletion of system exchange '{name}' in vhost '/' not allowed")
            )
        );
        assert!(exchange_exists(&conn, name).await, "{name} still exists");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predeclared_amq_exchanges_route_by_their_type() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    // Other tests may share these exchanges (the broker can be shared), so every key, header
    // and body is unique to this test and the fanout queue is checked for our body only.
    let tag = unique("predeclared");
    let direct_q = declare_queue(&ch, "amq-direct").await;
    let fanout_q = declare_queue(&ch, "amq-fanout").await;
    let topic_q = declare_queue(&ch, "amq-topic").await;
    let headers_q = declare_queue(&ch, "amq-headers").await;
    let match_q = declare_queue(&ch, "amq-match").await;
    bind_queue(&ch, &direct_q, "amq.direct", &tag, FieldTable::default()).await;
    bind_queue(
        &ch,
        &fanout_q,
        "amq.fanout",
        "ignored",
        FieldTable::default(),
    )
    .await;
    bind_queue(
        &ch,
        &topic_q,
        "amq.topic",
        &format!("{tag}.*"),
        FieldTable::default(),
    )
    .await;
    bind_queue(
        &ch,
        &headers_q,
        "amq.headers",
        "",
        table(&[("x-match", s("all")), ("test-tag", s(&tag))]),
    )
    .await;
    bind_queue(
        &ch,
        &match_q,
        "amq.match",
        "",
        table(&[("x-match", s("any")), ("test-tag", s(&tag))]),
    )
    .await;

    publish(&ch, "amq.direct", &tag, &format!("{tag}-direct"), None).await;
    publish(
        &ch,
        "amq.direct",
        &format!("{tag}.x"),
        &format!("{tag}-direct-miss"),
        None,
    )
    .await;
    publish(
        &ch,
        "amq.fanout",
        "anything",
        &format!("{tag}-fanout"),
        None,
    )
    .await;
    publish(
        &ch,
        "amq.topic",
        &format!("{tag}.word"),
        &format!("{tag}-topic"),
        None,
    )
    .await;
    publish(
        &ch,
        "amq.topic",
        &format!("{tag}.two.words"),
        &format!("{tag}-topic-miss"),
        None,
    )
    .await;
    let headers = table(&[("test-tag", s(&tag))]);
    publish(
        &ch,
        "amq.headers",
        "",
        &format!("{tag}-headers"),
        Some(headers.clone()),
    )
    .await;
    publish(&ch, "amq.match", "", &format!("{tag}-match"), Some(headers)).await;

    assert_eq!(drain(&ch, &direct_q).await, [format!("{tag}-direct")]);
    let fanout: Vec<String> = drain(&ch, &fanout_q)
        .await
        .into_iter()
        .filter(|b| b.starts_with(&tag))
        .collect();
    assert_eq!(fanout, [format!("{tag}-fanout")]);
    assert_eq!(drain(&ch, &topic_q).await, [format!("{tag}-topic")]);
    assert_eq!(drain(&ch, &headers_q).await, [format!("{tag}-headers")]);
    assert_eq!(drain(&ch, &match_q).await, [format!("{tag}-match")]);
}

// ---------------------------------------------------------------------------------------------
// Declaration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_each_type_with_flags_and_arguments_then_redeclare_equivalently() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let mut names = Vec::new();
    let kinds = [
        ExchangeKind::Direct,
        ExchangeKind::Fanout,
        ExchangeKind::Topic,
        ExchangeKind::Headers,
    ];
    for kind in kinds {
        for (durable, auto_delete, internal) in [
            (false, false, false),
            (true, false, false),
            (false, true, false),
            (false, false, true),
            (true, true, true),
        ] {
            let name = unique("declare-each");
            let options = ExchangeDeclareOptions {
                durable,
                auto_delete,
                internal,
                ..Default::default()
            };
            let args = table(&[
                ("alternate-exchange", s("some-ae")),
                ("x-custom", AMQPValue::LongInt(7)),
            ]);
            declare_exchange_with(&ch, &name, kind.clone(), options, args.clone()).await;
            // Same everything: declare-ok.
            declare_exchange_with(&ch, &name, kind.clone(), options, args).await;
            // Passive: declare-ok whatever the other fields say.
            declare_exchange_with(
                &ch,
                &name,
                ExchangeKind::Fanout,
                passive(),
                FieldTable::default(),
            )
            .await;
            names.push(name);
        }
    }
    for name in &names {
        delete_exchange(&ch, name).await;
        assert!(!exchange_exists(&conn, name).await, "{name} was deleted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_missing_exchange_closes_channel_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = unique("missing-x");
    let ch = channel(&conn).await;
    let got = channel_error(
        "passive declare of a missing exchange",
        ch.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Topic,
            passive(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_eq!(
        got,
        (
            404,
            format!("NOT_FOUND - no exchange '{name}' in vhost '/'")
        )
    );
    // Only the channel was closed.
    let ch = channel(&conn).await;
    declare_exchange(&ch, &name, ExchangeKind::Topic).await;
    delete_exchange(&ch, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_an_amq_prefixed_exchange_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    for name in [
        format!("amq.{}", unique("x")),
        "amq.".to_string(),
        "amq.direct2".to_string(),
    ] {
        let ch = channel(&conn).await;
        let got = channel_error(
            "declare amq.*",
            ch.exchange_declare(
                name.as_str().into(),
                ExchangeKind::Direct,
                opts(),
                FieldTable::default(),
            ),
        )
        .await;
        assert_eq!(
            got,
            (
                403,
                format!("ACCESS_REFUSED - exchange name '{name}' contains reserved prefix 'amq.*'")
            )
        );
        // It was not created: a passive declare says it does not exist.
        assert!(!exchange_exists(&conn, &name).await);
    }
    // The prefix check is case sensitive.
    let ch = channel(&conn).await;
    let name = format!("AMQ.{}", unique("x"));
    declare_exchange(&ch, &name, ExchangeKind::Direct).await;
    delete_exchange(&ch, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_properties_closes_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let setup = channel(&conn).await;
    let x = unique("ineq");
    declare_exchange(&setup, &x, ExchangeKind::Direct).await;
    let xa = unique("ineq-ae");
    declare_exchange_with(
        &setup,
        &xa,
        ExchangeKind::Direct,
        opts(),
        table(&[("alternate-exchange", s("ae1"))]),
    )
    .await;

    let with = |durable: bool, auto_delete: bool, internal: bool| ExchangeDeclareOptions {
        durable,
        auto_delete,
        internal,
        ..Default::default()
    };
    let cases: Vec<(&str, ExchangeKind, ExchangeDeclareOptions, FieldTable, String)> = vec![
        (
            &x,
            ExchangeKind::Fanout,
            opts(),
            FieldTable::default(),
            "inequivalent arg 'type' for exchange '{x}' in vhost '/': received 'fanout' but current is 'direct'".into(),
        ),
        (
            &x,
            ExchangeKind::Headers,
            opts(),
            FieldTable::default(),
            "inequivalent arg 'type' for exchange '{x}' in vhost '/': received 'headers' but current is 'direct'".into(),
        ),
        (
            &x,
            ExchangeKind::Direct,
            with(true, false, false),
            FieldTable::default(),
            "inequivalent arg 'durable' for exchange '{x}' in vhost '/': received 'true' but current is 'false'".into(),
        ),
        (
            &x,
            ExchangeKind::Direct,
            with(false, true, false),
            FieldTable::default(),
            "inequivalent arg 'auto_delete' for exchange '{x}' in vhost '/': received 'true' but current is 'false'".into(),
        ),
        (
            &x,
            ExchangeKind::Direct,
            with(false, false, true),
            FieldTable::default(),
            "inequivalent arg 'internal' for exchange '{x}' in vhost '/': received 'true' but current is 'false'".into(),
        ),
        // Several differences: the first in the order type, durable, auto_delete, internal,
        // arguments is reported.
        (
            &x,
            ExchangeKind::Topic,
            with(true, true, true),
            FieldTable::default(),
            "inequivalent arg 'type' for exchange '{x}' in vhost '/': received 'topic' but current is 'direct'".into(),
        ),
        (
            &x,
            ExchangeKind::Direct,
            with(true, true, true),
            FieldTable::default(),
            "inequivalent arg 'durable' for exchange '{x}' in vhost '/': received 'true' but current is 'false'".into(),
        ),
        (
            &x,
            ExchangeKind::Direct,
            with(false, true, true),
            table(&[("alternate-exchange", s("ae1"))]),
            "inequivalent arg 'auto_delete' for exchange '{x}' in vhost '/': received 'true' but current is 'false'".into(),
        ),
        (
            &x,
            ExchangeKind::Direct,
            with(false, false, true),
            table(&[("alternate-exchange", s("ae1"))]),
            "inequivalent arg 'internal' for exchange '{x}' in vhost '/': received 'true' but current is 'false'".into(),
        ),
        // Arguments: only alternate-exchange takes part in equivalence.
        (
            &x,
            ExchangeKind::Direct,
            opts(),
            table(&[("alternate-exchange", s("ae1"))]),
            "inequivalent arg 'alternate-exchange' for exchange '{x}' in vhost '/': received the value 'ae1' of type 'longstr' but current is none".into(),
        ),
        (
            &xa,
            ExchangeKind::Direct,
            opts(),
            FieldTable::default(),
            "inequivalent arg 'alternate-exchange' for exchange '{xa}' in vhost '/': received none but current is the value 'ae1' of type 'longstr'".into(),
        ),
        (
            &xa,
            ExchangeKind::Direct,
            opts(),
            table(&[("alternate-exchange", s("ae2"))]),
            "inequivalent arg 'alternate-exchange' for exchange '{xa}' in vhost '/': received 'ae2' but current is 'ae1'".into(),
        ),
    ];
    for (name, kind, options, args, text) in cases {
        let text = text.replace("{x}", &x).replace("{xa}", &xa);
        let ch = channel(&conn).await;
        let got = channel_error(&text, ch.exchange_declare(name.into(), kind, options, args)).await;
        assert_eq!(got, (406, format!("PRECONDITION_FAILED - {text}")));
    }

    // Arguments other than alternate-exchange are not compared, and passive declares compare
    // nothing.
    let ch = channel(&conn).await;
    declare_exchange_with(
        &ch,
        &x,
        ExchangeKind::Direct,
        opts(),
        table(&[("x-anything", s("else"))]),
    )
    .await;
    declare_exchange_with(
        &ch,
        &xa,
        ExchangeKind::Direct,
        opts(),
        table(&[
            ("alternate-exchange", s("ae1")),
            ("x-other", AMQPValue::LongInt(1)),
        ]),
    )
    .await;
    declare_exchange_with(
        &ch,
        &x,
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            passive: true,
            durable: true,
            auto_delete: true,
            internal: true,
            nowait: false,
        },
        table(&[("alternate-exchange", s("zzz"))]),
    )
    .await;
    // The exchange is unchanged: still a non-durable direct exchange.
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    delete_exchange(&ch, &x).await;
    delete_exchange(&ch, &xa).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_exchange_type_closes_connection_with_503() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let name = unique("bad-type");
    let got = connection_error(
        "declare with an unknown type",
        ch.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Custom("x-no-such-type".into()),
            opts(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_eq!(
        got,
        (
            503,
            "COMMAND_INVALID - unknown exchange type 'x-no-such-type'".to_string()
        )
    );

    // Types are case sensitive, and the type is checked even when the exchange already exists.
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let existing = unique("existing");
    declare_exchange(&ch, &existing, ExchangeKind::Direct).await;
    let got = connection_error(
        "redeclare with an unknown type",
        ch.exchange_declare(
            existing.as_str().into(),
            ExchangeKind::Custom("DIRECT".into()),
            opts(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_eq!(
        got,
        (
            503,
            "COMMAND_INVALID - unknown exchange type 'DIRECT'".to_string()
        )
    );

    // A passive declare does not look at the type.
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_exchange_with(
        &ch,
        &existing,
        ExchangeKind::Custom("x-no-such-type".into()),
        passive(),
        FieldTable::default(),
    )
    .await;
    delete_exchange(&ch, &existing).await;
    // The failed declaration created nothing.
    assert!(!exchange_exists(&conn, &name).await);
}

// ---------------------------------------------------------------------------------------------
// Deletion

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_exchange_removes_it_and_its_bindings() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let x = unique("del");
    declare_exchange(&ch, &x, ExchangeKind::Fanout).await;
    let q = declare_queue(&ch, "del-q").await;
    bind_queue(&ch, &q, &x, "", FieldTable::default()).await;
    publish(&ch, &x, "", "before", None).await;
    delete_exchange(&ch, &x).await;
    assert!(!exchange_exists(&conn, &x).await);

    // Redeclared under the same name, the exchange has no bindings left.
    declare_exchange(&ch, &x, ExchangeKind::Fanout).await;
    publish(&ch, &x, "", "after", None).await;
    assert_eq!(drain(&ch, &q).await, ["before"]);
    delete_exchange(&ch, &x).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_a_missing_exchange_is_ok() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let name = unique("never-declared");
    delete_exchange(&ch, &name).await;
    within(
        10,
        "delete if-unused of a missing exchange",
        ch.exchange_delete(
            name.as_str().into(),
            ExchangeDeleteOptions {
                if_unused: true,
                nowait: false,
            },
        ),
    )
    .await
    .expect("delete-ok");
    // The channel is still usable.
    declare_exchange(&ch, &name, ExchangeKind::Direct).await;
    delete_exchange(&ch, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_unused_of_a_bound_exchange_closes_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let setup = channel(&conn).await;
    let x = unique("in-use");
    declare_exchange(&setup, &x, ExchangeKind::Direct).await;
    let q = declare_queue(&setup, "in-use-q").await;
    bind_queue(&setup, &q, &x, "k", FieldTable::default()).await;

    let if_unused = ExchangeDeleteOptions {
        if_unused: true,
        nowait: false,
    };
    let ch = channel(&conn).await;
    let got = channel_error(
        "delete if-unused with a queue binding",
        ch.exchange_delete(x.as_str().into(), if_unused),
    )
    .await;
    assert_eq!(
        got,
        (
            406,
            format!("PRECONDITION_FAILED - exchange '{x}' in vhost '/' in use")
        )
    );
    assert!(exchange_exists(&conn, &x).await);

    // An exchange-to-exchange binding where it is the source also counts as a use.
    within(
        10,
        "queue.unbind",
        setup.queue_unbind(
            q.as_str().into(),
            x.as_str().into(),
            "k".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("unbind");
    let dest = unique("in-use-dest");
    declare_exchange(&setup, &dest, ExchangeKind::Fanout).await;
    bind_exchange(&setup, &dest, &x, "k").await;
    let ch = channel(&conn).await;
    let got = channel_error(
        "delete if-unused with an exchange binding",
        ch.exchange_delete(x.as_str().into(), if_unused),
    )
    .await;
    assert_eq!(
        got,
        (
            406,
            format!("PRECONDITION_FAILED - exchange '{x}' in vhost '/' in use")
        )
    );

    // Being only the destination of a binding does not count: `dest` is deleted.
    let ch = channel(&conn).await;
    within(
        10,
        "delete dest",
        ch.exchange_delete(dest.as_str().into(), if_unused),
    )
    .await
    .expect("if-unused delete of an exchange that is only a destination");
    assert!(!exchange_exists(&conn, &dest).await);
    // And now `x` has no bindings left, so if-unused succeeds.
    within(
        10,
        "delete x",
        ch.exchange_delete(x.as_str().into(), if_unused),
    )
    .await
    .expect("if-unused delete of an unused exchange");
    assert!(!exchange_exists(&conn, &x).await);
}

// ---------------------------------------------------------------------------------------------
// Internal exchanges

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_internal_exchange_closes_channel_with_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let setup = confirm_channel(&conn).await;
    let internal = unique("internal");
    declare_exchange_with(
        &setup,
        &internal,
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    let q = declare_queue(&setup, "internal-q").await;
    bind_queue(&setup, &q, &internal, "", FieldTable::default()).await;

    // The channel error arrives asynchronously; in confirm mode the pending confirm of the
    // publish reports it.
    let ch = confirm_channel(&conn).await;
    let confirm = within(
        10,
        "publish",
        ch.basic_publish(
            internal.as_str().into(),
            "".into(),
            BasicPublishOptions::default(),
            b"direct",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("the publish itself is asynchronous");
    let got = channel_error("the confirm of a publish to an internal exchange", confirm).await;
    assert_eq!(
        got,
        (
            403,
            format!(
                "ACCESS_REFUSED - cannot publish to internal exchange '{internal}' in vhost '/'"
            )
        )
    );

    // Messages reach an internal exchange through an exchange-to-exchange binding.
    let front = unique("internal-front");
    declare_exchange(&setup, &front, ExchangeKind::Direct).await;
    bind_exchange(&setup, &internal, &front, "k").await;
    publish(&setup, &front, "k", "via-front", None).await;
    publish(&setup, &front, "other", "not-routed", None).await;
    assert_eq!(drain(&setup, &q).await, ["via-front"]);
    delete_exchange(&setup, &front).await;
    delete_exchange(&setup, &internal).await;
}

// ---------------------------------------------------------------------------------------------
// Exchange-to-exchange bindings

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_binding_chain_direct_fanout_topic_delivers_through_every_hop() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let direct = unique("chain-direct");
    let fanout = unique("chain-fanout");
    let topic = unique("chain-topic");
    declare_exchange(&ch, &direct, ExchangeKind::Direct).await;
    declare_exchange(&ch, &fanout, ExchangeKind::Fanout).await;
    declare_exchange(&ch, &topic, ExchangeKind::Topic).await;
    bind_exchange(&ch, &fanout, &direct, "order.created").await;
    bind_exchange(&ch, &fanout, &direct, "order.paid").await;
    bind_exchange(&ch, &topic, &fanout, "ignored-by-fanout").await;
    let created = declare_queue(&ch, "chain-created").await;
    let all = declare_queue(&ch, "chain-all").await;
    let at_fanout = declare_queue(&ch, "chain-at-fanout").await;
    bind_queue(&ch, &created, &topic, "*.created", FieldTable::default()).await;
    bind_queue(&ch, &all, &topic, "order.#", FieldTable::default()).await;
    bind_queue(&ch, &at_fanout, &fanout, "", FieldTable::default()).await;

    publish(&ch, &direct, "order.created", "m1", None).await;
    publish(&ch, &direct, "order.paid", "m2", None).await;
    publish(&ch, &direct, "order.shipped", "m3", None).await;
    // Publishing to the middle of the chain works too, and the routing key is carried along.
    publish(&ch, &fanout, "order.created", "m4", None).await;
    publish(&ch, &fanout, "invoice.created", "m5", None).await;

    assert_eq!(drain(&ch, &created).await, ["m1", "m4", "m5"]);
    assert_eq!(drain(&ch, &all).await, ["m1", "m2", "m4"]);
    assert_eq!(drain(&ch, &at_fanout).await, ["m1", "m2", "m4", "m5"]);

    // exchange.unbind cuts the chain.
    within(
        10,
        "exchange.unbind",
        ch.exchange_unbind(
            topic.as_str().into(),
            fanout.as_str().into(),
            "ignored-by-fanout".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.unbind");
    publish(&ch, &direct, "order.created", "m6", None).await;
    assert!(drain(&ch, &created).await.is_empty());
    assert!(drain(&ch, &all).await.is_empty());
    assert_eq!(drain(&ch, &at_fanout).await, ["m6"]);

    for x in [&direct, &fanout, &topic] {
        delete_exchange(&ch, x).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_to_direct_binding_routes_by_the_original_key() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let fanout = unique("f2d-fanout");
    let direct = unique("f2d-direct");
    declare_exchange(&ch, &fanout, ExchangeKind::Fanout).await;
    declare_exchange(&ch, &direct, ExchangeKind::Direct).await;
    bind_exchange(&ch, &direct, &fanout, "").await;
    let qa = declare_queue(&ch, "f2d-a").await;
    let qb = declare_queue(&ch, "f2d-b").await;
    bind_queue(&ch, &qa, &direct, "a", FieldTable::default()).await;
    bind_queue(&ch, &qb, &direct, "b", FieldTable::default()).await;

    publish(&ch, &fanout, "a", "1", None).await;
    publish(&ch, &fanout, "b", "2", None).await;
    publish(&ch, &fanout, "c", "3", None).await;
    publish(&ch, &fanout, "a", "4", None).await;

    assert_eq!(drain(&ch, &qa).await, ["1", "4"]);
    assert_eq!(drain(&ch, &qb).await, ["2"]);
    delete_exchange(&ch, &fanout).await;
    delete_exchange(&ch, &direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_to_fanout_binding_forwards_matching_keys_to_every_queue() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let topic = unique("t2f-topic");
    let fanout = unique("t2f-fanout");
    declare_exchange(&ch, &topic, ExchangeKind::Topic).await;
    declare_exchange(&ch, &fanout, ExchangeKind::Fanout).await;
    bind_exchange(&ch, &fanout, &topic, "logs.*.error").await;
    let q1 = declare_queue(&ch, "t2f-1").await;
    let q2 = declare_queue(&ch, "t2f-2").await;
    bind_queue(&ch, &q1, &fanout, "", FieldTable::default()).await;
    bind_queue(&ch, &q2, &fanout, "whatever", FieldTable::default()).await;

    publish(&ch, &topic, "logs.db.error", "e1", None).await;
    publish(&ch, &topic, "logs.db.info", "i1", None).await;
    publish(&ch, &topic, "logs.web.error", "e2", None).await;
    publish(&ch, &topic, "logs.error", "e3", None).await;

    assert_eq!(drain(&ch, &q1).await, ["e1", "e2"]);
    assert_eq!(drain(&ch, &q2).await, ["e1", "e2"]);
    delete_exchange(&ch, &topic).await;
    delete_exchange(&ch, &fanout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_binding_cycles_deliver_each_message_to_each_queue_once() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let x1 = unique("cycle-1");
    let x2 = unique("cycle-2");
    let x3 = unique("cycle-3");
    declare_exchange(&ch, &x1, ExchangeKind::Fanout).await;
    declare_exchange(&ch, &x2, ExchangeKind::Fanout).await;
    declare_exchange(&ch, &x3, ExchangeKind::Topic).await;
    // x1 -> x2 -> x3 -> x1, plus x1 -> x1 and x2 <-> x1.
    bind_exchange(&ch, &x2, &x1, "").await;
    bind_exchange(&ch, &x3, &x2, "").await;
    bind_exchange(&ch, &x1, &x3, "#").await;
    bind_exchange(&ch, &x1, &x1, "").await;
    bind_exchange(&ch, &x1, &x2, "").await;
    let q1 = declare_queue(&ch, "cycle-q1").await;
    let q2 = declare_queue(&ch, "cycle-q2").await;
    let q3 = declare_queue(&ch, "cycle-q3").await;
    let q_all = declare_queue(&ch, "cycle-all").await;
    bind_queue(&ch, &q1, &x1, "", FieldTable::default()).await;
    bind_queue(&ch, &q2, &x2, "", FieldTable::default()).await;
    bind_queue(&ch, &q3, &x3, "k", FieldTable::default()).await;
    for x in [&x1, &x2] {
        bind_queue(&ch, &q_all, x, "", FieldTable::default()).await;
    }
    bind_queue(&ch, &q_all, &x3, "#", FieldTable::default()).await;

    publish(&ch, &x1, "k", "from-x1", None).await;
    publish(&ch, &x2, "k", "from-x2", None).await;
    publish(&ch, &x3, "k", "from-x3", None).await;
    publish(&ch, &x3, "other", "from-x3-other", None).await;

    // "from-x3-other" does not match x3's "k" binding to q3 but still goes around the cycle
    // via "#" to x1 and x2.
    assert_eq!(
        drain(&ch, &q1).await,
        ["from-x1", "from-x2", "from-x3", "from-x3-other"]
    );
    assert_eq!(
        drain(&ch, &q2).await,
        ["from-x1", "from-x2", "from-x3", "from-x3-other"]
    );
    assert_eq!(drain(&ch, &q3).await, ["from-x1", "from-x2", "from-x3"]);
    assert_eq!(
        drain(&ch, &q_all).await,
        ["from-x1", "from-x2", "from-x3", "from-x3-other"]
    );
    for x in [&x1, &x2, &x3] {
        delete_exchange(&ch, x).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_bind_with_a_missing_exchange_closes_channel_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let setup = channel(&conn).await;
    let present = unique("e2e-present");
    declare_exchange(&setup, &present, ExchangeKind::Direct).await;
    let missing_src = unique("e2e-missing-src");
    let missing_dst = unique("e2e-missing-dst");
    let not_found = |name: &str| {
        (
            404,
            format!("NOT_FOUND - no exchange '{name}' in vhost '/'"),
        )
    };

    let bind = |ch: Channel, destination: String, source: String| async move {
        ch.exchange_bind(
            destination.as_str().into(),
            source.as_str().into(),
            "k".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
    };
    let ch = channel(&conn).await;
    let got = channel_error(
        "missing destination",
        bind(ch, missing_dst.clone(), present.clone()),
    )
    .await;
    assert_eq!(got, not_found(&missing_dst));
    let ch = channel(&conn).await;
    let got = channel_error(
        "missing source",
        bind(ch, present.clone(), missing_src.clone()),
    )
    .await;
    assert_eq!(got, not_found(&missing_src));
    // Both missing: the source is reported.
    let ch = channel(&conn).await;
    let got = channel_error(
        "both missing",
        bind(ch, missing_dst.clone(), missing_src.clone()),
    )
    .await;
    assert_eq!(got, not_found(&missing_src));

    // exchange.unbind of a binding that does not exist, even between missing exchanges, is ok.
    let ch = channel(&conn).await;
    for (destination, source) in [(&present, &present), (&missing_dst, &missing_src)] {
        within(
            10,
            "exchange.unbind",
            ch.exchange_unbind(
                destination.as_str().into(),
                source.as_str().into(),
                "nope".into(),
                ExchangeUnbindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("unbind of a missing binding is ok");
    }
    delete_exchange(&ch, &present).await;
}

// ---------------------------------------------------------------------------------------------
// Auto-delete

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_exchange_is_deleted_when_its_last_queue_binding_is_removed() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let x = unique("ad");
    declare_exchange_with(
        &ch,
        &x,
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    // Never bound: it stays.
    assert!(exchange_exists(&conn, &x).await);

    let q1 = declare_queue(&ch, "ad-q1").await;
    let q2 = declare_queue(&ch, "ad-q2").await;
    bind_queue(&ch, &q1, &x, "a", FieldTable::default()).await;
    bind_queue(&ch, &q1, &x, "b", FieldTable::default()).await;
    bind_queue(&ch, &q2, &x, "a", FieldTable::default()).await;

    let unbind = |q: &str, key: &str| {
        ch.queue_unbind(
            q.into(),
            x.as_str().into(),
            key.into(),
            FieldTable::default(),
        )
    };
    within(10, "unbind", unbind(&q1, "a"))
        .await
        .expect("unbind");
    assert!(exchange_exists(&conn, &x).await);
    within(10, "unbind", unbind(&q1, "b"))
        .await
        .expect("unbind");
    assert!(exchange_exists(&conn, &x).await);
    within(10, "unbind", unbind(&q2, "a"))
        .await
        .expect("unbind");
    assert!(!exchange_exists(&conn, &x).await, "last binding gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_exchange_is_deleted_when_its_last_bound_queue_is_deleted() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let x = unique("ad-qdel");
    declare_exchange_with(
        &ch,
        &x,
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    let q = declare_queue(&ch, "ad-qdel-q").await;
    bind_queue(&ch, &q, &x, "", FieldTable::default()).await;
    within(
        10,
        "queue.delete",
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("queue.delete");
    assert!(!exchange_exists(&conn, &x).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_exchange_is_deleted_when_its_last_exchange_binding_is_removed() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let source = unique("ad-src");
    let dest = unique("ad-dst");
    let ad = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    declare_exchange_with(
        &ch,
        &source,
        ExchangeKind::Fanout,
        ad,
        FieldTable::default(),
    )
    .await;
    declare_exchange_with(&ch, &dest, ExchangeKind::Fanout, ad, FieldTable::default()).await;
    bind_exchange(&ch, &dest, &source, "").await;
    within(
        10,
        "exchange.unbind",
        ch.exchange_unbind(
            dest.as_str().into(),
            source.as_str().into(),
            "".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.unbind");
    // The source lost its last binding; the destination was never a source, so it stays.
    assert!(!exchange_exists(&conn, &source).await);
    assert!(exchange_exists(&conn, &dest).await);
    delete_exchange(&ch, &dest).await;
}

// ---------------------------------------------------------------------------------------------
// Routing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_exchange_routes_by_exact_key_over_multiple_bindings() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let x = unique("direct");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let q1 = declare_queue(&ch, "direct-1").await;
    let q2 = declare_queue(&ch, "direct-2").await;
    bind_queue(&ch, &q1, &x, "red", FieldTable::default()).await;
    bind_queue(&ch, &q1, &x, "green", FieldTable::default()).await;
    bind_queue(&ch, &q2, &x, "green", FieldTable::default()).await;
    bind_queue(&ch, &q2, &x, "", FieldTable::default()).await;
    // Binding twice with the same key is idempotent.
    bind_queue(&ch, &q2, &x, "green", FieldTable::default()).await;

    for key in ["red", "green", "blue", "", "Red", "red.x"] {
        publish(&ch, &x, key, &format!("key={key}"), None).await;
    }
    assert_eq!(drain(&ch, &q1).await, ["key=red", "key=green"]);
    assert_eq!(drain(&ch, &q2).await, ["key=green", "key="]);
    delete_exchange(&ch, &x).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_matching_several_bindings_of_one_queue_is_delivered_once() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let topic = unique("once-topic");
    let fanout = unique("once-fanout");
    declare_exchange(&ch, &topic, ExchangeKind::Topic).await;
    declare_exchange(&ch, &fanout, ExchangeKind::Fanout).await;
    let q = declare_queue(&ch, "once").await;
    bind_queue(&ch, &q, &topic, "a.*", FieldTable::default()).await;
    bind_queue(&ch, &q, &topic, "#", FieldTable::default()).await;
    bind_queue(&ch, &q, &topic, "a.b", FieldTable::default()).await;
    // And a second path to the same queue through another exchange.
    bind_exchange(&ch, &fanout, &topic, "a.#").await;
    bind_queue(&ch, &q, &fanout, "", FieldTable::default()).await;

    publish(&ch, &topic, "a.b", "one", None).await;
    publish(&ch, &topic, "z", "two", None).await;
    assert_eq!(drain(&ch, &q).await, ["one", "two"]);
    delete_exchange(&ch, &topic).await;
    delete_exchange(&ch, &fanout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_exchange_matches_star_and_hash_patterns() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let x = unique("topic");
    declare_exchange(&ch, &x, ExchangeKind::Topic).await;

    let keys = [
        "a.b.c", "a.x.c", "a.c", "a.b.b.c", "a", "a.b", "b.a", "c", "", "x.b.y", "b", "a..c",
    ];
    // pattern -> the keys it matches, in publish order.
    let table: &[(&str, &[&str])] = &[
        ("a.b.c", &["a.b.c"]),
        ("a.*.c", &["a.b.c", "a.x.c", "a..c"]),
        (
            "a.#",
            &["a.b.c", "a.x.c", "a.c", "a.b.b.c", "a", "a.b", "a..c"],
        ),
        ("#", &keys),
        ("*", &["a", "c", "b"]),
        ("#.c", &["a.b.c", "a.x.c", "a.c", "a.b.b.c", "c", "a..c"]),
        ("a.#.c", &["a.b.c", "a.x.c", "a.c", "a.b.b.c", "a..c"]),
        ("*.*", &["a.c", "a.b", "b.a"]),
        (
            "a.*.#",
            &["a.b.c", "a.x.c", "a.c", "a.b.b.c", "a.b", "a..c"],
        ),
        ("", &[""]),
        ("*.b.#", &["a.b.c", "a.b.b.c", "a.b", "x.b.y"]),
        ("#.b.#", &["a.b.c", "a.b.b.c", "a.b", "b.a", "x.b.y", "b"]),
        ("#.#", &keys),
        ("a..c", &["a..c"]),
        ("*.*.*", &["a.b.c", "a.x.c", "x.b.y", "a..c"]),
    ];
    let mut queues = Vec::new();
    for (pattern, _) in table {
        let q = declare_queue(&ch, "topic-q").await;
        bind_queue(&ch, &q, &x, pattern, FieldTable::default()).await;
        queues.push(q);
    }
    for key in keys {
        publish(&ch, &x, key, key, None).await;
    }
    let mut got = BTreeMap::new();
    let mut want = BTreeMap::new();
    for ((pattern, expected), q) in table.iter().zip(&queues) {
        got.insert(*pattern, drain(&ch, q).await);
        want.insert(
            *pattern,
            expected.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
        );
    }
    assert_eq!(got, want);
    delete_exchange(&ch, &x).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_exchange_matches_all_any_and_the_with_x_variants() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let x = unique("headers");
    declare_exchange(&ch, &x, ExchangeKind::Headers).await;

    let bindings: Vec<(&str, FieldTable)> = vec![
        (
            "all",
            table(&[
                ("x-match", s("all")),
                ("color", s("red")),
                ("size", AMQPValue::LongInt(10)),
            ]),
        ),
        (
            "any",
            table(&[
                ("x-match", s("any")),
                ("color", s("red")),
                ("size", AMQPValue::LongInt(10)),
            ]),
        ),
        // Without x-match, "all" is the default.
        (
            "default",
            table(&[("color", s("red")), ("size", AMQPValue::LongInt(10))]),
        ),
        // all/any ignore binding keys starting with "x-": all over nothing matches everything,
        (
            "all-only-x",
            table(&[("x-match", s("all")), ("x-tag", s("t"))]),
        ),
        // any over nothing matches nothing.
        (
            "any-only-x",
            table(&[("x-match", s("any")), ("x-tag", s("t"))]),
        ),
        (
            "all-with-x",
            table(&[
                ("x-match", s("all-with-x")),
                ("x-tag", s("t")),
                ("color", s("red")),
            ]),
        ),
        (
            "any-with-x",
            table(&[
                ("x-match", s("any-with-x")),
                ("x-tag", s("t")),
                ("color", s("green")),
            ]),
        ),
    ];
    let messages: Vec<(&str, Option<FieldTable>)> = vec![
        (
            "red-10",
            Some(table(&[
                ("color", s("red")),
                ("size", AMQPValue::LongInt(10)),
            ])),
        ),
        ("red", Some(table(&[("color", s("red"))]))),
        (
            "red-10-extra",
            Some(table(&[
                ("color", s("red")),
                ("size", AMQPValue::LongInt(10)),
                ("extra", s("e")),
            ])),
        ),
        (
            "blue-11",
            Some(table(&[
                ("color", s("blue")),
                ("size", AMQPValue::LongInt(11)),
            ])),
        ),
        ("no-headers", None),
        ("empty-headers", Some(FieldTable::default())),
        ("xtag", Some(table(&[("x-tag", s("t"))]))),
        (
            "xtag-red",
            Some(table(&[("x-tag", s("t")), ("color", s("red"))])),
        ),
        (
            "xtag-u-red",
            Some(table(&[("x-tag", s("u")), ("color", s("red"))])),
        ),
        ("green", Some(table(&[("color", s("green"))]))),
    ];
    let expected: &[(&str, &[&str])] = &[
        ("all", &["red-10", "red-10-extra"]),
        (
            "any",
            &["red-10", "red", "red-10-extra", "xtag-red", "xtag-u-red"],
        ),
        ("default", &["red-10", "red-10-extra"]),
        (
            "all-only-x",
            &[
                "red-10",
                "red",
                "red-10-extra",
                "blue-11",
                "no-headers",
                "empty-headers",
                "xtag",
                "xtag-red",
                "xtag-u-red",
                "green",
            ],
        ),
        ("any-only-x", &[]),
        ("all-with-x", &["xtag-red"]),
        ("any-with-x", &["xtag", "xtag-red", "green"]),
    ];

    let mut queues = Vec::new();
    for (name, args) in &bindings {
        let q = declare_queue(&ch, "headers-q").await;
        bind_queue(&ch, &q, &x, "routing-key-is-ignored", args.clone()).await;
        queues.push((*name, q));
    }
    for (body, headers) in messages {
        publish(&ch, &x, "any-key", body, headers).await;
    }
    let mut got = BTreeMap::new();
    for (name, q) in &queues {
        got.insert(*name, drain(&ch, q).await);
    }
    let want: BTreeMap<&str, Vec<String>> = expected
        .iter()
        .map(|(n, bodies)| (*n, bodies.iter().map(|b| b.to_string()).collect()))
        .collect();
    assert_eq!(got, want);
    delete_exchange(&ch, &x).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_exchange_void_values_match_presence_and_numbers_compare_by_value() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let x = unique("headers-types");
    declare_exchange(&ch, &x, ExchangeKind::Headers).await;

    let bindings: Vec<(&str, FieldTable)> = vec![
        (
            "void",
            table(&[("x-match", s("all")), ("flag", AMQPValue::Void)]),
        ),
        ("str-1", table(&[("n", s("1"))])),
        ("int-1", table(&[("n", AMQPValue::LongInt(1))])),
        ("double-2", table(&[("n", AMQPValue::Double(2.0))])),
        ("bool-true", table(&[("b", AMQPValue::Boolean(true))])),
    ];
    let messages: Vec<(&str, FieldTable)> = vec![
        ("flag-str", table(&[("flag", s("anything"))])),
        ("flag-int", table(&[("flag", AMQPValue::LongInt(0))])),
        ("flag-void", table(&[("flag", AMQPValue::Void)])),
        ("n-str-1", table(&[("n", s("1"))])),
        ("n-int-1", table(&[("n", AMQPValue::LongInt(1))])),
        // Numbers compare by value whatever their width or type: 1 (long), 1 (short) and
        // 1.0 (double) all equal a binding's 1 (signed int). Strings and booleans never equal
        // numbers.
        ("n-long-1", table(&[("n", AMQPValue::LongLongInt(1))])),
        ("n-short-1", table(&[("n", AMQPValue::ShortInt(1))])),
        ("n-int-2", table(&[("n", AMQPValue::LongInt(2))])),
        ("n-double-1", table(&[("n", AMQPValue::Double(1.0))])),
        ("b-true", table(&[("b", AMQPValue::Boolean(true))])),
        ("b-false", table(&[("b", AMQPValue::Boolean(false))])),
        ("b-int-1", table(&[("b", AMQPValue::LongInt(1))])),
        ("nothing", FieldTable::default()),
    ];
    let expected: &[(&str, &[&str])] = &[
        ("void", &["flag-str", "flag-int", "flag-void"]),
        ("str-1", &["n-str-1"]),
        ("int-1", &["n-int-1", "n-long-1", "n-short-1", "n-double-1"]),
        ("double-2", &["n-int-2"]),
        ("bool-true", &["b-true"]),
    ];

    let mut queues = Vec::new();
    for (name, args) in &bindings {
        let q = declare_queue(&ch, "headers-t").await;
        bind_queue(&ch, &q, &x, "", args.clone()).await;
        queues.push((*name, q));
    }
    for (body, headers) in messages {
        publish(&ch, &x, "", body, Some(headers)).await;
    }
    let mut got = BTreeMap::new();
    for (name, q) in &queues {
        got.insert(*name, drain(&ch, q).await);
    }
    let want: BTreeMap<&str, Vec<String>> = expected
        .iter()
        .map(|(n, bodies)| (*n, bodies.iter().map(|b| b.to_string()).collect()))
        .collect();
    assert_eq!(got, want);
    delete_exchange(&ch, &x).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_binding_with_invalid_x_match_closes_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let setup = channel(&conn).await;
    let x = unique("headers-bad");
    declare_exchange(&setup, &x, ExchangeKind::Headers).await;
    let q = declare_queue(&setup, "headers-bad-q").await;

    let cases: Vec<(AMQPValue, &str)> = vec![
        (
            s("foo"),
            "PRECONDITION_FAILED - Invalid x-match field value <<\"foo\">>; expected all, any, all-with-x, or any-with-x",
        ),
        (
            s("ALL"),
            "PRECONDITION_FAILED - Invalid x-match field value <<\"ALL\">>; expected all, any, all-with-x, or any-with-x",
        ),
        (
            AMQPValue::LongInt(1),
            "PRECONDITION_FAILED - Invalid x-match field type signedint (value 1); expected longstr",
        ),
    ];
    for (value, text) in cases {
        let ch = channel(&conn).await;
        let got = channel_error(
            text,
            ch.queue_bind(
                q.as_str().into(),
                x.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                table(&[("x-match", value), ("k", s("v"))]),
            ),
        )
        .await;
        assert_eq!(got, (406, text.to_string()));
    }
    // The failed binds left nothing behind: a message with k=v is routed nowhere.
    let ch = confirm_channel(&conn).await;
    publish(&ch, &x, "", "unrouted", Some(table(&[("k", s("v"))]))).await;
    assert!(drain(&ch, &q).await.is_empty());
    delete_exchange(&ch, &x).await;
}

// ---------------------------------------------------------------------------------------------
// The same behaviours through amqprs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_declares_each_exchange_type_and_reports_inequivalence_with_406() {
    use amqprs::channel::{ExchangeDeclareArguments, ExchangeDeleteArguments, ExchangeType};
    let broker = TestBroker::start().await;
    let (conn, _conn_events) = rs::connect(&broker).await;
    let (ch, _events) = rs::channel(&conn).await;
    let mut names = Vec::new();
    for kind in [
        ExchangeType::Direct,
        ExchangeType::Fanout,
        ExchangeType::Topic,
        ExchangeType::Headers,
    ] {
        let name = unique("rs-declare");
        let args = ExchangeDeclareArguments::of_type(&name, kind)
            .durable(true)
            .auto_delete(true)
            .finish();
        within(10, "declare", ch.exchange_declare(args.clone()))
            .await
            .expect("declare");
        within(10, "redeclare", ch.exchange_declare(args))
            .await
            .expect("equivalent redeclare");
        let passive = ExchangeDeclareArguments::new(&name, "fanout")
            .passive(true)
            .finish();
        within(10, "passive", ch.exchange_declare(passive))
            .await
            .expect("passive");
        names.push(name);
    }

    // Redeclare the direct one as fanout: the server closes the channel.
    let (bad, mut events) = rs::channel(&conn).await;
    let args = ExchangeDeclareArguments::new(&names[0], "fanout")
        .durable(true)
        .auto_delete(true)
        .finish();
    assert!(
        within(10, "inequivalent declare", bad.exchange_declare(args))
            .await
            .is_err()
    );
    assert_eq!(
        rs::next_event(&mut events, "channel.close").await,
        rs::Event::ChannelClose(
            406,
            format!(
                "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{}' in vhost '/': received 'fanout' but current is 'direct'",
                names[0]
            )
        )
    );

    // A passive declare of a missing exchange.
    let (bad, mut events) = rs::channel(&conn).await;
    let missing = unique("rs-missing");
    let args = ExchangeDeclareArguments::new(&missing, "direct")
        .passive(true)
        .finish();
    assert!(within(10, "passive declare", bad.exchange_declare(args))
        .await
        .is_err());
    assert_eq!(
        rs::next_event(&mut events, "channel.close").await,
        rs::Event::ChannelClose(
            404,
            format!("NOT_FOUND - no exchange '{missing}' in vhost '/'")
        )
    );

    for name in &names {
        within(
            10,
            "delete",
            ch.exchange_delete(ExchangeDeleteArguments::new(name)),
        )
        .await
        .expect("delete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_unknown_exchange_type_closes_connection_with_503() {
    use amqprs::channel::ExchangeDeclareArguments;
    let broker = TestBroker::start().await;
    let (conn, mut conn_events) = rs::connect(&broker).await;
    let (ch, _events) = rs::channel(&conn).await;
    let args = ExchangeDeclareArguments::new(&unique("rs-bad-type"), "x-no-such-type");
    assert!(within(10, "declare", ch.exchange_declare(args))
        .await
        .is_err());
    assert_eq!(
        rs::next_event(&mut conn_events, "connection.close").await,
        rs::Event::ConnectionClose(
            503,
            "COMMAND_INVALID - unknown exchange type 'x-no-such-type'".to_string()
        )
    );
}

/// Publishes on an amqprs channel in confirm mode and waits for the ack.
pub(crate) async fn rs_publish(
    ch: &amqprs::channel::Channel,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<rs::Event>,
    tag: u64,
    exchange: &str,
    key: &str,
    body: &str,
) {
    use amqprs::channel::BasicPublishArguments;
    within(
        10,
        "amqprs publish",
        ch.basic_publish(
            amqprs::BasicProperties::default(),
            body.as_bytes().to_vec(),
            BasicPublishArguments::new(exchange, key),
        ),
    )
    .await
    .expect("publish");
    assert_eq!(
        rs::next_event(events, "publisher confirm").await,
        rs::Event::Ack(tag, false)
    );
}

pub(crate) async fn rs_drain(ch: &amqprs::channel::Channel, queue: &str) -> Vec<String> {
    use amqprs::channel::BasicGetArguments;
    let mut out = Vec::new();
    loop {
        let got = within(
            10,
            "amqprs basic.get",
            ch.basic_get(BasicGetArguments::new(queue).no_ack(true).finish()),
        )
        .await
        .expect("basic.get");
        match got {
            Some((_, _, body)) => out.push(String::from_utf8(body).expect("utf-8")),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_topic_and_exchange_to_exchange_routing() {
    use amqprs::channel::{
        ConfirmSelectArguments, ExchangeBindArguments, ExchangeDeclareArguments,
        ExchangeDeleteArguments, ExchangeType, QueueBindArguments, QueueDeclareArguments,
    };
    let broker = TestBroker::start().await;
    let (conn, _conn_events) = rs::connect(&broker).await;
    let (ch, mut events) = rs::channel(&conn).await;
    within(
        10,
        "confirm.select",
        ch.confirm_select(ConfirmSelectArguments::default()),
    )
    .await
    .expect("confirm.select");

    let topic = unique("rs-topic");
    let fanout = unique("rs-fanout");
    for (name, kind) in [
        (&topic, ExchangeType::Topic),
        (&fanout, ExchangeType::Fanout),
    ] {
        within(
            10,
            "declare",
            ch.exchange_declare(ExchangeDeclareArguments::of_type(name, kind)),
        )
        .await
        .expect("declare");
    }
    within(
        10,
        "exchange.bind",
        ch.exchange_bind(ExchangeBindArguments::new(&fanout, &topic, "*.critical")),
    )
    .await
    .expect("exchange.bind");
    let mut queues = Vec::new();
    for (exchange, key) in [(&topic, "kern.*"), (&topic, "#.disk"), (&fanout, "")] {
        let (q, _, _) = within(
            10,
            "queue.declare",
            ch.queue_declare(QueueDeclareArguments::exclusive_server_named()),
        )
        .await
        .expect("declare")
        .expect("declare-ok");
        within(
            10,
            "queue.bind",
            ch.queue_bind(QueueBindArguments::new(&q, exchange, key)),
        )
        .await
        .expect("bind");
        queues.push(q);
    }
    let keys = [
        "kern.critical",
        "kern.disk",
        "app.disk",
        "app.critical",
        "kern.a.b",
    ];
    for (i, key) in keys.iter().enumerate() {
        rs_publish(&ch, &mut events, i as u64 + 1, &topic, key, key).await;
    }
    assert_eq!(
        rs_drain(&ch, &queues[0]).await,
        ["kern.critical", "kern.disk"]
    );
    assert_eq!(rs_drain(&ch, &queues[1]).await, ["kern.disk", "app.disk"]);
    assert_eq!(
        rs_drain(&ch, &queues[2]).await,
        ["kern.critical", "app.critical"]
    );
    for x in [&topic, &fanout] {
        within(
            10,
            "delete",
            ch.exchange_delete(ExchangeDeleteArguments::new(x)),
        )
        .await
        .expect("delete");
    }
}
