//! The queue link: one streamed, binary connection from a node to the home node of queues
//! it uses, carrying their data path.
//!
//! The connection is a distribution connection authenticated with the cookie in the
//! `queue_link` role, after which both ends switch to the frames below (a 4-byte length, a
//! kind byte, the fields). The node that has proxies for queues homed elsewhere opens one
//! link per home node ([`connect`], the one place link connections are made) and sends
//! publishes (pipelined, each with a sequence number, within a window), settlements and
//! control requests; the home node answers with confirms (by sequence number, once the queue
//! accepted the message, after its fsync for a persistent one), pushes deliveries to the
//! link's consumers and answers requests. Message bodies stay `Bytes`: a frame's message
//! record is decoded in place. Each end runs one task reading and one writing; the writer
//! batches whatever is queued into one write.
//!
//! When a link drops, the home node requeues the unacked deliveries of every consumer that
//! came over it, and the other node nacks the publishes still awaiting a confirm and cancels
//! its consumers of those queues (see `remote_queue`).

use super::remote_queue::{self, QueueOp, RemoteEvent, WireKey};
use crate::broker::BrokerShared;
use crate::cluster::node::Node;
use crate::delivery::{ChannelFlow, ChannelKey, ChannelRef, ConnEvent, Delivery};
use crate::dist::protocol::Role;
use crate::dist::{Client, ClientError};
use crate::message::Message;
use crate::queue::{ConsumerSpec, Publish, QueueHandle, Settle};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

/// Publishes sent on a link and not yet confirmed by the home node, at most.
pub const WINDOW: usize = 8192;
/// The largest frame accepted (a message record plus a few names).
const MAX_FRAME: usize = 256 * 1024 * 1024;
/// A writer sends what it has once this much is buffered.
const WRITE_BATCH: usize = 256 * 1024;

// Frame kinds, from the node using a queue to its home node.
const PUBLISH: u8 = 1;
const SETTLE: u8 = 2;
const REQUEST: u8 = 3;
// From the home node.
const READY: u8 = 10;
const CONFIRM: u8 = 11;
const DELIVER: u8 = 12;
const RESPONSE: u8 = 13;
const EVENT: u8 = 14;

/// A request id that asks for no response.
const NO_REPLY: u64 = 0;

