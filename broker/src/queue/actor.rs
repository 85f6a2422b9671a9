//! The queue actor: one task per queue, owning its ready messages (in order), its unacked
//! deliveries and its consumers, and applying its settings (arguments merged with policies):
//! TTLs, length limits, dead-lettering, priorities, single active consumer, consumer
//! priorities, consumer timeout and queue expiry. It never awaits anything but its inboxes
//! and its store replies, so a slow client can hold up only its own deliveries (through
//! credit), never the queue, and no queue ever waits on another.
//!
//! Ready messages are a bounded in-memory *head* followed by an on-disk *tail*: once the head
//! holds `MAX_HEAD_MESSAGES` messages or `MAX_HEAD_BYTES` of bodies, new messages go to disk
//! only, and the head is refilled from disk in chunks as it drains. When the tail is not
//! empty every head message has a lower id than every tail message, so order is kept.
//! The actor bounds how far its disk writes run ahead of the store thread: after every
//! `WRITES_PER_MARK` writes it asks the store to report when it has taken them, and with
//! `MAX_MARKS_PENDING` reports outstanding it takes no more commands, so a publisher faster
//! than the disk waits on the queue's inbox (and then TCP) instead of growing memory.
//! Persistent messages of durable queues are written to disk whatever their place, and their
//! confirm waits for the group-commit fsync. A priority queue (`x-max-priority`) keeps one
//! head *lane* per priority and delivers from the highest non-empty one; its messages stay
//! in memory (recovered ones are loaded at start and sorted into their lanes by their
//! priority property).
//!
//! Expiry: every message gets its expiry time when it enters the queue (queue TTL and
//! per-message `expiration`, the smaller wins). Messages whose expiry is not earlier than
//! that of every message before them (the usual case with a queue-wide TTL) expire from the
//! front of the queue, so checking the front suffices, as RabbitMQ does. The others (mixed
//! per-message TTLs) go into an expiry index ordered by expiry time, so that each expires on
//! time with O(log n) work, wherever it is — in memory (it is marked dead in place and
//! skipped later) or in the on-disk tail (its record is read back to be dead-lettered, or
//! just deleted). An expired message is never delivered.

use super::dead_letter::{DeadLetterer, Reason};
use super::{
    Aux, ConsumerSpec, GetOk, Inner, Publish, QueueCmd, QueueHandle, Settle, INBOX_CAPACITY,
};
use crate::delivery::{ChannelKey, ChannelRef, ConnEvent, Delivery};
use crate::error::ChannelError;
use crate::message::Message;
use crate::meta::QueueDef;
use crate::policy::{Overflow, QueueSettings};
use crate::store::{self, RecoveredQueue, Store, StoredMessage};
use crate::vhost::Vhost;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Called once to delete the queue (auto-delete, or expiry with `x-expires`).
pub(crate) type AutoDelete = Box<dyn FnOnce() + Send>;

/// Most ready messages kept in memory per queue before new ones go to disk only.
const MAX_HEAD_MESSAGES: usize = 8192;
/// Most ready body bytes kept in memory per queue.
const MAX_HEAD_BYTES: u64 = 32 * 1024 * 1024;
/// The head is refilled from disk when it falls under this many messages.
const REFILL_BELOW: usize = 2048;
/// Most messages and bytes read from disk in one refill.
const REFILL_MESSAGES: usize = 32768;
const REFILL_BYTES: usize = 8 * 1024 * 1024;

/// A queue asks the store to tell it when it has taken the queue's writes after this many of
/// them; while `MAX_MARKS_PENDING` such marks are outstanding, the actor takes no commands,
/// so publishers wait on its inbox instead of the writes piling up in memory before the store
/// thread gets to them.
const WRITES_PER_MARK: u32 = 4096;
const MAX_MARKS_PENDING: u32 = 4;

/// Most messages expired in one pass: the actor then serves its inboxes and lets other
/// tasks run before it goes on, so a mass expiry never stalls the queue or its worker thread.
const EXPIRE_BUDGET: usize = 1024;

/// What a dead entry's message is replaced with, so its memory goes at once.
static GONE: LazyLock<Arc<Message>> = LazyLock::new(|| {
    Arc::new(Message {
        exchange: Arc::from(""),
        routing_key: Arc::from(""),
        extra_keys: Box::new([]),
        properties: warren_amqp::Properties::default(),
        body: bytes::Bytes::new(),
    })
});

struct Entry {
    id: u64,
    msg: Arc<Message>,
    redelivered: bool,
    /// A durable record exists on disk and must be deleted once the message is settled.
    on_disk: bool,
    /// When it expires (ms since the Unix epoch).
    expires_at: Option<u64>,
    /// It is in the expiry index (its expiry may come before a message ahead of it).
    indexed: bool,
    /// Expired where it stood: skipped when it reaches the front.
    dead: bool,
}

/// A dead letter held back behind a disk read.
enum PendingDeadLetter {
    /// Ready to go.
    Ready(Arc<Message>, Reason),
    /// This tail message expired and is being read back, to be dead-lettered as expired.
    OnDisk(u64),
}

