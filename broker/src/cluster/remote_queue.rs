//! Queues on another node, behind the same `QueueHandle` API.
//!
//! A queue lives on its home node. Every other node holds a proxy handle for it: a task that
//! serves the handle's commands by forwarding them, in order, over the distribution link to
//! the home node ([`QueueOp`]), which runs them against the real queue actor. Publishes are
//! batched and confirmed only once the home queue accepted them (after its fsync for
//! persistent messages). A consumer on another node is registered on the home queue with a
//! proxy channel whose events (deliveries, cancellations) the home node pushes back in
//! batches; the consumer's prefetch is enforced by the home queue as for a local consumer,
//! and acks, nacks and rejects travel back as settlements. Ordering per queue holds because
//! one proxy task sends a queue's commands one after the other on one connection.

use super::network::{connect_peer, decode};
use super::{Member, PeerOp};
use crate::broker::BrokerShared;
use crate::delivery::{ChannelFlow, ChannelKey, ChannelRef, ConnEvent, Delivery};
use crate::dist::protocol::{b64, unb64, Op, RemoteError};
use crate::dist::{Client, ClientError};
use crate::error::ChannelError;
use crate::message::Message;
use crate::meta::QueueDef;
use crate::policy::QueueSettings;
use crate::queue::{
    Aux, ConsumerSpec, GetOk, ProxyInbox, Publish, QueueCmd, QueueHandle, QueueInfo, Settle,
};
use crate::vhost::Vhost;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
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

/// How long a forwarded queue command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Most publishes forwarded in one request.
const MAX_BATCH: usize = 256;

