//! Publishing, in RabbitMQ's order of checks: content assembled (method, header, bodies;
//! size checked at the header), then exchange exists (404), not internal (403), user_id
//! matches (406); then route (exchange-to-exchange bindings followed, each queue once),
//! hand to every target queue, and answer with basic.return and/or a confirm.

use super::Channel;
use crate::access::{Perm, Resource};
use crate::connection::ConnState;
use crate::error::ChannelError;
use crate::message::Message;
use crate::queue::{Publish, QueueHandle};
use crate::vhost::{Routes, Vhost};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use warren_amqp::{ContentHeader, Properties, ReplyCode};

/// A publish whose content is being received, or one held in a transaction.
pub(super) struct Pending {
    exchange: Arc<str>,
    routing_key: Arc<str>,
    mandatory: bool,
    properties: Option<Properties>,
    /// Routing keys from the CC and BCC headers.
    extra_keys: Box<[Arc<str>]>,
    expected: u64,
    /// The first body frame, and any further ones (most bodies come in one frame, which
    /// then needs no list).
    body: Option<Bytes>,
    more_body: Vec<Bytes>,
    received: u64,
}

/// What a routed publish still waits for before the channel goes on; the connection awaits
/// it with [`Channel::complete`]. Most publishes need nothing: a queue with room in its
/// inbox takes the message at once.
pub(crate) enum Handoff {
    /// The connection's publish batches are full: hand them over.
    Flush,
    /// One local queue with a full inbox (or batches to hand over before it).
    Queue {
        queue: QueueHandle,
        publish: Publish,
        seq: Option<u64>,
        flush_first: bool,
    },
}

impl Pending {
    /// True once the content header arrived.
    pub(super) fn has_header(&self) -> bool {
        self.properties.is_some()
    }
}

impl Channel {
    pub(super) fn start_publish(
        &mut self,
        conn: &mut ConnState,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        immediate: bool,
    ) -> Result<(), ChannelError> {
        conn.published = true;
        if immediate {
            return Err(ChannelError::new(
                ReplyCode::NotImplemented,
                "immediate=true",
            ));
        }
        if *self.last_exchange != *exchange {
            self.last_exchange = Arc::from(exchange);
        }
        if *self.last_routing_key != *routing_key {
            self.last_routing_key = Arc::from(routing_key);
        }
        self.pending = Some(Pending {
            exchange: self.last_exchange.clone(),
            routing_key: self.last_routing_key.clone(),
            mandatory,
            properties: None,
            extra_keys: Box::new([]),
            expected: 0,
            body: None,
            more_body: Vec::new(),
            received: 0,
        });
        Ok(())
    }

    pub(crate) fn publish_header(
        &mut self,
        conn: &mut ConnState,
        h: ContentHeader,
    ) -> Result<Option<Handoff>, ChannelError> {
        let Some(p) = self.pending.as_mut() else {
            return Err(super::expected_method_frame());
        };
        if p.properties.is_some() {
            return Err(super::expected_content_body());
        }
        if h.class_id != 60 {
            return Err(ChannelError::new(
                ReplyCode::UnexpectedFrame,
                format!(
                    "expected content header for class 60, got one for class {} instead",
                    h.class_id
                ),
            )
            .on(60, 40));
        }
        let max = conn.shared.config.max_message_size as u64;
        if h.body_size > max {
            self.pending = None;
            return Err(ChannelError::precondition(format!(
                "message size {} is larger than configured max size {max}",
                h.body_size
            ))
            .on(60, 40));
        }
        p.properties = Some(h.properties);
        p.expected = h.body_size;
        if h.body_size == 0 {
            return self.finish_publish(conn);
        }
        Ok(None)
    }

    pub(crate) fn publish_body(
        &mut self,
        conn: &mut ConnState,
        b: Bytes,
    ) -> Result<Option<Handoff>, ChannelError> {
        let Some(p) = self.pending.as_mut() else {
            return Err(super::expected_method_frame());
        };
        if p.properties.is_none() {
            return Err(super::expected_content_header());
        }
        p.received += b.len() as u64;
        if p.received > p.expected {
            // As in RabbitMQ, a body longer than announced never completes: the content is
            // dropped and the next method on the channel is refused.
            p.body = None;
            p.more_body.clear();
            return Ok(None);
        }
        if p.body.is_none() {
            p.body = Some(b);
        } else {
            p.more_body.push(b);
        }
        if p.received == p.expected {
            return self.finish_publish(conn);
        }
        Ok(None)
    }

