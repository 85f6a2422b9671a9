//! Queues: one actor task per queue owns its messages and consumers; everything else talks
//! to it through a cheap-to-clone [`QueueHandle`]. A queue on another node of the cluster is
//! the same handle API: its commands go to a proxy task (`cluster::remote_queue`) that
//! forwards them over the distribution link to the queue's home node.

mod actor;
pub mod dead_letter;

use crate::delivery::{ChannelKey, ChannelRef, ConnEvent};
use crate::error::ChannelError;
use crate::message::Message;
use crate::policy::QueueSettings;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;

pub(crate) use actor::{spawn, Disk};

/// Capacity of a queue's inbox: publishers wait when a queue falls this far behind.
pub const INBOX_CAPACITY: usize = 4096;

/// A consumer as registered with a queue.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    /// The consumer tag.
    pub tag: Arc<str>,
    /// The consumer's channel.
    pub channel: ChannelRef,
    /// Deliveries need no ack.
    pub no_ack: bool,
    /// No other consumer may use the queue.
    pub exclusive: bool,
    /// Most unacked deliveries to this consumer (0: no limit).
    pub prefetch: u32,
    /// `x-priority`: higher-priority consumers get messages first.
    pub priority: i32,
}

/// A publish handed to a queue, with where to send its confirm.
#[derive(Debug)]
pub struct Publish {
    /// The message.
    pub msg: Arc<Message>,
    /// The channel and sequence number to confirm to, in confirm mode.
    pub confirm: Option<(ChannelRef, u64)>,
}

/// What to do with settled deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Settle {
    /// Acked: forget them.
    Ack,
    /// Rejected with requeue: back in place, marked redelivered.
    Requeue,
    /// Rejected without requeue: drop them.
    Discard,
    /// Never reached the client (consumer gone): back in place, flags unchanged.
    Return,
}

/// A message taken with basic.get.
#[derive(Debug)]
pub struct GetOk {
    /// The message's id within the queue.
    pub msg_id: u64,
    /// The message.
    pub msg: Arc<Message>,
    /// True if it was delivered before.
    pub redelivered: bool,
    /// Messages left ready in the queue.
    pub remaining: u32,
}

/// What reaches a queue actor besides its commands.
pub(crate) enum Aux {
    /// A dead-lettered message from another queue (or itself).
    DeadLetter(Publish),
    /// A chunk of the on-disk tail, read for a refill.
    Loaded(Vec<crate::store::StoredMessage>),
    /// Tail messages that expired on disk (the ids asked for, the records found).
    ExpiredRead(Vec<u64>, Vec<crate::store::StoredMessage>),
    /// The effective settings changed (read them from the watch).
    Settings,
    /// The store thread took the writes sent before one of the actor's marks.
    WritesTaken,
}

pub(crate) enum QueueCmd {
    Publish(Publish),
    /// Messages for the queue in publish order (see [`PublishBatches`]).
    PublishBatch(Vec<Publish>),
    Consume(ConsumerSpec, oneshot::Sender<Result<(), ChannelError>>),
    Cancel(ChannelKey, Arc<str>),
    Settle(ChannelKey, Vec<u64>, Settle),
    ChannelClosed(ChannelKey),
    Get(ChannelKey, bool, oneshot::Sender<Option<GetOk>>),
    Purge(oneshot::Sender<u32>),
    CheckDelete(bool, bool, oneshot::Sender<Result<u32, ChannelError>>),
    Stats(oneshot::Sender<(u32, u32)>),
    Info(oneshot::Sender<QueueInfo>),
    Wake,
}

impl QueueCmd {
    /// How much of an actor's turn the command takes: its messages, or one.
    pub(crate) fn weight(&self) -> usize {
        match self {
            QueueCmd::PublishBatch(b) => b.len().max(1),
            _ => 1,
        }
    }
}

/// Counters for the admin tools (`list_queues`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueInfo {
    /// Messages ready for delivery.
    pub messages_ready: u64,
    /// Bytes of the ready messages' bodies.
    pub message_bytes_ready: u64,
    /// Messages delivered and not yet acked.
    pub messages_unacknowledged: u64,
    /// Consumers.
    pub consumers: u32,
}

