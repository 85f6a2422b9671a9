//! A channel's state machine: it assembles publishes (method, header, bodies) and routes
//! them, tracks confirms and transactions, registers consumers with their prefetch, assigns
//! delivery tags and settles acks, nacks and rejects with the queues. Handlers return
//! `Result<_, ChannelError>`; the connection decides whether that closes the channel or,
//! for a hard code, the connection.

pub mod confirm;
mod consume;
mod declare;
mod info;
mod publish;

pub use info::{ChannelInfo, ConsumerInfo};

use crate::connection::ConnState;
use crate::delivery::{ChannelFlow, ChannelKey, ChannelRef, Delivery};
use crate::error::ChannelError;
use crate::queue::{QueueHandle, Settle};
use confirm::ConfirmTracker;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use warren_amqp::{
    access, basic, channel, confirm as confirm_class, exchange, queue, tx, AMQPClass, ReplyCode,
};

/// A delivery the client has not acked yet.
struct UnackedRef {
    queue: QueueHandle,
    msg_id: u64,
    /// Counted against the channel's prefetch (consumer deliveries, not basic.get).
    counted: bool,
    /// Its consumer timed out and the queue took the message back: settling it is a no-op.
    stale: bool,
}

/// A consumer registered on this channel.
struct ConsumerRef {
    queue: QueueHandle,
    /// Deliveries need no ack.
    no_ack: bool,
    /// No other consumer may use the queue.
    exclusive: bool,
    /// Its prefetch limit.
    prefetch: u32,
}

/// A transaction's uncommitted work.
#[derive(Default)]
struct TxState {
    publishes: Vec<publish::Pending>,
    settles: Vec<(u64, UnackedRef, Settle)>,
}

/// One open channel.
pub struct Channel {
    id: u16,
    key: ChannelKey,
    chref: ChannelRef,
    flow: Arc<ChannelFlow>,
    /// basic.qos prefetch for consumers created from now on (0: none).
    prefetch: u32,
    consumers: HashMap<Arc<str>, ConsumerRef>,
    next_tag: u64,
    unacked: BTreeMap<u64, UnackedRef>,
    /// The publish whose content is being received.
    pending: Option<publish::Pending>,
    confirm: Option<ConfirmTracker>,
    tx: Option<TxState>,
    /// The last queue declared on this channel (an empty queue name means it).
    last_queue: Option<String>,
    /// The direct reply-to consumer: its tag and the name replies are routed with.
    reply: Option<(Arc<str>, String)>,
    /// The exchange and routing key of the last publish: a publisher mostly repeats them,
    /// and the next message then shares them instead of allocating its own.
    last_exchange: Arc<str>,
    last_routing_key: Arc<str>,
}

impl Channel {
    /// A newly opened channel.
    pub fn new(id: u16, epoch: u64, conn: &ConnState) -> Self {
        let key = ChannelKey {
            connection: conn.id,
            channel: id,
            epoch,
        };
        let flow = Arc::new(ChannelFlow::default());
        Channel {
            id,
            key,
            chref: ChannelRef {
                key,
                events: conn.events.clone(),
                flow: flow.clone(),
            },
            flow,
            prefetch: 0,
            consumers: HashMap::new(),
            next_tag: 1,
            unacked: BTreeMap::new(),
            pending: None,
            confirm: None,
            tx: None,
            last_queue: None,
            reply: None,
            last_exchange: Arc::from(""),
            last_routing_key: Arc::from(""),
        }
    }

    /// Which opening of the channel number this is.
    pub fn epoch(&self) -> u64 {
        self.key.epoch
    }

    /// A method may come: no publish is waiting for its content header or body.
    fn no_content_pending(&self) -> Result<(), ChannelError> {
        match &self.pending {
            None => Ok(()),
            Some(p) if p.has_header() => Err(expected_content_body()),
            Some(_) => Err(expected_content_header()),
        }
    }