    fn finish_publish(&mut self, conn: &mut ConnState) -> Result<Option<Handoff>, ChannelError> {
        let Some(p) = self.pending.take() else {
            return Ok(None);
        };
        conn.check(Perm::Write, Resource::Exchange, &p.exchange)
            .map_err(|e| e.on(60, 40))?;
        let routes = conn.vhost.routes();
        let Some(x) = routes.exchanges.get(&p.exchange) else {
            return Err(ChannelError::no_exchange(&conn.vhost.name, &p.exchange).on(60, 40));
        };
        if x.internal {
            return Err(ChannelError::access_refused(format!(
                "cannot publish to internal exchange '{}' in vhost '{}'",
                p.exchange, conn.vhost.name
            ))
            .on(60, 40));
        }
        (conn.check_topic(Perm::Write, x.kind, &p.exchange, &p.routing_key))
            .map_err(|e| e.on(60, 40))?;
        if let Some(props) = &p.properties {
            if props.has_user_id() {
                if let Some(uid) = props.parse().user_id() {
                    if uid.as_str() != &*conn.user {
                        return Err(ChannelError::precondition(format!(
                            "user_id property set to '{}' but authenticated user was '{}'",
                            uid.as_str(),
                            conn.user
                        ))
                        .on(60, 40));
                    }
                }
            }
        }
        // After user_id, as RabbitMQ checks them.
        let mut p = p;
        self.check_extensions(&mut p)?;
        conn.counts.published += 1;
        if let Some(tx) = self.tx.as_mut() {
            tx.publishes.push(p);
            return Ok(None);
        }
        Ok(self.route_publish(conn, p, &routes))
    }

    /// The checks and rewrites of RabbitMQ's extensions, only for messages whose property
    /// flags say they need them (nothing is parsed otherwise): a valid `expiration`, the
    /// `CC`/`BCC` routing keys (BCC removed from the message), and a direct reply-to
    /// `reply_to` replaced by this channel's reply name.
    fn check_extensions(&self, p: &mut Pending) -> Result<(), ChannelError> {
        let Some(props) = &p.properties else {
            return Ok(());
        };
        if props.has_expiration() {
            if let Some(e) = props.expiration_error() {
                return Err(ChannelError::precondition(e).on(60, 40));
            }
        }
        // A cheap scan for the header names before anything is parsed.
        let may_cc = props.has_headers()
            && props
                .raw()
                .windows(3)
                .any(|w| w == b"\x02CC" || w == b"BCC");
        if !may_cc && !props.has_reply_to() {
            return Ok(());
        }
        let parsed = props.parse();
        let mut headers = parsed.headers().clone();
        let mut changed = false;
        if let Some(h) = &headers {
            let mut keys: Vec<Arc<str>> = Vec::new();
            for name in ["CC", "BCC"] {
                match h.inner().get(name) {
                    None => {}
                    Some(warren_amqp::AMQPValue::FieldArray(a)) => {
                        for v in a.as_slice() {
                            if let warren_amqp::AMQPValue::LongString(k) = v {
                                keys.push(Arc::from(String::from_utf8_lossy(k.as_bytes())));
                            }
                        }
                    }
                    Some(other) => {
                        return Err(ChannelError::precondition(format!(
                            "invalid message: {{unacceptable_type_in_header,\"{name}\",{}}}",
                            crate::args::type_name(other)
                        ))
                        .on(60, 40));
                    }
                }
            }
            if h.inner().contains_key("BCC") {
                let mut kept = warren_amqp::FieldTable::default();
                for (k, v) in h.inner() {
                    if k.as_str() != "BCC" {
                        kept.insert(k.clone(), v.clone());
                    }
                }
                headers = Some(kept);
                changed = true;
            }
            p.extra_keys = keys.into_boxed_slice();
        }
        let mut rebuilt = warren_amqp::properties::rebuild(&parsed, headers, false);
        if parsed.reply_to().as_ref().map(|r| r.as_str()) == Some(crate::direct_reply::PSEUDO_QUEUE)
        {
            let Some((_, name)) = &self.reply else {
                return Err(
                    ChannelError::precondition("fast reply consumer does not exist").on(60, 40),
                );
            };
            rebuilt = rebuilt.with_reply_to(name.as_str().into());
            changed = true;
        }
        if changed {
            p.properties = Some(Properties::encode(&rebuilt));
        }
        Ok(())
    }

    /// Routes an assembled publish and hands it to its queues.
    pub(super) async fn route_and_deliver(&mut self, conn: &mut ConnState, p: Pending) {
        let routes = conn.vhost.routes();
        if let Some(handoff) = self.route_publish(conn, p, &routes) {
            self.complete(conn, handoff).await;
        }
    }

    /// Finishes what [`Channel::route_publish`] could not do without waiting.
    pub(crate) async fn complete(&mut self, conn: &mut ConnState, handoff: Handoff) {
        match handoff {
            Handoff::Flush => conn.batches.flush().await,
            Handoff::Queue {
                queue,
                publish,
                seq,
                flush_first,
            } => {
                if flush_first {
                    conn.batches.flush().await;
                }
                if !queue.publish(publish).await {
                    // The queue was deleted meanwhile: the message is dropped and confirmed.
                    if let (Some(c), Some(seq)) = (self.confirm.as_mut(), seq) {
                        c.answer(seq, true);
                    }
                }
            }
        }
        self.send_confirms(conn);
    }

