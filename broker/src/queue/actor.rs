//! The queue actor: one task per queue, owning its ready messages (in order), its unacked
//! deliveries and its consumers. It never awaits anything but its inbox and its store
//! replies, so a slow client can hold up only its own deliveries (through credit), never the
//! queue.
//!
//! Ready messages are a bounded in-memory *head* followed by an on-disk *tail*: once the head
//! holds `MAX_HEAD_MESSAGES` messages or `MAX_HEAD_BYTES` of bodies, new messages go to disk
//! only, and the head is refilled from disk in chunks as it drains. When the tail is not
//! empty every head message has a lower id than every tail message, so order is kept.
//! Persistent messages of durable queues are written to disk whatever their place, and their
//! confirm waits for the group-commit fsync.

use super::{ConsumerSpec, GetOk, Inner, Publish, QueueCmd, QueueHandle, Settle, INBOX_CAPACITY};
use crate::delivery::{ChannelKey, ChannelRef, ConnEvent, Delivery};
use crate::error::ChannelError;
use crate::message::Message;
use crate::meta::QueueDef;
use crate::store::{self, RecoveredQueue, Store, StoredMessage};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Called once when an auto-delete queue loses its last consumer.
pub(crate) type AutoDelete = Box<dyn FnOnce() + Send>;

/// Most ready messages kept in memory per queue before new ones go to disk only.
const MAX_HEAD_MESSAGES: usize = 8192;
/// Most ready body bytes kept in memory per queue.
const MAX_HEAD_BYTES: u64 = 32 * 1024 * 1024;
/// The head is refilled from disk when it falls under this many messages.
const REFILL_BELOW: usize = 2048;
/// Most messages and bytes read from disk in one refill.
const REFILL_MESSAGES: usize = 4096;
const REFILL_BYTES: usize = 8 * 1024 * 1024;

struct Entry {
    id: u64,
    msg: Arc<Message>,
    redelivered: bool,
    /// A durable record exists on disk and must be deleted once the message is settled.
    on_disk: bool,
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

    fn over(&self, count: u64, bytes: u64) -> bool {
        self.max_length.is_some_and(|m| count > m) || self.max_bytes.is_some_and(|m| bytes > m)
    }
}

/// The on-disk part of the ready list.
#[derive(Default)]
struct Tail {
    /// Lowest id that may still be on disk and not loaded.
    next: u64,
    /// Messages on disk, not loaded.
    count: u64,
    /// Their body bytes.
    bytes: u64,
    /// A refill is under way.
    loading: bool,
}

/// Where a queue keeps what does not fit in memory or must survive a restart.
pub(crate) struct Disk {
    /// The store.
    pub store: Store,
    /// This queue incarnation's id in the store.
    pub qid: u64,
    /// What recovery found for it.
    pub recovered: RecoveredQueue,
    /// Confirms of persistent messages wait for an fsync (else for the write to the OS).
    pub confirm_sync: bool,
}

struct QueueActor {
    handle: QueueHandle,
    durable: bool,
    limits: Limits,
    head: VecDeque<Entry>,
    head_bytes: u64,
    tail: Tail,
    disk: Option<Disk>,
    /// Highest on-disk message id delivered so far (persisted for `redelivered`).
    delivered_mark: u64,
    delivered_dirty: bool,
    /// Messages up to this id were delivered before the last restart.
    redelivered_below: u64,
    unacked: HashMap<u64, Unacked>,
    consumers: Vec<Consumer>,
    next_id: u64,
    rr: usize,
    auto_delete: Option<AutoDelete>,
    had_consumer: bool,
    /// basic.get requests waiting for a refill.
    pending_gets: VecDeque<(ChannelKey, bool, oneshot::Sender<Option<GetOk>>)>,
    loaded_tx: mpsc::UnboundedSender<Vec<StoredMessage>>,
}

