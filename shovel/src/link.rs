//! One shovel's task: connect both ends, set up the source queue (or the shovel's own
//! queue bound to the source exchange) and the destination, then forward.
//!
//! Forwarding is pipelined. Deliveries are republished as they arrive; the source's
//! prefetch window bounds how many are in flight. A second loop settles them in delivery
//! order: in on-confirm mode it waits for each destination confirm (they arrive in publish
//! order) and acknowledges the source with `multiple` in batches, so a message is acked at
//! the source only after the destination has confirmed it. When either end fails, both
//! connections are dropped (the source requeues everything unacked) and the task
//! reconnects after `reconnect-delay`, doubling up to a cap; the duplicates this can cause
//! are at most the messages in flight at the time, so at most the prefetch window.
//! `connection.blocked` at the destination pauses consuming until `connection.unblocked`.

use crate::definition::{AckMode, DeleteAfter, Destination, ShovelDef, Source};
use crate::endpoint::Endpoint;
use crate::status::{Kind, State, StatusCell};
use crate::Env;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Event, PublisherConfirm};
use serde_json::{Map, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// How long a connection attempt may take (TCP, TLS and the AMQP handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest delay between reconnection attempts (unless `reconnect-delay` is longer).
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(60);

/// What a running shovel task needs.
pub(crate) struct Ctx {
    pub def: Arc<ShovelDef>,
    pub kind: Kind,
    pub env: Arc<Env>,
    pub status: Arc<StatusCell>,
}

/// The connections of one session, closed when it ends however it ends.
#[derive(Default)]
struct Conns {
    src: Option<Connection>,
    dst: Option<Connection>,
}

impl Conns {
    async fn close(&mut self) {
        for c in [self.src.take(), self.dst.take()].into_iter().flatten() {
            if c.status().connected() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    c.close(200, "shovel stopped".into()),
                )
                .await;
            }
        }
    }
}

/// Runs a shovel until it is cancelled or terminates by itself (delete-after, or an error
/// with `reconnect-delay` 0); returns whether it finished by itself.
pub(crate) async fn run(ctx: Ctx, cancel: CancellationToken) -> bool {
    let def = ctx.def.clone();
    let base = def.reconnect_delay;
    let cap = base.max(MAX_RECONNECT_DELAY);
    let mut delay = base;
    let mut remaining = match def.delete_after {
        DeleteAfter::Count(n) => Some(n),
        DeleteAfter::Never | DeleteAfter::QueueLength => None,
    };
    let mut first = true;
    loop {
        ctx.status.set_state(State::Starting);
        let mut conns = Conns::default();
        let mut ran = false;
        let outcome = tokio::select! {
            r = session(&ctx, &mut conns, &mut remaining, &mut first, &mut ran) => Some(r),
            _ = cancel.cancelled() => None,
        };
        conns.close().await;
        ctx.status.reset_in_flight();
        match outcome {
            None => {
                ctx.status
                    .set_state(State::Terminated("stopped".to_owned()));
                return false;
            }
            Some(Ok(reason)) => {
                tracing::info!(shovel = %def.name, vhost = %def.vhost, %reason, "shovel finished");
                ctx.status.set_state(State::Terminated(reason));
                return true;
            }
            Some(Err(e)) => {
                tracing::warn!(shovel = %def.name, vhost = %def.vhost, error = %e, "shovel link failed");
                ctx.status.error(e.clone());
                if base.is_zero() {
                    ctx.status.set_state(State::Terminated(format!(
                        "{e} (reconnect-delay is 0: not reconnecting)"
                    )));
                    return false;
                }
                if ran {
                    delay = base;
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => {
                        ctx.status.set_state(State::Terminated("stopped".to_owned()));
                        return false;
                    }
                }
                delay = (delay * 2).min(cap);
                ctx.status.reconnected();
            }
        }
    }
}

async fn connect_any(ctx: &Ctx, uris: &[Endpoint]) -> Result<(Connection, String), String> {
    let mut errors = Vec::new();
    for e in uris {
        match e
            .connect(ctx.env.local.as_ref(), &ctx.def.name, CONNECT_TIMEOUT)
            .await
        {
            Ok(c) => return Ok((c, e.display())),
            Err(err) => errors.push(err),
        }
    }
    Err(errors.join("; "))
}

