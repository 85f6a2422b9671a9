//! Consuming: basic.qos, consume, cancel, get, and settling deliveries (ack, nack, reject,
//! recover) with the queues they came from.

use super::{Channel, ConsumerRef, UnackedRef};
use crate::access::{Perm, Resource};
use crate::connection::ConnState;
use crate::error::ChannelError;
use crate::queue::{ConsumerSpec, QueueHandle, Settle};
use std::sync::Arc;
use warren_amqp::{basic, AMQPClass, ReplyCode};

impl Channel {
    pub(super) fn qos(&mut self, conn: &mut ConnState, q: basic::Qos) -> Result<(), ChannelError> {
        if q.global {
            self.flow.set_global_limit(u32::from(q.prefetch_count));
        } else {
            self.prefetch = u32::from(q.prefetch_count);
        }
        conn.send_method(
            self.id,
            &AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        );
        Ok(())
    }

    /// Resolves a queue name for a method ("" is the channel's last declared queue).
    pub(super) fn resolve_queue(
        &self,
        conn: &ConnState,
        name: &str,
    ) -> Result<QueueHandle, ChannelError> {
        let name = if name.is_empty() {
            match &self.last_queue {
                Some(q) => q.as_str(),
                None => {
                    return Err(ChannelError::new(
                        ReplyCode::NotFound,
                        "no previously declared queue",
                    ))
                }
            }
        } else {
            name
        };
        let q = conn
            .vhost
            .queue(name)
            .ok_or_else(|| ChannelError::no_queue(&conn.vhost.name, name))?;
        q.check_access(conn.id)?;
        Ok(q)
    }

    pub(super) async fn consume(
        &mut self,
        conn: &mut ConnState,
        c: basic::Consume,
    ) -> Result<(), ChannelError> {
        if c.queue.as_str() == crate::direct_reply::PSEUDO_QUEUE {
            return self.consume_replies(conn, c);
        }
        conn.check(
            Perm::Read,
            Resource::Queue,
            self.expand_queue_name(c.queue.as_str())?,
        )?;
        let q = self.resolve_queue(conn, c.queue.as_str())?;
        let tag: Arc<str> = if c.consumer_tag.as_str().is_empty() {
            Arc::from(format!("amq.ctag-{}", super::random_suffix()))
        } else {
            Arc::from(c.consumer_tag.as_str())
        };
        if self.consumers.contains_key(&tag) {
            return Err(ChannelError::new(
                ReplyCode::NotAllowed,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let priority = match c.arguments.inner().get("x-priority") {
            None => 0,
            Some(v) => match crate::args::as_i64(v) {
                Some(p) => p.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
                None => {
                    return Err(ChannelError::precondition(format!(
                        "invalid arg 'x-priority' for queue '{}' in vhost '{}': \"expected integer, got {}\"",
                        q.name(),
                        q.vhost(),
                        crate::args::type_name(v)
                    )))
                }
            },
        };
        q.consume(ConsumerSpec {
            tag: tag.clone(),
            channel: self.chref.clone(),
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch: self.prefetch,
            priority,
        })
        .await?;
        let (no_ack, exclusive, prefetch) = (c.no_ack, c.exclusive, self.prefetch);
        let consumer = ConsumerRef {
            queue: q,
            no_ack,
            exclusive,
            prefetch,
        };
        self.consumers.insert(tag.clone(), consumer);
        if !c.nowait {
            conn.send_method(
                self.id,
                &AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: warren_amqp::method::short(&tag),
                })),
            );
        }
        Ok(())
    }

    /// basic.consume on `amq.rabbitmq.reply-to`: the channel's direct reply-to consumer.
    fn consume_replies(
        &mut self,
        conn: &mut ConnState,
        c: basic::Consume,
    ) -> Result<(), ChannelError> {
        if !c.no_ack {
            return Err(ChannelError::precondition(
                "reply consumer cannot acknowledge",
            ));
        }
        if self.reply.is_some() {
            return Err(ChannelError::precondition("reply consumer already set"));
        }
        let tag: Arc<str> = if c.consumer_tag.as_str().is_empty() {
            Arc::from(format!("amq.ctag-{}", super::random_suffix()))
        } else {
            Arc::from(c.consumer_tag.as_str())
        };
        if self.consumers.contains_key(&tag) {
            return Err(ChannelError::new(
                ReplyCode::NotAllowed,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let name = format!("{}{}", crate::direct_reply::PREFIX, super::random_suffix());
        conn.shared
            .replies
            .register(name.clone(), self.chref.clone(), tag.clone());
        self.reply = Some((tag.clone(), name));
        if !c.nowait {
            conn.send_method(
                self.id,
                &AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: warren_amqp::method::short(&tag),
                })),
            );
        }
        Ok(())
    }