    /// Routes an assembled publish and hands it to its queues, as far as that can go without
    /// waiting; what is left is returned.
    fn route_publish(
        &mut self,
        conn: &mut ConnState,
        p: Pending,
        routes: &Routes,
    ) -> Option<Handoff> {
        let body = match (p.body, p.more_body.is_empty()) {
            (None, _) => Bytes::new(),
            (Some(b), true) => b,
            (Some(first), false) => {
                let mut all = BytesMut::with_capacity(p.received as usize);
                all.extend_from_slice(&first);
                for b in &p.more_body {
                    all.extend_from_slice(b);
                }
                all.freeze()
            }
        };
        let msg = Arc::new(Message {
            exchange: p.exchange,
            routing_key: p.routing_key,
            extra_keys: p.extra_keys,
            properties: p.properties.unwrap_or_default(),
            body,
        });
        let mut targets = std::mem::take(&mut conn.targets);
        let handoff = self.deliver_to(conn, routes, msg, p.mandatory, &mut targets);
        targets.clear();
        conn.targets = targets;
        handoff
    }

    /// Routes a message and hands it to its queues; `targets` is an empty list to use.
    fn deliver_to(
        &mut self,
        conn: &mut ConnState,
        routes: &Routes,
        msg: Arc<Message>,
        mandatory: bool,
        targets: &mut Vec<QueueHandle>,
    ) -> Option<Handoff> {
        let mut replied = false;
        if msg.exchange.is_empty() && msg.routing_key.starts_with(crate::direct_reply::PREFIX) {
            // A direct reply-to reply: straight to the requesting channel, no queue.
            replied = conn.shared.replies.deliver(&msg.routing_key, msg.clone());
        } else if let Some(x) = routes.exchanges.get(&msg.exchange) {
            Vhost::route(routes, x, &msg, targets);
        }
        // A queue whose home node is unreachable gets nothing (RabbitMQ: an unavailable
        // queue); a message that only such queues would take is returned if mandatory and
        // nacked, so that the publisher never takes it for stored.
        let before = targets.len();
        targets.retain(|q| q.is_available());
        let only_unavailable = before > 0 && targets.is_empty();
        let seq = self.confirm.as_mut().map(|c| c.next_seq());
        if replied && targets.is_empty() {
            if let (Some(c), Some(seq)) = (self.confirm.as_mut(), seq) {
                c.expect(seq, 0, true);
                self.send_confirms(conn);
            }
            return None;
        }
        if targets.is_empty() {
            if mandatory {
                conn.send_method(
                    self.id,
                    &warren_amqp::method::basic_return(
                        ReplyCode::NoRoute.code(),
                        ReplyCode::NoRoute.name(),
                        &msg.exchange,
                        &msg.routing_key,
                    ),
                );
                warren_amqp::frame::encode_content(
                    &mut conn.out,
                    self.id,
                    msg.properties.raw(),
                    &msg.body,
                    conn.frame_max,
                );
            }
            if let (Some(c), Some(seq)) = (self.confirm.as_mut(), seq) {
                c.expect(seq, 0, !only_unavailable);
                self.send_confirms(conn);
            }
            return None;
        }
        if let (Some(c), Some(seq)) = (self.confirm.as_mut(), seq) {
            c.expect(seq, targets.len() as u32, true);
        }
        let local_one = match targets.as_slice() {
            [q] if !q.is_remote() => Some(q),
            _ => None,
        };
        if let Some(q) = local_one {
            // One local queue: handed over at once (after what was batched before it), so
            // that the publisher goes at the pace the queue takes messages. (A queue on
            // another node takes batches: its link's window paces the publisher.)
            let confirm = seq.map(|s| (self.chref.clone(), s));
            let publish = Publish { msg, confirm };
            if !conn.batches.is_empty() {
                return Some(Handoff::Queue {
                    queue: q.clone(),
                    publish,
                    seq,
                    flush_first: true,
                });
            }
            match q.try_publish(publish) {
                Ok(taken) => {
                    if !taken {
                        // The queue was deleted meanwhile: dropped and confirmed.
                        if let (Some(c), Some(seq)) = (self.confirm.as_mut(), seq) {
                            c.answer(seq, true);
                        }
                    }
                }
                Err(publish) => {
                    return Some(Handoff::Queue {
                        queue: q.clone(),
                        publish,
                        seq,
                        flush_first: false,
                    })
                }
            }
            self.send_confirms(conn);
            return None;
        }
        // Several queues (fanout), or one on another node: handed over in batches, see
        // `PublishBatches`. A queue deleted meanwhile drops the message and confirms it.
        // Full batches are handed over after the message's last queue.
        for q in targets.iter() {
            let confirm = seq.map(|s| (self.chref.clone(), s));
            conn.batches.push(
                q,
                Publish {
                    msg: msg.clone(),
                    confirm,
                },
            );
        }
        if conn.batches.is_full() {
            return Some(Handoff::Flush);
        }
        self.send_confirms(conn);
        None
    }
}