/// Opens an authenticated connection to a home node's distribution port for a queue link.
/// Every link connection is made here (a TLS layer on the distribution port wraps it here).
pub async fn connect(
    shared: &BrokerShared,
    addr: &str,
) -> Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static, ClientError> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| ClientError::Connect(format!("could not resolve {addr}: {e}")))?
        .collect();
    let mut last = ClientError::Connect(format!("no address for {addr}"));
    for a in addrs {
        match Client::connect(
            a,
            &shared.identity.cookie,
            Role::QueueLink,
            &shared.identity.me.name,
        )
        .await
        {
            Ok(c) => return Ok(c.into_stream()),
            Err(e @ ClientError::Connect(_)) | Err(e @ ClientError::Timeout) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

// ---------------------------------------------------------------------------------------
// Framing.

/// Reads length-prefixed frames; each frame is a slice of the read buffer (no copy).
struct FrameReader<R> {
    r: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(r: R) -> Self {
        FrameReader {
            r,
            buf: BytesMut::with_capacity(128 * 1024),
        }
    }

    /// The next frame, or None at the end of the stream.
    async fn next(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > MAX_FRAME {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("queue link frame of {len} bytes is too large"),
                    ));
                }
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
                self.buf.reserve((4 + len - self.buf.len()).max(64 * 1024));
            } else {
                self.buf.reserve(64 * 1024);
            }
            if self.r.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// Starts a frame of `kind` in `b`; `end_frame` fills in its length.
fn begin(b: &mut BytesMut, kind: u8) -> usize {
    let at = b.len();
    b.put_u32(0);
    b.put_u8(kind);
    at
}

fn end(b: &mut BytesMut, at: usize) {
    let len = (b.len() - at - 4) as u32;
    b[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u16(s.len() as u16);
    b.put_slice(s.as_bytes());
}

fn put_key(b: &mut BytesMut, k: WireKey) {
    b.put_u64(k.0);
    b.put_u16(k.1);
    b.put_u64(k.2);
}

/// A malformed frame.
#[derive(Debug)]
struct Malformed;

fn get_u8(b: &mut Bytes) -> Result<u8, Malformed> {
    (b.remaining() >= 1).then(|| b.get_u8()).ok_or(Malformed)
}

fn get_u16(b: &mut Bytes) -> Result<u16, Malformed> {
    (b.remaining() >= 2).then(|| b.get_u16()).ok_or(Malformed)
}

fn get_u32(b: &mut Bytes) -> Result<u32, Malformed> {
    (b.remaining() >= 4).then(|| b.get_u32()).ok_or(Malformed)
}

fn get_u64(b: &mut Bytes) -> Result<u64, Malformed> {
    (b.remaining() >= 8).then(|| b.get_u64()).ok_or(Malformed)
}

fn get_str(b: &mut Bytes) -> Result<Bytes, Malformed> {
    let n = get_u16(b)? as usize;
    if b.remaining() < n {
        return Err(Malformed);
    }
    let s = b.split_to(n);
    std::str::from_utf8(&s).map_err(|_| Malformed)?;
    Ok(s)
}

fn as_str(b: &Bytes) -> &str {
    // Checked by `get_str`.
    std::str::from_utf8(b).unwrap_or_default()
}

fn get_key(b: &mut Bytes) -> Result<WireKey, Malformed> {
    Ok((get_u64(b)?, get_u16(b)?, get_u64(b)?))
}

fn decode_msg(record: Bytes) -> Result<Message, Malformed> {
    crate::store::decode_message(record)
        .map(|d| d.msg)
        .map_err(|_| Malformed)
}

fn settle_code(how: Settle) -> u8 {
    match how {
        Settle::Ack => 0,
        Settle::Requeue => 1,
        Settle::Discard => 2,
        Settle::Return => 3,
    }
}

fn settle_from(code: u8) -> Result<Settle, Malformed> {
    Ok(match code {
        0 => Settle::Ack,
        1 => Settle::Requeue,
        2 => Settle::Discard,
        3 => Settle::Return,
        _ => return Err(Malformed),
    })
}

/// Writes frames as they come, batching whatever is queued into one write.
async fn write_frames<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    stop: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(WRITE_BATCH * 2);
    loop {
        let first = tokio::select! {
            biased;
            f = rx.recv() => match f { Some(f) => f, None => break },
            _ = stop.cancelled() => break,
        };
        buf.extend_from_slice(&first);
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) => buf.extend_from_slice(&f),
                Err(_) => break,
            }
        }
        if w.write_all(&buf).await.is_err() {
            break;
        }
        buf.clear();
        if rx.is_empty() && w.flush().await.is_err() {
            break;
        }
    }
    stop.cancel();
    let _ = w.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// The end on the node that uses queues homed elsewhere.

/// A consumer registered over a link (cancelled on this node if the link drops).
struct LinkConsumer {
    channel: ChannelRef,
    tag: Arc<str>,
    /// The queue's vhost and name.
    queue: (Arc<str>, Arc<str>),
}

/// The using node's end of a link to one home node.
pub struct Link {
    /// The home node's name.
    pub home: String,
    out: mpsc::UnboundedSender<Bytes>,
    next_seq: AtomicU64,
    next_request: AtomicU64,
    /// Publishes awaiting their confirm: sequence number -> the channel and its own sequence
    /// number (None: the publisher did not ask for a confirm). A std mutex: held for an
    /// insert or a remove.
    confirms: Mutex<HashMap<u64, Option<(ChannelRef, u64)>>>,
    /// Requests awaiting their response. A std mutex, as above.
    requests: Mutex<HashMap<u64, oneshot::Sender<Bytes>>>,
    /// Consumers of queues on the home node whose deliveries come over this link.
    consumers: Mutex<Vec<LinkConsumer>>,
    /// Publishes in flight.
    window: Semaphore,
    /// Cancelled when the link is gone.
    pub closed: CancellationToken,
}