struct Inner {
    name: Arc<str>,
    vhost: Arc<str>,
    exclusive_owner: Option<u64>,
    tx: mpsc::Sender<QueueCmd>,
    /// Everything but commands: dead letters from other queues (unbounded so that no queue
    /// ever waits on another, see `dead_letter`), store replies, settings changes. One
    /// channel, so that the actor polls one more receiver per wake-up, not four.
    aux: mpsc::UnboundedSender<Aux>,
    /// The queue's effective settings (arguments merged with policies); replaced when a
    /// policy changes, the actor picks the new value up at once.
    settings: watch::Sender<Arc<QueueSettings>>,
    stop: CancellationToken,
    /// The queue lives on another node; this handle's commands go to its proxy.
    remote: bool,
    /// Room for batched messages in the inbox, in messages (a batch takes one slot of the
    /// channel but as many permits as it has messages), so that batching does not let
    /// publishers run further ahead of the queue than one message per slot would. Closed
    /// when the actor stops.
    room: Semaphore,
    /// For a queue on another node: where it lives and whether that node is reachable.
    home: Option<Home>,
}

/// Where a queue on another node lives, as its handle knows it.
pub(crate) struct Home {
    /// The home node's name.
    pub(crate) node: Arc<str>,
    /// The queue is durable (RabbitMQ's "home node down" text says so).
    pub(crate) durable: bool,
    /// False while the home node cannot be reached (kept current by the proxy's link).
    pub(crate) available: Arc<AtomicBool>,
}

/// What a proxy task for a queue on another node receives: the handle's commands and its
/// auxiliary messages (dead letters), and the token that stops it.
pub(crate) struct ProxyInbox {
    pub(crate) commands: mpsc::Receiver<QueueCmd>,
    pub(crate) aux: mpsc::UnboundedReceiver<Aux>,
    pub(crate) stop: CancellationToken,
}

/// A handle to a queue actor.
#[derive(Clone)]
pub struct QueueHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QueueHandle({}/{})", self.inner.vhost, self.inner.name)
    }
}

/// Confirms a publish that reached a queue deleted meanwhile (as RabbitMQ does).
fn confirm_dropped(p: Publish) {
    if let Some((channel, seq)) = p.confirm {
        let _ = channel.events.send(ConnEvent::Confirm {
            channel: channel.key,
            seq,
            ok: true,
        });
    }
}

/// Most messages handed to one queue in one command.
const MAX_BATCH_MESSAGES: usize = 128;
/// Most queues a connection gathers publishes for before handing them over.
const MAX_BATCH_QUEUES: usize = 64;

/// The publishes a connection has routed but not yet handed to their queues, per queue in
/// publish order. A connection hands them over when it has handled what one read brought
/// (and before any other method, so that what a client does next sees them): a queue then
/// takes many messages per wake-up instead of one, and delivers them on in batches.
#[derive(Default)]
pub struct PublishBatches {
    queues: Vec<(QueueHandle, Vec<Publish>)>,
    /// Where the next queue is expected: a message routes to the same queues in the same
    /// order as the one before it, so the lookup is one comparison.
    cursor: usize,
    full: bool,
}