/// A queue operation forwarded to the queue's home node (or, `Events`, pushed back).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum QueueOp {
    /// Messages for the queue (store records, base64); answered with one ok per message.
    Publish {
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
        /// Encoded messages.
        msgs: Vec<String>,
    },
    /// Registers a consumer of another node's channel.
    Consume {
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
        /// The consumer's node.
        origin: Member,
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
    /// Acks, rejects or returns deliveries.
    Settle {
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
        /// The channel.
        key: WireKey,
        /// Message ids.
        ids: Vec<u64>,
        /// How.
        how: Settle,
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
    /// Consumer events from a home node to the consumers' node.
    Events(Vec<RemoteEvent>),
}

/// What a home node pushes to a remote consumer's node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteEvent {
    /// A delivery.
    Deliver {
        /// The consumer's channel.
        key: WireKey,
        /// Consumer tag.
        tag: String,
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
        /// Message id in the queue.
        msg_id: u64,
        /// The message (store record, base64).
        msg: String,
        /// Redelivered flag.
        redelivered: bool,
        /// No ack.
        no_ack: bool,
    },
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

fn to_wire(e: ChannelError) -> (u16, String) {
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

/// One connection to a peer node for queue traffic; requests go one at a time.
struct PeerLink {
    addr: String,
    conn: tokio::sync::Mutex<Option<Client>>,
}

impl PeerLink {
    async fn call(&self, shared: &BrokerShared, op: QueueOp) -> Result<Value, ClientError> {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            let c = tokio::time::timeout(
                Duration::from_secs(5),
                connect_peer(
                    &self.addr,
                    &shared.identity.cookie,
                    &shared.identity.me.name,
                ),
            )
            .await
            .map_err(|_| ClientError::Timeout)??;
            *conn = Some(c);
        }
        let client = conn.as_mut().expect("connected just above");
        match client
            .request(Op::Peer(PeerOp::Queue(op)), CALL_TIMEOUT)
            .await
        {
            Ok(reply) => decode(reply),
            Err(e) => {
                // After an error the connection's state is unknown: reconnect next time.
                *conn = None;
                Err(e)
            }
        }
    }
}

/// The node's cross-node queue state.
#[derive(Default)]
pub struct Registry {
    /// Connections to peers by address. A std mutex: only held to look up or insert.
    links: Mutex<HashMap<String, Arc<PeerLink>>>,
    /// Local channels consuming from queues on other nodes (where their deliveries go).
    local_channels: Mutex<HashMap<WireKey, ChannelRef>>,
    /// Proxy channels of remote consumers of local queues, by (their node, their channel).
    proxy_channels: Mutex<HashMap<(String, WireKey), ChannelRef>>,
}

impl Registry {
    fn link(&self, addr: &str) -> Arc<PeerLink> {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(addr.to_string())
            .or_insert_with(|| {
                Arc::new(PeerLink {
                    addr: addr.to_string(),
                    conn: tokio::sync::Mutex::new(None),
                })
            })
            .clone()
    }
}

/// Starts the proxy for a queue homed on `home`, returning its handle.
pub fn spawn(
    def: &QueueDef,
    vhost: &Arc<Vhost>,
    settings: QueueSettings,
    home: String,
    shared: Weak<BrokerShared>,
) -> QueueHandle {
    let (handle, inbox) = QueueHandle::proxy(&def.name, &vhost.name, def.exclusive_owner, settings);
    let proxy = Proxy {
        shared,
        home,
        vhost: vhost.name.to_string(),
        queue: def.name.clone(),
    };
    tokio::spawn(proxy.run(inbox));
    handle
}

struct Proxy {
    shared: Weak<BrokerShared>,
    home: String,
    vhost: String,
    queue: String,
}

impl Proxy {
    fn down(&self) -> ChannelError {
        ChannelError::new(
            ReplyCode::NotFound,
            format!(
                "home node '{}' of queue '{}' in vhost '{}' is down or inaccessible",
                self.home, self.queue, self.vhost
            ),
        )
    }

    /// Sends an operation to the home node.
    async fn call<T: serde::de::DeserializeOwned>(&self, op: QueueOp) -> Result<T, ChannelError> {
        let shared = self.shared.upgrade().ok_or_else(|| self.down())?;
        let addr = shared
            .cluster()
            .and_then(|c| {
                let (disc, ram) = c.members();
                disc.into_iter()
                    .chain(ram)
                    .find(|m| m.name == self.home)
                    .map(|m| c.dial_addr(&m))
            })
            .ok_or_else(|| self.down())?;
        let link = shared.remote.link(&addr);
        let v = link.call(&shared, op).await.map_err(|e| {
            tracing::debug!(home = %self.home, queue = %self.queue, error = %e, "forwarding to the home node failed");
            self.down()
        })?;
        serde_json::from_value(v).map_err(|_| self.down())
    }

    async fn run(self, mut inbox: ProxyInbox) {
        let mut pending: Option<QueueCmd> = None;
        loop {
            let cmd = match pending.take() {
                Some(c) => c,
                None => tokio::select! {
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
                },
            };
            match cmd {
                QueueCmd::Publish(first) => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match inbox.commands.try_recv() {
                            Ok(QueueCmd::Publish(p)) => batch.push(p),
                            Ok(other) => {
                                pending = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.publish(batch).await;
                }
                other => self.command(other).await,
            }
        }
    }

    async fn publish(&self, batch: Vec<Publish>) {
        let msgs = batch.iter().map(|p| encode(&p.msg)).collect();
        let oks: Vec<bool> = self
            .call(QueueOp::Publish {
                vhost: self.vhost.clone(),
                queue: self.queue.clone(),
                msgs,
            })
            .await
            .unwrap_or_default();
        for (i, p) in batch.into_iter().enumerate() {
            if let Some((channel, seq)) = p.confirm {
                let ok = oks.get(i).copied().unwrap_or(false);
                let _ = channel.events.send(ConnEvent::Confirm {
                    channel: channel.key,
                    seq,
                    ok,
                });
            }
        }
    }

    fn register(&self, channel: &ChannelRef) {
        if let Some(shared) = self.shared.upgrade() {
            shared
                .remote
                .local_channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(wire(channel.key), channel.clone());
        }
    }

    async fn command(&self, cmd: QueueCmd) {
        let (vhost, queue) = (self.vhost.clone(), self.queue.clone());
        match cmd {
            QueueCmd::Publish(p) => self.publish(vec![p]).await,
            QueueCmd::PublishBatch(batch) => self.publish(batch).await,
            QueueCmd::Consume(spec, reply) => {
                self.register(&spec.channel);
                let Some(shared) = self.shared.upgrade() else {
                    let _ = reply.send(Err(self.down()));
                    return;
                };
                let r: Result<WireResult<()>, ChannelError> = self
                    .call(QueueOp::Consume {
                        vhost,
                        queue,
                        origin: shared.identity.me.clone(),
                        key: wire(spec.channel.key),
                        tag: spec.tag.to_string(),
                        no_ack: spec.no_ack,
                        exclusive: spec.exclusive,
                        prefetch: spec.prefetch,
                        priority: spec.priority,
                        global_limit: spec.channel.flow.global_limit(),
                    })
                    .await;
                let _ = reply.send(r.and_then(|r| r.map_err(from_wire)));
            }
            QueueCmd::Cancel(key, tag) => {
                let _: Result<(), _> = self
                    .call(QueueOp::Cancel {
                        vhost,
                        queue,
                        key: wire(key),
                        tag: tag.to_string(),
                    })
                    .await;
            }
            QueueCmd::Settle(key, ids, how) => {
                let _: Result<(), _> = self
                    .call(QueueOp::Settle {
                        vhost,
                        queue,
                        key: wire(key),
                        ids,
                        how,
                    })
                    .await;
            }
            QueueCmd::ChannelClosed(key) => {
                if let Some(shared) = self.shared.upgrade() {
                    forget_local_channel(&shared, key);
                }
                let _: Result<(), _> = self
                    .call(QueueOp::ChannelClosed {
                        vhost,
                        queue,
                        key: wire(key),
                    })
                    .await;
            }
            QueueCmd::Get(key, no_ack, reply) => {
                let r: Result<WireResult<Option<WireGet>>, _> = self
                    .call(QueueOp::Get {
                        vhost,
                        queue,
                        key: wire(key),
                        no_ack,
                    })
                    .await;
                // An error drops the reply: the channel sees the queue gone.
                if let Ok(Ok(got)) = r {
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
                let r: Result<WireResult<u32>, _> =
                    self.call(QueueOp::Purge { vhost, queue }).await;
                if let Ok(Ok(n)) = r {
                    let _ = reply.send(n);
                }
            }
            QueueCmd::CheckDelete(if_unused, if_empty, reply) => {
                let r: Result<WireResult<u32>, _> = self
                    .call(QueueOp::CheckDelete {
                        vhost,
                        queue,
                        if_unused,
                        if_empty,
                    })
                    .await;
                let _ = reply.send(r.and_then(|r| r.map_err(from_wire)));
            }
            QueueCmd::Stats(reply) => {
                let r: Result<WireResult<(u32, u32)>, _> =
                    self.call(QueueOp::Stats { vhost, queue }).await;
                if let Ok(Ok(s)) = r {
                    let _ = reply.send(s);
                }
            }
            QueueCmd::Info(reply) => {
                let r: Result<WireResult<QueueInfo>, _> =
                    self.call(QueueOp::Info { vhost, queue }).await;
                if let Ok(Ok(i)) = r {
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

/// Runs a forwarded queue operation on this (home) node, or delivers pushed events.
pub async fn handle(shared: &Arc<BrokerShared>, op: QueueOp) -> Result<Value, RemoteError> {
    match op {
        QueueOp::Publish { vhost, queue, msgs } => {
            let q = match local_queue(shared, &vhost, &queue) {
                Ok(q) => q,
                Err(_) => return ok(vec![false; msgs.len()]),
            };
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let confirm_ref = ChannelRef {
                key: unwire((0, 0, 0)),
                events: tx,
                flow: Arc::new(ChannelFlow::default()),
            };
            let mut oks = vec![false; msgs.len()];
            let mut waiting = 0usize;
            for (i, m) in msgs.iter().enumerate() {
                let Some(msg) = decode_msg(m) else {
                    continue;
                };
                let accepted = q
                    .publish(Publish {
                        msg: Arc::new(msg),
                        confirm: Some((confirm_ref.clone(), i as u64)),
                    })
                    .await;
                if accepted {
                    waiting += 1;
                }
            }
            drop(confirm_ref);
            let wait = async {
                while waiting > 0 {
                    match rx.recv().await {
                        Some(ConnEvent::Confirm { seq, ok, .. }) => {
                            if let Some(slot) = oks.get_mut(seq as usize) {
                                *slot = ok;
                            }
                            waiting -= 1;
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
            };
            let _ = tokio::time::timeout(CALL_TIMEOUT, wait).await;
            ok(oks)
        }
        QueueOp::Consume {
            vhost,
            queue,
            origin,
            key,
            tag,
            no_ack,
            exclusive,
            prefetch,
            priority,
            global_limit,
        } => {
            let q = match local_queue(shared, &vhost, &queue) {
                Ok(q) => q,
                Err(e) => return ok(WireResult::<()>::Err(e)),
            };
            let channel = proxy_channel(shared, &origin, key);
            channel.flow.set_global_limit(global_limit);
            let r = q
                .consume(ConsumerSpec {
                    tag: Arc::from(tag.as_str()),
                    channel,
                    no_ack,
                    exclusive,
                    prefetch,
                    priority,
                })
                .await
                .map_err(to_wire);
            ok(r)
        }
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
        QueueOp::Settle {
            vhost,
            queue,
            key,
            ids,
            how,
        } => {
            let n = ids.len() as u32;
            if let Ok(q) = local_queue(shared, &vhost, &queue) {
                q.settle(unwire(key), ids, how).await;
            }
            let flows: Vec<Arc<ChannelFlow>> = shared
                .remote
                .proxy_channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|((_, k), _)| *k == key)
                .map(|(_, c)| c.flow.clone())
                .collect();
            for f in flows {
                f.settled(n);
            }
            ok(())
        }
        QueueOp::ChannelClosed { vhost, queue, key } => {
            if let Ok(q) = local_queue(shared, &vhost, &queue) {
                q.channel_closed(unwire(key)).await;
            }
            shared
                .remote
                .proxy_channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(_, k), _| *k != key);
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
        QueueOp::Events(events) => {
            deliver_events(shared, events);
            ok(())
        }
    }
}

/// Hands events pushed by a home node to the local channels they are for.
fn deliver_events(shared: &BrokerShared, events: Vec<RemoteEvent>) {
    let channel = |key: WireKey| {
        shared
            .remote
            .local_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
    };
    let handle = |vhost: &str, queue: &str| shared.vhost(vhost).and_then(|v| v.queue(queue));
    for e in events {
        match e {
            RemoteEvent::Deliver {
                key,
                tag,
                vhost,
                queue,
                msg_id,
                msg,
                redelivered,
                no_ack,
            } => {
                let (Some(ch), Some(q), Some(msg)) =
                    (channel(key), handle(&vhost, &queue), decode_msg(&msg))
                else {
                    continue;
                };
                ch.flow.acquire_granted(no_ack);
                let _ = ch.events.send(ConnEvent::Deliver(Delivery {
                    channel: ch.key,
                    consumer_tag: Arc::from(tag.as_str()),
                    queue: q,
                    msg_id,
                    msg: Arc::new(msg),
                    redelivered,
                    no_ack,
                }));
            }
            RemoteEvent::Cancelled { key, tag } => {
                if let Some(ch) = channel(key) {
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
                if let (Some(ch), Some(q)) = (channel(key), handle(&vhost, &queue)) {
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
}

/// The proxy channel standing for `origin`'s channel `key` on this home node: its events
/// are pushed to `origin` in batches by one forwarding task.
fn proxy_channel(shared: &Arc<BrokerShared>, origin: &Member, key: WireKey) -> ChannelRef {
    let mut map = shared
        .remote
        .proxy_channels
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(c) = map.get(&(origin.name.clone(), key)) {
        return c.clone();
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let channel = ChannelRef {
        key: unwire(key),
        events: tx,
        flow: Arc::new(ChannelFlow::default()),
    };
    map.insert((origin.name.clone(), key), channel.clone());
    tokio::spawn(forward_events(
        Arc::downgrade(shared),
        origin.clone(),
        key,
        channel.flow.clone(),
        rx,
    ));
    channel
}

async fn forward_events(
    shared: Weak<BrokerShared>,
    origin: Member,
    key: WireKey,
    flow: Arc<ChannelFlow>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<ConnEvent>,
) {
    while let Some(first) = rx.recv().await {
        let mut events = vec![first];
        while events.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut delivered = 0u32;
        let mut queues: Vec<QueueHandle> = Vec::new();
        let wire_events: Vec<RemoteEvent> = events
            .into_iter()
            .filter_map(|e| match e {
                ConnEvent::Deliver(d) => {
                    delivered += 1;
                    if !queues.iter().any(|q| q.same(&d.queue)) {
                        queues.push(d.queue.clone());
                    }
                    Some(RemoteEvent::Deliver {
                        key,
                        tag: d.consumer_tag.to_string(),
                        vhost: d.queue.vhost().to_string(),
                        queue: d.queue.name().to_string(),
                        msg_id: d.msg_id,
                        msg: encode(&d.msg),
                        redelivered: d.redelivered,
                        no_ack: d.no_ack,
                    })
                }
                ConnEvent::ConsumerCancelled { consumer_tag, .. } => Some(RemoteEvent::Cancelled {
                    key,
                    tag: consumer_tag.to_string(),
                }),
                ConnEvent::ConsumerTimedOut {
                    consumer_tag,
                    queue,
                    msg_ids,
                    ..
                } => Some(RemoteEvent::TimedOut {
                    key,
                    tag: consumer_tag.to_string(),
                    vhost: queue.vhost().to_string(),
                    queue: queue.name().to_string(),
                    msg_ids,
                }),
                _ => None,
            })
            .collect();
        let link = shared.remote.link(&shared.identity.dial_addr(&origin));
        let sent = link.call(&shared, QueueOp::Events(wire_events)).await;
        // Sent (or not): the deliveries are no longer in transit here.
        flow.written(delivered);
        if let Err(e) = sent {
            // The consumer's node is gone: its deliveries go back to the queues.
            tracing::info!(node = %origin.name, error = %e, "a remote consumer's node is unreachable; requeueing its deliveries");
            shared
                .remote
                .proxy_channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(origin.name.clone(), key));
            for q in queues {
                q.channel_closed(unwire(key)).await;
            }
        }
    }
}

/// Forgets a local channel that consumed from queues on other nodes (it closed).
pub fn forget_local_channel(shared: &BrokerShared, key: ChannelKey) {
    shared
        .remote
        .local_channels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&wire(key));
}