    /// Handles a `basic.publish` decoded by hand (see [`warren_amqp::PublishFrame`]).
    pub fn publish_frame(
        &mut self,
        conn: &mut ConnState,
        p: &warren_amqp::PublishFrame,
    ) -> Result<(), ChannelError> {
        self.no_content_pending().map_err(|e| e.on(60, 40))?;
        self.start_publish(
            conn,
            p.exchange(),
            p.routing_key(),
            p.mandatory,
            p.immediate,
        )
        .map_err(|e| e.on(60, 40))
    }

    /// Handles a method (not channel.open/close, which the connection handles).
    pub async fn handle_method(
        &mut self,
        conn: &mut ConnState,
        m: AMQPClass,
    ) -> Result<(), ChannelError> {
        self.no_content_pending()?;
        match m {
            AMQPClass::Basic(b) => match b {
                basic::AMQPMethod::Publish(p) => self.start_publish(
                    conn,
                    p.exchange.as_str(),
                    p.routing_key.as_str(),
                    p.mandatory,
                    p.immediate,
                ),
                basic::AMQPMethod::Qos(q) => self.qos(conn, q),
                basic::AMQPMethod::Consume(c) => self.consume(conn, c).await,
                basic::AMQPMethod::Cancel(c) => self.cancel(conn, c).await,
                basic::AMQPMethod::Get(g) => self.get(conn, g).await,
                basic::AMQPMethod::Ack(a) => {
                    self.ack(a.delivery_tag, a.multiple, Settle::Ack).await
                }
                basic::AMQPMethod::Nack(n) => {
                    let how = if n.requeue {
                        Settle::Requeue
                    } else {
                        Settle::Discard
                    };
                    self.ack(n.delivery_tag, n.multiple, how).await
                }
                basic::AMQPMethod::Reject(r) => {
                    let how = if r.requeue {
                        Settle::Requeue
                    } else {
                        Settle::Discard
                    };
                    self.ack(r.delivery_tag, false, how).await
                }
                basic::AMQPMethod::Recover(r) => {
                    self.recover(r.requeue).await?;
                    conn.send_method(
                        self.id,
                        &AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                    );
                    Ok(())
                }
                basic::AMQPMethod::RecoverAsync(r) => self.recover(r.requeue).await,
                other => Err(not_from_client(&AMQPClass::Basic(other))),
            },
            AMQPClass::Exchange(x) => match x {
                exchange::AMQPMethod::Declare(d) => self.exchange_declare(conn, d).await,
                exchange::AMQPMethod::Delete(d) => self.exchange_delete(conn, d).await,
                exchange::AMQPMethod::Bind(b) => self.exchange_bind(conn, b).await,
                exchange::AMQPMethod::Unbind(u) => self.exchange_unbind(conn, u).await,
                other => Err(not_from_client(&AMQPClass::Exchange(other))),
            },
            AMQPClass::Queue(q) => match q {
                queue::AMQPMethod::Declare(d) => self.queue_declare(conn, d).await,
                queue::AMQPMethod::Bind(b) => self.queue_bind(conn, b).await,
                queue::AMQPMethod::Unbind(u) => self.queue_unbind(conn, u).await,
                queue::AMQPMethod::Purge(p) => self.queue_purge(conn, p).await,
                queue::AMQPMethod::Delete(d) => self.queue_delete(conn, d).await,
                other => Err(not_from_client(&AMQPClass::Queue(other))),
            },
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) => {
                if !f.active {
                    // RabbitMQ does not let clients stop deliveries this way (use basic.qos).
                    return Err(ChannelError::new(ReplyCode::NotImplemented, "active=false"));
                }
                self.flow.set_paused(!f.active);
                conn.send_method(
                    self.id,
                    &AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: f.active,
                    })),
                );
                Ok(())
            }
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(_)) => Ok(()),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                conn.send_method(
                    self.id,
                    &AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
                Ok(())
            }
            AMQPClass::Confirm(confirm_class::AMQPMethod::Select(s)) => {
                if self.tx.is_some() {
                    return Err(ChannelError::precondition(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if self.confirm.is_none() {
                    self.confirm = Some(ConfirmTracker::default());
                }
                if !s.nowait {
                    conn.send_method(
                        self.id,
                        &AMQPClass::Confirm(confirm_class::AMQPMethod::SelectOk(
                            confirm_class::SelectOk {},
                        )),
                    );
                }
                Ok(())
            }
            AMQPClass::Tx(t) => self.handle_tx(conn, t).await,
            other => Err(not_from_client(&other)),
        }
    }

    async fn handle_tx(
        &mut self,
        conn: &mut ConnState,
        t: tx::AMQPMethod,
    ) -> Result<(), ChannelError> {
        let reply = match t {
            tx::AMQPMethod::Select(_) => {
                if self.confirm.is_some() {
                    return Err(ChannelError::precondition(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                if self.tx.is_none() {
                    self.tx = Some(TxState::default());
                }
                tx::AMQPMethod::SelectOk(tx::SelectOk {})
            }
            tx::AMQPMethod::Commit(_) => {
                let Some(state) = self.tx.take() else {
                    return Err(ChannelError::precondition("channel is not transactional"));
                };
                self.tx = Some(TxState::default());
                for p in state.publishes {
                    self.route_and_deliver(conn, p).await;
                }
                self.apply_settles(state.settles).await;
                tx::AMQPMethod::CommitOk(tx::CommitOk {})
            }
            tx::AMQPMethod::Rollback(_) => {
                let Some(state) = self.tx.take() else {
                    return Err(ChannelError::precondition("channel is not transactional"));
                };
                self.tx = Some(TxState::default());
                // Acks taken back: the deliveries are unacked again, under their old tags.
                for (tag, u, _) in state.settles {
                    self.unacked.insert(tag, u);
                }
                tx::AMQPMethod::RollbackOk(tx::RollbackOk {})
            }
            other => return Err(not_from_client(&AMQPClass::Tx(other))),
        };
        conn.send_method(self.id, &AMQPClass::Tx(reply));
        Ok(())
    }

    /// A queue confirmed (or refused) a publish. The confirms go out with
    /// `send_confirms`, once per batch of events, so that runs fold into multiple acks.
    pub fn confirmed(&mut self, seq: u64, ok: bool) {
        if let Some(t) = self.confirm.as_mut() {
            t.answer(seq, ok);
        }
    }

    /// Writes the confirms that can be sent now.
    pub fn send_confirms(&mut self, conn: &mut ConnState) {
        let Some(t) = self.confirm.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        t.drain(&mut out);
        for (tag, multiple, ack) in out {
            if ack {
                warren_amqp::frame::encode_ack(&mut conn.out, self.id, tag, multiple);
            } else {
                warren_amqp::frame::encode_nack(&mut conn.out, self.id, tag, multiple);
            }
        }
    }

    /// Writes a delivery to the client (or hands it back if its consumer is gone).
    pub async fn deliver(&mut self, conn: &mut ConnState, d: Delivery) {
        if !self.consumers.contains_key(&d.consumer_tag) {
            self.flow.written(1);
            if !d.no_ack {
                self.flow.settled(1);
            }
            return_delivery(d).await;
            return;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        conn.counts.delivered += 1;
        conn.counts.redelivered += u64::from(d.redelivered);
        warren_amqp::frame::encode_deliver(
            &mut conn.out,
            self.id,
            &d.consumer_tag,
            tag,
            d.redelivered,
            &d.msg.exchange,
            &d.msg.routing_key,
        );
        conn.send_content(self.id, d.msg.properties.raw(), &d.msg.body);
        conn.count_delivery(&self.flow);
        if !d.no_ack {
            self.unacked.insert(
                tag,
                UnackedRef {
                    queue: d.queue,
                    msg_id: d.msg_id,
                    counted: true,
                    stale: false,
                },
            );
        }
    }

    /// The queue cancelled a consumer (it was deleted): tell the client if it understands.
    pub fn consumer_cancelled(&mut self, conn: &mut ConnState, tag: &str) {
        if self.consumers.remove(tag).is_some() && conn.consumer_cancel_notify {
            conn.send_method(self.id, &warren_amqp::method::basic_cancel(tag));
        }
    }

    /// A direct reply-to reply arrived for this channel's reply consumer.
    pub fn deliver_reply(
        &mut self,
        conn: &mut ConnState,
        tag: &str,
        msg: &crate::message::Message,
    ) {
        if self.reply.as_ref().is_none_or(|(t, _)| &**t != tag) {
            return;
        }
        let delivery_tag = self.next_tag;
        self.next_tag += 1;
        conn.counts.delivered += 1;
        warren_amqp::frame::encode_deliver(
            &mut conn.out,
            self.id,
            tag,
            delivery_tag,
            false,
            &msg.exchange,
            &msg.routing_key,
        );
        warren_amqp::frame::encode_content(
            &mut conn.out,
            self.id,
            msg.properties.raw(),
            &msg.body,
            conn.frame_max,
        );
    }

    /// A queue cancelled one of this channel's consumers for holding deliveries unacked too
    /// long and took them back: their tags become no-ops (a late ack must not close the
    /// channel nor ack a redelivery), their credit returns, and the client hears
    /// `basic.cancel` if it understands it.
    pub fn consumer_timed_out(
        &mut self,
        conn: &mut ConnState,
        tag: &str,
        queue: &QueueHandle,
        msg_ids: &[u64],
    ) {
        let ids: std::collections::HashSet<u64> = msg_ids.iter().copied().collect();
        let mut released = 0;
        for u in self.unacked.values_mut() {
            if !u.stale && u.queue.same(queue) && ids.contains(&u.msg_id) {
                u.stale = true;
                if u.counted {
                    u.counted = false;
                    released += 1;
                }
            }
        }
        self.flow.settled(released);
        if self.consumers.remove(tag).is_some() && conn.consumer_cancel_notify {
            conn.send_method(self.id, &warren_amqp::method::basic_cancel(tag));
        }
    }

    /// The channel closed: queues forget its consumers and requeue its unacked messages.
    pub async fn close(mut self, conn: &mut ConnState) {
        if let Some((_, name)) = self.reply.take() {
            conn.shared.replies.unregister(&name);
        }
        let mut queues: Vec<QueueHandle> = Vec::new();
        let mut add = |q: &QueueHandle| {
            if !queues.iter().any(|o| o.same(q)) {
                queues.push(q.clone());
            }
        };
        for c in self.consumers.values() {
            add(&c.queue);
        }
        for u in self.unacked.values() {
            add(&u.queue);
        }
        if let Some(tx) = self.tx.take() {
            for (_, u, _) in &tx.settles {
                add(&u.queue);
            }
        }
        for q in queues {
            q.channel_closed(self.key).await;
        }
        self.flow.settled(u32::MAX);
    }
}

/// 505 for a content frame where a method was expected.
pub(crate) fn expected_method_frame() -> ChannelError {
    ChannelError::new(
        ReplyCode::UnexpectedFrame,
        "expected method frame, got non method frame instead",
    )
}

/// 505 for anything but a content header after basic.publish.
fn expected_content_header() -> ChannelError {
    ChannelError::new(
        ReplyCode::UnexpectedFrame,
        "expected content header for class 60, got non content header frame instead",
    )
    .on(60, 40)
}

/// 505 for anything but a body frame while a content's body is incomplete.
fn expected_content_body() -> ChannelError {
    ChannelError::new(
        ReplyCode::UnexpectedFrame,
        "expected content body, got non content body frame instead",
    )
    .on(60, 40)
}

/// Hands an undeliverable delivery back to its queue, in place.
pub async fn return_delivery(d: Delivery) {
    if !d.no_ack {
        d.queue
            .settle(d.channel, vec![d.msg_id], Settle::Return)
            .await;
    }
}

fn not_from_client(m: &AMQPClass) -> ChannelError {
    let (c, id) = warren_amqp::method::ids(m);
    ChannelError::command_invalid(format!(
        "method {} is not sent by clients",
        warren_amqp::method::name(c, id)
    ))
    .on(c, id)
}

/// A random tag or name suffix: 22 characters of URL-safe base64 (128 bits).
pub(crate) fn random_suffix() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