/// Declares `name` unless it exists: a passive declare first, so an existing queue with
/// other arguments is used as it is. Returns the queue's message count.
async fn ensure_queue(
    conn: &Connection,
    ch: Channel,
    name: &str,
    args: &Map<String, Value>,
    end: &str,
) -> Result<(Channel, u32), String> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    if let Ok(q) = ch
        .queue_declare(name.into(), passive, FieldTable::default())
        .await
    {
        return Ok((ch, q.message_count()));
    }
    // The failed passive declare closed the channel (404).
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| format!("{end}: failed to open a channel: {e}"))?;
    let q = ch
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            json_table(args),
        )
        .await
        .map_err(|e| format!("{end}: failed to declare queue '{name}': {e}"))?;
    Ok((ch, q.message_count()))
}

/// One connected session; `Ok` when the shovel is done (delete-after), `Err` when an end
/// failed. `ran` is set once forwarding started.
async fn session(
    ctx: &Ctx,
    conns: &mut Conns,
    remaining: &mut Option<u64>,
    first: &mut bool,
    ran: &mut bool,
) -> Result<String, String> {
    let def = &ctx.def;
    let (src, src_uri) = connect_any(ctx, &def.src_uris).await?;
    let src = &*conns.src.insert(src);
    let (dst, dst_uri) = connect_any(ctx, &def.dest_uris).await?;
    let dst = &*conns.dst.insert(dst);
    let src_events = src.events_listener();
    let dst_events = dst.events_listener();
    let sch = src
        .create_channel()
        .await
        .map_err(|e| format!("source: failed to open a channel: {e}"))?;
    let (sch, queue) = match &def.source {
        Source::Queue { name, args } => {
            let (sch, count) = ensure_queue(src, sch, name, args, "source").await?;
            if *first && def.delete_after == DeleteAfter::QueueLength {
                *remaining = Some(u64::from(count));
            }
            (sch, name.clone())
        }
        Source::Exchange { exchange, key } => {
            let q = sch
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| format!("source: failed to declare the shovel's queue: {e}"))?;
            let name = q.name().to_string();
            sch.queue_bind(
                name.as_str().into(),
                exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("source: failed to bind to exchange '{exchange}': {e}"))?;
            (sch, name)
        }
    };
    *first = false;
    let dch = dst
        .create_channel()
        .await
        .map_err(|e| format!("destination: failed to open a channel: {e}"))?;
    let dch = match &def.destination {
        Destination::Queue { name, args } => {
            ensure_queue(dst, dch, name, args, "destination").await?.0
        }
        Destination::Exchange { .. } | Destination::AsPublished => dch,
    };
    if def.ack_mode == AckMode::OnConfirm {
        dch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("destination: failed to enable confirms: {e}"))?;
    }
    if remaining == &Some(0) {
        return Ok("delete-after reached".to_owned());
    }
    if def.ack_mode != AckMode::NoAck && def.prefetch > 0 {
        sch.basic_qos(def.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| format!("source: basic.qos failed: {e}"))?;
    }
    let mut consumer = sch
        .basic_consume(
            queue.as_str().into(),
            format!("shovel-{}", def.name).into(),
            BasicConsumeOptions {
                no_ack: def.ack_mode == AckMode::NoAck,
                ..Default::default()
            },
            consumer_args(def),
        )
        .await
        .map_err(|e| format!("source: failed to consume from '{queue}': {e}"))?;
    ctx.status.set_ends(
        format!("{src_uri} {}", def.source_text()),
        format!("{dst_uri} {}", def.destination_text()),
    );
    let mut blocked = dst.status().blocked();
    ctx.status.set_state(if blocked {
        State::Blocked
    } else {
        State::Running
    });
    *ran = true;
    tracing::info!(shovel = %def.name, vhost = %def.vhost, source = %src_uri, destination = %dst_uri, "shovel running");

    let limit = *remaining;
    let acked = AtomicU64::new(0);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Sent)>();
    let forward = async {
        let tx = tx;
        let mut src_events = std::pin::pin!(src_events);
        let mut dst_events = std::pin::pin!(dst_events);
        let mut published = 0u64;
        loop {
            if limit.is_some_and(|l| published >= l) {
                return Ok::<(), String>(());
            }
            tokio::select! {
                ev = src_events.next() => match ev {
                    Some(Event::Error(e)) => return Err(format!("source: {e}")),
                    None => return Err("source: connection closed".to_owned()),
                    Some(_) => {}
                },
                ev = dst_events.next() => match ev {
                    Some(Event::ConnectionBlocked(reason)) => {
                        tracing::info!(shovel = %def.name, %reason, "destination blocked the shovel");
                        blocked = true;
                        ctx.status.set_state(State::Blocked);
                    }
                    Some(Event::ConnectionUnblocked) => {
                        blocked = false;
                        ctx.status.set_state(State::Running);
                    }
                    Some(Event::Error(e)) => return Err(format!("destination: {e}")),
                    None => return Err("destination: connection closed".to_owned()),
                    Some(_) => {}
                },
                d = consumer.next(), if !blocked => {
                    let d = match d {
                        None => return Err("source: the consumer was cancelled".to_owned()),
                        Some(Err(e)) => return Err(format!("source: {e}")),
                        Some(Ok(d)) => d,
                    };
                    ctx.status.received(1);
                    let (exchange, key) = target(&def.destination, &d);
                    let props = outgoing_properties(ctx, &d);
                    // The first poll queues the frames (in delivery order); waiting for them
                    // to be written, and then for the confirm, is the settle loop's job, so
                    // publishes are not serialised on the client's I/O thread.
                    let (ch, data) = (dch.clone(), d.data);
                    let mut publish: PublishFuture = Box::pin(async move {
                        ch.basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), &data, props).await
                    });
                    let first = std::future::poll_fn(|cx| Poll::Ready(publish.as_mut().poll(cx))).await;
                    let sent = match first {
                        Poll::Ready(r) => Sent::Done(r.map_err(|e| format!("destination: publish failed: {e}"))?),
                        Poll::Pending => Sent::Pending(publish),
                    };
                    published += 1;
                    match def.ack_mode {
                        AckMode::NoAck => {
                            if let Sent::Pending(p) = sent {
                                p.await.map_err(|e| format!("destination: publish failed: {e}"))?;
                            }
                            ctx.status.settled(1, 1);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        AckMode::OnPublish | AckMode::OnConfirm => {
                            let _ = tx.send((d.delivery_tag, sent));
                        }
                    }
                }
            }
        }
    };
    let settle = async {
        let batch_max = u64::from(def.prefetch / 2).max(1);
        let mut pending: Option<u64> = None;
        let mut batch = 0u64;
        loop {
            let (tag, sent) = match rx.try_recv() {
                Ok(p) => p,
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                    flush(ctx, &sch, &mut pending, &mut batch, &acked).await?;
                    match rx.recv().await {
                        Some(p) => p,
                        None => break,
                    }
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break,
            };
            let confirm = match sent {
                Sent::Done(c) => c,
                Sent::Pending(p) => p
                    .await
                    .map_err(|e| format!("destination: publish failed: {e}"))?,
            };
            let ok = match def.ack_mode {
                AckMode::OnPublish | AckMode::NoAck => true,
                AckMode::OnConfirm => match confirm.await {
                    Ok(Confirmation::Ack(_) | Confirmation::NotRequested) => true,
                    Ok(Confirmation::Nack(_)) => false,
                    Err(e) => return Err(format!("destination: {e}")),
                },
            };
            if ok {
                pending = Some(tag);
                batch += 1;
                if batch >= batch_max {
                    flush(ctx, &sch, &mut pending, &mut batch, &acked).await?;
                }
            } else {
                // Rejected by the destination: back to the source, as RabbitMQ's shovel does.
                flush(ctx, &sch, &mut pending, &mut batch, &acked).await?;
                sch.basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .await
                .map_err(|e| format!("source: basic.nack failed: {e}"))?;
                ctx.status.settled(1, 0);
            }
        }
        flush(ctx, &sch, &mut pending, &mut batch, &acked).await?;
        Ok(())
    };
    let result = tokio::try_join!(forward, settle);
    if let Some(r) = remaining.as_mut() {
        *r = r.saturating_sub(acked.load(Ordering::Relaxed));
    }
    result.map(|_| "delete-after reached".to_owned())
}