struct Unacked {
    entry: Entry,
    channel: ChannelKey,
    consumer: Option<Arc<str>>,
    /// When it was delivered (for the consumer timeout).
    at: Instant,
}

struct Consumer {
    spec: ConsumerSpec,
    unacked: u32,
    /// The single active consumer (with `x-single-active-consumer`).
    active: bool,
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct QueueActor {
    handle: QueueHandle,
    durable: bool,
    settings: Arc<QueueSettings>,
    /// Ready messages in memory: one lane per priority (one lane without priorities).
    lanes: Vec<VecDeque<Entry>>,
    /// Live (not dead) entries in the lanes, and their body bytes.
    head_count: u64,
    head_bytes: u64,
    /// Entries in the lanes, dead ones included (what memory holds).
    head_slots: usize,
    tail: Tail,
    disk: Option<Disk>,
    /// Highest on-disk message id delivered so far (persisted for `redelivered`).
    delivered_mark: u64,
    delivered_dirty: bool,
    /// Messages up to this id were delivered before the last restart.
    redelivered_below: u64,
    /// Messages up to this id were recovered from disk at start.
    recovered_max: u64,
    unacked: HashMap<u64, Unacked>,
    /// Consumers, highest priority first, in order of arrival within a priority.
    consumers: Vec<Consumer>,
    /// (start, end) of each run of consumers with the same priority.
    groups: Vec<(usize, usize)>,
    next_id: u64,
    rr: usize,
    auto_delete: bool,
    delete: Option<AutoDelete>,
    had_consumer: bool,
    /// Last consume, get or declare (for `x-expires`).
    last_used: Instant,
    /// basic.get requests waiting for a refill.
    pending_gets: VecDeque<(ChannelKey, bool, oneshot::Sender<Option<GetOk>>)>,
    /// The actor's own auxiliary inbox, for store replies.
    aux_tx: mpsc::UnboundedSender<Aux>,
    /// Some message has an expiry: the clock is read when messages move.
    ttl_in_use: bool,
    /// The last expiry pass ran out of budget: more messages are due.
    expire_more: bool,
    /// The latest expiry among front-ordered messages (see the module comment).
    last_ordered_expiry: u64,
    /// Expiry index: (expires_at, id) -> (lane, body size).
    index: BTreeMap<(u64, u64), (u8, u32)>,
    /// Tail messages expired before they were loaded (skipped when a refill returns them).
    tail_removed: BTreeSet<u64>,
    dead_letterer: DeadLetterer,
    /// Dead letters waiting for an earlier one that is being read from disk, so that they
    /// leave in the order the messages died.
    dl_queue: VecDeque<PendingDeadLetter>,
    /// When consumer timeouts were last checked.
    last_timeout_check: Instant,
    /// Store writes sent since the last mark, and marks the store has not reached yet.
    writes_unmarked: u32,
    marks_pending: u32,
}

/// Starts a queue actor on the current runtime.
pub(crate) fn spawn(
    def: &QueueDef,
    vhost: &Arc<Vhost>,
    settings: QueueSettings,
    disk: Option<Disk>,
    delete: AutoDelete,
) -> QueueHandle {
    let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
    let (aux_tx, aux_rx) = mpsc::unbounded_channel();
    let settings = Arc::new(settings);
    let (settings_tx, _) = watch::channel(settings.clone());
    let stop = CancellationToken::new();
    let handle = QueueHandle {
        inner: Arc::new(Inner {
            name: Arc::from(def.name.as_str()),
            vhost: vhost.name.clone(),
            exclusive_owner: def.exclusive_owner,
            tx,
            aux: aux_tx.clone(),
            settings: settings_tx,
            stop: stop.clone(),
            remote: false,
            room: tokio::sync::Semaphore::new(INBOX_CAPACITY),
            home: None,
        }),
    };
    let recovered = disk.as_ref().map(|d| d.recovered).unwrap_or_default();
    let lanes = (0..=usize::from(settings.max_priority))
        .map(|_| VecDeque::new())
        .collect();
    let actor = QueueActor {
        handle: handle.clone(),
        durable: def.durable,
        settings,
        lanes,
        head_count: 0,
        head_bytes: 0,
        head_slots: 0,
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
        recovered_max: recovered.max_id,
        unacked: HashMap::new(),
        consumers: Vec::new(),
        groups: Vec::new(),
        next_id: recovered.max_id + 1,
        rr: 0,
        auto_delete: def.auto_delete,
        delete: Some(delete),
        had_consumer: false,
        last_used: Instant::now(),
        pending_gets: VecDeque::new(),
        aux_tx,
        ttl_in_use: false,
        expire_more: false,
        last_ordered_expiry: 0,
        index: BTreeMap::new(),
        tail_removed: BTreeSet::new(),
        dead_letterer: DeadLetterer {
            vhost: Arc::downgrade(vhost),
            queue: handle.clone(),
        },
        dl_queue: VecDeque::new(),
        last_timeout_check: Instant::now(),
        writes_unmarked: 0,
        marks_pending: 0,
    };
    tokio::spawn(actor.run(rx, aux_rx, stop));
    handle
}

impl QueueActor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<QueueCmd>,
        mut aux_rx: mpsc::UnboundedReceiver<Aux>,
        stop: CancellationToken,
    ) {
        self.refill();
        // One timer for the actor's life, moved only when its deadline changes, so that the
        // hot path never touches the timer wheel.
        let mut timer = Box::pin(tokio::time::sleep_until(Instant::now()));
        let mut timer_at: Option<Instant> = None;
        loop {
            let deadline = self.next_deadline();
            if deadline != timer_at {
                if let Some(at) = deadline {
                    timer.as_mut().reset(at);
                }
                timer_at = deadline;
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                aux = aux_rx.recv() => {
                    if let Some(aux) = aux {
                        self.aux(aux);
                        for _ in 0..256 {
                            match aux_rx.try_recv() {
                                Ok(aux) => self.aux(aux),
                                Err(_) => break,
                            }
                        }
                    }
                }
                cmd = rx.recv(), if self.store_keeps_up() => match cmd {
                    Some(cmd) => {
                        // Deliveries go out between slices of about 256 messages taken in,
                        // so consumers keep pace with a fast publisher.
                        let mut budget = 256usize;
                        budget = budget.saturating_sub(cmd.weight());
                        self.handle(cmd);
                        while budget > 0 && self.store_keeps_up() {
                            match rx.try_recv() {
                                Ok(cmd) => {
                                    budget = budget.saturating_sub(cmd.weight());
                                    self.handle(cmd);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = &mut timer, if timer_at.is_some() => {
                    // Fired: the next deadline is set afresh.
                    timer_at = None;
                }
            }
            if self.ttl_in_use {
                self.expire(now_ms());
                if self.expire_more {
                    tokio::task::yield_now().await;
                }
            }
            self.check_consumer_timeouts();
            // An expired queue deletes itself; its actor stops when the deletion reaches it.
            self.check_queue_expiry();
            self.dispatch();
            self.serve_gets();
            self.refill();
            self.save_delivered_mark();
            self.maybe_auto_delete();
        }
        self.shutdown(rx);
    }

    /// False while too many of this queue's writes wait for the store thread.
    fn store_keeps_up(&self) -> bool {
        self.marks_pending < MAX_MARKS_PENDING
    }

    /// Counts a write sent to the store, and every `WRITES_PER_MARK` asks the store to say
    /// when it has taken them.
    fn count_write(&mut self) {
        self.writes_unmarked += 1;
        if self.writes_unmarked < WRITES_PER_MARK {
            return;
        }
        if let Some(disk) = &self.disk {
            self.writes_unmarked = 0;
            self.marks_pending += 1;
            let tx = self.aux_tx.clone();
            disk.store.taken(Box::new(move |_| {
                let _ = tx.send(Aux::WritesTaken);
            }));
        }
    }

    fn ready_count(&self) -> u64 {
        self.head_count + self.tail.count
    }

    fn ready_bytes(&self) -> u64 {
        self.head_bytes + self.tail.bytes
    }

    fn now(&self) -> u64 {
        if self.ttl_in_use {
            now_ms()
        } else {
            0
        }
    }

    fn lane_of(&self, msg: &Message) -> usize {
        usize::from(msg.properties.priority()).min(self.lanes.len() - 1)
    }

    /// The next time the actor must wake up by itself: the next expiry, the next consumer
    /// timeout check, or the queue's own expiry.
    fn next_deadline(&self) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut earliest = |t: Instant| {
            at = Some(at.map_or(t, |a| a.min(t)));
        };
        if self.expire_more {
            return Some(Instant::now());
        }
        if self.ttl_in_use {
            let mut next: Option<u64> = self.index.keys().next().map(|(e, _)| *e);
            for lane in &self.lanes {
                if let Some(e) = lane.front().filter(|e| !e.dead).and_then(|e| e.expires_at) {
                    next = Some(next.map_or(e, |n| n.min(e)));
                }
            }
            if let Some(e) = next {
                let wait = e.saturating_add(1).saturating_sub(now_ms());
                earliest(Instant::now() + Duration::from_millis(wait));
            }
        }
        if self.settings.consumer_timeout > 0 && !self.unacked.is_empty() {
            earliest(self.last_timeout_check + self.timeout_check_interval());
        }
        if let Some(expires) = self.settings.expires {
            if self.consumers.is_empty() && self.delete.is_some() {
                earliest(self.last_used + Duration::from_millis(expires));
            }
        }
        at
    }

    fn timeout_check_interval(&self) -> Duration {
        Duration::from_millis((self.settings.consumer_timeout / 4).clamp(20, 15_000))
    }

    fn aux(&mut self, aux: Aux) {
        match aux {
            Aux::DeadLetter(p) => self.publish(p),
            Aux::Loaded(msgs) => self.loaded(msgs),
            Aux::ExpiredRead(ids, msgs) => self.expired_from_disk(ids, msgs),
            Aux::Settings => {
                let settings = self.handle.settings();
                self.settings_changed(settings);
            }
            Aux::WritesTaken => self.marks_pending = self.marks_pending.saturating_sub(1),
        }
    }

    fn settings_changed(&mut self, settings: Arc<QueueSettings>) {
        self.settings = settings;
        // A new expiry period starts now, as RabbitMQ restarts its expiry timer.
        self.last_used = Instant::now();
        self.enforce_limits();
    }

    fn handle(&mut self, cmd: QueueCmd) {
        match cmd {
            QueueCmd::Publish(p) => self.publish(p),
            QueueCmd::PublishBatch(batch) => {
                let n = batch.len().min(INBOX_CAPACITY);
                batch.into_iter().for_each(|p| self.publish(p));
                self.handle.inner.room.add_permits(n);
            }
            QueueCmd::Consume(spec, reply) => {
                self.last_used = Instant::now();
                let _ = reply.send(self.add_consumer(spec));
            }
            QueueCmd::Cancel(channel, tag) => {
                self.remove_consumers(|c| c.spec.channel.key == channel && c.spec.tag == tag);
            }
            QueueCmd::Settle(channel, ids, how) => self.settle(channel, ids, how),
            QueueCmd::ChannelClosed(channel) => {
                self.remove_consumers(|c| c.spec.channel.key == channel);
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
                self.last_used = Instant::now();
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
                // A declare (or passive declare) counts as use, as in RabbitMQ.
                self.last_used = Instant::now();
                if self.ttl_in_use {
                    self.expire(now_ms());
                }
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

    /// Dead-letters a message if the queue has a dead-letter exchange (after any dead
    /// letters still being read from disk).
    fn dead_letter(&mut self, msg: &Arc<Message>, reason: Reason) {
        if self.settings.dead_letter_exchange.is_none() {
            return;
        }
        if self.dl_queue.is_empty() {
            self.send_dead_letter(msg, reason);
        } else {
            self.dl_queue
                .push_back(PendingDeadLetter::Ready(msg.clone(), reason));
        }
    }

    fn send_dead_letter(&self, msg: &Message, reason: Reason) {
        if let Some(dlx) = &self.settings.dead_letter_exchange {
            self.dead_letterer.publish(
                msg,
                reason,
                dlx,
                self.settings.dead_letter_routing_key.as_deref(),
            );
        }
    }

    /// The TTL a message gets on entering the queue: the smaller of the queue's TTL and the
    /// message's own `expiration`.
    fn ttl_for(&self, msg: &Message) -> Option<u64> {
        match (self.settings.message_ttl, msg.properties.expiration_ms()) {
            (None, None) => None,
            (Some(a), Some(b)) => Some(a.min(b)),
            (Some(a), None) | (None, Some(a)) => Some(a),
        }
    }

    /// Whether an entry with this expiry must go into the expiry index (else it expires
    /// from the front).
    fn needs_index(&mut self, expires_at: u64) -> bool {
        if self.lanes.len() > 1 || expires_at < self.last_ordered_expiry {
            return true;
        }
        self.last_ordered_expiry = expires_at;
        false
    }

    fn publish(&mut self, p: Publish) {
        let size = p.msg.size() as u64;
        if self.settings.overflow != Overflow::DropHead
            && self.settings.limited()
            && self
                .settings
                .over(self.ready_count() + 1, self.ready_bytes() + size)
        {
            if self.settings.overflow == Overflow::RejectPublishDlx {
                self.dead_letter(&p.msg, Reason::Maxlen);
            }
            return Self::confirm(p.confirm, false);
        }
        let id = self.next_id;
        self.next_id += 1;
        let durable_record = self.durable && p.msg.properties.is_persistent();
        let priority_queue = self.lanes.len() > 1;
        let to_tail = self.tail.count > 0
            || (!priority_queue
                && (self.head_slots >= MAX_HEAD_MESSAGES
                    || self.head_bytes + size > MAX_HEAD_BYTES));
        let ttl = self.ttl_for(&p.msg);
        let expires_at = ttl.map(|t| now_ms().saturating_add(t));
        let indexed = match expires_at {
            Some(at) => {
                self.ttl_in_use = true;
                // A message on disk expires from the front only while nothing is indexed:
                // otherwise it could come due before it is loaded, after indexed messages
                // that die later than it.
                let mixed = to_tail && !self.index.is_empty();
                self.needs_index(at) || mixed
            }
            None => false,
        };
        let wrote = match &self.disk {
            Some(disk) if durable_record || to_tail => {
                let value = store::Record {
                    msg: p.msg.clone(),
                    durable: durable_record,
                    expires_at,
                };
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
                true
            }
            _ => {
                Self::confirm(p.confirm, true);
                false
            }
        };
        if wrote {
            self.count_write();
        }
        let lane = self.lane_of(&p.msg);
        if indexed {
            if let Some(at) = expires_at {
                self.index
                    .insert((at, id), (lane as u8, size.min(u64::from(u32::MAX)) as u32));
            }
        }
        if to_tail && self.disk.is_some() {
            if self.tail.count == 0 {
                self.tail.next = id;
            }
            self.tail.count += 1;
            self.tail.bytes += size;
        } else {
            self.push_back(
                lane,
                Entry {
                    id,
                    msg: p.msg,
                    redelivered: false,
                    on_disk: durable_record && self.disk.is_some(),
                    expires_at,
                    indexed,
                    dead: false,
                },
            );
            if ttl == Some(0) && self.ready_count() == 1 {
                // A TTL of 0 means "deliver now or never": the consumers get a chance
                // before the clock is looked at again.
                self.dispatch_unchecked();
            }
        }
        self.enforce_limits();
    }

    fn push_back(&mut self, lane: usize, entry: Entry) {
        self.head_count += 1;
        self.head_bytes += entry.msg.size() as u64;
        self.head_slots += 1;
        self.lanes[lane].push_back(entry);
    }

    /// Drops (and dead-letters, as `maxlen`) the oldest messages while the queue is over its
    /// length limit with `drop-head`. Messages only on disk are dropped once loaded.
    fn enforce_limits(&mut self) {
        if !self.settings.limited() || self.settings.overflow != Overflow::DropHead {
            return;
        }
        while self.settings.over(self.ready_count(), self.ready_bytes()) {
            let now = self.now();
            if !self.clean_front(now) {
                break;
            }
            let Some(e) = self.pop_front_live() else {
                break;
            };
            self.dead_letter(&e.msg, Reason::Maxlen);
            self.forget(&e);
        }
    }

    /// The highest lane with entries.
    fn top_lane(&self) -> Option<usize> {
        (0..self.lanes.len())
            .rev()
            .find(|&i| !self.lanes[i].is_empty())
    }

    /// Removes dead and expired entries from the front of the queue (dead-lettering the
    /// expired ones); true when a deliverable message is then at the front.
    fn clean_front(&mut self, now: u64) -> bool {
        loop {
            let Some(lane) = self.top_lane() else {
                return false;
            };
            let Some(front) = self.lanes[lane].front() else {
                return false;
            };
            if front.dead {
                self.lanes[lane].pop_front();
                self.head_slots -= 1;
                continue;
            }
            if front.expires_at.is_some_and(|at| at < now) {
                if let Some(e) = self.pop_front_live() {
                    self.expire_entry(e);
                }
                continue;
            }
            return true;
        }
    }

    /// Takes the first live entry from the highest non-empty lane (no expiry check).
    fn pop_front_live(&mut self) -> Option<Entry> {
        loop {
            let lane = self.top_lane()?;
            let e = self.lanes[lane].pop_front()?;
            self.head_slots -= 1;
            if e.dead {
                continue;
            }
            self.head_count -= 1;
            self.head_bytes -= e.msg.size() as u64;
            if e.indexed {
                if let Some(at) = e.expires_at {
                    self.index.remove(&(at, e.id));
                }
            }
            return Some(e);
        }
    }

    /// An entry taken out of the queue because its TTL passed.
    fn expire_entry(&mut self, e: Entry) {
        if e.indexed {
            if let Some(at) = e.expires_at {
                self.index.remove(&(at, e.id));
            }
        }
        self.dead_letter(&e.msg, Reason::Expired);
        self.forget(&e);
    }

    /// Expires every message whose TTL passed, in order of expiry: front-ordered messages
    /// from the front of the queue, the others through the expiry index, wherever they are.
    fn expire(&mut self, now: u64) {
        let mut from_disk: Vec<u64> = Vec::new();
        let mut budget = EXPIRE_BUDGET;
        self.expire_more = false;
        loop {
            if budget == 0 {
                self.expire_more = true;
                break;
            }
            budget -= 1;
            for lane in 0..self.lanes.len() {
                while self.lanes[lane].front().is_some_and(|e| e.dead) {
                    self.lanes[lane].pop_front();
                    self.head_slots -= 1;
                }
            }
            // Every message of a priority queue is indexed: only one lane can hold
            // front-ordered ones.
            let ordered = match self.lanes.len() {
                1 => self.lanes[0]
                    .front()
                    .filter(|e| !e.indexed)
                    .and_then(|e| e.expires_at),
                _ => None,
            };
            let indexed = self
                .index
                .first_key_value()
                .map(|(&(at, id), &v)| (at, id, v));
            match (ordered, indexed) {
                (Some(o), i) if o < now && i.is_none_or(|(at, _, _)| o <= at) => {
                    if let Some(e) = self.lanes[0].pop_front() {
                        self.head_slots -= 1;
                        self.head_count -= 1;
                        self.head_bytes -= e.msg.size() as u64;
                        self.expire_entry(e);
                    }
                }
                (_, Some((at, id, (lane, size)))) if at < now => {
                    self.index.remove(&(at, id));
                    self.expire_indexed(id, usize::from(lane), size, &mut from_disk);
                }
                _ => break,
            }
        }
        if !from_disk.is_empty() {
            // One read for every tail message that expired in this pass; each holds its
            // place among the dead letters until the read returns.
            if let Some(disk) = &self.disk {
                let tx = self.aux_tx.clone();
                let ids = from_disk.clone();
                disk.store.read_ids(
                    disk.qid,
                    from_disk,
                    Box::new(move |msgs| {
                        let _ = tx.send(Aux::ExpiredRead(ids, msgs));
                    }),
                );
            }
        }
    }

    /// Expires an indexed message (already out of the index) where it is: marked dead in
    /// its lane, or uncounted from the tail (its record then read back for dead-lettering,
    /// or deleted).
    fn expire_indexed(&mut self, id: u64, lane: usize, size: u32, from_disk: &mut Vec<u64>) {
        if self.tail.count > 0 && id >= self.tail.next {
            self.tail.count -= 1;
            self.tail.bytes = self.tail.bytes.saturating_sub(u64::from(size));
            self.tail_removed.insert(id);
            if self.settings.dead_letter_exchange.is_some() {
                from_disk.push(id);
                self.dl_queue.push_back(PendingDeadLetter::OnDisk(id));
            } else if let Some(disk) = &self.disk {
                disk.store.delete(disk.qid, id);
            }
            return;
        }
        let lane = lane.min(self.lanes.len() - 1);
        let Ok(pos) = self.lanes[lane].binary_search_by_key(&id, |e| e.id) else {
            return;
        };
        let e = &mut self.lanes[lane][pos];
        if e.dead {
            return;
        }
        e.dead = true;
        let msg = std::mem::replace(&mut e.msg, GONE.clone());
        let on_disk = e.on_disk;
        self.head_count -= 1;
        self.head_bytes -= msg.size() as u64;
        self.dead_letter(&msg, Reason::Expired);
        if on_disk {
            if let Some(disk) = &self.disk {
                disk.store.delete(disk.qid, id);
            }
        }
    }

    /// The records of tail messages that expired on disk, read back to be dead-lettered
    /// in their turn.
    fn expired_from_disk(&mut self, ids: Vec<u64>, msgs: Vec<StoredMessage>) {
        if let Some(disk) = &self.disk {
            for m in &msgs {
                disk.store.delete(disk.qid, m.id);
            }
        }
        let read: std::collections::HashSet<u64> = ids.into_iter().collect();
        let mut found: HashMap<u64, Arc<Message>> =
            msgs.into_iter().map(|m| (m.id, m.msg)).collect();
        let pending = std::mem::take(&mut self.dl_queue);
        for p in pending {
            match p {
                PendingDeadLetter::OnDisk(id) if read.contains(&id) => {
                    // A record already gone (purged meanwhile) is simply skipped.
                    if let Some(msg) = found.remove(&id) {
                        self.dl_queue
                            .push_back(PendingDeadLetter::Ready(msg, Reason::Expired));
                    }
                }
                other => self.dl_queue.push_back(other),
            }
        }
        while let Some(PendingDeadLetter::Ready(..)) = self.dl_queue.front() {
            if let Some(PendingDeadLetter::Ready(msg, reason)) = self.dl_queue.pop_front() {
                self.send_dead_letter(&msg, reason);
            }
        }
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
        while let Some(e) = self.pop_front_live() {
            self.forget(&e);
        }
        self.index.clear();
        self.tail_removed.clear();
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
        let active =
            self.settings.single_active_consumer && !self.consumers.iter().any(|c| c.active);
        let pos = self
            .consumers
            .iter()
            .position(|c| c.spec.priority < spec.priority)
            .unwrap_or(self.consumers.len());
        self.consumers.insert(
            pos,
            Consumer {
                spec,
                unacked: 0,
                active,
            },
        );
        self.regroup();
        self.had_consumer = true;
        Ok(())
    }

    /// Removes the consumers matching `pred`; with a single active consumer, the next one
    /// (highest priority, then earliest) takes over.
    fn remove_consumers(&mut self, pred: impl Fn(&Consumer) -> bool) {
        let before = self.consumers.len();
        self.consumers.retain(|c| !pred(c));
        if self.consumers.len() == before {
            return;
        }
        if self.settings.single_active_consumer && !self.consumers.iter().any(|c| c.active) {
            if let Some(c) = self.consumers.first_mut() {
                c.active = true;
            }
        }
        if self.consumers.is_empty() {
            self.last_used = Instant::now();
        }
        self.regroup();
    }

    fn regroup(&mut self) {
        self.groups.clear();
        let mut start = 0;
        while start < self.consumers.len() {
            let p = self.consumers[start].spec.priority;
            let mut end = start + 1;
            while end < self.consumers.len() && self.consumers[end].spec.priority == p {
                end += 1;
            }
            self.groups.push((start, end));
            start = end;
        }
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
                Settle::Ack => self.forget(&u.entry),
                Settle::Discard => {
                    self.dead_letter(&u.entry.msg, Reason::Rejected);
                    self.forget(&u.entry);
                }
                Settle::Requeue => {
                    let mut entry = u.entry;
                    entry.redelivered = true;
                    self.requeue(entry);
                }
                Settle::Return => self.requeue(u.entry),
            }
        }
    }

    /// Puts a message back at its original position in its lane (ids are in publish order,
    /// and every unacked message has a lower id than the on-disk tail).
    fn requeue(&mut self, entry: Entry) {
        let lane = self.lane_of(&entry.msg);
        if entry.indexed {
            if let Some(at) = entry.expires_at {
                self.index.insert(
                    (at, entry.id),
                    (lane as u8, entry.msg.size().min(u32::MAX as usize) as u32),
                );
            }
        }
        self.head_count += 1;
        self.head_bytes += entry.msg.size() as u64;
        self.head_slots += 1;
        let pos = self.lanes[lane].partition_point(|e| e.id < entry.id);
        self.lanes[lane].insert(pos, entry);
    }

    /// Reads the next chunk of the tail when the head runs low (a priority queue loads all
    /// of it, to sort it into its lanes).
    fn refill(&mut self) {
        let want =
            self.head_slots < REFILL_BELOW || self.lanes.len() > 1 || !self.pending_gets.is_empty();
        if !want || self.tail.count == 0 || self.tail.loading {
            return;
        }
        let Some(disk) = &self.disk else {
            return;
        };
        self.tail.loading = true;
        let tx = self.aux_tx.clone();
        disk.store.read(
            disk.qid,
            self.tail.next,
            REFILL_MESSAGES,
            REFILL_BYTES,
            Box::new(move |msgs| {
                let _ = tx.send(Aux::Loaded(msgs));
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
            self.tail_removed.clear();
            return;
        }
        // Paged-out transient records are garbage once loaded: the queue holds them in
        // memory from now on (and a restart would drop them anyway).
        let mut loaded_transient = 0u64;
        for m in msgs {
            self.tail.next = m.id + 1;
            if self.tail_removed.remove(&m.id) {
                // Expired while on disk: already uncounted, its record is being removed.
                continue;
            }
            if !m.durable {
                loaded_transient += 1;
            }
            let size = m.msg.size() as u64;
            self.tail.count = self.tail.count.saturating_sub(1);
            self.tail.bytes = self.tail.bytes.saturating_sub(size);
            let mut indexed = false;
            if let Some(at) = m.expires_at {
                self.ttl_in_use = true;
                indexed = self.index.contains_key(&(at, m.id));
                if !indexed && m.id <= self.recovered_max {
                    // Recovered from before a restart: its place in expiry order is unknown.
                    indexed = self.needs_index(at);
                    if indexed {
                        let lane = self.lane_of(&m.msg) as u8;
                        self.index
                            .insert((at, m.id), (lane, size.min(u64::from(u32::MAX)) as u32));
                    }
                }
            }
            let lane = self.lane_of(&m.msg);
            self.push_back(
                lane,
                Entry {
                    id: m.id,
                    redelivered: m.id <= self.redelivered_below,
                    on_disk: m.durable,
                    msg: m.msg,
                    expires_at: m.expires_at,
                    indexed,
                    dead: false,
                },
            );
        }
        self.tail_removed = self.tail_removed.split_off(&self.tail.next);
        if let Some(disk) = &self.disk {
            if loaded_transient > 0 {
                disk.store
                    .transient_loaded(disk.qid, self.tail.next, loaded_transient);
            }
        }
        self.enforce_limits();
    }

    fn serve_gets(&mut self) {
        while let Some((channel, no_ack, reply)) = self.pending_gets.pop_front() {
            let now = self.now();
            let ready = self.clean_front(now);
            if !ready && self.tail.count > 0 {
                // Wait for the refill.
                self.pending_gets.push_front((channel, no_ack, reply));
                return;
            }
            let got = if ready { self.pop_front_live() } else { None };
            let got = got.map(|entry| {
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
                            at: Instant::now(),
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

    /// Takes delivery credit from consumer `i` (its prefetch, then its channel's credit).
    fn try_credit(&self, i: usize) -> bool {
        let c = &self.consumers[i];
        let no_ack = c.spec.no_ack;
        if !no_ack && c.spec.prefetch > 0 && c.unacked >= c.spec.prefetch {
            return false;
        }
        let flow = &c.spec.channel.flow;
        if flow.try_acquire(no_ack) {
            return true;
        }
        flow.wait(&self.handle);
        flow.try_acquire(no_ack)
    }

    /// The consumer to deliver the next message to, with its credit taken: the active one
    /// with a single active consumer; otherwise the highest-priority consumers that can take
    /// a message, round-robin among equals.
    fn pick_consumer(&mut self) -> Option<usize> {
        if self.settings.single_active_consumer {
            let i = self.consumers.iter().position(|c| c.active)?;
            return self.try_credit(i).then_some(i);
        }
        for g in 0..self.groups.len() {
            let (start, end) = self.groups[g];
            let n = end - start;
            for k in 0..n {
                let i = start + (self.rr + k) % n;
                if self.try_credit(i) {
                    self.rr = self.rr.wrapping_add(k + 1);
                    return Some(i);
                }
            }
        }
        None
    }

    fn dispatch(&mut self) {
        self.dispatch_at(true);
    }

    /// Delivers without looking at expiry (only the message just published is ready).
    fn dispatch_unchecked(&mut self) {
        self.dispatch_at(false);
    }

    fn dispatch_at(&mut self, check_expiry: bool) {
        if self.consumers.is_empty() {
            return;
        }
        let at = Instant::now();
        loop {
            let now = if check_expiry { self.now() } else { 0 };
            if !self.clean_front(now) {
                return;
            }
            let Some(i) = self.pick_consumer() else {
                return;
            };
            let Some(entry) = self.pop_front_live() else {
                let c = &self.consumers[i];
                c.spec.channel.flow.written(1);
                if !c.spec.no_ack {
                    c.spec.channel.flow.settled(1);
                }
                return;
            };
            let c = &mut self.consumers[i];
            let no_ack = c.spec.no_ack;
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
                let flow = c.spec.channel.flow.clone();
                flow.written(1);
                if !no_ack {
                    flow.settled(1);
                }
                let key = c.spec.channel.key;
                self.requeue(entry);
                self.remove_consumers(|c| c.spec.channel.key == key);
                if self.consumers.is_empty() {
                    return;
                }
                continue;
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
                        at,
                    },
                );
            }
        }
    }

    /// Cancels every consumer holding a delivery unacked past the consumer timeout: it gets
    /// `basic.cancel`, and its unacked messages go back to the queue (RabbitMQ 3 closes the
    /// whole channel instead).
    fn check_consumer_timeouts(&mut self) {
        let timeout = self.settings.consumer_timeout;
        if timeout == 0 || self.unacked.is_empty() {
            return;
        }
        let now = Instant::now();
        if now < self.last_timeout_check + self.timeout_check_interval() {
            return;
        }
        self.last_timeout_check = now;
        let limit = Duration::from_millis(timeout);
        let mut late: Vec<(ChannelKey, Arc<str>)> = Vec::new();
        for u in self.unacked.values() {
            if let Some(tag) = &u.consumer {
                if now.duration_since(u.at) > limit
                    && !late.iter().any(|(c, t)| *c == u.channel && t == tag)
                {
                    late.push((u.channel, tag.clone()));
                }
            }
        }
        for (channel, tag) in late {
            let Some(c) = self
                .consumers
                .iter()
                .find(|c| c.spec.channel.key == channel && c.spec.tag == tag)
            else {
                continue;
            };
            let chref = c.spec.channel.clone();
            let ids: Vec<u64> = self
                .unacked
                .iter()
                .filter(|(_, u)| u.channel == channel && u.consumer.as_ref() == Some(&tag))
                .map(|(id, _)| *id)
                .collect();
            tracing::info!(
                queue = %self.handle.name(),
                consumer = %tag,
                timeout_ms = timeout,
                "consumer timed out waiting for acknowledgements: cancelled, its messages requeued"
            );
            self.remove_consumers(|c| c.spec.channel.key == channel && c.spec.tag == tag);
            let _ = chref.events.send(ConnEvent::ConsumerTimedOut {
                channel,
                consumer_tag: tag,
                queue: self.handle.clone(),
                msg_ids: ids.clone(),
            });
            self.settle(channel, ids, Settle::Requeue);
        }
    }

    /// Deletes the queue once it has been unused for `x-expires`; true when it did.
    fn check_queue_expiry(&mut self) -> bool {
        let Some(expires) = self.settings.expires else {
            return false;
        };
        if !self.consumers.is_empty() || self.last_used.elapsed() < Duration::from_millis(expires) {
            return false;
        }
        match self.delete.take() {
            Some(delete) => {
                delete();
                true
            }
            None => false,
        }
    }

    fn maybe_auto_delete(&mut self) {
        if self.auto_delete && self.had_consumer && self.consumers.is_empty() {
            if let Some(delete) = self.delete.take() {
                delete();
            }
        }
    }

    /// The queue was deleted: consumers are cancelled and its records removed.
    fn shutdown(self, mut rx: mpsc::Receiver<QueueCmd>) {
        // Publishers waiting for room see the queue gone.
        self.handle.inner.room.close();
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
            match cmd {
                QueueCmd::Publish(Publish { confirm, .. }) => Self::confirm(confirm, true),
                QueueCmd::PublishBatch(batch) => {
                    for p in batch {
                        Self::confirm(p.confirm, true);
                    }
                }
                _ => {}
            }
        }
    }
}
