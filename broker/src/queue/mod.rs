//! Queues: one actor task per queue owns its messages and consumers; everything else talks
//! to it through a cheap-to-clone [`QueueHandle`]. A queue on another node of the cluster is
//! the same handle API: its commands go to a proxy task (`cluster::remote_queue`) that
//! forwards them over the distribution link to the queue's home node.

mod actor;
pub mod dead_letter;

use crate::delivery::{ChannelKey, ChannelRef};
use crate::error::ChannelError;
use crate::message::Message;
use crate::policy::QueueSettings;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
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
}

pub(crate) enum QueueCmd {
    Publish(Publish),
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