impl Link {
    /// True once the link is gone.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Sends a publish; its confirm (or nack, if the link drops first) goes to `confirm`.
    /// Returns false if the link is gone (the caller nacks).
    pub async fn publish(
        &self,
        vhost: &str,
        queue: &str,
        msg: &Message,
        confirm: Option<(ChannelRef, u64)>,
    ) -> Result<(), Option<(ChannelRef, u64)>> {
        let Ok(permit) = self.window.acquire().await else {
            return Err(confirm);
        };
        permit.forget();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.confirms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq, confirm);
        let record = crate::store::encode_message(msg, false, None);
        let mut b = BytesMut::with_capacity(32 + vhost.len() + queue.len() + record.len());
        let at = begin(&mut b, PUBLISH);
        b.put_u64(seq);
        put_str(&mut b, vhost);
        put_str(&mut b, queue);
        b.put_slice(&record);
        end(&mut b, at);
        let sent = self.out.send(b.freeze()).is_ok();
        if !sent || self.is_closed() {
            // The link's failure path may have run before the insert: answer here unless
            // it did.
            let mine = self
                .confirms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&seq);
            if let Some(c) = mine {
                return Err(c);
            }
        }
        Ok(())
    }

    /// Sends acks, rejects or returns of deliveries.
    pub fn settle(&self, vhost: &str, queue: &str, key: WireKey, ids: &[u64], how: Settle) {
        let mut b = BytesMut::with_capacity(48 + vhost.len() + queue.len() + ids.len() * 8);
        let at = begin(&mut b, SETTLE);
        put_str(&mut b, vhost);
        put_str(&mut b, queue);
        put_key(&mut b, key);
        b.put_u8(settle_code(how));
        b.put_u32(ids.len() as u32);
        for id in ids {
            b.put_u64(*id);
        }
        end(&mut b, at);
        let _ = self.out.send(b.freeze());
    }

    fn request_frame(id: u64, op: &QueueOp) -> Option<Bytes> {
        let json = serde_json::to_vec(op).ok()?;
        let mut b = BytesMut::with_capacity(16 + json.len());
        let at = begin(&mut b, REQUEST);
        b.put_u64(id);
        b.put_slice(&json);
        end(&mut b, at);
        Some(b.freeze())
    }

    /// Sends a control request and waits for its JSON response; None if the link dropped
    /// or the home node did not answer in time.
    pub async fn request(&self, op: &QueueOp, timeout: Duration) -> Option<Bytes> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let frame = Self::request_frame(id, op)?;
        let (tx, rx) = oneshot::channel();
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        if self.out.send(frame).is_err() || self.is_closed() {
            self.requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return None;
        }
        let r = tokio::time::timeout(timeout, rx).await;
        if r.is_err() {
            self.requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
        r.ok()?.ok()
    }

    /// Sends a control request that needs no answer (it is still ordered with the rest).
    pub fn notify(&self, op: &QueueOp) {
        if let Some(frame) = Self::request_frame(NO_REPLY, op) {
            let _ = self.out.send(frame);
        }
    }

    /// Remembers a consumer registered over this link.
    pub fn add_consumer(&self, channel: ChannelRef, tag: Arc<str>, queue: (Arc<str>, Arc<str>)) {
        self.consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(LinkConsumer {
                channel,
                tag,
                queue,
            });
    }

    /// Forgets a consumer (cancelled), or every consumer of a channel on a queue (`tag`
    /// None: the channel closed).
    pub fn remove_consumers(
        &self,
        queue: &(Arc<str>, Arc<str>),
        key: ChannelKey,
        tag: Option<&str>,
    ) {
        self.consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| {
                !(c.queue == *queue && c.channel.key == key && tag.is_none_or(|t| *c.tag == *t))
            });
    }

    /// The link is gone: nack what awaits a confirm, fail requests, cancel consumers.
    fn fail(&self) {
        self.closed.cancel();
        self.window.close();
        let confirms =
            std::mem::take(&mut *self.confirms.lock().unwrap_or_else(|e| e.into_inner()));
        for (channel, seq) in confirms.into_values().flatten() {
            let _ = channel.events.send(ConnEvent::Confirm {
                channel: channel.key,
                seq,
                ok: false,
            });
        }
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let consumers =
            std::mem::take(&mut *self.consumers.lock().unwrap_or_else(|e| e.into_inner()));
        for c in consumers {
            let _ = c.channel.events.send(ConnEvent::ConsumerCancelled {
                channel: c.channel.key,
                consumer_tag: c.tag,
            });
        }
    }
}

