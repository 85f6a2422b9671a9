//! Queues on another node, behind the same `QueueHandle` API.
//!
//! A queue lives on its home node. Every other node holds a proxy handle for it: a task that
//! serves the handle's commands, in order, over this node's queue link to the home node
//! (`cluster::link`): publishes are streamed and confirmed by the home queue (after its
//! fsync for persistent messages), settlements streamed, control operations (consume,
//! cancel, get, purge, delete checks, counters) sent as JSON requests on the same link, so
//! everything one proxy sends stays in order. A consumer on this node is registered on the
//! home queue with a proxy channel there; the home queue applies its prefetch and pushes its
//! deliveries back over the link.
//!
//! A home node that cannot be reached makes its queues unavailable here ([`Peer`]): the
//! handle says so (`QueueHandle::is_available`) so that publishes do not route to it,
//! publishes in flight are nacked, consumers cancelled, and a background task reconnects;
//! once the home node serves again the queues are available again.

use super::link::{self, Link};
use crate::broker::BrokerShared;
use crate::delivery::{ChannelKey, ChannelRef, ConnEvent};
use crate::dist::protocol::{b64, unb64, RemoteError};
use crate::error::ChannelError;
use crate::message::Message;
use crate::meta::QueueDef;
use crate::policy::QueueSettings;
use crate::queue::{Aux, GetOk, ProxyInbox, Publish, QueueCmd, QueueHandle, QueueInfo};
use crate::vhost::Vhost;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use warren_amqp::ReplyCode;

/// A channel key on the wire: (connection, channel, epoch).
pub type WireKey = (u64, u16, u64);

fn wire(k: ChannelKey) -> WireKey {
    (k.connection, k.channel, k.epoch)
}

fn unwire(w: WireKey) -> ChannelKey {
    ChannelKey {
        connection: w.0,
        channel: w.1,
        epoch: w.2,
    }
}

/// How long a control request to the home node may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long connecting to a home node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an unreachable home node is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// A control operation on a queue, sent to the queue's home node (as JSON on the queue
/// link; the ones that need no link state also as a `PeerOp`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum QueueOp {
    /// Registers a consumer of a channel of the link's other node.
    Consume {
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
        /// Its channel.
        key: WireKey,
        /// Consumer tag.
        tag: String,
        /// No acks.
        no_ack: bool,
        /// Exclusive consumer.
        exclusive: bool,
        /// Prefetch of the consumer.
        prefetch: u32,
        /// x-priority.
        priority: i32,
        /// The channel's global prefetch.
        global_limit: u32,
    },
    /// Cancels a consumer.
    Cancel {
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
        /// Its channel.
        key: WireKey,
        /// Consumer tag.
        tag: String,
    },
    /// A channel closed: its unacked deliveries go back, its consumers go.
    ChannelClosed {
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
        /// The channel.
        key: WireKey,
    },
    /// basic.get.
    Get {
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
        /// The channel.
        key: WireKey,
        /// No ack.
        no_ack: bool,
    },
    /// Purge.
    Purge {
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
    },
    /// queue.delete's checks.
    CheckDelete {
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
        /// if-unused.
        if_unused: bool,
        /// if-empty.
        if_empty: bool,
    },
    /// Ready messages and consumers.
    Stats {
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
    },
    /// Counters for list_queues.
    Info {
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
    },
}

/// What a home node pushes to a remote consumer's node besides deliveries.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteEvent {
    /// The queue cancelled the consumer.
    Cancelled {
        /// The consumer's channel.
        key: WireKey,
        /// Consumer tag.
        tag: String,
    },
    /// The consumer timed out; these deliveries were requeued.
    TimedOut {
        /// The consumer's channel.
        key: WireKey,
        /// Consumer tag.
        tag: String,
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
        /// Requeued message ids.
        msg_ids: Vec<u64>,
    },
}

/// A message from basic.get on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct WireGet {
    msg_id: u64,
    msg: String,
    redelivered: bool,
    remaining: u32,
}

type WireResult<T> = Result<T, (u16, String)>;

fn encode(msg: &Message) -> String {
    b64(&crate::store::encode_message(msg, false, None))
}

fn decode_msg(s: &str) -> Option<Message> {
    let bytes = unb64(s)?;
    crate::store::decode_message(bytes::Bytes::from(bytes))
        .ok()
        .map(|d| d.msg)
}