impl PublishBatches {
    /// Adds a message for a queue.
    pub fn push(&mut self, queue: &QueueHandle, publish: Publish) {
        let at = match self.queues.get(self.cursor) {
            Some((q, _)) if q.same(queue) => Some(self.cursor),
            _ => self.queues.iter().position(|(q, _)| q.same(queue)),
        };
        let i = match at {
            Some(i) => i,
            None => {
                self.queues.push((queue.clone(), Vec::new()));
                self.full |= self.queues.len() >= MAX_BATCH_QUEUES;
                self.queues.len() - 1
            }
        };
        let batch = &mut self.queues[i].1;
        batch.push(publish);
        self.full |= batch.len() >= MAX_BATCH_MESSAGES;
        self.cursor = if i + 1 == self.queues.len() { 0 } else { i + 1 };
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// True when the batches should be handed over now.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Hands every batch to its queue (waiting while a queue's inbox is full).
    pub async fn flush(&mut self) {
        self.cursor = 0;
        self.full = false;
        for (q, batch) in self.queues.drain(..) {
            q.publish_batch(batch).await;
        }
    }
}

fn gone(handle: &QueueHandle) -> ChannelError {
    match &handle.inner.home {
        // A proxy that did not answer: the home node could not be reached.
        Some(home) if !handle.inner.stop.is_cancelled() => ChannelError::new(
            warren_amqp::ReplyCode::NotFound,
            crate::cluster::remote_queue::home_down_text(
                &home.node,
                home.durable,
                &handle.inner.name,
                &handle.inner.vhost,
            ),
        ),
        _ => ChannelError::no_queue(&handle.inner.vhost, &handle.inner.name),
    }
}

impl QueueHandle {
    /// A handle for a queue on another node, and the inbox its proxy task serves.
    pub(crate) fn proxy(
        name: &str,
        vhost: &Arc<str>,
        exclusive_owner: Option<u64>,
        settings: QueueSettings,
        home: Home,
    ) -> (QueueHandle, ProxyInbox) {
        let (tx, commands) = mpsc::channel(INBOX_CAPACITY);
        let (aux, aux_rx) = mpsc::unbounded_channel();
        let (settings, _) = watch::channel(Arc::new(settings));
        let stop = CancellationToken::new();
        let handle = QueueHandle {
            inner: Arc::new(Inner {
                name: Arc::from(name),
                vhost: vhost.clone(),
                exclusive_owner,
                tx,
                aux,
                settings,
                stop: stop.clone(),
                remote: true,
                room: Semaphore::new(INBOX_CAPACITY),
                home: Some(home),
            }),
        };
        (
            handle,
            ProxyInbox {
                commands,
                aux: aux_rx,
                stop,
            },
        )
    }

    /// True when the queue lives on another node.
    pub fn is_remote(&self) -> bool {
        self.inner.remote
    }

    /// False when the queue lives on another node that cannot be reached now: publishes
    /// do not route to it.
    pub fn is_available(&self) -> bool {
        self.inner
            .home
            .as_ref()
            .is_none_or(|h| h.available.load(Ordering::Relaxed))
    }

    /// True once the queue was stopped (deleted): a cached handle is stale.
    pub fn is_stopped(&self) -> bool {
        self.inner.stop.is_cancelled()
    }

    /// The queue's name.
    pub fn name(&self) -> &Arc<str> {
        &self.inner.name
    }

    /// The queue's vhost.
    pub fn vhost(&self) -> &Arc<str> {
        &self.inner.vhost
    }

    /// The connection owning an exclusive queue.
    pub fn exclusive_owner(&self) -> Option<u64> {
        self.inner.exclusive_owner
    }

    /// True when both handles are the same queue incarnation.
    pub fn same(&self, other: &QueueHandle) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Checks that `connection` may use this queue (405 if another connection owns it).
    pub fn check_access(&self, connection: u64) -> Result<(), ChannelError> {
        match self.inner.exclusive_owner {
            Some(owner) if owner != connection => {
                Err(ChannelError::locked(&self.inner.vhost, &self.inner.name))
            }
            _ => Ok(()),
        }
    }

    /// Hands a message to the queue, waiting while its inbox is full. Returns false if the
    /// queue is gone.
    pub async fn publish(&self, publish: Publish) -> bool {
        self.inner.tx.send(QueueCmd::Publish(publish)).await.is_ok()
    }

    /// Hands a message to the queue if its inbox has room: Ok(false) when the queue is
    /// gone, Err with the message when the inbox is full (then [`QueueHandle::publish`]
    /// waits for room).
    pub fn try_publish(&self, publish: Publish) -> Result<bool, Publish> {
        match self.inner.tx.try_reserve() {
            Ok(slot) => {
                slot.send(QueueCmd::Publish(publish));
                Ok(true)
            }
            Err(mpsc::error::TrySendError::Closed(())) => Ok(false),
            Err(mpsc::error::TrySendError::Full(())) => Err(publish),
        }
    }