/// Opens a link over `stream` (already authenticated) and starts its reader and writer.
/// Returns once the home node said it is ready, or an error. `on_close` runs when the link
/// is gone.
pub async fn start<S>(
    shared: &Arc<BrokerShared>,
    home: String,
    stream: S,
    on_close: impl FnOnce() + Send + 'static,
) -> Result<Arc<Link>, String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let mut reader = FrameReader::new(r);
    let first = tokio::time::timeout(Duration::from_secs(10), reader.next())
        .await
        .map_err(|_| "the home node did not open the queue link in time".to_string())?
        .map_err(|e| e.to_string())?;
    match first {
        Some(f) if f.first() == Some(&READY) => {}
        _ => return Err(format!("node {home} is not serving its queues")),
    }
    let (out, rx) = mpsc::unbounded_channel();
    let link = Arc::new(Link {
        home,
        out,
        next_seq: AtomicU64::new(1),
        next_request: AtomicU64::new(1),
        confirms: Mutex::new(HashMap::new()),
        requests: Mutex::new(HashMap::new()),
        consumers: Mutex::new(Vec::new()),
        window: Semaphore::new(WINDOW),
        closed: CancellationToken::new(),
    });
    tokio::spawn(write_frames(w, rx, link.closed.clone()));
    let (l, weak) = (link.clone(), Arc::downgrade(shared));
    tokio::spawn(async move {
        let shutdown = weak
            .upgrade()
            .map(|s| s.shutdown.clone())
            .unwrap_or_default();
        tokio::select! {
            r = read_from_home(&weak, &l, &mut reader) => {
                if let Err(e) = r {
                    tracing::info!(home = %l.home, error = %e, "queue link to the home node lost");
                }
            }
            _ = l.closed.cancelled() => {}
            _ = shutdown.cancelled() => {}
        }
        l.fail();
        on_close();
    });
    Ok(link)
}

async fn read_from_home<R: AsyncRead + Unpin>(
    shared: &std::sync::Weak<BrokerShared>,
    link: &Link,
    reader: &mut FrameReader<R>,
) -> Result<(), String> {
    // Queue handles by (vhost, queue), kept while they are the live incarnation.
    let mut queues: HashMap<(Bytes, Bytes), QueueHandle> = HashMap::new();
    loop {
        let Some(mut f) = reader.next().await.map_err(|e| e.to_string())? else {
            return Err("the home node closed the link".into());
        };
        let malformed = |_| "malformed frame from the home node".to_string();
        match get_u8(&mut f).map_err(malformed)? {
            CONFIRM => {
                let seq = get_u64(&mut f).map_err(malformed)?;
                let ok = get_u8(&mut f).map_err(malformed)? != 0;
                let c = link
                    .confirms
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&seq);
                if let Some(c) = c {
                    link.window.add_permits(1);
                    if let Some((channel, seq)) = c {
                        let _ = channel.events.send(ConnEvent::Confirm {
                            channel: channel.key,
                            seq,
                            ok,
                        });
                    }
                }
            }
            DELIVER => {
                let key = get_key(&mut f).map_err(malformed)?;
                let tag = get_str(&mut f).map_err(malformed)?;
                let vhost = get_str(&mut f).map_err(malformed)?;
                let queue = get_str(&mut f).map_err(malformed)?;
                let msg_id = get_u64(&mut f).map_err(malformed)?;
                let flags = get_u8(&mut f).map_err(malformed)?;
                let msg = decode_msg(f).map_err(malformed)?;
                let Some(shared) = shared.upgrade() else {
                    return Ok(());
                };
                let Some(channel) = remote_queue::local_channel(&shared, key) else {
                    // The channel closed; its close requeues this delivery on the home node.
                    continue;
                };
                let cached = queues
                    .get(&(vhost.clone(), queue.clone()))
                    .filter(|q| !q.is_stopped())
                    .cloned();
                let q = match cached {
                    Some(q) => q,
                    None => {
                        let Some(q) = shared
                            .vhost(as_str(&vhost))
                            .and_then(|v| v.queue(as_str(&queue)))
                        else {
                            continue;
                        };
                        queues.insert((vhost, queue), q.clone());
                        q
                    }
                };
                let no_ack = flags & 2 != 0;
                channel.flow.acquire_granted(no_ack);
                let _ = channel.events.send(ConnEvent::Deliver(Delivery {
                    channel: channel.key,
                    consumer_tag: Arc::from(as_str(&tag)),
                    queue: q,
                    msg_id,
                    msg: Arc::new(msg),
                    redelivered: flags & 1 != 0,
                    no_ack,
                }));
            }
            RESPONSE => {
                let id = get_u64(&mut f).map_err(malformed)?;
                let tx = link
                    .requests
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                if let Some(tx) = tx {
                    let _ = tx.send(f);
                }
            }
            EVENT => {
                let Ok(event) = serde_json::from_slice::<RemoteEvent>(&f) else {
                    return Err("malformed event from the home node".into());
                };
                if let Some(shared) = shared.upgrade() {
                    if let RemoteEvent::Cancelled { key, tag, .. } = &event {
                        link.consumers
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .retain(|c| !(wire(c.channel.key) == *key && *c.tag == **tag));
                    }
                    remote_queue::deliver_event(&shared, event);
                }
            }
            READY => {}
            k => return Err(format!("unexpected frame kind {k} from the home node")),
        }
    }
}

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