/// A channel error as it crosses the wire.
pub fn to_wire(e: ChannelError) -> (u16, String) {
    (e.code.code(), e.text)
}

fn from_wire((code, text): (u16, String)) -> ChannelError {
    ChannelError {
        code: ReplyCode::from_code(code).unwrap_or(ReplyCode::InternalError),
        text,
        class_id: 0,
        method_id: 0,
    }
}

/// A home node as seen from this node: its queue link and whether it is reachable.
pub struct Peer {
    name: String,
    /// False while the home node cannot be reached (a task is reconnecting).
    up: AtomicBool,
    /// The availability flags of the queue handles homed there. A std mutex: held to push
    /// or to update them.
    flags: Mutex<Vec<Weak<AtomicBool>>>,
    /// The link, when open; connecting is serialized.
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    /// A reconnecting task runs.
    retrying: AtomicBool,
}

impl Peer {
    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        let mut flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        flags.retain(|f| match f.upgrade() {
            Some(f) => {
                f.store(up, Ordering::SeqCst);
                true
            }
            None => false,
        });
    }

    fn track(&self, flag: &Arc<AtomicBool>) {
        let mut flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        flag.store(self.up.load(Ordering::SeqCst), Ordering::SeqCst);
        flags.push(Arc::downgrade(flag));
    }

    /// The open link, connecting if needed; None while the home node is unreachable.
    async fn link(self: &Arc<Self>, shared: &Arc<BrokerShared>) -> Option<Arc<Link>> {
        if !self.up.load(Ordering::SeqCst) {
            // The reconnecting task is in charge.
            return None;
        }
        let mut slot = self.link.lock().await;
        if let Some(l) = slot.as_ref().filter(|l| !l.is_closed()) {
            return Some(l.clone());
        }
        match self.open(shared).await {
            Ok(l) => {
                *slot = Some(l.clone());
                Some(l)
            }
            Err(e) => {
                drop(slot);
                tracing::info!(home = %self.name, error = %e, "cannot reach a queue's home node");
                self.went_down(shared);
                None
            }
        }
    }

    async fn open(self: &Arc<Self>, shared: &Arc<BrokerShared>) -> Result<Arc<Link>, String> {
        let addr = shared
            .cluster()
            .and_then(|c| {
                let (disc, ram) = c.members();
                disc.into_iter()
                    .chain(ram)
                    .find(|m| m.name == self.name)
                    .map(|m| c.dial_addr(&m))
            })
            .ok_or_else(|| format!("node {} is not a cluster member", self.name))?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, link::connect(shared, &addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| e.to_string())?;
        let (peer, weak) = (Arc::downgrade(self), Arc::downgrade(shared));
        link::start(shared, self.name.clone(), stream, move || {
            if let (Some(p), Some(s)) = (peer.upgrade(), weak.upgrade()) {
                p.went_down(&s);
            }
        })
        .await
    }

    /// The home node is unreachable: its queues are unavailable until a reconnect works.
    fn went_down(self: &Arc<Self>, shared: &Arc<BrokerShared>) {
        self.set_up(false);
        if self.retrying.swap(true, Ordering::SeqCst) {
            return;
        }
        let (peer, weak) = (self.clone(), Arc::downgrade(shared));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY_EVERY).await;
                let Some(shared) = weak.upgrade() else { break };
                if shared.shutdown.is_cancelled() {
                    break;
                }
                match peer.open(&shared).await {
                    Ok(l) => {
                        *peer.link.lock().await = Some(l);
                        tracing::info!(home = %peer.name, "a queue's home node is reachable again");
                        peer.retrying.store(false, Ordering::SeqCst);
                        peer.set_up(true);
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(home = %peer.name, error = %e, "home node still unreachable")
                    }
                }
            }
            peer.retrying.store(false, Ordering::SeqCst);
        });
    }
}

/// The node's cross-node queue state.
#[derive(Default)]
pub struct Registry {
    /// Home nodes by name. A std mutex: only held to look up or insert.
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    /// Local channels consuming from queues on other nodes (where their deliveries go).
    local_channels: Mutex<HashMap<WireKey, ChannelRef>>,
    /// Counts removals from `local_channels` (links cache channels while it stays put).
    local_channels_removed: AtomicU64,
}

impl Registry {
    fn peer(&self, name: &str) -> Arc<Peer> {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Peer {
                    name: name.to_string(),
                    up: AtomicBool::new(true),
                    flags: Mutex::new(Vec::new()),
                    link: tokio::sync::Mutex::new(None),
                    retrying: AtomicBool::new(false),
                })
            })
            .clone()
    }
}