    /// Hands messages to the queue in order, in one command for a local queue. A message
    /// the queue can no longer take (it was deleted meanwhile) is dropped and confirmed, as
    /// RabbitMQ does.
    pub async fn publish_batch(&self, batch: Vec<Publish>) {
        if self.inner.remote {
            // The proxy streams them to the home node within its link's window.
            if let Err(mpsc::error::SendError(QueueCmd::PublishBatch(batch))) =
                self.inner.tx.send(QueueCmd::PublishBatch(batch)).await
            {
                batch.into_iter().for_each(confirm_dropped);
            }
        } else {
            let n = batch.len().min(INBOX_CAPACITY) as u32;
            match self.inner.room.acquire_many(n).await {
                // The actor gives the permits back when it has taken the messages.
                Ok(permits) => permits.forget(),
                Err(_) => return batch.into_iter().for_each(confirm_dropped),
            }
            if let Err(mpsc::error::SendError(QueueCmd::PublishBatch(batch))) =
                self.inner.tx.send(QueueCmd::PublishBatch(batch)).await
            {
                batch.into_iter().for_each(confirm_dropped);
            }
        }
    }

    /// Registers a consumer.
    pub async fn consume(&self, spec: ConsumerSpec) -> Result<(), ChannelError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(QueueCmd::Consume(spec, tx))
            .await
            .map_err(|_| gone(self))?;
        rx.await.map_err(|_| gone(self))?
    }

    /// Removes a consumer.
    pub async fn cancel(&self, channel: ChannelKey, tag: Arc<str>) {
        let _ = self.inner.tx.send(QueueCmd::Cancel(channel, tag)).await;
    }

    /// Acks, rejects or returns deliveries of a channel.
    pub async fn settle(&self, channel: ChannelKey, ids: Vec<u64>, how: Settle) {
        let _ = self
            .inner
            .tx
            .send(QueueCmd::Settle(channel, ids, how))
            .await;
    }

    /// Requeues every unacked delivery of a channel and forgets its consumers (channel
    /// closed).
    pub async fn channel_closed(&self, channel: ChannelKey) {
        let _ = self.inner.tx.send(QueueCmd::ChannelClosed(channel)).await;
    }

    /// Takes one message (basic.get).
    pub async fn get(
        &self,
        channel: ChannelKey,
        no_ack: bool,
    ) -> Result<Option<GetOk>, ChannelError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(QueueCmd::Get(channel, no_ack, tx))
            .await
            .map_err(|_| gone(self))?;
        rx.await.map_err(|_| gone(self))
    }

    /// Drops every ready message; returns how many.
    pub async fn purge(&self) -> Result<u32, ChannelError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(QueueCmd::Purge(tx))
            .await
            .map_err(|_| gone(self))?;
        rx.await.map_err(|_| gone(self))
    }

    /// Checks queue.delete's if-unused / if-empty; returns the message count.
    pub async fn check_delete(&self, if_unused: bool, if_empty: bool) -> Result<u32, ChannelError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(QueueCmd::CheckDelete(if_unused, if_empty, tx))
            .await
            .map_err(|_| gone(self))?;
        rx.await.map_err(|_| gone(self))?
    }

    /// Ready messages and consumers.
    pub async fn stats(&self) -> Result<(u32, u32), ChannelError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(QueueCmd::Stats(tx))
            .await
            .map_err(|_| gone(self))?;
        rx.await.map_err(|_| gone(self))
    }

    /// Hands a dead-lettered message to the queue without waiting.
    pub fn dead_letter(&self, publish: Publish) {
        let _ = self.inner.aux.send(Aux::DeadLetter(publish));
    }

    /// The queue's effective settings.
    pub fn settings(&self) -> Arc<QueueSettings> {
        self.inner.settings.borrow().clone()
    }

    /// Gives the queue new effective settings (a policy changed); a no-op when equal.
    pub fn set_settings(&self, settings: QueueSettings) {
        let changed = self.inner.settings.send_if_modified(|cur| {
            if **cur == settings {
                false
            } else {
                *cur = Arc::new(settings);
                true
            }
        });
        if changed {
            let _ = self.inner.aux.send(Aux::Settings);
        }
    }

    /// The queue's counters.
    pub async fn info(&self) -> Result<QueueInfo, ChannelError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(QueueCmd::Info(tx))
            .await
            .map_err(|_| gone(self))?;
        rx.await.map_err(|_| gone(self))
    }

    /// Asks the queue to try delivering again (credit came back).
    pub fn wake(&self) {
        let _ = self.inner.tx.try_send(QueueCmd::Wake);
    }

    /// Stops the actor: consumers are cancelled, messages dropped.
    pub(crate) fn stop(&self) {
        self.inner.stop.cancel();
    }
}
