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
//! record is decoded in place, and encoded straight into the link's outgoing buffer. Each
//! end runs one task reading and one writing; the writer takes whatever was queued in one
//! write. Publishes arriving together are handed to the home queue together, and
//! consecutive confirms travel as one frame.
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
use crate::queue::{ConsumerSpec, Publish, PublishBatches, QueueHandle, Settle};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// Publishes sent on a link and not yet confirmed by the home node, at most.
pub const WINDOW: usize = 8192;
/// The largest frame accepted (a message record plus a few names).
const MAX_FRAME: usize = 256 * 1024 * 1024;
/// A writer's buffer is this large to start with (and is shrunk back to it after a burst).
const WRITE_BATCH: usize = 256 * 1024;

// Frame kinds, from the node using a queue to its home node.
const PUBLISH: u8 = 1;
const SETTLE: u8 = 2;
const REQUEST: u8 = 3;
// From the home node.
const READY: u8 = 10;
/// Confirms of `count` consecutive sequence numbers from `seq`.
const CONFIRM: u8 = 11;
const DELIVER: u8 = 12;
const RESPONSE: u8 = 13;
const EVENT: u8 = 14;

/// A request id that asks for no response.
const NO_REPLY: u64 = 0;
/// The length of a confirm frame: length, kind, seq, count, ok.
const CONFIRM_FRAME: usize = 4 + 1 + 8 + 4 + 1;

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

    /// True when a whole frame is already buffered (`next` returns without reading).
    fn has_frame(&self) -> bool {
        self.buf.len() >= 4
            && self.buf.len()
                >= 4 + u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize
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

fn put_confirm(b: &mut BytesMut, seq: u64, count: u32, ok: bool) {
    let at = begin(b, CONFIRM);
    b.put_u64(seq);
    b.put_u32(count);
    b.put_u8(ok as u8);
    end(b, at);
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

/// Frames waiting to be written on a link: appended in place by whoever sends (a publish
/// encodes its message record straight into it), taken whole by the link's writer. What
/// waits is bounded by the publish window and the consumers' prefetch.
struct Outbox {
    buf: Mutex<BytesMut>,
    ready: Notify,
}

impl Outbox {
    fn new() -> Self {
        Outbox {
            buf: Mutex::new(BytesMut::with_capacity(WRITE_BATCH)),
            ready: Notify::new(),
        }
    }

    /// Appends frames (written by `frames` with `begin`/`end`) and wakes the writer.
    fn append(&self, frames: impl FnOnce(&mut BytesMut)) {
        frames(&mut self.buf.lock().unwrap_or_else(|e| e.into_inner()));
        self.ready.notify_one();
    }

    /// Appends one frame of `kind` whose fields `fields` writes.
    fn frame(&self, kind: u8, fields: impl FnOnce(&mut BytesMut)) {
        self.append(|b| {
            let at = begin(b, kind);
            fields(b);
            end(b, at);
        });
    }

    /// Moves what waits into `into` (which the caller has emptied).
    fn take(&self, into: &mut BytesMut) {
        std::mem::swap(
            &mut *self.buf.lock().unwrap_or_else(|e| e.into_inner()),
            into,
        );
    }
}

/// Empties a writer's buffer, giving back the memory of a burst.
fn reset(buf: &mut BytesMut) {
    if buf.capacity() > 4 * WRITE_BATCH {
        *buf = BytesMut::with_capacity(WRITE_BATCH);
    } else {
        buf.clear();
    }
}

/// Writes what the outbox holds, in one write each time it is woken.
async fn write_frames<W: AsyncWrite + Unpin>(
    mut w: W,
    outbox: Arc<Outbox>,
    stop: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(WRITE_BATCH);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = outbox.ready.notified() => {}
        }
        outbox.take(&mut buf);
        if buf.is_empty() {
            continue;
        }
        if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
            break;
        }
        reset(&mut buf);
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

/// Where a publish's confirm goes: the publishing channel and its own sequence number
/// (None: the publisher did not ask for one).
type ConfirmTo = Option<(ChannelRef, u64)>;

/// Publishes sent on a link and awaiting their confirm, by the link's sequence number, which
/// is handed out here in order (so a deque indexed from the oldest one does).
struct Unconfirmed {
    /// The sequence number of `slots[0]`.
    first: u64,
    /// None once answered (the home node confirms in any order across queues).
    slots: VecDeque<Option<ConfirmTo>>,
}

impl Unconfirmed {
    /// Records a publish, returning its sequence number.
    fn push(&mut self, to: ConfirmTo) -> u64 {
        self.slots.push_back(Some(to));
        self.first + self.slots.len() as u64 - 1
    }

    /// Takes a publish's confirm target, None if it is not awaited (answered already, or a
    /// number the home node should not have sent).
    fn take(&mut self, seq: u64) -> Option<ConfirmTo> {
        let i = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        let to = self.slots.get_mut(i)?.take()?;
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.first += 1;
        }
        Some(to)
    }

    /// Takes every awaited confirm target.
    fn drain(&mut self) -> impl Iterator<Item = ConfirmTo> {
        self.first += self.slots.len() as u64;
        std::mem::take(&mut self.slots).into_iter().flatten()
    }
}