// ---------------------------------------------------------------------------------------
// The home node's end.

/// A channel of the other node consuming from queues here.
struct ProxyChannel {
    channel: ChannelRef,
    /// The queues it consumes from (its unacked deliveries go back when the link drops).
    queues: Vec<QueueHandle>,
}

/// Proxy channels of one link. A std mutex: held for a lookup or an update.
type Channels = Arc<Mutex<HashMap<WireKey, ProxyChannel>>>;

/// Serves a queue link from `origin` on this (home) node until it drops, then requeues the
/// deliveries its consumers had not acked.
pub async fn serve<S>(node: &Node, stream: S, origin: String)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (r, mut w) = tokio::io::split(stream);
    let Some(shared) = node.app() else {
        // Not serving queues: closing tells the other node.
        let _ = w.shutdown().await;
        return;
    };
    let (events, events_rx) = mpsc::unbounded_channel();
    let (frames, frames_rx) = mpsc::unbounded_channel();
    let channels: Channels = Default::default();
    let stop = CancellationToken::new();
    let mut ready = BytesMut::new();
    let at = begin(&mut ready, READY);
    end(&mut ready, at);
    let _ = frames.send(ready.freeze());
    let writer = tokio::spawn(write_home(
        w,
        events_rx,
        frames_rx,
        channels.clone(),
        stop.clone(),
    ));
    let confirm_ref = ChannelRef {
        key: unwire((0, 0, 0)),
        events: events.clone(),
        flow: Arc::new(ChannelFlow::default()),
    };
    let mut reader = FrameReader::new(r);
    let ctx = HomeLink {
        shared: shared.clone(),
        events,
        frames,
        channels: channels.clone(),
        confirm_ref,
    };
    let result = tokio::select! {
        r = ctx.read(&mut reader) => r,
        _ = stop.cancelled() => Ok(()),
        _ = shared.shutdown.cancelled() => Ok(()),
    };
    if let Err(e) = result {
        tracing::info!(node = %origin, error = %e, "queue link from a node lost");
    }
    stop.cancel();
    // The other node's consumers are gone: their unacked deliveries go back.
    let gone: Vec<(WireKey, ProxyChannel)> = channels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .collect();
    for (key, pc) in gone {
        for q in pc.queues {
            q.channel_closed(unwire(key)).await;
        }
    }
    let _ = writer.await;
}

struct HomeLink {
    shared: Arc<BrokerShared>,
    events: mpsc::UnboundedSender<ConnEvent>,
    frames: mpsc::UnboundedSender<Bytes>,
    channels: Channels,
    confirm_ref: ChannelRef,
}

impl HomeLink {
    fn confirm(&self, seq: u64, ok: bool) {
        let mut b = BytesMut::with_capacity(14);
        let at = begin(&mut b, CONFIRM);
        b.put_u64(seq);
        b.put_u8(ok as u8);
        end(&mut b, at);
        let _ = self.frames.send(b.freeze());
    }

    fn local_queue(&self, vhost: &str, queue: &str) -> Option<QueueHandle> {
        self.shared
            .vhost(vhost)
            .and_then(|v| v.queue(queue))
            .filter(|q| !q.is_remote())
    }