/// Changes whenever a local channel stops consuming from queues on other nodes: a link may
/// keep the channels it looked up while this stays the same.
pub fn local_channels_generation(shared: &BrokerShared) -> u64 {
    shared.remote.local_channels_removed.load(Ordering::Acquire)
}

/// The local channel a delivery from another node is for.
pub fn local_channel(shared: &BrokerShared, key: WireKey) -> Option<ChannelRef> {
    shared
        .remote
        .local_channels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned()
}

/// Starts the proxy for a queue homed on `home`, returning its handle.
pub fn spawn(
    def: &QueueDef,
    vhost: &Arc<Vhost>,
    settings: QueueSettings,
    home: String,
    shared: Weak<BrokerShared>,
) -> QueueHandle {
    let available = Arc::new(AtomicBool::new(true));
    let (handle, inbox) = QueueHandle::proxy(
        &def.name,
        &vhost.name,
        def.exclusive_owner,
        settings,
        crate::queue::Home {
            node: Arc::from(home.as_str()),
            durable: def.durable,
            available: available.clone(),
        },
    );
    let proxy = Proxy {
        shared,
        home,
        vhost: vhost.name.clone(),
        queue: Arc::from(def.name.as_str()),
        durable: def.durable,
        available,
        peer: None,
        link: None,
    };
    tokio::spawn(proxy.run(inbox));
    handle
}

struct Proxy {
    shared: Weak<BrokerShared>,
    home: String,
    vhost: Arc<str>,
    queue: Arc<str>,
    durable: bool,
    available: Arc<AtomicBool>,
    peer: Option<Arc<Peer>>,
    /// The link last used (checked for being open before each use).
    link: Option<Arc<Link>>,
}

/// RabbitMQ's text for a queue whose home node is down.
pub fn home_down_text(home: &str, durable: bool, queue: &str, vhost: &str) -> String {
    format!(
        "home node '{home}' of {}queue '{queue}' in vhost '{vhost}' is down or inaccessible",
        if durable { "durable " } else { "" }
    )
}

impl Proxy {
    fn down(&self) -> ChannelError {
        ChannelError::new(
            ReplyCode::NotFound,
            home_down_text(&self.home, self.durable, &self.queue, &self.vhost),
        )
    }

    fn names(&self) -> (String, String) {
        (self.vhost.to_string(), self.queue.to_string())
    }

    /// The open link to the home node, or None while it is unreachable.
    async fn link(&mut self) -> Option<Arc<Link>> {
        if let Some(l) = self.link.as_ref().filter(|l| !l.is_closed()) {
            return Some(l.clone());
        }
        let shared = self.shared.upgrade()?;
        let peer = match &self.peer {
            Some(p) => p.clone(),
            None => {
                let p = shared.remote.peer(&self.home);
                p.track(&self.available);
                self.peer = Some(p.clone());
                p
            }
        };
        self.link = peer.link(&shared).await;
        self.link.clone()
    }

    /// Sends a request and decodes its answer.
    async fn call<T: serde::de::DeserializeOwned>(&mut self, op: QueueOp) -> Option<T> {
        let link = self.link().await?;
        let reply = link.request(&op, CALL_TIMEOUT).await?;
        serde_json::from_slice(&reply).ok()
    }

    async fn run(mut self, mut inbox: ProxyInbox) {
        loop {
            let cmd = tokio::select! {
                _ = inbox.stop.cancelled() => return,
                aux = inbox.aux.recv() => match aux {
                    Some(Aux::DeadLetter(p)) => QueueCmd::Publish(p),
                    Some(_) => continue,
                    None => return,
                },
                cmd = inbox.commands.recv() => match cmd {
                    Some(c) => c,
                    None => return,
                },
            };
            self.command(cmd).await;
        }
    }

    /// Streams publishes to the home queue; nacks them if the link is down or drops first.
    async fn publish(&mut self, batch: Vec<Publish>) {
        let refused = match self.link().await {
            Some(link) => link.publish(&self.vhost, &self.queue, batch).await,
            None => batch.into_iter().map(|p| p.confirm).collect(),
        };
        // Not accepted by the home queue: nacked, never confirmed.
        for (channel, seq) in refused.into_iter().flatten() {
            let _ = channel.events.send(ConnEvent::Confirm {
                channel: channel.key,
                seq,
                ok: false,
            });
        }
    }