/// The using node's end of a link to one home node.
pub struct Link {
    /// The home node's name.
    pub home: String,
    out: Arc<Outbox>,
    next_request: AtomicU64,
    /// Publishes awaiting their confirm. A std mutex: held to record or answer a few.
    confirms: Mutex<Unconfirmed>,
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

    /// Sends publishes to a queue on the home node, in order; their confirms (or nacks, if
    /// the link drops first) go to their channels. Returns the confirm targets of those
    /// the link could not take (the caller nacks them).
    pub async fn publish(&self, vhost: &str, queue: &str, batch: Vec<Publish>) -> Vec<ConfirmTo> {
        let n = batch.len().min(WINDOW) as u32;
        match self.window.acquire_many(n).await {
            Ok(permit) => permit.forget(),
            Err(_) => return batch.into_iter().map(|p| p.confirm).collect(),
        }
        let mut msgs = Vec::with_capacity(batch.len());
        let first = {
            let mut confirms = self.confirms.lock().unwrap_or_else(|e| e.into_inner());
            let mut first = None;
            for p in batch {
                let seq = confirms.push(p.confirm);
                first.get_or_insert(seq);
                msgs.push(p.msg);
            }
            first.unwrap_or_default()
        };
        self.out.append(|b| {
            for (seq, msg) in (first..).zip(&msgs) {
                let at = begin(b, PUBLISH);
                b.put_u64(seq);
                put_str(b, vhost);
                put_str(b, queue);
                crate::store::encode_record_into(b, msg, false, None);
                end(b, at);
            }
        });
        if !self.is_closed() {
            return Vec::new();
        }
        // The link's failure path may have run before the publishes were recorded: answer
        // here those it did not.
        let mut confirms = self.confirms.lock().unwrap_or_else(|e| e.into_inner());
        (first..first + msgs.len() as u64)
            .filter_map(|seq| confirms.take(seq))
            .collect()
    }

    /// Sends acks, rejects or returns of deliveries.
    pub fn settle(&self, vhost: &str, queue: &str, key: WireKey, ids: &[u64], how: Settle) {
        self.out.frame(SETTLE, |b| {
            put_str(b, vhost);
            put_str(b, queue);
            put_key(b, key);
            b.put_u8(settle_code(how));
            b.put_u32(ids.len() as u32);
            for id in ids {
                b.put_u64(*id);
            }
        });
    }

    /// Queues a request frame; false if `op` could not be encoded.
    fn send_request(&self, id: u64, op: &QueueOp) -> bool {
        let Ok(json) = serde_json::to_vec(op) else {
            return false;
        };
        self.out.frame(REQUEST, |b| {
            b.put_u64(id);
            b.put_slice(&json);
        });
        true
    }