    async fn read<R: AsyncRead + Unpin>(&self, reader: &mut FrameReader<R>) -> Result<(), String> {
        let mut queues: HashMap<(Bytes, Bytes), QueueHandle> = HashMap::new();
        loop {
            let Some(mut f) = reader.next().await.map_err(|e| e.to_string())? else {
                return Ok(());
            };
            let malformed = |_| "malformed frame".to_string();
            match get_u8(&mut f).map_err(malformed)? {
                PUBLISH => {
                    let seq = get_u64(&mut f).map_err(malformed)?;
                    let vhost = get_str(&mut f).map_err(malformed)?;
                    let queue = get_str(&mut f).map_err(malformed)?;
                    let Ok(msg) = decode_msg(f) else {
                        self.confirm(seq, false);
                        continue;
                    };
                    let cache_key = (vhost, queue);
                    let q = match queues.get(&cache_key).filter(|q| !q.is_stopped()) {
                        Some(q) => Some(q.clone()),
                        None => {
                            let q = self.local_queue(as_str(&cache_key.0), as_str(&cache_key.1));
                            if let Some(q) = &q {
                                queues.insert(cache_key.clone(), q.clone());
                            }
                            q
                        }
                    };
                    let accepted = match q {
                        Some(q) => {
                            q.publish(Publish {
                                msg: Arc::new(msg),
                                confirm: Some((self.confirm_ref.clone(), seq)),
                            })
                            .await
                        }
                        None => false,
                    };
                    if !accepted {
                        queues.remove(&cache_key);
                        self.confirm(seq, false);
                    }
                }
                SETTLE => {
                    let vhost = get_str(&mut f).map_err(malformed)?;
                    let queue = get_str(&mut f).map_err(malformed)?;
                    let key = get_key(&mut f).map_err(malformed)?;
                    let how = settle_from(get_u8(&mut f).map_err(malformed)?).map_err(malformed)?;
                    let n = get_u32(&mut f).map_err(malformed)? as usize;
                    if f.remaining() < n * 8 {
                        return Err("malformed settle frame".into());
                    }
                    let ids: Vec<u64> = (0..n).map(|_| f.get_u64()).collect();
                    if let Some(q) = self.local_queue(as_str(&vhost), as_str(&queue)) {
                        q.settle(unwire(key), ids, how).await;
                    }
                    let flow = self
                        .channels
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&key)
                        .map(|c| c.channel.flow.clone());
                    if let Some(flow) = flow {
                        flow.settled(n as u32);
                    }
                }
                REQUEST => {
                    let id = get_u64(&mut f).map_err(malformed)?;
                    let op: QueueOp = serde_json::from_slice(&f)
                        .map_err(|e| format!("malformed request: {e}"))?;
                    let reply = self.request(op).await;
                    if id != NO_REPLY {
                        let json = serde_json::to_vec(&reply).unwrap_or_default();
                        let mut b = BytesMut::with_capacity(16 + json.len());
                        let at = begin(&mut b, RESPONSE);
                        b.put_u64(id);
                        b.put_slice(&json);
                        end(&mut b, at);
                        let _ = self.frames.send(b.freeze());
                    }
                }
                k => return Err(format!("unexpected frame kind {k}")),
            }
        }
    }

    /// Runs a control request; consumers are registered on this link's proxy channels.
    async fn request(&self, op: QueueOp) -> serde_json::Value {
        match op {
            QueueOp::Consume {
                vhost,
                queue,
                key,
                tag,
                no_ack,
                exclusive,
                prefetch,
                priority,
                global_limit,
            } => {
                let r = match self.local_queue(&vhost, &queue) {
                    None => Err(remote_queue::to_wire(crate::error::ChannelError::no_queue(
                        &vhost, &queue,
                    ))),
                    Some(q) => {
                        let channel = {
                            let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
                            let pc = map.entry(key).or_insert_with(|| ProxyChannel {
                                channel: ChannelRef {
                                    key: unwire(key),
                                    events: self.events.clone(),
                                    flow: Arc::new(ChannelFlow::default()),
                                },
                                queues: Vec::new(),
                            });
                            if !pc.queues.iter().any(|x| x.same(&q)) {
                                pc.queues.push(q.clone());
                            }
                            pc.channel.clone()
                        };
                        channel.flow.set_global_limit(global_limit);
                        q.consume(ConsumerSpec {
                            tag: Arc::from(tag.as_str()),
                            channel,
                            no_ack,
                            exclusive,
                            prefetch,
                            priority,
                        })
                        .await
                        .map_err(remote_queue::to_wire)
                    }
                };
                serde_json::to_value(r).unwrap_or_default()
            }
            QueueOp::ChannelClosed { vhost, queue, key } => {
                if let Some(q) = self.local_queue(&vhost, &queue) {
                    q.channel_closed(unwire(key)).await;
                    let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(pc) = map.get_mut(&key) {
                        pc.queues.retain(|x| !x.same(&q));
                        if pc.queues.is_empty() {
                            map.remove(&key);
                        }
                    }
                }
                serde_json::Value::Null
            }
            op => remote_queue::handle(&self.shared, op)
                .await
                .unwrap_or(serde_json::Value::Null),
        }
    }
}