/// A publish whose frames are queued, not necessarily written yet.
type PublishFuture = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>;

/// A publish handed from the forward loop to the settle loop.
enum Sent {
    /// Written; its confirm may be pending.
    Done(PublisherConfirm),
    /// Queued; resolves once written.
    Pending(PublishFuture),
}

async fn flush(
    ctx: &Ctx,
    sch: &Channel,
    pending: &mut Option<u64>,
    batch: &mut u64,
    acked: &AtomicU64,
) -> Result<(), String> {
    if let Some(tag) = pending.take() {
        sch.basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .map_err(|e| format!("source: basic.ack failed: {e}"))?;
        ctx.status.settled(*batch, *batch);
        acked.fetch_add(*batch, Ordering::Relaxed);
        *batch = 0;
    }
    Ok(())
}

fn consumer_args(def: &ShovelDef) -> FieldTable {
    match def.value.get("src-consumer-args") {
        Some(Value::Object(m)) => json_table(m),
        _ => FieldTable::default(),
    }
}

/// Where a delivery is published.
fn target(dest: &Destination, d: &Delivery) -> (String, String) {
    match dest {
        Destination::Queue { name, .. } => (String::new(), name.clone()),
        Destination::Exchange { exchange, key } => (
            exchange.clone(),
            key.clone()
                .unwrap_or_else(|| d.routing_key.as_str().to_owned()),
        ),
        Destination::AsPublished => (
            d.exchange.as_str().to_owned(),
            d.routing_key.as_str().to_owned(),
        ),
    }
}