/// Starts a queue actor on the current runtime.
pub(crate) fn spawn(
    def: &QueueDef,
    vhost: Arc<str>,
    disk: Option<Disk>,
    auto_delete: AutoDelete,
) -> QueueHandle {
    let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
    let (loaded_tx, loaded_rx) = mpsc::unbounded_channel();
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
    let recovered = disk.as_ref().map(|d| d.recovered).unwrap_or_default();
    let actor = QueueActor {
        handle: handle.clone(),
        durable: def.durable,
        limits: Limits::from_args(&def.arguments),
        head: VecDeque::new(),
        head_bytes: 0,
        tail: Tail {
            next: recovered.min_id,
            count: recovered.count,
            bytes: recovered.bytes,
            loading: false,
        },
        disk,
        delivered_mark: recovered.delivered,
        delivered_dirty: false,
        redelivered_below: recovered.delivered,
        unacked: HashMap::new(),
        consumers: Vec::new(),
        next_id: recovered.max_id + 1,
        rr: 0,
        auto_delete: def.auto_delete.then_some(auto_delete),
        had_consumer: false,
        pending_gets: VecDeque::new(),
        loaded_tx,
    };
    tokio::spawn(actor.run(rx, loaded_rx, stop));
    handle
}

impl QueueActor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<QueueCmd>,
        mut loaded_rx: mpsc::UnboundedReceiver<Vec<StoredMessage>>,
        stop: CancellationToken,
    ) {
        self.refill();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                loaded = loaded_rx.recv() => {
                    if let Some(loaded) = loaded {
                        self.loaded(loaded);
                    }
                }
                cmd = rx.recv() => match cmd {
                    Some(cmd) => {
                        self.handle(cmd);
                        for _ in 0..256 {
                            match rx.try_recv() {
                                Ok(cmd) => self.handle(cmd),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
            }
            self.dispatch();
            self.serve_gets();
            self.refill();
            self.save_delivered_mark();
            self.maybe_auto_delete();
        }
        self.shutdown(rx);
    }

    fn ready_count(&self) -> u64 {
        self.head.len() as u64 + self.tail.count
    }

    fn ready_bytes(&self) -> u64 {
        self.head_bytes + self.tail.bytes
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
                self.pending_gets.retain(|(c, _, _)| *c != channel);
                let ids: Vec<u64> = self
                    .unacked
                    .iter()
                    .filter(|(_, u)| u.channel == channel)
                    .map(|(id, _)| *id)
                    .collect();
                self.settle(channel, ids, Settle::Requeue);
            }
            QueueCmd::Get(channel, no_ack, reply) => {
                self.pending_gets.push_back((channel, no_ack, reply));
            }
            QueueCmd::Purge(reply) => {
                let n = self.ready_count();
                self.purge();
                let _ = reply.send(n.min(u64::from(u32::MAX)) as u32);
            }
            QueueCmd::CheckDelete(if_unused, if_empty, reply) => {
                let name = self.handle.name();
                let vhost = self.handle.vhost();
                let res = if if_unused && !self.consumers.is_empty() {
                    Err(ChannelError::precondition(format!(
                        "queue '{name}' in vhost '{vhost}' in use"
                    )))
                } else if if_empty && self.ready_count() > 0 {
                    Err(ChannelError::precondition(format!(
                        "queue '{name}' in vhost '{vhost}' not empty"
                    )))
                } else {
                    Ok(self.ready_count().min(u64::from(u32::MAX)) as u32)
                };
                let _ = reply.send(res);
            }
            QueueCmd::Stats(reply) => {
                let _ = reply.send((
                    self.ready_count().min(u64::from(u32::MAX)) as u32,
                    self.consumers.len() as u32,
                ));
            }
            QueueCmd::Info(reply) => {
                let _ = reply.send(super::QueueInfo {
                    messages_ready: self.ready_count(),
                    message_bytes_ready: self.ready_bytes(),
                    messages_unacknowledged: self.unacked.len() as u64,
                    consumers: self.consumers.len() as u32,
                });
            }
            QueueCmd::Wake => {}
        }
    }

    fn confirm(confirm: Option<(ChannelRef, u64)>, ok: bool) {
        if let Some((channel, seq)) = confirm {
            let _ = channel.events.send(ConnEvent::Confirm {
                channel: channel.key,
                seq,
                ok,
            });
        }
    }

    fn publish(&mut self, p: Publish) {
        let size = p.msg.size() as u64;
        if self.limits.overflow == Overflow::RejectPublish
            && self
                .limits
                .over(self.ready_count() + 1, self.ready_bytes() + size)
        {
            return Self::confirm(p.confirm, false);
        }
        let id = self.next_id;
        self.next_id += 1;
        let durable_record = self.durable && p.msg.properties.is_persistent();
        let to_tail = self.tail.count > 0
            || self.head.len() >= MAX_HEAD_MESSAGES
            || self.head_bytes + size > MAX_HEAD_BYTES;
        match &self.disk {
            Some(disk) if durable_record || to_tail => {
                let value = store::encode_message(&p.msg, durable_record);
                if durable_record {
                    // The confirm waits for the fsync that makes the message durable.
                    let done: Option<store::Done> = p.confirm.map(|(channel, seq)| {
                        Box::new(move |ok: bool| {
                            let _ = channel.events.send(ConnEvent::Confirm {
                                channel: channel.key,
                                seq,
                                ok,
                            });
                        }) as store::Done
                    });
                    disk.store.put(disk.qid, id, value, disk.confirm_sync, done);
                } else {
                    disk.store.put(disk.qid, id, value, false, None);
                    Self::confirm(p.confirm, true);
                }
            }
            _ => Self::confirm(p.confirm, true),
        }
        if to_tail && self.disk.is_some() {
            if self.tail.count == 0 {
                self.tail.next = id;
            }
            self.tail.count += 1;
            self.tail.bytes += size;
        } else {
            self.head_bytes += size;
            self.head.push_back(Entry {
                id,
                msg: p.msg,
                redelivered: false,
                on_disk: durable_record && self.disk.is_some(),
            });
        }
        while self.limits.over(self.ready_count(), self.ready_bytes()) {
            if !self.drop_head() {
                break;
            }
        }
    }

    /// Drops the oldest ready message (x-overflow drop-head).
    fn drop_head(&mut self) -> bool {
        if let Some(e) = self.pop_head() {
            self.forget(&e);
            return true;
        }
        if self.tail.count > 0 {
            if let Some(disk) = &self.disk {
                disk.store.delete(disk.qid, self.tail.next);
            }
            self.tail.next += 1;
            self.tail.count -= 1;
            return true;
        }
        false
    }

    fn pop_head(&mut self) -> Option<Entry> {
        let e = self.head.pop_front()?;
        self.head_bytes -= e.msg.size() as u64;
        Some(e)
    }

    /// Deletes a settled message's record.
    fn forget(&self, e: &Entry) {
        if e.on_disk {
            if let Some(disk) = &self.disk {
                disk.store.delete(disk.qid, e.id);
            }
        }
    }

    fn purge(&mut self) {
        while let Some(e) = self.pop_head() {
            self.forget(&e);
        }
        if self.tail.count > 0 {
            if let Some(disk) = &self.disk {
                disk.store
                    .delete_range(disk.qid, self.tail.next, self.next_id.saturating_sub(1));
            }
            self.tail.next = self.next_id;
            self.tail.count = 0;
            self.tail.bytes = 0;
        }
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
                Settle::Ack | Settle::Discard => self.forget(&u.entry),
                Settle::Requeue => {
                    let mut entry = u.entry;
                    entry.redelivered = true;
                    self.requeue(entry);
                }
                Settle::Return => self.requeue(u.entry),
            }
        }
    }

    /// Puts a message back at its original position (ids are in publish order, and every
    /// unacked message has a lower id than the on-disk tail).
    fn requeue(&mut self, entry: Entry) {
        self.head_bytes += entry.msg.size() as u64;
        let pos = self.head.partition_point(|e| e.id < entry.id);
        self.head.insert(pos, entry);
    }

    /// Reads the next chunk of the tail when the head runs low.
    fn refill(&mut self) {
        let want = self.head.len() < REFILL_BELOW || !self.pending_gets.is_empty();
        if !want || self.tail.count == 0 || self.tail.loading {
            return;
        }
        let Some(disk) = &self.disk else {
            return;
        };
        self.tail.loading = true;
        let tx = self.loaded_tx.clone();
        disk.store.read(
            disk.qid,
            self.tail.next,
            REFILL_MESSAGES,
            REFILL_BYTES,
            Box::new(move |msgs| {
                let _ = tx.send(msgs);
            }),
        );
    }

    fn loaded(&mut self, msgs: Vec<StoredMessage>) {
        self.tail.loading = false;
        if msgs.is_empty() {
            // Nothing left on disk: the counts were an estimate (recovery saw gaps).
            self.tail.count = 0;
            self.tail.bytes = 0;
            self.tail.next = self.next_id;
            return;
        }
        for m in msgs {
            let size = m.msg.size() as u64;
            self.tail.next = m.id + 1;
            self.tail.count = self.tail.count.saturating_sub(1);
            self.tail.bytes = self.tail.bytes.saturating_sub(size);
            self.head_bytes += size;
            self.head.push_back(Entry {
                id: m.id,
                redelivered: m.id <= self.redelivered_below,
                on_disk: m.durable,
                msg: m.msg,
            });
        }
    }

    fn serve_gets(&mut self) {
        while let Some((channel, no_ack, reply)) = self.pending_gets.pop_front() {
            if self.head.is_empty() && self.tail.count > 0 {
                // Wait for the refill.
                self.pending_gets.push_front((channel, no_ack, reply));
                return;
            }
            let got = self.pop_head().map(|entry| {
                self.note_delivered(&entry);
                let ok = GetOk {
                    msg_id: entry.id,
                    msg: entry.msg.clone(),
                    redelivered: entry.redelivered,
                    remaining: self.ready_count().min(u64::from(u32::MAX)) as u32,
                };
                if no_ack {
                    self.forget(&entry);
                } else {
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
                if let Some(u) = self.unacked.remove(&ok.msg_id) {
                    self.requeue(u.entry);
                }
            }
        }
    }

    fn note_delivered(&mut self, e: &Entry) {
        if e.on_disk && e.id > self.delivered_mark {
            self.delivered_mark = e.id;
            self.delivered_dirty = true;
        }
    }

    fn save_delivered_mark(&mut self) {
        if self.delivered_dirty {
            self.delivered_dirty = false;
            if let Some(disk) = &self.disk {
                disk.store.delivered(disk.qid, self.delivered_mark);
            }
        }
    }

    fn dispatch(&mut self) {
        let n = self.consumers.len();
        let mut idle = 0;
        while n > 0 && idle < n && !self.head.is_empty() {
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
            let Some(entry) = self.head.pop_front() else {
                break;
            };
            self.head_bytes -= entry.msg.size() as u64;
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
            let tag = c.spec.tag.clone();
            let key = c.spec.channel.key;
            if !no_ack {
                c.unacked += 1;
            }
            self.note_delivered(&entry);
            if no_ack {
                self.forget(&entry);
            } else {
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

    /// The queue was deleted: consumers are cancelled and its records removed.
    fn shutdown(self, mut rx: mpsc::Receiver<QueueCmd>) {
        for c in &self.consumers {
            let _ = c.spec.channel.events.send(ConnEvent::ConsumerCancelled {
                channel: c.spec.channel.key,
                consumer_tag: c.spec.tag.clone(),
            });
        }
        if let Some(disk) = &self.disk {
            disk.store.forget_queue(disk.qid);
        }
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            // A message routed to a queue deleted meanwhile is confirmed, as RabbitMQ does;
            // requests waiting for a reply see the queue gone.
            if let QueueCmd::Publish(Publish { confirm, .. }) = cmd {
                Self::confirm(confirm, true);
            }
        }
    }
}