    async fn command(&mut self, cmd: QueueCmd) {
        let (vhost, queue) = self.names();
        match cmd {
            QueueCmd::Publish(p) => self.publish(vec![p]).await,
            QueueCmd::PublishBatch(batch) => self.publish(batch).await,
            QueueCmd::Consume(spec, reply) => {
                let Some(shared) = self.shared.upgrade() else {
                    let _ = reply.send(Err(self.down()));
                    return;
                };
                let Some(link) = self.link().await else {
                    let _ = reply.send(Err(self.down()));
                    return;
                };
                // Registered first: deliveries may arrive before the answer.
                shared
                    .remote
                    .local_channels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(wire(spec.channel.key), spec.channel.clone());
                let op = QueueOp::Consume {
                    vhost,
                    queue,
                    key: wire(spec.channel.key),
                    tag: spec.tag.to_string(),
                    no_ack: spec.no_ack,
                    exclusive: spec.exclusive,
                    prefetch: spec.prefetch,
                    priority: spec.priority,
                    global_limit: spec.channel.flow.global_limit(),
                };
                let r = match link.request(&op, CALL_TIMEOUT).await {
                    Some(r) => serde_json::from_slice::<WireResult<()>>(&r)
                        .map_err(|_| self.down())
                        .and_then(|r| r.map_err(from_wire)),
                    None => Err(self.down()),
                };
                if r.is_ok() {
                    link.add_consumer(
                        spec.channel.clone(),
                        spec.tag.clone(),
                        (self.vhost.clone(), self.queue.clone()),
                    );
                }
                let _ = reply.send(r);
            }
            QueueCmd::Cancel(key, tag) => {
                if let Some(link) = self.link.as_ref().filter(|l| !l.is_closed()) {
                    link.remove_consumers(
                        &(self.vhost.clone(), self.queue.clone()),
                        key,
                        Some(&tag),
                    );
                    link.notify(&QueueOp::Cancel {
                        vhost,
                        queue,
                        key: wire(key),
                        tag: tag.to_string(),
                    });
                }
            }
            QueueCmd::Settle(key, ids, how) => {
                if let Some(link) = self.link.as_ref().filter(|l| !l.is_closed()) {
                    link.settle(&self.vhost, &self.queue, wire(key), &ids, how);
                }
            }
            QueueCmd::ChannelClosed(key) => {
                if let Some(shared) = self.shared.upgrade() {
                    shared
                        .remote
                        .local_channels
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&wire(key));
                    shared
                        .remote
                        .local_channels_removed
                        .fetch_add(1, Ordering::AcqRel);
                }
                if let Some(link) = self.link.as_ref().filter(|l| !l.is_closed()) {
                    link.remove_consumers(&(self.vhost.clone(), self.queue.clone()), key, None);
                    link.notify(&QueueOp::ChannelClosed {
                        vhost,
                        queue,
                        key: wire(key),
                    });
                }
            }
            QueueCmd::Get(key, no_ack, reply) => {
                let r: Option<WireResult<Option<WireGet>>> = self
                    .call(QueueOp::Get {
                        vhost,
                        queue,
                        key: wire(key),
                        no_ack,
                    })
                    .await;
                // An error drops the reply: the channel sees the queue unavailable.
                if let Some(Ok(got)) = r {
                    let got = got.and_then(|g| {
                        Some(GetOk {
                            msg_id: g.msg_id,
                            msg: Arc::new(decode_msg(&g.msg)?),
                            redelivered: g.redelivered,
                            remaining: g.remaining,
                        })
                    });
                    let _ = reply.send(got);
                }
            }
            QueueCmd::Purge(reply) => {
                let r: Option<WireResult<u32>> = self.call(QueueOp::Purge { vhost, queue }).await;
                if let Some(Ok(n)) = r {
                    let _ = reply.send(n);
                }
            }
            QueueCmd::CheckDelete(if_unused, if_empty, reply) => {
                let r: Option<WireResult<u32>> = self
                    .call(QueueOp::CheckDelete {
                        vhost,
                        queue,
                        if_unused,
                        if_empty,
                    })
                    .await;
                let r = match r {
                    Some(r) => r.map_err(from_wire),
                    None => Err(self.down()),
                };
                let _ = reply.send(r);
            }
            QueueCmd::Stats(reply) => {
                let r: Option<WireResult<(u32, u32)>> =
                    self.call(QueueOp::Stats { vhost, queue }).await;
                if let Some(Ok(s)) = r {
                    let _ = reply.send(s);
                }
            }
            QueueCmd::Info(reply) => {
                let r: Option<WireResult<QueueInfo>> =
                    self.call(QueueOp::Info { vhost, queue }).await;
                if let Some(Ok(i)) = r {
                    let _ = reply.send(i);
                }
            }
            // Credit for remote consumers is the home queue's business.
            QueueCmd::Wake => {}
        }
    }
}

