//! The queue actor: one task per queue, owning its ready messages (in order), its unacked
//! deliveries and its consumers. It never awaits anything but its inbox, so a slow client can
//! hold up only its own deliveries (through credit), never the queue.

use super::{ConsumerSpec, GetOk, Inner, Publish, QueueCmd, QueueHandle, Settle, INBOX_CAPACITY};
use crate::delivery::{ChannelKey, ConnEvent, Delivery};
use crate::error::ChannelError;
use crate::message::Message;
use crate::meta::QueueDef;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Called once when an auto-delete queue loses its last consumer.
pub(crate) type AutoDelete = Box<dyn FnOnce() + Send>;

struct Entry {
    id: u64,
    msg: Arc<Message>,
    redelivered: bool,
}

struct Unacked {
    entry: Entry,
    channel: ChannelKey,
    consumer: Option<Arc<str>>,
}

struct Consumer {
    spec: ConsumerSpec,
    unacked: u32,
}

/// What a full queue does with a new message (`x-overflow`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Overflow {
    DropHead,
    RejectPublish,
}

/// `x-max-length` / `x-max-length-bytes` and `x-overflow`.
struct Limits {
    max_length: Option<u64>,
    max_bytes: Option<u64>,
    overflow: Overflow,
}

impl Limits {
    fn from_args(args: &warren_amqp::FieldTable) -> Self {
        let int = |k: &str| {
            args.inner()
                .get(k)
                .and_then(crate::args::as_i64)
                .and_then(|v| u64::try_from(v).ok())
        };
        let overflow = match crate::meta::string_arg(args, "x-overflow") {
            Some("reject-publish") | Some("reject-publish-dlx") => Overflow::RejectPublish,
            _ => Overflow::DropHead,
        };
        Limits {
            max_length: int("x-max-length"),
            max_bytes: int("x-max-length-bytes"),
            overflow,
        }
    }

    fn over(&self, count: usize, bytes: u64) -> bool {
        self.max_length.is_some_and(|m| count as u64 > m)
            || self.max_bytes.is_some_and(|m| bytes > m)
    }
}

struct QueueActor {
    handle: QueueHandle,
    limits: Limits,
    ready_bytes: u64,
    ready: VecDeque<Entry>,
    unacked: HashMap<u64, Unacked>,
    consumers: Vec<Consumer>,
    next_id: u64,
    rr: usize,
    auto_delete: Option<AutoDelete>,
    had_consumer: bool,
}

/// Starts a queue actor on the current runtime.
pub(crate) fn spawn(def: &QueueDef, vhost: Arc<str>, auto_delete: AutoDelete) -> QueueHandle {
    let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
    let stop = CancellationToken::new();
    let handle = QueueHandle {
        inner: Arc::new(Inner {
            name: Arc::from(def.name.as_str()),
            vhost,
            exclusive_owner: def.exclusive_owner,
            tx,
            stop: stop.clone(),
        }),
    };
    let actor = QueueActor {
        handle: handle.clone(),
        limits: Limits::from_args(&def.arguments),
        ready_bytes: 0,
        ready: VecDeque::new(),
        unacked: HashMap::new(),
        consumers: Vec::new(),
        next_id: 1,
        rr: 0,
        auto_delete: def.auto_delete.then_some(auto_delete),
        had_consumer: false,
    };
    tokio::spawn(actor.run(rx, stop));
    handle
}