    /// Sends a control request and waits for its JSON response; None if the link dropped
    /// or the home node did not answer in time.
    pub async fn request(&self, op: &QueueOp, timeout: Duration) -> Option<Bytes> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        if !self.send_request(id, op) || self.is_closed() {
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
        self.send_request(NO_REPLY, op);
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
        let confirms: Vec<ConfirmTo> = self
            .confirms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (channel, seq) in confirms.into_iter().flatten() {
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
    let out = Arc::new(Outbox::new());
    let link = Arc::new(Link {
        home,
        out: out.clone(),
        next_request: AtomicU64::new(1),
        confirms: Mutex::new(Unconfirmed {
            first: 1,
            slots: VecDeque::new(),
        }),
        requests: Mutex::new(HashMap::new()),
        consumers: Mutex::new(Vec::new()),
        window: Semaphore::new(WINDOW),
        closed: CancellationToken::new(),
    });
    tokio::spawn(write_frames(w, out, link.closed.clone()));
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

/// A channel's consumer tags as they come on the wire and as deliveries carry them.
type ConsumerTags = Vec<(Bytes, Arc<str>)>;

async fn read_from_home<R: AsyncRead + Unpin>(
    shared: &std::sync::Weak<BrokerShared>,
    link: &Link,
    reader: &mut FrameReader<R>,
) -> Result<(), String> {
    // Queue handles by (vhost, queue), kept while they are the live incarnation.
    let mut queues: HashMap<(Bytes, Bytes), QueueHandle> = HashMap::new();
    // Local channels by key, with their consumer tags, while no channel consuming from
    // another node has closed since.
    let mut channels: HashMap<WireKey, (ChannelRef, ConsumerTags)> = HashMap::new();
    let mut channels_of = 0;
    let mut answered: Vec<ConfirmTo> = Vec::new();
    loop {
        let Some(mut f) = reader.next().await.map_err(|e| e.to_string())? else {
            return Err("the home node closed the link".into());
        };
        let malformed = |_| "malformed frame from the home node".to_string();
        match get_u8(&mut f).map_err(malformed)? {
            CONFIRM => {
                let seq = get_u64(&mut f).map_err(malformed)?;
                let count = get_u32(&mut f).map_err(malformed)?;
                let ok = get_u8(&mut f).map_err(malformed)? != 0;
                answered.clear();
                {
                    let mut confirms = link.confirms.lock().unwrap_or_else(|e| e.into_inner());
                    // Only numbers handed out are looked at, whatever the count says.
                    let last = confirms.first + confirms.slots.len() as u64;
                    let end = seq.saturating_add(count as u64).min(last);
                    answered.extend((seq..end).filter_map(|s| confirms.take(s)));
                }
                link.window.add_permits(answered.len());
                for (channel, seq) in answered.drain(..).flatten() {
                    let _ = channel.events.send(ConnEvent::Confirm {
                        channel: channel.key,
                        seq,
                        ok,
                    });
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
                let generation = remote_queue::local_channels_generation(&shared);
                if generation != channels_of {
                    channels.clear();
                    channels_of = generation;
                }
                let (channel, tags) = match channels.get_mut(&key) {
                    Some(c) => c,
                    None => {
                        let Some(channel) = remote_queue::local_channel(&shared, key) else {
                            // The channel closed; its close requeues this delivery on the
                            // home node.
                            continue;
                        };
                        channels.entry(key).or_insert((channel, Vec::new()))
                    }
                };
                let consumer_tag = match tags.iter().find(|(t, _)| *t == tag) {
                    Some((_, a)) => a.clone(),
                    None => {
                        let a: Arc<str> = Arc::from(as_str(&tag));
                        tags.push((tag, a.clone()));
                        a
                    }
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
                    consumer_tag,
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
    let frames = Arc::new(Outbox::new());
    let channels: Channels = Default::default();
    let stop = CancellationToken::new();
    frames.frame(READY, |_| {});
    let writer = tokio::spawn(write_home(
        w,
        events_rx,
        frames.clone(),
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
    frames: Arc<Outbox>,
    channels: Channels,
    confirm_ref: ChannelRef,
}

impl HomeLink {
    fn confirm(&self, seq: u64, ok: bool) {
        self.frames.append(|b| put_confirm(b, seq, 1, ok));
    }

    fn local_queue(&self, vhost: &str, queue: &str) -> Option<QueueHandle> {
        self.shared
            .vhost(vhost)
            .and_then(|v| v.queue(queue))
            .filter(|q| !q.is_remote())
    }

    async fn read<R: AsyncRead + Unpin>(&self, reader: &mut FrameReader<R>) -> Result<(), String> {
        let mut queues: HashMap<(Bytes, Bytes), QueueHandle> = HashMap::new();
        // Publishes that arrived together go to their queues together: handed over once
        // nothing more is buffered, and before any other frame is handled.
        let mut batches = PublishBatches::default();
        loop {
            if !batches.is_empty() && !reader.has_frame() {
                batches.flush().await;
            }
            let Some(mut f) = reader.next().await.map_err(|e| e.to_string())? else {
                return Ok(());
            };
            let malformed = |_| "malformed frame".to_string();
            let kind = get_u8(&mut f).map_err(malformed)?;
            if kind != PUBLISH && !batches.is_empty() {
                batches.flush().await;
            }
            match kind {
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
                    match q {
                        Some(q) => {
                            batches.push(
                                &q,
                                Publish {
                                    msg: Arc::new(msg),
                                    confirm: Some((self.confirm_ref.clone(), seq)),
                                },
                            );
                            if batches.is_full() {
                                batches.flush().await;
                            }
                        }
                        None => self.confirm(seq, false),
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
                        self.frames.frame(RESPONSE, |b| {
                            b.put_u64(id);
                            b.put_slice(&json);
                        });
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
/// the frames of the outbox into one stream, returning delivery credit once deliveries are
/// written.
async fn write_home<W: AsyncWrite + Unpin>(
    mut w: W,
    mut events: mpsc::UnboundedReceiver<ConnEvent>,
    frames: Arc<Outbox>,
    channels: Channels,
    stop: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(WRITE_BATCH);
    // What the outbox held (requests' responses, refusals): few and small.
    let mut spare = BytesMut::new();
    let mut enc = HomeEncoder::default();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            e = events.recv() => match e {
                Some(e) => enc.event(&mut buf, e),
                None => break,
            },
            _ = frames.ready.notified() => {}
        }
        // The outbox's frames, then every event waiting.
        frames.take(&mut spare);
        buf.extend_from_slice(&spare);
        spare.clear();
        while buf.len() < WRITE_BATCH {
            match events.try_recv() {
                Ok(e) => enc.event(&mut buf, e),
                Err(_) => break,
            }
        }
        if buf.is_empty() {
            continue;
        }
        if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
            break;
        }
        reset(&mut buf);
        enc.confirms = None;
        if !enc.written.is_empty() {
            let flows: Vec<(Arc<ChannelFlow>, u32)> = {
                let map = channels.lock().unwrap_or_else(|e| e.into_inner());
                enc.written
                    .drain(..)
                    .filter_map(|(k, n)| map.get(&k).map(|c| (c.channel.flow.clone(), n)))
                    .collect()
            };
            for (flow, n) in flows {
                flow.written(n);
            }
        }
    }
    stop.cancel();
    let _ = w.shutdown().await;
}

/// Encodes queue events into the home node's frames.
#[derive(Default)]
struct HomeEncoder {
    /// Deliveries written per channel, to return their in-transit credit.
    written: Vec<(WireKey, u32)>,
    /// The confirm frame last encoded, while it is the last frame of the buffer: where it
    /// starts, the next sequence number it could take in, and its outcome.
    confirms: Option<(usize, u64, bool)>,
}

impl HomeEncoder {
    fn event(&mut self, b: &mut BytesMut, e: ConnEvent) {
        match e {
            ConnEvent::Confirm { seq, ok, .. } => {
                if let Some((at, next, was_ok)) = &mut self.confirms {
                    if *at + CONFIRM_FRAME == b.len() && *next == seq && *was_ok == ok {
                        // One more in the run: bump its count.
                        let count_at = *at + 4 + 1 + 8;
                        let count = u32::from_be_bytes([
                            b[count_at],
                            b[count_at + 1],
                            b[count_at + 2],
                            b[count_at + 3],
                        ]);
                        b[count_at..count_at + 4].copy_from_slice(&(count + 1).to_be_bytes());
                        *next += 1;
                        return;
                    }
                }
                let at = b.len();
                put_confirm(b, seq, 1, ok);
                self.confirms = Some((at, seq + 1, ok));
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
                crate::store::encode_record_into(b, &d.msg, false, None);
                end(b, at);
                match self.written.last_mut() {
                    Some((k, n)) if *k == key => *n += 1,
                    _ => self.written.push((key, 1)),
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
}

fn put_event(b: &mut BytesMut, e: &RemoteEvent) {
    if let Ok(json) = serde_json::to_vec(e) {
        let at = begin(b, EVENT);
        b.put_slice(&json);
        end(b, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel_ref() -> ChannelRef {
        let (events, _) = mpsc::unbounded_channel();
        ChannelRef {
            key: unwire((1, 1, 1)),
            events,
            flow: Arc::new(ChannelFlow::default()),
        }
    }

    #[test]
    fn confirms_are_taken_in_any_order_once_each() {
        let mut u = Unconfirmed {
            first: 1,
            slots: VecDeque::new(),
        };
        let seqs: Vec<u64> = (0..4)
            .map(|i| u.push(Some((channel_ref(), 100 + i))))
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        let own = |t: Option<ConfirmTo>| t.flatten().map(|(_, s)| s);
        assert_eq!(own(u.take(3)), Some(102));
        assert!(u.take(3).is_none(), "answered once");
        assert_eq!(own(u.take(1)), Some(100));
        assert_eq!(u.first, 2, "the answered front is dropped");
        assert!(
            u.take(0).is_none() && u.take(99).is_none(),
            "never handed out"
        );
        assert_eq!(u.push(None), 5);
        let left: Vec<Option<u64>> = u.drain().map(|t| t.map(|(_, s)| s)).collect();
        assert_eq!(left, vec![Some(101), Some(103), None]);
        assert_eq!(u.push(None), 6, "numbers keep going up after a drain");
    }

    fn confirm_frames(mut b: Bytes) -> Vec<(u64, u32, bool)> {
        let mut out = Vec::new();
        while b.has_remaining() {
            let len = b.get_u32() as usize;
            let mut f = b.split_to(len);
            assert_eq!(f.get_u8(), CONFIRM);
            out.push((f.get_u64(), f.get_u32(), f.get_u8() != 0));
        }
        out
    }

    #[test]
    fn consecutive_confirms_with_one_outcome_share_a_frame() {
        let mut enc = HomeEncoder::default();
        let mut b = BytesMut::new();
        let confirm = |seq, ok| ConnEvent::Confirm {
            channel: unwire((0, 0, 0)),
            seq,
            ok,
        };
        for (seq, ok) in [
            (1, true),
            (2, true),
            (3, true),
            (5, true),
            (6, false),
            (7, false),
        ] {
            enc.event(&mut b, confirm(seq, ok));
        }
        assert_eq!(
            confirm_frames(b.split().freeze()),
            vec![(1, 3, true), (5, 1, true), (6, 2, false)]
        );
        // Once the buffer is written, a run starts again in a frame of its own.
        enc.confirms = None;
        enc.event(&mut b, confirm(8, false));
        assert_eq!(confirm_frames(b.freeze()), vec![(8, 1, false)]);
    }
}
