//! The path from queue actors back to a client's channel: the events a queue sends to a
//! connection task, and the credit a channel grants its queues.
//!
//! A queue delivers to a consumer only while the consumer's prefetch (tracked by the queue),
//! the channel's global prefetch, `channel.flow` and the channel's write backlog all allow it.
//! The channel-wide part lives in [`ChannelFlow`], shared between the channel (which releases
//! credit on ack and after writing) and the queues (which take it). A queue that finds no
//! credit registers itself as a waiter and is woken when credit comes back, so no queue ever
//! waits on a connection and no connection ever blocks a queue.

use crate::message::Message;
use crate::queue::QueueHandle;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Most deliveries per channel handed to the connection but not yet written to the socket.
pub const MAX_IN_TRANSIT: u32 = 2000;

/// Identifies one incarnation of a channel: a reopened channel number is a new key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    /// The connection's id on this node.
    pub connection: u64,
    /// The channel number.
    pub channel: u16,
    /// Which opening of that channel number this is.
    pub epoch: u64,
}

/// Events a connection task receives from queues.
#[derive(Debug)]
pub enum ConnEvent {
    /// A message for a consumer.
    Deliver(Delivery),
    /// A published message was accepted (or refused) by one of its target queues.
    Confirm {
        /// The publishing channel.
        channel: ChannelKey,
        /// The publish sequence number.
        seq: u64,
        /// False when the queue refused it.
        ok: bool,
    },
    /// The queue cancelled a consumer (queue deleted).
    ConsumerCancelled {
        /// The consumer's channel.
        channel: ChannelKey,
        /// The consumer tag.
        consumer_tag: Arc<str>,
    },
    /// The queue cancelled a consumer that held a delivery unacked past the consumer
    /// timeout; it has requeued these deliveries, whose tags the channel must now forget.
    ConsumerTimedOut {
        /// The consumer's channel.
        channel: ChannelKey,
        /// The consumer tag.
        consumer_tag: Arc<str>,
        /// The queue.
        queue: QueueHandle,
        /// The requeued deliveries, by message id.
        msg_ids: Vec<u64>,
    },
    /// A reply for a direct reply-to consumer (`amq.rabbitmq.reply-to`).
    Reply {
        /// The requesting channel.
        channel: ChannelKey,
        /// The reply consumer's tag.
        consumer_tag: Arc<str>,
        /// The reply.
        msg: Arc<Message>,
    },
    /// The node closes the connection (320 CONNECTION_FORCED): its vhost or user was
    /// deleted, or an operator closed it.
    ForceClose {
        /// The reason, after `CONNECTION_FORCED - `.
        reason: String,
    },
    /// An admin tool asks for the connection's channels and consumers.
    Inspect(tokio::sync::oneshot::Sender<Vec<crate::channel::ChannelInfo>>),
}

/// One message on its way to a consumer.
#[derive(Debug)]
pub struct Delivery {
    /// The consumer's channel.
    pub channel: ChannelKey,
    /// The consumer tag.
    pub consumer_tag: Arc<str>,
    /// The queue it comes from (acks go back there).
    pub queue: QueueHandle,
    /// The message's id within its queue.
    pub msg_id: u64,
    /// The message.
    pub msg: Arc<Message>,
    /// True if it was delivered before.
    pub redelivered: bool,
    /// True if the consumer does not ack.
    pub no_ack: bool,
}

/// A connection's event sender.
pub type ConnSender = mpsc::UnboundedSender<ConnEvent>;

/// Credit shared by one channel and the queues delivering to it.
#[derive(Debug, Default)]
pub struct ChannelFlow {
    /// basic.qos global prefetch (0: none).
    global_limit: AtomicU32,
    /// Unacked deliveries on the channel.
    unacked: AtomicU32,
    /// Deliveries handed over but not yet written.
    in_transit: AtomicU32,
    /// channel.flow: false stops deliveries.
    paused: AtomicBool,
    /// Queues waiting for credit. A std mutex: held for a push or a take, never across await.
    waiters: Mutex<Vec<QueueHandle>>,
}

impl ChannelFlow {
    /// Tries to take credit for one delivery.
    pub fn try_acquire(&self, no_ack: bool) -> bool {
        if self.paused.load(Ordering::SeqCst)
            || self.in_transit.load(Ordering::SeqCst) >= MAX_IN_TRANSIT
        {
            return false;
        }
        if !no_ack {
            let limit = self.global_limit.load(Ordering::SeqCst);
            let taken = self
                .unacked
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (limit == 0 || n < limit).then_some(n + 1)
                })
                .is_ok();
            if !taken {
                return false;
            }
        }
        self.in_transit.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Takes credit for a delivery another node already granted (a consumer of a queue on
    /// another node: the home node applied the prefetch), so that writing and settling it
    /// here return exactly what was taken.
    pub fn acquire_granted(&self, no_ack: bool) {
        if !no_ack {
            self.unacked.fetch_add(1, Ordering::SeqCst);
        }
        self.in_transit.fetch_add(1, Ordering::SeqCst);
    }

    /// Registers a queue to be woken when credit returns.
    pub fn wait(&self, queue: &QueueHandle) {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if !w.iter().any(|q| q.same(queue)) {
            w.push(queue.clone());
        }
    }

    fn wake(&self) {
        let waiters = {
            let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            if w.is_empty() {
                return;
            }
            std::mem::take(&mut *w)
        };
        for q in waiters {
            q.wake();
        }
    }

    /// Returns credit for deliveries written to the socket.
    pub fn written(&self, n: u32) {
        if n > 0 {
            self.in_transit.fetch_sub(n, Ordering::SeqCst);
            self.wake();
        }
    }

    /// Returns credit for settled (acked, rejected, requeued) deliveries.
    pub fn settled(&self, n: u32) {
        if n > 0 {
            let _ = self
                .unacked
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                    Some(v.saturating_sub(n))
                });
            self.wake();
        }
    }

    /// The global prefetch limit (0: none).
    pub fn global_limit(&self) -> u32 {
        self.global_limit.load(Ordering::SeqCst)
    }

    /// Sets the global prefetch limit.
    pub fn set_global_limit(&self, limit: u32) {
        self.global_limit.store(limit, Ordering::SeqCst);
        self.wake();
    }

    /// channel.flow: pauses or resumes deliveries.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        if !paused {
            self.wake();
        }
    }
}

/// What a queue needs to deliver to a channel.
#[derive(Clone, Debug)]
pub struct ChannelRef {
    /// Which channel.
    pub key: ChannelKey,
    /// Its connection's event sender.
    pub events: ConnSender,
    /// Its credit.
    pub flow: Arc<ChannelFlow>,
}