/// The delivery's properties with `dest-publish-properties` applied and the forward and
/// timestamp headers added.
fn outgoing_properties(ctx: &Ctx, d: &Delivery) -> BasicProperties {
    let def = &ctx.def;
    let mut p = d.properties.clone();
    for (k, v) in &def.publish_properties {
        let s = || v.as_str().unwrap_or_default();
        let n = || v.as_u64().unwrap_or_default();
        p = match k.as_str() {
            "content_type" => p.with_content_type(s().into()),
            "content_encoding" => p.with_content_encoding(s().into()),
            "delivery_mode" => p.with_delivery_mode(u8::try_from(n()).unwrap_or(2)),
            "priority" => p.with_priority(u8::try_from(n()).unwrap_or(u8::MAX)),
            "correlation_id" => p.with_correlation_id(s().into()),
            "reply_to" => p.with_reply_to(s().into()),
            "expiration" => p.with_expiration(s().into()),
            "message_id" => p.with_message_id(s().into()),
            "timestamp" => p.with_timestamp(n()),
            "type" => p.with_type(s().into()),
            "user_id" => p.with_user_id(s().into()),
            "app_id" => p.with_app_id(s().into()),
            "cluster_id" => p.with_cluster_id(s().into()),
            // Other keys are refused when the definition is parsed.
            _ => p,
        };
    }
    if def.add_forward_headers || def.add_timestamp_header {
        let mut headers = p.headers().clone().unwrap_or_default();
        if def.add_forward_headers {
            let mut t = FieldTable::default();
            let mut put = |k: &str, v: String| {
                t.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
            };
            put("shovelled-by", ctx.env.node_name.clone());
            put("shovel-type", ctx.kind.as_str().to_owned());
            put("shovel-name", def.name.clone());
            put("shovel-vhost", def.vhost.clone());
            if let Some(u) = def.src_uris.first() {
                put("src-uri", u.display());
            }
            match &def.source {
                Source::Queue { name, .. } => put("src-queue", name.clone()),
                Source::Exchange { exchange, key } => {
                    put("src-exchange", exchange.clone());
                    put("src-exchange-key", key.clone());
                }
            }
            if let Some(u) = def.dest_uris.first() {
                put("dest-uri", u.display());
            }
            match &def.destination {
                Destination::Queue { name, .. } => put("dest-queue", name.clone()),
                Destination::Exchange { exchange, key } => {
                    put("dest-exchange", exchange.clone());
                    if let Some(k) = key {
                        put("dest-exchange-key", k.clone());
                    }
                }
                Destination::AsPublished => {}
            }
            let mut list = match headers.inner().get("x-shovelled") {
                Some(AMQPValue::FieldArray(a)) => a.clone(),
                _ => FieldArray::default(),
            };
            list.push(AMQPValue::FieldTable(t));
            headers.insert("x-shovelled".into(), AMQPValue::FieldArray(list));
        }
        if def.add_timestamp_header {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            headers.insert("x-shovelled-timestamp".into(), AMQPValue::Timestamp(now));
        }
        p = p.with_headers(headers);
    }
    p
}

/// A JSON object as an AMQP field table (queue and consumer arguments).
pub(crate) fn json_table(m: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in m {
        t.insert(k.as_str().into(), json_value(v));
    }
    t
}

fn json_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(a) => {
            AMQPValue::FieldArray(a.iter().map(json_value).collect::<Vec<_>>().into())
        }
        Value::Object(m) => AMQPValue::FieldTable(json_table(m)),
    }
}
