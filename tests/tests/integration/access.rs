//! Users, vhosts and permissions as RabbitMQ enforces them: configure / write / read
//! expressions checked on every declare, delete, bind, unbind, publish, consume, get and
//! purge with RabbitMQ's 403 texts; topic permissions; refusal at `connection.open`;
//! changes taking effect on open channels; deleting a user or a vhost closing its
//! connections.
//!
//! Users and vhosts are made with the admin CLI (`warrenctl`, or `rabbitmqctl` when the
//! tests run against RabbitMQ with `WARREN_TEST_EXTERNAL_URI`): the same commands and
//! flags, so every expectation here was checked against RabbitMQ 3.10.8.

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::future::Future;
use std::time::Duration;
use warren_tests::raw::RawClient;
use warren_tests::{eventually, unique, within, TestBroker};

/// A vhost with a user whose permissions are `configure ^c-`, `write ^w-`, `read ^r-`
/// (unless given others), and guest with full permissions to set things up. Removed at
/// the end when the broker is shared (RabbitMQ).
pub(crate) struct Tenant {
    pub vhost: String,
    pub user: String,
    pub pass: String,
    external: bool,
}

impl Tenant {
    pub(crate) async fn new(broker: &TestBroker, perms: [&str; 3]) -> Tenant {
        let vhost = unique("acl-vh");
        let user = unique("acl-user");
        let pass = "s3cret-pw".to_string();
        broker.admin_ok(&["add_vhost", &vhost]).await;
        broker.admin_ok(&["add_user", &user, &pass]).await;
        let [c, w, r] = perms;
        broker
            .admin_ok(&["set_permissions", "-p", &vhost, &user, c, w, r])
            .await;
        broker
            .admin_ok(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"])
            .await;
        Tenant {
            vhost,
            user,
            pass,
            external: broker.is_external(),
        }
    }

    pub(crate) async fn connect(&self, broker: &TestBroker) -> Connection {
        connect_as(broker, &self.user, &self.pass, &self.vhost).await
    }

    pub(crate) async fn guest(&self, broker: &TestBroker) -> Connection {
        connect_as(broker, "guest", "guest", &self.vhost).await
    }

    /// `access to KIND 'NAME' in vhost 'V' refused for user 'U'`.
    fn refused(&self, kind: &str, name: &str) -> Outcome {
        Err((
            403,
            format!(
                "ACCESS_REFUSED - access to {kind} '{name}' in vhost '{}' refused for user '{}'",
                self.vhost, self.user
            ),
        ))
    }

    fn topic_refused(&self, key: &str, exchange: &str) -> Outcome {
        Err((
            403,
            format!(
                "ACCESS_REFUSED - access to topic '{key}' in exchange '{exchange}' in vhost '{}' refused for user '{}'",
                self.vhost, self.user
            ),
        ))
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        if self.external {
            for args in [
                vec!["delete_vhost", self.vhost.as_str()],
                vec!["delete_user", self.user.as_str()],
            ] {
                let _ = std::process::Command::new("rabbitmqctl")
                    .args(&args)
                    .output();
            }
        }
    }
}

pub(crate) async fn connect_as(
    broker: &TestBroker,
    user: &str,
    pass: &str,
    vhost: &str,
) -> Connection {
    within(
        10,
        "lapin connect",
        Connection::connect(
            &broker.uri_for(user, pass, vhost),
            ConnectionProperties::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{user} connects to {vhost}: {e}"))
}

type Outcome = Result<(), (u16, String)>;

/// Runs `op` on a fresh channel: Ok, or the code and text the server closed it with.
async fn attempt<T, Fut>(conn: &Connection, op: impl FnOnce(Channel) -> Fut) -> Outcome
where
    Fut: Future<Output = lapin::Result<T>>,
{
    let ch = within(5, "channel.open", conn.create_channel())
        .await
        .expect("channel.open");
    match within(5, "the operation", op(ch.clone())).await {
        Ok(_) => {
            let _ = ch.close(200, "bye".into()).await;
            Ok(())
        }
        Err(e) => match e.kind() {
            lapin::ErrorKind::ProtocolError(p) => Err((p.get_id(), p.get_message().to_string())),
            other => panic!("expected a channel close, got {other:?}"),
        },
    }
}

async fn setup_exchanges(ch: &Channel, names: &[(&str, ExchangeKind)]) {
    for (name, kind) in names {
        ch.exchange_declare(
            (*name).into(),
            kind.clone(),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("guest declares an exchange");
    }
}

async fn setup_queues(ch: &Channel, names: &[&str]) {
    for name in names {
        ch.queue_declare(
            (*name).into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("guest declares a queue");
    }
}

/// Guest's channel in the tenant's vhost, with the usual exchanges and queues.
async fn fixture(broker: &TestBroker, t: &Tenant) -> (Connection, Channel) {
    let conn = t.guest(broker).await;
    let ch = conn.create_channel().await.expect("channel");
    setup_exchanges(
        &ch,
        &[
            ("c-x", ExchangeKind::Direct),
            ("w-x", ExchangeKind::Direct),
            ("r-x", ExchangeKind::Direct),
            ("other-x", ExchangeKind::Direct),
        ],
    )
    .await;
    setup_queues(&ch, &["w-q", "r-q", "other-q"]).await;
    (conn, ch)
}

fn args(pairs: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), AMQPValue::LongString((*v).into()));
    }
    t
}

fn declare_exchange(name: &str, arguments: FieldTable) -> impl FnOnce(Channel) -> DeclareX {
    let name = name.to_string();
    move |ch| {
        Box::pin(async move {
            ch.exchange_declare(
                name.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                arguments,
            )
            .await
        })
    }
}

type DeclareX = std::pin::Pin<Box<dyn Future<Output = lapin::Result<()>> + Send>>;

async fn publish(ch: Channel, exchange: &str, key: &str) -> lapin::Result<()> {
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        b"hello",
        BasicProperties::default(),
    )
    .await?
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_declare_needs_configure_permission() {
    let broker = TestBroker::start().await;
    let t = Tenant::new(&broker, ["^c-", "^w-", "^r-"]).await;
    let (_g, _gch) = fixture(&broker, &t).await;
    let conn = t.connect(&broker).await;
    let none = FieldTable::default;
    assert_eq!(
        attempt(&conn, declare_exchange("c-new", none())).await,
        Ok(())
    );
    assert_eq!(
        attempt(&conn, declare_exchange("other-new", none())).await,
        t.refused("exchange", "other-new")
    );
    // Redeclaring an existing exchange needs configure too, even a predeclared one.
    assert_eq!(
        attempt(&conn, declare_exchange("amq.direct", none())).await,
        t.refused("exchange", "amq.direct")
    );
    // Configure is checked before the reserved prefix.
    assert_eq!(
        attempt(&conn, declare_exchange("amq.foo", none())).await,
        t.refused("exchange", "amq.foo")
    );
    // passive=true needs no permission.
    let passive = attempt(&conn, |ch| async move {
        ch.exchange_declare(
            "other-x".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    });
    assert_eq!(passive.await, Ok(()));
    // An alternate exchange needs read on the new exchange and write on the alternate.
    assert_eq!(
        attempt(
            &conn,
            declare_exchange("c-ae", args(&[("alternate-exchange", "w-x")]))
        )
        .await,
        t.refused("exchange", "c-ae")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_exchange_needs_write_on_the_alternate() {
    let broker = TestBroker::start().await;
    // Configure and read cover the new exchange; write covers only w-*.
    let t = Tenant::new(&broker, ["^c-", "^w-", "^c-"]).await;
    let (_g, _gch) = fixture(&broker, &t).await;
    let conn = t.connect(&broker).await;
    assert_eq!(
        attempt(
            &conn,
            declare_exchange("c-ae1", args(&[("alternate-exchange", "w-x")]))
        )
        .await,
        Ok(())
    );
    assert_eq!(
        attempt(
            &conn,
            declare_exchange("c-ae2", args(&[("alternate-exchange", "other-x")]))
        )
        .await,
        t.refused("exchange", "other-x")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_delete_needs_configure_permission() {
    let broker = TestBroker::start().await;
    let t = Tenant::new(&broker, ["^c-", "^w-", "^r-"]).await;
    let (_g, _gch) = fixture(&broker, &t).await;
    let conn = t.connect(&broker).await;
    let delete = |name: &'static str| {
        move |ch: Channel| async move {
            ch.exchange_delete(name.into(), ExchangeDeleteOptions::default())
                .await
        }
    };
    assert_eq!(attempt(&conn, delete("c-x")).await, Ok(()));
    assert_eq!(
        attempt(&conn, delete("other-x")).await,
        t.refused("exchange", "other-x")
    );
    // Checked before the exchange is looked up.
    assert_eq!(
        attempt(&conn, delete("other-missing")).await,
        t.refused("exchange", "other-missing")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_declare_needs_configure_permission() {
    let broker = TestBroker::start().await;
    let t = Tenant::new(&broker, ["^c-", "^w-", "^r-"]).await;
    let (_g, _gch) = fixture(&broker, &t).await;
    let conn = t.connect(&broker).await;
    let declare = |name: &'static str, passive: bool| {
        move |ch: Channel| async move {
            ch.queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
        }
    };
    assert_eq!(attempt(&conn, declare("c-newq", false)).await, Ok(()));
    assert_eq!(
        attempt(&conn, declare("other-newq", false)).await,
        t.refused("queue", "other-newq")
    );
    assert_eq!(attempt(&conn, declare("other-q", true)).await, Ok(()));
    // A server-named queue is checked under its generated name.
    let (code, text) = attempt(&conn, declare("", false))
        .await
        .expect_err("refused");
    assert_eq!(code, 403);
    let prefix = "ACCESS_REFUSED - access to queue 'amq.gen-";
    assert!(text.starts_with(prefix), "{text}");
    assert!(
        text.ends_with(&format!(
            "' in vhost '{}' refused for user '{}'",
            t.vhost, t.user
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_exchange_needs_read_on_the_queue_and_write_on_the_exchange() {
    let broker = TestBroker::start().await;
    let t = Tenant::new(&broker, ["^c-", "^w-", "^c-"]).await;
    let (_g, _gch) = fixture(&broker, &t).await;
    let conn = t.connect(&broker).await;
    let declare = |name: &'static str, dlx: &'static str| {
        move |ch: Channel| async move {
            ch.queue_declare(
                name.into(),
                QueueDeclareOptions::default(),
                args(&[("x-dead-letter-exchange", dlx)]),
            )
            .await
        }
    };
    assert_eq!(attempt(&conn, declare("c-dlq1", "w-x")).await, Ok(()));
    assert_eq!(
        attempt(&conn, declare("c-dlq2", "other-x")).await,
        t.refused("exchange", "other-x")
    );
    // Without read on the queue itself.
    let t2 = Tenant::new(&broker, ["^c-", "^w-", "^r-"]).await;
    let (_g2, _gch2) = fixture(&broker, &t2).await;
    let conn2 = t2.connect(&broker).await;
    assert_eq!(
        attempt(&conn2, declare("c-dlq3", "w-x")).await,
        t2.refused("queue", "c-dlq3")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_delete_needs_configure_and_purge_needs_read() {
    let broker = TestBroker::start().await;
    let t = Tenant::new(&broker, ["^c-", "^w-", "^r-"]).await;
    let (_g, gch) = fixture(&broker, &t).await;
    setup_queues(&gch, &["c-q"]).await;
    let conn = t.connect(&broker).await;
    let delete = |name: &'static str| {
        move |ch: Channel| async move { ch.queue_delete(name.into(), Default::default()).await }
    };
    let purge = |name: &'static str| {
        move |ch: Channel| async move { ch.queue_purge(name.into(), Default::default()).await }
    };
    assert_eq!(attempt(&conn, delete("c-q")).await, Ok(()));
    assert_eq!(
        attempt(&conn, delete("other-q")).await,
        t.refused("queue", "other-q")
    );
    assert_eq!(
        attempt(&conn, delete("other-missing")).await,
        t.refused("queue", "other-missing")
    );
    assert_eq!(attempt(&conn, purge("r-q")).await, Ok(()));
    assert_eq!(
        attempt(&conn, purge("other-q")).await,
        t.refused("queue", "other-q")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_bind_and_unbind_need_write_on_the_queue_and_read_on_the_exchange() {
    let broker = TestBroker::start().await;
    let t = Tenant::new(&broker, ["^c-", "^w-", "^r-"]).await;
    let (_g, _gch) = fixture(&broker, &t).await;
    let conn = t.connect(&broker).await;
    let bind = |q: &'static str, x: &'static str| {
        move |ch: Channel| async move {
            ch.queue_bind(
                q.into(),
                x.into(),
                "k".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
        }
    };
    let unbind = |q: &'static str, x: &'static str| {
        move |ch: Channel| async move {
            ch.queue_unbind(q.into(), x.into(), "k".into(), FieldTable::default())
                .await
        }
    };
    assert_eq!(attempt(&conn, bind("w-q", "r-x")).await, Ok(()));
    assert_eq!(
        attempt(&conn, bind("other-q", "r-x")).await,
        t.refused("queue", "other-q")
    );
    assert_eq!(
        attempt(&conn, bind("w-q", "other-x")).await,
        t.refused("exchange", "other-x")
    );
    assert_eq!(
        attempt(&conn, bind("w-q", "")).await,
        Err((
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange".into()
        ))
    );
    // Permissions first, then existence.
    assert_eq!(
        attempt(&conn, bind("w-missing", "r-missing")).await,
        Err((
            404,
            format!("NOT_FOUND - no exchange 'r-missing' in vhost '{}'", t.vhost)
        ))
    );
    assert_eq!(
        attempt(&conn, unbind("other-q", "r-x")).await,
        t.refused("queue", "other-q")
    );
    assert_eq!(
        attempt(&conn, unbind("w-q", "other-x")).await,
        t.refused("exchange", "other-x")
    );
    assert_eq!(attempt(&conn, unbind("w-q", "r-x")).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_bind_and_unbind_need_write_on_the_destination_and_read_on_the_source() {
    let broker = TestBroker::start().await;
    let t = Tenant::new(&broker, ["^c-", "^w-", "^r-"]).await;
    let (_g, _gch) = fixture(&broker, &t).await;
    let conn = t.connect(&broker).await;
    let bind = |dest: &'static str, source: &'static str| {
        move |ch: Channel| async move {
            ch.exchange_bind(
                dest.into(),
                source.into(),
                "k".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
        }
    };
    let unbind = |dest: &'static str, source: &'static str| {
        move |ch: Channel| async move {
            ch.exchange_unbind(
                dest.into(),
                source.into(),
                "k".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
        }
    };
    assert_eq!(attempt(&conn, bind("w-x", "r-x")).await, Ok(()));
    assert_eq!(
        attempt(&conn, bind("other-x", "r-x")).await,
        t.refused("exchange", "other-x")
    );
    assert_eq!(
        attempt(&conn, bind("w-x", "other-x")).await,
        t.refused("exchange", "other-x")
    );
    assert_eq!(
        attempt(&conn, unbind("other-x", "r-x")).await,
        t.refused("exchange", "other-x")
    );
    assert_eq!(attempt(&conn, unbind("w-x", "r-x")).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_needs_write_on_the_exchange() {
    let broker = TestBroker::start().await;
    let t = Tenant::new(&broker, ["^c-", "^w-", "^r-"]).await;
    let (_g, _gch) = fixture(&broker, &t).await;
    let conn = t.connect(&broker).await;
    assert_eq!(
        attempt(&conn, |ch| async move { publish(ch, "w-x", "k").await }).await,
        Ok(())
    );
    assert_eq!(
        attempt(&conn, |ch| async move { publish(ch, "other-x", "k").await }).await,
        t.refused("exchange", "other-x")
    );
    // The default exchange is checked as amq.default.
    assert_eq!(
        attempt(&conn, |ch| async move { publish(ch, "", "r-q").await }).await,
        t.refused("exchange", "amq.default")
    );
    // Write permission is checked before the exchange is looked up.
    assert_eq!(
        attempt(
            &conn,
            |ch| async move { publish(ch, "w-missing", "k").await }
        )
        .await,
        Err((
            404,
            format!("NOT_FOUND - no exchange 'w-missing' in vhost '{}'", t.vhost)
        ))
    );
    assert_eq!(
        attempt(&conn, |ch| async move {
            publish(ch, "other-missing", "k").await
        })
        .await,
        t.refused("exchange", "other-missing")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_consume_need_read_on_the_queue() {
    let broker = TestBroker::start().await;
    let t = Tenant::new(&broker, ["^c-", "^w-", "^r-"]).await;
    let (_g, _gch) = fixture(&broker, &t).await;
    let conn = t.connect(&broker).await;
    let get = |q: &'static str| {
        move |ch: Channel| async move { ch.basic_get(q.into(), Default::default()).await }
    };
    let consume = |q: &'static str| {
        move |ch: Channel| async move {
            ch.basic_consume(
                q.into(),
                "".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
        }
    };
    assert_eq!(attempt(&conn, get("r-q")).await, Ok(()));
    assert_eq!(
        attempt(&conn, get("other-q")).await,
        t.refused("queue", "other-q")
    );
    assert_eq!(
        attempt(&conn, get("other-missing")).await,
        t.refused("queue", "other-missing")
    );
    assert_eq!(attempt(&conn, consume("r-q")).await, Ok(()));
    assert_eq!(
        attempt(&conn, consume("other-q")).await,
        t.refused("queue", "other-q")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_permissions_check_routing_keys_on_topic_exchanges() {
    let broker = TestBroker::start().await;
    let t = Tenant::new(&broker, [".*", ".*", ".*"]).await;
    let g = t.guest(&broker).await;
    let gch = g.create_channel().await.expect("channel");
    setup_exchanges(
        &gch,
        &[
            ("events", ExchangeKind::Topic),
            ("plain", ExchangeKind::Direct),
        ],
    )
    .await;
    setup_queues(&gch, &["q"]).await;
    let conn = t.connect(&broker).await;
    // No topic permissions for an exchange: everything is allowed.
    assert_eq!(
        attempt(
            &conn,
            |ch| async move { publish(ch, "events", "any.key").await }
        )
        .await,
        Ok(())
    );
    for x in ["events", "amq.topic", "plain"] {
        broker
            .admin_ok(&[
                "set_topic_permissions",
                "-p",
                &t.vhost,
                &t.user,
                x,
                "^{username}\\..*",
                "^{vhost}\\..*",
            ])
            .await;
    }
    let mine = format!("{}.news", t.user);
    let theirs = "someone.news".to_string();
    let (m, th) = (mine.clone(), theirs.clone());
    assert_eq!(
        attempt(&conn, |ch| async move { publish(ch, "events", &m).await }).await,
        Ok(())
    );
    assert_eq!(
        attempt(&conn, |ch| async move { publish(ch, "events", &th).await }).await,
        t.topic_refused(&theirs, "events")
    );
    let th = theirs.clone();
    assert_eq!(
        attempt(
            &conn,
            |ch| async move { publish(ch, "amq.topic", &th).await }
        )
        .await,
        t.topic_refused(&theirs, "amq.topic")
    );
    // Only topic exchanges are checked.
    assert_eq!(
        attempt(&conn, |ch| async move {
            publish(ch, "plain", "someone.news").await
        })
        .await,
        Ok(())
    );
    let bind = |key: String| {
        move |ch: Channel| async move {
            ch.queue_bind(
                "q".into(),
                "events".into(),
                key.as_str().into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
        }
    };
    let vhost_key = format!("{}.x", t.vhost);
    assert_eq!(attempt(&conn, bind(vhost_key)).await, Ok(()));
    assert_eq!(
        attempt(&conn, bind(mine.clone())).await,
        t.topic_refused(&mine, "events")
    );
    broker
        .admin_ok(&["clear_topic_permissions", "-p", &t.vhost, &t.user, "events"])
        .await;
    let th = theirs.clone();
    assert_eq!(
        attempt(&conn, |ch| async move { publish(ch, "events", &th).await }).await,
        Ok(())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_permissions_in_a_vhost_is_refused_at_connection_open() {
    let broker = TestBroker::start().await;
    let t = Tenant::new(&broker, [".*", ".*", ".*"]).await;
    let other = unique("acl-nobody");
    broker.admin_ok(&["add_user", &other, "pw"]).await;
    let result = Connection::connect(
        &broker.uri_for(&other, "pw", &t.vhost),
        ConnectionProperties::default(),
    )
    .await;
    if broker.is_external() {
        let _ = broker.admin(&["delete_user", &other]).await;
    }
    let e = result.expect_err("refused");
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => {
            assert_eq!(p.get_id(), 530);
            assert_eq!(
                p.get_message().to_string(),
                format!(
                    "NOT_ALLOWED - access to vhost '{}' refused for user '{other}'",
                    t.vhost
                )
            );
        }
        other => panic!("expected connection.close 530, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_changes_apply_to_open_channels() {
    let broker = TestBroker::start().await;
    let t = Tenant::new(&broker, [".*", ".*", ".*"]).await;
    let conn = t.connect(&broker).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare("q1".into(), Default::default(), FieldTable::default())
        .await
        .expect("allowed");
    broker
        .admin_ok(&[
            "set_permissions",
            "-p",
            &t.vhost,
            &t.user,
            "^q1$",
            ".*",
            ".*",
        ])
        .await;
    let e = ch
        .queue_declare("q2".into(), Default::default(), FieldTable::default())
        .await
        .expect_err("refused on the same channel");
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => {
            assert_eq!(p.get_id(), 403);
            assert_eq!(
                p.get_message().to_string(),
                format!(
                    "ACCESS_REFUSED - access to queue 'q2' in vhost '{}' refused for user '{}'",
                    t.vhost, t.user
                )
            );
        }
        other => panic!("expected a channel close, got {other:?}"),
    }
    broker
        .admin_ok(&["clear_permissions", "-p", &t.vhost, &t.user])
        .await;
    assert_eq!(
        attempt(&conn, |ch| async move {
            ch.queue_declare("q1".into(), Default::default(), FieldTable::default())
                .await
        })
        .await,
        t.refused("queue", "q1")
    );
}

type Events = std::pin::Pin<Box<dyn futures_lite::Stream<Item = lapin::Event> + Send>>;

fn listen(conn: &Connection) -> Events {
    Box::pin(conn.events_listener())
}

async fn expect_forced_close(events: &mut Events, text: &str) {
    use futures_lite::StreamExt;
    let got = within(15, "connection.close", async {
        loop {
            match events.next().await {
                Some(lapin::Event::Error(e)) => {
                    if let lapin::ErrorKind::ProtocolError(p) = e.kind() {
                        return (p.get_id(), p.get_message().to_string());
                    }
                }
                Some(_) => {}
                None => panic!("events ended without a close"),
            }
        }
    })
    .await;
    assert_eq!(got, (320, text.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_closes_its_connections() {
    let broker = TestBroker::start().await;
    let t = Tenant::new(&broker, [".*", ".*", ".*"]).await;
    let conn = t.connect(&broker).await;
    let mut events = listen(&conn);
    let guest = t.guest(&broker).await;
    broker.admin_ok(&["delete_user", &t.user]).await;
    expect_forced_close(
        &mut events,
        &format!("CONNECTION_FORCED - user '{}' is deleted", t.user),
    )
    .await;
    assert!(guest.status().connected(), "other users stay connected");
    let refused = Connection::connect(
        &broker.uri_for(&t.user, &t.pass, &t.vhost),
        ConnectionProperties::default(),
    )
    .await;
    assert!(refused.is_err(), "a deleted user cannot log in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_vhost_closes_its_connections_and_deletes_its_contents() {
    let broker = TestBroker::start().await;
    let t = Tenant::new(&broker, [".*", ".*", ".*"]).await;
    let (_conn, _ch) = fixture(&broker, &t).await;
    // A raw client reads the close frame even though RabbitMQ resets the socket right
    // after it (lapin may see only the reset).
    let mut raw = RawClient::open_as(broker.addr(), "guest", "guest", &t.vhost).await;
    raw.open_channel(1).await;
    let elsewhere = connect_as(&broker, "guest", "guest", "/").await;
    broker.admin_ok(&["delete_vhost", &t.vhost]).await;
    let close = within(10, "connection.close", raw.expect_connection_close()).await;
    let deleted = format!("CONNECTION_FORCED - vhost '{}' is deleted", t.vhost);
    // RabbitMQ races its vhost supervisor against the deletion and sometimes says "is
    // down" instead; Warren always says "is deleted".
    let down = format!("CONNECTION_FORCED - vhost '{}' is down", t.vhost);
    assert!(
        close == (320, deleted.clone()) || (broker.is_external() && close == (320, down)),
        "got {close:?}"
    );
    assert!(elsewhere.status().connected());
    let list = broker.admin(&["list_queues", "-p", &t.vhost]).await;
    assert_ne!(list.code, 0, "the vhost and its queues are gone");
    if let Some(shared) = broker.shared() {
        assert!(shared.vhost(&t.vhost).is_none());
        let left = shared.with_meta(|m| m.permissions.keys().any(|(_, v)| *v == t.vhost));
        assert!(!left, "its permissions are gone");
    }
    // Recreated, it starts empty.
    broker.admin_ok(&["add_vhost", &t.vhost]).await;
    broker
        .admin_ok(&["set_permissions", "-p", &t.vhost, "guest", ".*", ".*", ".*"])
        .await;
    let again = t.guest(&broker).await;
    let ch = again.create_channel().await.expect("channel");
    let e = ch
        .queue_declare(
            "w-q".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("the old queue is gone");
    assert!(matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404));
    assert!(
        eventually(Duration::from_secs(1), || async {
            again.status().connected()
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_limits_refuse_connections_and_queues_over_the_limit() {
    let broker = TestBroker::start().await;
    let t = Tenant::new(&broker, [".*", ".*", ".*"]).await;
    broker
        .admin_ok(&[
            "set_vhost_limits",
            "-p",
            &t.vhost,
            r#"{"max-connections": 1, "max-queues": 1}"#,
        ])
        .await;
    let conn = t.connect(&broker).await;
    let q1 = unique("c-limited");
    let declare = |name: String| {
        move |ch: Channel| async move {
            ch.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
        }
    };
    assert_eq!(attempt(&conn, declare(q1.clone())).await, Ok(()));
    // Redeclaring an existing queue is not a new queue.
    assert_eq!(attempt(&conn, declare(q1.clone())).await, Ok(()));
    let q2 = unique("c-over");
    assert_eq!(
        attempt(&conn, declare(q2.clone())).await,
        Err((
            406,
            format!(
                "PRECONDITION_FAILED - cannot declare queue '{q2}': queue limit in vhost '{}' (1) is reached",
                t.vhost
            )
        ))
    );
    let second = Connection::connect(
        &broker.uri_for(&t.user, &t.pass, &t.vhost),
        ConnectionProperties::default(),
    )
    .await
    .expect_err("over the connection limit");
    match second.kind() {
        lapin::ErrorKind::ProtocolError(p) => {
            assert_eq!(p.get_id(), 530);
            assert_eq!(
                p.get_message().to_string(),
                format!(
                    "NOT_ALLOWED - access to vhost '{}' refused for user '{}': connection limit (1) is reached",
                    t.vhost, t.user
                )
            );
        }
        other => panic!("expected connection.close 530, got {other:?}"),
    }
    // A negative limit is no limit.
    broker
        .admin_ok(&[
            "set_vhost_limits",
            "-p",
            &t.vhost,
            r#"{"max-connections": -1, "max-queues": -1}"#,
        ])
        .await;
    let again = t.connect(&broker).await;
    assert_eq!(attempt(&again, declare(q2)).await, Ok(()));
    let _ = again.close(200, "bye".into()).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_limits_refuse_connections_and_channels_over_the_limit() {
    let broker = TestBroker::start().await;
    let t = Tenant::new(&broker, [".*", ".*", ".*"]).await;
    let bad = broker
        .admin(&["set_user_limits", &t.user, r#"{"max-conns": 1}"#])
        .await;
    assert_eq!(bad.code, 69, "{bad:?}");
    assert!(
        bad.stderr
            .contains(r#"Unrecognised terms [{<<"max-conns">>,1}] in user-limits"#),
        "{bad:?}"
    );
    broker
        .admin_ok(&[
            "set_user_limits",
            &t.user,
            r#"{"max-connections": 2, "max-channels": 2}"#,
        ])
        .await;
    let a = t.connect(&broker).await;
    let b = t.connect(&broker).await;
    let refused = Connection::connect(
        &broker.uri_for(&t.user, &t.pass, &t.vhost),
        ConnectionProperties::default(),
    )
    .await
    .expect_err("over the connection limit");
    match refused.kind() {
        lapin::ErrorKind::ProtocolError(p) => assert_eq!(
            (p.get_id(), p.get_message().to_string()),
            (
                530,
                format!(
                    "NOT_ALLOWED - connection refused for user '{}': user connection limit (2) is reached",
                    t.user
                )
            )
        ),
        other => panic!("expected connection.close 530, got {other:?}"),
    }
    let _a1 = a.create_channel().await.expect("first channel");
    let _b1 = b.create_channel().await.expect("second channel");
    let third = within(5, "channel.open", a.create_channel())
        .await
        .expect_err("over the channel limit");
    match third.kind() {
        lapin::ErrorKind::ProtocolError(p) => assert_eq!(
            (p.get_id(), p.get_message().to_string()),
            (
                530,
                format!(
                    "NOT_ALLOWED - number of channels opened for user '{}' has reached the maximum allowed user limit of (2)",
                    t.user
                )
            )
        ),
        other => panic!("expected connection.close 530, got {other:?}"),
    }
    let limits = broker
        .admin_ok(&["list_user_limits", "--user", &t.user, "-q"])
        .await;
    assert!(
        limits.contains(r#""max-channels":2"#) && limits.contains(r#""max-connections":2"#),
        "{limits}"
    );
    broker
        .admin_ok(&["clear_user_limits", &t.user, "all"])
        .await;
    let c = t.connect(&broker).await;
    let _ = c.create_channel().await.expect("no limit any more");
    let _ = b.close(200, "bye".into()).await;
    let _ = c.close(200, "bye".into()).await;
}