    pub(super) async fn cancel(
        &mut self,
        conn: &mut ConnState,
        c: basic::Cancel,
    ) -> Result<(), ChannelError> {
        if self
            .reply
            .as_ref()
            .is_some_and(|(t, _)| &**t == c.consumer_tag.as_str())
        {
            if let Some((_, name)) = self.reply.take() {
                conn.shared.replies.unregister(&name);
            }
        }
        if let Some(consumer) = self.consumers.remove(c.consumer_tag.as_str()) {
            consumer
                .queue
                .cancel(self.key, Arc::from(c.consumer_tag.as_str()))
                .await;
        }
        if !c.nowait {
            conn.send_method(
                self.id,
                &AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                    consumer_tag: c.consumer_tag,
                })),
            );
        }
        Ok(())
    }

    pub(super) async fn get(
        &mut self,
        conn: &mut ConnState,
        g: basic::Get,
    ) -> Result<(), ChannelError> {
        conn.check(
            Perm::Read,
            Resource::Queue,
            self.expand_queue_name(g.queue.as_str())?,
        )?;
        let q = self.resolve_queue(conn, g.queue.as_str())?;
        match q.get(self.key, g.no_ack).await? {
            None => conn.send_method(
                self.id,
                &AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            ),
            Some(ok) => {
                let tag = self.next_tag;
                self.next_tag += 1;
                conn.counts.delivered += 1;
                conn.counts.redelivered += u64::from(ok.redelivered);
                warren_amqp::frame::encode_get_ok(
                    &mut conn.out,
                    self.id,
                    tag,
                    ok.redelivered,
                    &ok.msg.exchange,
                    &ok.msg.routing_key,
                    ok.remaining,
                );
                warren_amqp::frame::encode_content(
                    &mut conn.out,
                    self.id,
                    ok.msg.properties.raw(),
                    &ok.msg.body,
                    conn.frame_max,
                );
                if !g.no_ack {
                    self.unacked.insert(
                        tag,
                        UnackedRef {
                            queue: q,
                            msg_id: ok.msg_id,
                            counted: false,
                            stale: false,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// basic.ack / nack / reject: settles one delivery, or all up to `tag` with `multiple`
    /// (tag 0 with multiple: all).
    pub(super) async fn ack(
        &mut self,
        tag: u64,
        multiple: bool,
        how: Settle,
    ) -> Result<(), ChannelError> {
        let taken: Vec<(u64, UnackedRef)> = if multiple {
            let keep = if tag == 0 {
                std::collections::BTreeMap::new()
            } else {
                self.unacked.split_off(&(tag + 1))
            };
            let taken = std::mem::replace(&mut self.unacked, keep);
            if taken.is_empty() && tag != 0 {
                return Err(unknown_tag(tag));
            }
            taken.into_iter().collect()
        } else {
            match self.unacked.remove(&tag) {
                Some(u) => vec![(tag, u)],
                None => return Err(unknown_tag(tag)),
            }
        };
        if let Some(tx) = self.tx.as_mut() {
            tx.settles
                .extend(taken.into_iter().map(|(t, u)| (t, u, how)));
            return Ok(());
        }
        self.apply_settles(taken.into_iter().map(|(t, u)| (t, u, how)).collect())
            .await;
        Ok(())
    }

    /// Tells each queue what became of its deliveries, and returns prefetch credit.
    pub(super) async fn apply_settles(&mut self, settles: Vec<(u64, UnackedRef, Settle)>) {
        let mut counted = 0u32;
        let mut groups: Vec<(QueueHandle, Settle, Vec<u64>)> = Vec::new();
        for (_, u, how) in settles {
            if u.counted {
                counted += 1;
            }
            if u.stale {
                continue;
            }
            match groups
                .iter_mut()
                .find(|(q, h, _)| *h == how && q.same(&u.queue))
            {
                Some((_, _, ids)) => ids.push(u.msg_id),
                None => groups.push((u.queue, how, vec![u.msg_id])),
            }
        }
        for (q, how, ids) in groups {
            q.settle(self.key, ids, how).await;
        }
        self.flow.settled(counted);
    }

    /// basic.recover: every unacked delivery goes back to its queue, marked redelivered.
    pub(super) async fn recover(&mut self, requeue: bool) -> Result<(), ChannelError> {
        if !requeue {
            return Err(ChannelError::new(
                ReplyCode::NotImplemented,
                "requeue=false",
            ));
        }
        let all = std::mem::take(&mut self.unacked);
        self.apply_settles(
            all.into_iter()
                .map(|(t, u)| (t, u, Settle::Requeue))
                .collect(),
        )
        .await;
        Ok(())
    }
}

fn unknown_tag(tag: u64) -> ChannelError {
    ChannelError::precondition(format!("unknown delivery tag {tag}"))
}