impl QueueActor {
    async fn run(mut self, mut rx: mpsc::Receiver<QueueCmd>, stop: CancellationToken) {
        loop {
            let cmd = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => cmd,
                    None => break,
                },
            };
            self.handle(cmd);
            for _ in 0..256 {
                match rx.try_recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => break,
                }
            }
            self.dispatch();
            self.maybe_auto_delete();
        }
        self.shutdown(rx);
    }

    fn handle(&mut self, cmd: QueueCmd) {
        match cmd {
            QueueCmd::Publish(p) => self.publish(p),
            QueueCmd::Consume(spec, reply) => {
                let _ = reply.send(self.add_consumer(spec));
            }
            QueueCmd::Cancel(channel, tag) => {
                self.consumers
                    .retain(|c| !(c.spec.channel.key == channel && c.spec.tag == tag));
            }
            QueueCmd::Settle(channel, ids, how) => self.settle(channel, ids, how),
            QueueCmd::ChannelClosed(channel) => {
                self.consumers.retain(|c| c.spec.channel.key != channel);
                let ids: Vec<u64> = self
                    .unacked
                    .iter()
                    .filter(|(_, u)| u.channel == channel)
                    .map(|(id, _)| *id)
                    .collect();
                self.settle(channel, ids, Settle::Requeue);
            }
            QueueCmd::Get(channel, no_ack, reply) => {
                let got = self.pop_ready().map(|entry| {
                    let ok = GetOk {
                        msg_id: entry.id,
                        msg: entry.msg.clone(),
                        redelivered: entry.redelivered,
                        remaining: self.ready.len() as u32,
                    };
                    if !no_ack {
                        self.unacked.insert(
                            entry.id,
                            Unacked {
                                entry,
                                channel,
                                consumer: None,
                            },
                        );
                    }
                    ok
                });
                if let Err(Some(ok)) = reply.send(got) {
                    // The channel went away while waiting: put the message back.
                    self.unacked.remove(&ok.msg_id);
                    self.requeue(Entry {
                        id: ok.msg_id,
                        msg: ok.msg,
                        redelivered: ok.redelivered,
                    });
                }
            }
            QueueCmd::Purge(reply) => {
                let n = self.ready.len() as u32;
                self.ready.clear();
                self.ready_bytes = 0;
                let _ = reply.send(n);
            }
            QueueCmd::CheckDelete(if_unused, if_empty, reply) => {
                let name = self.handle.name();
                let vhost = self.handle.vhost();
                let res = if if_unused && !self.consumers.is_empty() {
                    Err(ChannelError::precondition(format!(
                        "queue '{name}' in vhost '{vhost}' in use"
                    )))
                } else if if_empty && !self.ready.is_empty() {
                    Err(ChannelError::precondition(format!(
                        "queue '{name}' in vhost '{vhost}' not empty"
                    )))
                } else {
                    Ok(self.ready.len() as u32)
                };
                let _ = reply.send(res);
            }
            QueueCmd::Stats(reply) => {
                let _ = reply.send((self.ready.len() as u32, self.consumers.len() as u32));
            }
            QueueCmd::Wake => {}
        }
    }

    fn publish(&mut self, p: Publish) {
        let size = p.msg.size() as u64;
        let accepted = self.limits.overflow != Overflow::RejectPublish
            || !self
                .limits
                .over(self.ready.len() + 1, self.ready_bytes + size);
        if accepted {
            let id = self.next_id;
            self.next_id += 1;
            self.ready_bytes += size;
            self.ready.push_back(Entry {
                id,
                msg: p.msg,
                redelivered: false,
            });
            while self.limits.over(self.ready.len(), self.ready_bytes) {
                if self.pop_ready().is_none() {
                    break;
                }
            }
        }
        if let Some((channel, seq)) = p.confirm {
            let _ = channel.events.send(ConnEvent::Confirm {
                channel: channel.key,
                seq,
                ok: accepted,
            });
        }
    }

    /// Takes the head of the ready list.
    fn pop_ready(&mut self) -> Option<Entry> {
        let e = self.ready.pop_front()?;
        self.ready_bytes -= e.msg.size() as u64;
        Some(e)
    }

    fn add_consumer(&mut self, spec: ConsumerSpec) -> Result<(), ChannelError> {
        let exclusive_in_use = self.consumers.iter().any(|c| c.spec.exclusive);
        if exclusive_in_use || (spec.exclusive && !self.consumers.is_empty()) {
            return Err(ChannelError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.handle.name(),
                self.handle.vhost()
            )));
        }
        self.consumers.push(Consumer { spec, unacked: 0 });
        self.had_consumer = true;
        Ok(())
    }

    fn settle(&mut self, channel: ChannelKey, mut ids: Vec<u64>, how: Settle) {
        ids.sort_unstable();
        for id in ids {
            let Some(u) = self.unacked.remove(&id) else {
                continue;
            };
            if u.channel != channel {
                // Not this channel's delivery: leave it where it was.
                self.unacked.insert(id, u);
                continue;
            }
            if let Some(tag) = &u.consumer {
                if let Some(c) = self
                    .consumers
                    .iter_mut()
                    .find(|c| c.spec.channel.key == channel && &c.spec.tag == tag)
                {
                    c.unacked = c.unacked.saturating_sub(1);
                }
            }
            match how {
                Settle::Ack | Settle::Discard => {}
                Settle::Requeue => {
                    let mut entry = u.entry;
                    entry.redelivered = true;
                    self.requeue(entry);
                }
                Settle::Return => self.requeue(u.entry),
            }
        }
    }

    /// Puts a message back at its original position (ids are in publish order).
    fn requeue(&mut self, entry: Entry) {
        self.ready_bytes += entry.msg.size() as u64;
        let pos = self.ready.partition_point(|e| e.id < entry.id);
        self.ready.insert(pos, entry);
    }

    fn dispatch(&mut self) {
        let n = self.consumers.len();
        let mut idle = 0;
        while n > 0 && idle < n && !self.ready.is_empty() {
            let i = self.rr % n;
            self.rr = self.rr.wrapping_add(1);
            let c = &mut self.consumers[i];
            let no_ack = c.spec.no_ack;
            if !no_ack && c.spec.prefetch > 0 && c.unacked >= c.spec.prefetch {
                idle += 1;
                continue;
            }
            let flow = &c.spec.channel.flow;
            if !flow.try_acquire(no_ack) {
                flow.wait(&self.handle);
                if !flow.try_acquire(no_ack) {
                    idle += 1;
                    continue;
                }
            }
            idle = 0;
            let Some(entry) = self.ready.pop_front() else {
                break;
            };
            self.ready_bytes -= entry.msg.size() as u64;
            let delivery = Delivery {
                channel: c.spec.channel.key,
                consumer_tag: c.spec.tag.clone(),
                queue: self.handle.clone(),
                msg_id: entry.id,
                msg: entry.msg.clone(),
                redelivered: entry.redelivered,
                no_ack,
            };
            if c.spec
                .channel
                .events
                .send(ConnEvent::Deliver(delivery))
                .is_err()
            {
                // The connection is gone; its channel-closed notice will follow.
                flow.written(1);
                if !no_ack {
                    flow.settled(1);
                }
                let key = c.spec.channel.key;
                self.requeue(entry);
                self.consumers.retain(|c| c.spec.channel.key != key);
                return self.dispatch();
            }
            if !no_ack {
                c.unacked += 1;
                let tag = c.spec.tag.clone();
                let key = c.spec.channel.key;
                self.unacked.insert(
                    entry.id,
                    Unacked {
                        entry,
                        channel: key,
                        consumer: Some(tag),
                    },
                );
            }
        }
    }

    fn maybe_auto_delete(&mut self) {
        if self.had_consumer && self.consumers.is_empty() {
            if let Some(delete) = self.auto_delete.take() {
                delete();
            }
        }
    }

    fn shutdown(self, mut rx: mpsc::Receiver<QueueCmd>) {
        for c in &self.consumers {
            let _ = c.spec.channel.events.send(ConnEvent::ConsumerCancelled {
                channel: c.spec.channel.key,
                consumer_tag: c.spec.tag.clone(),
            });
        }
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            // A message routed to a queue deleted meanwhile is confirmed, as RabbitMQ does;
            // requests waiting for a reply see the queue gone.
            if let QueueCmd::Publish(Publish {
                confirm: Some((channel, seq)),
                ..
            }) = cmd
            {
                let _ = channel.events.send(ConnEvent::Confirm {
                    channel: channel.key,
                    seq,
                    ok: true,
                });
            }
        }
    }
}