fn local_queue(
    shared: &BrokerShared,
    vhost: &str,
    queue: &str,
) -> Result<QueueHandle, (u16, String)> {
    shared
        .vhost(vhost)
        .and_then(|v| v.queue(queue))
        .filter(|q| !q.is_remote())
        .ok_or_else(|| to_wire(ChannelError::no_queue(vhost, queue)))
}

fn ok<T: Serialize>(v: T) -> Result<Value, RemoteError> {
    serde_json::to_value(v).map_err(|e| RemoteError::software(e.to_string()))
}

/// Runs a control operation on a queue homed on this node. Consumers and channel closes
/// concern a queue link's state and are refused here (the link serves them).
pub async fn handle(shared: &Arc<BrokerShared>, op: QueueOp) -> Result<Value, RemoteError> {
    match op {
        QueueOp::Consume { .. } | QueueOp::ChannelClosed { .. } => Err(RemoteError::usage(
            "consumers of a queue on another node are registered over the queue link",
        )),
        QueueOp::Cancel {
            vhost,
            queue,
            key,
            tag,
        } => {
            if let Ok(q) = local_queue(shared, &vhost, &queue) {
                q.cancel(unwire(key), Arc::from(tag.as_str())).await;
            }
            ok(())
        }
        QueueOp::Get {
            vhost,
            queue,
            key,
            no_ack,
        } => {
            let r = match local_queue(shared, &vhost, &queue) {
                Ok(q) => q.get(unwire(key), no_ack).await.map_err(to_wire).map(|g| {
                    g.map(|g| WireGet {
                        msg_id: g.msg_id,
                        msg: encode(&g.msg),
                        redelivered: g.redelivered,
                        remaining: g.remaining,
                    })
                }),
                Err(e) => Err(e),
            };
            ok(r)
        }
        QueueOp::Purge { vhost, queue } => {
            let r = match local_queue(shared, &vhost, &queue) {
                Ok(q) => q.purge().await.map_err(to_wire),
                Err(e) => Err(e),
            };
            ok(r)
        }
        QueueOp::CheckDelete {
            vhost,
            queue,
            if_unused,
            if_empty,
        } => {
            let r = match local_queue(shared, &vhost, &queue) {
                Ok(q) => q.check_delete(if_unused, if_empty).await.map_err(to_wire),
                Err(e) => Err(e),
            };
            ok(r)
        }
        QueueOp::Stats { vhost, queue } => {
            let r = match local_queue(shared, &vhost, &queue) {
                Ok(q) => q.stats().await.map_err(to_wire),
                Err(e) => Err(e),
            };
            ok(r)
        }
        QueueOp::Info { vhost, queue } => {
            let r = match local_queue(shared, &vhost, &queue) {
                Ok(q) => q.info().await.map_err(to_wire),
                Err(e) => Err(e),
            };
            ok(r)
        }
    }
}

/// Hands an event pushed by a home node to the local channel it is for.
pub fn deliver_event(shared: &BrokerShared, event: RemoteEvent) {
    match event {
        RemoteEvent::Cancelled { key, tag } => {
            if let Some(ch) = local_channel(shared, key) {
                let _ = ch.events.send(ConnEvent::ConsumerCancelled {
                    channel: ch.key,
                    consumer_tag: Arc::from(tag.as_str()),
                });
            }
        }
        RemoteEvent::TimedOut {
            key,
            tag,
            vhost,
            queue,
            msg_ids,
        } => {
            let q = shared.vhost(&vhost).and_then(|v| v.queue(&queue));
            if let (Some(ch), Some(q)) = (local_channel(shared, key), q) {
                let _ = ch.events.send(ConnEvent::ConsumerTimedOut {
                    channel: ch.key,
                    consumer_tag: Arc::from(tag.as_str()),
                    queue: q,
                    msg_ids,
                });
            }
        }
    }
}