/// The home node's writer: turns queue events (confirms, deliveries, cancellations) and
/// ready frames into one stream, returning delivery credit once deliveries are written.
async fn write_home<W: AsyncWrite + Unpin>(
    mut w: W,
    mut events: mpsc::UnboundedReceiver<ConnEvent>,
    mut frames: mpsc::UnboundedReceiver<Bytes>,
    channels: Channels,
    stop: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(WRITE_BATCH * 2);
    // Deliveries written per channel, to return their in-transit credit.
    let mut written: Vec<(WireKey, u32)> = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            e = events.recv() => match e {
                Some(e) => encode_event(&mut buf, e, &mut written),
                None => break,
            },
            f = frames.recv() => match f {
                Some(f) => buf.extend_from_slice(&f),
                None => break,
            },
        }
        while buf.len() < WRITE_BATCH {
            if let Ok(f) = frames.try_recv() {
                buf.extend_from_slice(&f);
            } else if let Ok(e) = events.try_recv() {
                encode_event(&mut buf, e, &mut written);
            } else {
                break;
            }
        }
        if w.write_all(&buf).await.is_err() {
            break;
        }
        buf.clear();
        if !written.is_empty() {
            let flows: Vec<(Arc<ChannelFlow>, u32)> = {
                let map = channels.lock().unwrap_or_else(|e| e.into_inner());
                written
                    .drain(..)
                    .filter_map(|(k, n)| map.get(&k).map(|c| (c.channel.flow.clone(), n)))
                    .collect()
            };
            for (flow, n) in flows {
                flow.written(n);
            }
        }
        if events.is_empty() && frames.is_empty() && w.flush().await.is_err() {
            break;
        }
    }
    stop.cancel();
    let _ = w.shutdown().await;
}

fn encode_event(b: &mut BytesMut, e: ConnEvent, written: &mut Vec<(WireKey, u32)>) {
    match e {
        ConnEvent::Confirm { seq, ok, .. } => {
            let at = begin(b, CONFIRM);
            b.put_u64(seq);
            b.put_u8(ok as u8);
            end(b, at);
        }
        ConnEvent::Deliver(d) => {
            let key = wire(d.channel);
            let at = begin(b, DELIVER);
            put_key(b, key);
            put_str(b, &d.consumer_tag);
            put_str(b, d.queue.vhost());
            put_str(b, d.queue.name());
            b.put_u64(d.msg_id);
            b.put_u8((d.redelivered as u8) | ((d.no_ack as u8) << 1));
            b.put_slice(&crate::store::encode_message(&d.msg, false, None));
            end(b, at);
            match written.last_mut() {
                Some((k, n)) if *k == key => *n += 1,
                _ => written.push((key, 1)),
            }
        }
        ConnEvent::ConsumerCancelled {
            channel,
            consumer_tag,
        } => put_event(
            b,
            &RemoteEvent::Cancelled {
                key: wire(channel),
                tag: consumer_tag.to_string(),
            },
        ),
        ConnEvent::ConsumerTimedOut {
            channel,
            consumer_tag,
            queue,
            msg_ids,
        } => put_event(
            b,
            &RemoteEvent::TimedOut {
                key: wire(channel),
                tag: consumer_tag.to_string(),
                vhost: queue.vhost().to_string(),
                queue: queue.name().to_string(),
                msg_ids,
            },
        ),
        _ => {}
    }
}

fn put_event(b: &mut BytesMut, e: &RemoteEvent) {
    if let Ok(json) = serde_json::to_vec(e) {
        let at = begin(b, EVENT);
        b.put_slice(&json);
        end(b, at);
    }
}
