//! The message and definitions store, on fjall.
//!
//! One fjall database per node, with three keyspaces: `msgs` (every message that is on disk:
//! persistent messages of durable queues, and paged-out bodies of long queues, keyed by queue
//! id and message id), `qstate` (per queue, the highest message id ever delivered, so that
//! recovery can set `redelivered`) and `meta` (the definitions log). fjall calls may block the
//! calling thread (write stalls, fsync), so all of them run on one dedicated store thread fed
//! by a channel; nothing here runs on a tokio worker.
//!
//! Group commit: the thread takes every operation queued since its last round, writes them in
//! one batch, and — if any of them needs durability (a persistent publish awaiting its
//! confirm, a definition change) — makes one `fdatasync` for all of them before completing
//! them. Everything else is written to the OS at the end of the round, which survives a killed
//! process. A failed write or fsync poisons the store: it accepts nothing more and every
//! completion after that reports failure, so nothing unwritten is ever confirmed.
//!
//! Messages consumed before they reach the disk are never written: while consumers are
//! acking persistent messages (a delete arrived lately), each message write is held back for
//! up to `HOLD` (less if `MAX_HELD` messages or `MAX_HELD_BYTES` wait), and a delete that finds
//! its message still held cancels both: no write, no delete, and the publisher's confirm is
//! sent at once — a message a consumer has acked needs no disk to be confirmed, as in
//! RabbitMQ's message store. A held message is otherwise confirmed only once written and
//! synced like any other. Every operation other than a put, a delete or a delivered mark
//! (reads, range deletes, definition changes, barriers, shutdown) first releases what is held,
//! so it sees, and is ordered after, every write sent before it.
//!
//! Paged-out transient records are never deleted one by one: once a queue has loaded them
//! back it says so (`transient_loaded`, a per-queue id mark), and a compaction filter drops
//! them whenever fjall compacts the tables that hold them; the idle-time compaction counts
//! them as garbage. Removing a whole queue or range (and dropping records at recovery) reads
//! and deletes a chunk at a time, so neither one batch nor one open read snapshot grows with
//! the queue.

use crate::message::Message;
use bytes::{Buf, BufMut, Bytes};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warren_amqp::Properties;

/// Called with `true` once an operation is durable (or written), `false` if the store failed.
pub type Done = Box<dyn FnOnce(bool) + Send>;

/// Errors opening or recovering the store.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// fjall failed.
    Fjall(fjall::Error),
    /// A record could not be decoded.
    Corrupt(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Fjall(e) => write!(f, "storage error: {e}"),
            StoreError::Corrupt(what) => write!(f, "corrupt record: {what}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Fjall(e)
    }
}

/// A message read back from disk.
#[derive(Debug)]
pub struct StoredMessage {
    /// Its id within its queue.
    pub id: u64,
    /// The message.
    pub msg: Arc<Message>,
    /// True for a persistent message of a durable queue (kept across restarts).
    pub durable: bool,
    /// Its expiry time (ms since the Unix epoch), if it has one.
    pub expires_at: Option<u64>,
}

/// What recovery found for one queue.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoveredQueue {
    /// Messages on disk.
    pub count: u64,
    /// Their body bytes.
    pub bytes: u64,
    /// Lowest message id on disk.
    pub min_id: u64,
    /// Highest message id on disk.
    pub max_id: u64,
    /// Highest id delivered before the restart: messages up to it are redelivered.
    pub delivered: u64,
}

enum Op {
    Put {
        key: [u8; 16],
        value: Record,
        sync: bool,
        done: Option<Done>,
    },
    Delete {
        key: [u8; 16],
    },
    TransientLoaded {
        queue: u64,
        below: u64,
        count: u64,
    },
    DeleteRange {
        from: [u8; 16],
        to: [u8; 16],
    },
    Delivered {
        queue: u64,
        id: u64,
    },
    ForgetQueue {
        queue: u64,
    },
    MetaAppend {
        value: Vec<u8>,
        done: Done,
    },
    Read {
        queue: u64,
        from_id: u64,
        max_count: usize,
        max_bytes: usize,
        reply: Box<dyn FnOnce(Vec<StoredMessage>) + Send>,
    },
    ReadIds {
        queue: u64,
        ids: Vec<u64>,
        reply: Box<dyn FnOnce(Vec<StoredMessage>) + Send>,
    },
    Barrier(Done),
    /// Runs its `Done` once the store thread has taken every operation sent before it.
    Taken(Done),
    /// Flush, close the database (releasing its lock) and end the thread.
    Shutdown(Done),
}

/// A message record to write: encoded on the store thread, and only if it is written.
pub struct Record {
    /// The message.
    pub msg: Arc<Message>,
    /// Persistent in a durable queue (kept across restarts).
    pub durable: bool,
    /// Its expiry time (ms since the Unix epoch), if it has one.
    pub expires_at: Option<u64>,
}

/// A handle to the store thread.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Op>,
    poisoned: Arc<AtomicBool>,
}

/// The key of message `id` of queue `queue`.
pub fn msg_key(queue: u64, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&queue.to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

/// A stable id for a queue, from its vhost and name.
pub fn queue_id(vhost: &str, name: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(vhost.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

const FLAG_DURABLE: u8 = 1;
/// The record carries the message's expiry time (8 bytes after the flags).
const FLAG_EXPIRES: u8 = 2;
/// The record carries CC/BCC routing keys (after the routing key).
const FLAG_EXTRA_KEYS: u8 = 4;
const RECORD_VERSION: u8 = 1;

/// Encodes a message record: version, flags, [expiry], exchange, routing key, [extra keys],
/// properties, body. `expires_at` is the absolute expiry (ms since the Unix epoch) the queue
/// gave the message, kept so that a TTL runs across restarts and while the message is paged.
pub fn encode_message(msg: &Message, durable: bool, expires_at: Option<u64>) -> Bytes {
    Bytes::from(encode_record(msg, durable, expires_at))
}

/// `encode_message` into a plain vector (what the database takes).
fn encode_record(msg: &Message, durable: bool, expires_at: Option<u64>) -> Vec<u8> {
    let mut b = Vec::with_capacity(record_len(msg, expires_at));
    encode_record_into(&mut b, msg, durable, expires_at);
    b
}

/// The length of a message's record.
pub fn record_len(msg: &Message, expires_at: Option<u64>) -> usize {
    let extra: usize = msg.extra_keys.iter().map(|k| k.len().min(255) + 1).sum();
    let extra = if msg.extra_keys.is_empty() {
        0
    } else {
        2 + extra
    };
    let expires = if expires_at.is_some() { 8 } else { 0 };
    2 + expires
        + 1
        + msg.exchange.len()
        + 1
        + msg.routing_key.len()
        + extra
        + 4
        + msg.properties.raw().len()
        + msg.body.len()
}

/// Appends a message's record (see `encode_message`) to `b`, which may hold other data
/// before it: frames of the cluster's queue link carry records this way without a copy of
/// their own.
pub fn encode_record_into<B: BufMut>(
    b: &mut B,
    msg: &Message,
    durable: bool,
    expires_at: Option<u64>,
) {
    let props = msg.properties.raw();
    let mut flags = if durable { FLAG_DURABLE } else { 0 };
    if expires_at.is_some() {
        flags |= FLAG_EXPIRES;
    }
    if !msg.extra_keys.is_empty() {
        flags |= FLAG_EXTRA_KEYS;
    }
    b.put_u8(RECORD_VERSION);
    b.put_u8(flags);
    if let Some(at) = expires_at {
        b.put_u64(at);
    }
    b.put_u8(msg.exchange.len() as u8);
    b.put_slice(msg.exchange.as_bytes());
    b.put_u8(msg.routing_key.len() as u8);
    b.put_slice(msg.routing_key.as_bytes());
    if !msg.extra_keys.is_empty() {
        b.put_u16(msg.extra_keys.len() as u16);
        for k in msg.extra_keys.iter() {
            let k = &k.as_bytes()[..k.len().min(255)];
            b.put_u8(k.len() as u8);
            b.put_slice(k);
        }
    }
    b.put_u32(props.len() as u32);
    b.put_slice(props);
    b.put_slice(&msg.body);
}

/// A decoded message record.
pub struct DecodedMessage {
    /// The message.
    pub msg: Message,
    /// Kept across restarts.
    pub durable: bool,
    /// Its expiry time (ms since the Unix epoch), if it has one.
    pub expires_at: Option<u64>,
}

/// Decodes a message record.
pub fn decode_message(mut v: Bytes) -> Result<DecodedMessage, StoreError> {
    fn truncated() -> StoreError {
        StoreError::Corrupt("message record truncated".into())
    }
    fn take_str(v: &mut Bytes) -> Result<Arc<str>, StoreError> {
        if v.remaining() < 1 {
            return Err(truncated());
        }
        let len = v.get_u8() as usize;
        if v.remaining() < len {
            return Err(truncated());
        }
        let s = v.split_to(len);
        std::str::from_utf8(&s)
            .map(Arc::from)
            .map_err(|_| StoreError::Corrupt("name is not UTF-8".into()))
    }
    if v.remaining() < 3 || v[0] != RECORD_VERSION {
        return Err(StoreError::Corrupt("unknown message record version".into()));
    }
    v.advance(1);
    let flags = v.get_u8();
    let durable = flags & FLAG_DURABLE != 0;
    let expires_at = if flags & FLAG_EXPIRES != 0 {
        if v.remaining() < 8 {
            return Err(truncated());
        }
        Some(v.get_u64())
    } else {
        None
    };
    let exchange = take_str(&mut v)?;
    let routing_key = take_str(&mut v)?;
    let mut extra_keys = Vec::new();
    if flags & FLAG_EXTRA_KEYS != 0 {
        if v.remaining() < 2 {
            return Err(truncated());
        }
        for _ in 0..v.get_u16() {
            extra_keys.push(take_str(&mut v)?);
        }
    }
    if v.remaining() < 4 {
        return Err(truncated());
    }
    let plen = v.get_u32() as usize;
    if v.remaining() < plen {
        return Err(truncated());
    }
    let properties = Properties::decode(v.split_to(plen))
        .map_err(|_| StoreError::Corrupt("message properties".into()))?;
    Ok(DecodedMessage {
        msg: Message {
            exchange,
            routing_key,
            extra_keys: extra_keys.into_boxed_slice(),
            properties,
            body: v,
        },
        durable,
        expires_at,
    })
}

/// An open store, before recovery: the definitions log has been read.
pub struct Opened {
    /// The definitions log, in order.
    pub meta_log: Vec<Vec<u8>>,
    db: Database,
    msgs: Keyspace,
    qstate: Keyspace,
    meta: Keyspace,
    loaded: LoadedMarks,
}

/// How much memory fjall may use for its block cache.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// Memtable size per keyspace (fjall's default is 64 MiB each).
const MEMTABLE_BYTES: u64 = 16 * 1024 * 1024;

impl Store {
    /// Opens (or creates) the store under `dir` and reads the definitions log.
    pub fn open(dir: &Path) -> Result<Opened, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Fjall(fjall::Error::Io(e)))?;
        let loaded = LoadedMarks::default();
        let marks = loaded.clone();
        let db = Database::builder(dir.join("store"))
            .cache_size(CACHE_BYTES)
            .with_compaction_filter_factories(Arc::new(move |keyspace: &str| {
                (keyspace == "msgs").then(|| {
                    Arc::new(DropLoaded(marks.clone()))
                        as Arc<dyn fjall::compaction::filter::Factory>
                })
            }))
            .open()?;
        // Values stay inline (no key-value separation): deleted messages then leave with the
        // tables that held them, which a compaction reclaims in one pass.
        let msgs = db.keyspace("msgs", || {
            KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
        })?;
        let qstate = db.keyspace("qstate", || {
            KeyspaceCreateOptions::default().max_memtable_size(1024 * 1024)
        })?;
        let meta = db.keyspace("meta", || {
            KeyspaceCreateOptions::default().max_memtable_size(1024 * 1024)
        })?;
        let mut meta_log = Vec::new();
        for item in meta.iter() {
            let (_, v) = item.into_inner()?;
            meta_log.push(v.to_vec());
        }
        Ok(Opened {
            meta_log,
            db,
            msgs,
            qstate,
            meta,
            loaded,
        })
    }

    /// The keyspace a clustered node keeps its Raft log, vote and snapshot in, with the
    /// database it belongs to (for atomic batches and fsyncs).
    pub fn raft_keyspace(opened: &Opened) -> Result<(Database, Keyspace), StoreError> {
        let ks = opened.db.keyspace("raft", || {
            KeyspaceCreateOptions::default().max_memtable_size(1024 * 1024)
        })?;
        Ok((opened.db.clone(), ks))
    }

    /// True once a write failed: nothing more is accepted.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    fn send(&self, op: Op) {
        if let Err(mpsc::SendError(op)) = self.tx.send(op) {
            // The store thread is gone (node stopping): fail whatever waits.
            fail(op);
        }
    }

    /// Writes a message; `sync` makes it durable (fsync) before `done` runs.
    pub fn put(&self, queue: u64, id: u64, value: Record, sync: bool, done: Option<Done>) {
        self.send(Op::Put {
            key: msg_key(queue, id),
            value,
            sync,
            done,
        });
    }

    /// Deletes a message.
    pub fn delete(&self, queue: u64, id: u64) {
        self.send(Op::Delete {
            key: msg_key(queue, id),
        });
    }

    /// Says that a queue has loaded its transient records below id `below` (`count` more of
    /// them since the last call) back into memory: they are garbage from now on, dropped by
    /// compactions without a delete each.
    pub fn transient_loaded(&self, queue: u64, below: u64, count: u64) {
        self.send(Op::TransientLoaded {
            queue,
            below,
            count,
        });
    }

    /// Deletes messages `from..=to` of a queue.
    pub fn delete_range(&self, queue: u64, from: u64, to: u64) {
        self.send(Op::DeleteRange {
            from: msg_key(queue, from),
            to: msg_key(queue, to),
        });
    }

    /// Records the highest message id delivered from a queue.
    pub fn delivered(&self, queue: u64, id: u64) {
        self.send(Op::Delivered { queue, id });
    }

    /// Deletes everything a queue has on disk.
    pub fn forget_queue(&self, queue: u64) {
        self.send(Op::ForgetQueue { queue });
    }

    /// Appends a definitions record; `done` runs once it is durable.
    pub fn meta_append(&self, value: Vec<u8>, done: Done) {
        self.send(Op::MetaAppend { value, done });
    }

    /// Reads up to `max_count` messages (or `max_bytes` of bodies) from `from_id` on.
    pub fn read(
        &self,
        queue: u64,
        from_id: u64,
        max_count: usize,
        max_bytes: usize,
        reply: Box<dyn FnOnce(Vec<StoredMessage>) + Send>,
    ) {
        self.send(Op::Read {
            queue,
            from_id,
            max_count,
            max_bytes,
            reply,
        });
    }

    /// Reads the messages with these ids (those still on disk), in the order given.
    pub fn read_ids(
        &self,
        queue: u64,
        ids: Vec<u64>,
        reply: Box<dyn FnOnce(Vec<StoredMessage>) + Send>,
    ) {
        self.send(Op::ReadIds { queue, ids, reply });
    }

    /// Runs `done` once everything sent before is durable.
    pub fn barrier(&self, done: Done) {
        self.send(Op::Barrier(done));
    }

    /// Runs `done` once the store thread has taken everything sent before (written to its
    /// tables, or held back as a write that may become needless), without forcing it to
    /// disk. A writer uses it to bound how far its writes run ahead of the store.
    pub fn taken(&self, done: Done) {
        self.send(Op::Taken(done));
    }

    /// Makes everything sent before durable, closes the database and ends the store thread;
    /// `done` runs once the database is closed. Operations sent afterwards fail.
    pub fn shutdown(&self, done: Done) {
        self.send(Op::Shutdown(done));
    }
}

fn fail(op: Op) {
    match op {
        Op::Put { done: Some(d), .. }
        | Op::MetaAppend { done: d, .. }
        | Op::Barrier(d)
        | Op::Taken(d)
        | Op::Shutdown(d) => d(false),
        Op::Read { reply, .. } | Op::ReadIds { reply, .. } => reply(Vec::new()),
        _ => {}
    }
}

impl Opened {
    /// Scans the messages on disk: keeps the durable records of `keep` queues (of every queue
    /// when None: a clustered node learns its queues from the Raft log later), deletes
    /// everything else (paged-out transient messages, queues that no longer exist), rewrites
    /// the definitions log as `compacted`, and starts the store thread. Returns the store and
    /// what each kept queue has on disk.
    pub fn recover(
        self,
        keep: Option<&std::collections::HashSet<u64>>,
        compacted: &[Vec<u8>],
    ) -> Result<(Store, std::collections::HashMap<u64, RecoveredQueue>), StoreError> {
        let mut found: std::collections::HashMap<u64, RecoveredQueue> = Default::default();
        let mut dropped = 0u64;
        // A chunk at a time, each chunk's removals committed before the next is read: a
        // store holding millions of records to drop never builds one batch for all of them.
        let mut start = Vec::new();
        loop {
            let chunk = read_chunk(&self.msgs, &start, None)?;
            let Some((last, _)) = chunk.last() else {
                break;
            };
            start = successor(last);
            let mut batch = self.db.batch();
            for (k, v) in chunk {
                let Some((queue, id)) = split_key(&k) else {
                    batch.remove(&self.msgs, k);
                    dropped += 1;
                    continue;
                };
                if keep.is_some_and(|k| !k.contains(&queue)) || !is_durable_record(&v) {
                    batch.remove(&self.msgs, k);
                    dropped += 1;
                    continue;
                }
                let body = match decode_message(Bytes::from(v.to_vec())) {
                    Ok(d) => d.msg.body.len() as u64,
                    Err(e) => {
                        tracing::warn!(queue, id, error = %e, "dropping an unreadable message record");
                        batch.remove(&self.msgs, k);
                        dropped += 1;
                        continue;
                    }
                };
                let q = found.entry(queue).or_insert(RecoveredQueue {
                    min_id: id,
                    ..Default::default()
                });
                q.count += 1;
                q.bytes += body;
                q.min_id = q.min_id.min(id);
                q.max_id = q.max_id.max(id);
            }
            batch.commit()?;
        }
        let mut batch = self.db.batch();
        for item in self.qstate.iter() {
            let (k, v) = item.into_inner()?;
            let (Ok(qk), Ok(vk)) = (<[u8; 8]>::try_from(&k[..]), <[u8; 8]>::try_from(&v[..]))
            else {
                batch.remove(&self.qstate, k);
                continue;
            };
            let queue = u64::from_be_bytes(qk);
            if keep.is_none_or(|k| k.contains(&queue)) {
                found.entry(queue).or_default().delivered = u64::from_be_bytes(vk);
            } else {
                batch.remove(&self.qstate, k);
            }
        }
        for item in self.meta.iter() {
            let k = item.key()?;
            batch.remove(&self.meta, k);
        }
        for (i, record) in compacted.iter().enumerate() {
            batch.insert(&self.meta, (i as u64 + 1).to_be_bytes(), record.clone());
        }
        batch.commit()?;
        self.db.persist(PersistMode::SyncData)?;
        if dropped > 0 {
            tracing::info!(
                dropped,
                "removed message records that do not survive a restart"
            );
        }
        let (tx, rx) = mpsc::channel();
        let poisoned = Arc::new(AtomicBool::new(false));
        let store = Store {
            tx,
            poisoned: poisoned.clone(),
        };
        let worker = Worker {
            db: self.db,
            msgs: self.msgs,
            qstate: self.qstate,
            meta: self.meta,
            poisoned,
            next_meta: compacted.len() as u64 + 1,
            deletes_since_maintenance: 0,
            live_records: found.values().map(|q| q.count as i64).sum(),
            held: VecDeque::new(),
            held_front: 0,
            held_at: HashMap::new(),
            held_bytes: 0,
            last_delete: None,
            loaded: self.loaded,
            transient_garbage: 0,
        };
        std::thread::Builder::new()
            .name("warren-store".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| StoreError::Fjall(fjall::Error::Io(e)))?;
        Ok((store, found))
    }
}

fn split_key(k: &[u8]) -> Option<(u64, u64)> {
    let key = <[u8; 16]>::try_from(k).ok()?;
    let (q, id) = key.split_at(8);
    Some((
        u64::from_be_bytes(q.try_into().ok()?),
        u64::from_be_bytes(id.try_into().ok()?),
    ))
}

struct Worker {
    db: Database,
    msgs: Keyspace,
    qstate: Keyspace,
    meta: Keyspace,
    poisoned: Arc<AtomicBool>,
    next_meta: u64,
    /// Records deleted since the last compaction.
    deletes_since_maintenance: u64,
    /// Message records written minus deleted (an estimate: deletes of missing keys count).
    live_records: i64,
    /// Message writes held back, in arrival order (None once cancelled by a delete).
    held: VecDeque<Option<Held>>,
    /// The sequence number of `held`'s first slot.
    held_front: u64,
    /// The sequence number of each held key's slot.
    held_at: HashMap<[u8; 16], u64>,
    /// Body bytes held.
    held_bytes: usize,
    /// When the last message delete arrived.
    last_delete: Option<Instant>,
    /// Per queue, the id below which its transient records were loaded back (garbage).
    loaded: LoadedMarks,
    /// Transient records loaded back since the last compaction (dropped by compactions).
    transient_garbage: u64,
}

/// Per queue, the id below which its transient records are garbage.
type LoadedMarks = Arc<std::sync::RwLock<HashMap<u64, u64>>>;

/// Drops message records that are garbage without a delete: transient records a queue has
/// loaded back into memory. Each compaction works from a copy of the marks taken as it
/// starts (marks only grow, so an old copy drops less, never more).
struct DropLoaded(LoadedMarks);

impl fjall::compaction::filter::Factory for DropLoaded {
    fn name(&self) -> &str {
        "warren-drop-loaded"
    }

    fn make_filter(
        &self,
        _: &fjall::compaction::filter::Context,
    ) -> Box<dyn fjall::compaction::filter::CompactionFilter> {
        let marks = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        Box::new(DropLoadedFilter(marks))
    }
}

struct DropLoadedFilter(HashMap<u64, u64>);

impl fjall::compaction::filter::CompactionFilter for DropLoadedFilter {
    fn filter_item(
        &mut self,
        item: fjall::compaction::filter::ItemAccessor<'_>,
        _: &fjall::compaction::filter::Context,
    ) -> fjall::compaction::filter::CompactionFilterResult {
        use fjall::compaction::filter::Verdict;
        let Some((queue, id)) = split_key(item.key()) else {
            return Ok(Verdict::Keep);
        };
        if self.0.get(&queue).is_none_or(|below| id >= *below) {
            return Ok(Verdict::Keep);
        }
        let v = item.value()?;
        if is_durable_record(&v) {
            return Ok(Verdict::Keep);
        }
        // A message key is written once, so no older version can come back.
        Ok(Verdict::Destroy)
    }
}

/// Most records, and bytes, read at once when a range of records is scanned to be removed.
const CHUNK_RECORDS: usize = 16 * 1024;
const CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// Reads the records from `start` on (up to `end`, inclusive) a chunk at a time; empty
/// once there are no more.
fn read_chunk(
    ks: &Keyspace,
    start: &[u8],
    end: Option<&[u8]>,
) -> Result<Vec<(fjall::UserKey, fjall::UserValue)>, fjall::Error> {
    use std::ops::Bound;
    let upper = match end {
        Some(e) => Bound::Included(e),
        None => Bound::Unbounded,
    };
    let mut out = Vec::new();
    let mut bytes = 0;
    for item in ks.range::<&[u8], _>((Bound::Included(start), upper)) {
        let (k, v) = item.into_inner()?;
        bytes += k.len() + v.len();
        out.push((k, v));
        if out.len() >= CHUNK_RECORDS || bytes >= CHUNK_BYTES {
            break;
        }
    }
    Ok(out)
}

/// The smallest key after `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// Whether an encoded record is a durable one (kept across restarts).
fn is_durable_record(v: &[u8]) -> bool {
    v.len() >= 2 && v[0] == RECORD_VERSION && v[1] & FLAG_DURABLE != 0
}

/// How long the store must be idle before it considers compacting.
const MAINTENANCE_IDLE: std::time::Duration = std::time::Duration::from_secs(1);
/// Deleted records needed before compacting is worth it.
const MAINTENANCE_MIN_DELETES: u64 = 10_000;

/// Most operations taken into one group-commit round.
const MAX_ROUND: usize = 4096;

/// Longest a message write is held back, waiting for a consumer's ack to make it needless.
/// It bounds the extra confirm latency of a persistent message nobody consumes quickly.
const HOLD: Duration = Duration::from_millis(4);
/// Writes are held back only while deletes (acks of persistent messages) keep arriving:
/// this long after the last one, messages are written at once again.
const ACKING_RECENTLY: Duration = Duration::from_millis(100);
/// Most messages, and body bytes, held back at once.
const MAX_HELD: usize = 8192;
const MAX_HELD_BYTES: usize = 32 * 1024 * 1024;

/// A message write held back.
struct Held {
    /// When it arrived.
    at: Instant,
    key: [u8; 16],
    value: Record,
    sync: bool,
    done: Option<Done>,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        let mut round: Vec<Op> = Vec::with_capacity(MAX_ROUND);
        loop {
            let wait = match self.oldest_held() {
                Some(at) => HOLD.saturating_sub(at.elapsed()),
                None => MAINTENANCE_IDLE,
            };
            let first = match rx.recv_timeout(wait) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.oldest_held().is_some() {
                        // The oldest held write has waited long enough.
                        self.round(&mut round, false);
                    } else {
                        self.maintain();
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.round(&mut round, true);
                    return;
                }
            };
            round.push(first);
            while round.len() < MAX_ROUND {
                match rx.try_recv() {
                    Ok(op) => round.push(op),
                    Err(_) => break,
                }
            }
            let shutdown = round.iter().position(|op| matches!(op, Op::Shutdown(_)));
            if let Some(at) = shutdown {
                let rest = round.split_off(at);
                self.round(&mut round, true);
                let _ = self.db.persist(PersistMode::SyncData);
                drop(self);
                // Every operation after the shutdown fails; the shutdown reports success.
                for op in rest {
                    match op {
                        Op::Shutdown(done) => done(true),
                        other => fail(other),
                    }
                }
                while let Ok(op) = rx.try_recv() {
                    fail(op);
                }
                return;
            }
            self.round(&mut round, false);
            // Under steady traffic the store is never idle: compact anyway once garbage
            // clearly dominates, so disk use stays bounded.
            if self.deletes_since_maintenance >= 2 * self.live_records.max(0) as u64 + 200_000 {
                self.maintain();
            }
        }
    }

    /// Runs one group-commit round over `round`; `release` writes every held message too.
    fn round(&mut self, round: &mut Vec<Op>, release: bool) {
        if self.poisoned.load(Ordering::SeqCst) {
            for op in round.drain(..) {
                fail(op);
            }
            self.held_at.clear();
            self.held_bytes = 0;
            for h in self.held.drain(..).flatten() {
                if let Some(done) = h.done {
                    done(false);
                }
            }
            return;
        }
        let mut batch = self.db.batch();
        let mut ok = true;
        let mut sync = false;
        let mut reads = Vec::new();
        let mut dones: Vec<Done> = Vec::new();
        let mut deleted = false;
        let now = Instant::now();
        for op in round.drain(..) {
            match op {
                Op::Put {
                    key,
                    value,
                    sync: s,
                    done,
                } => {
                    self.held_bytes += value.msg.body.len();
                    self.held_at
                        .insert(key, self.held_front + self.held.len() as u64);
                    self.held.push_back(Some(Held {
                        at: now,
                        key,
                        value,
                        sync: s,
                        done,
                    }));
                }
                Op::Delete { key } => {
                    deleted = true;
                    let held = self
                        .held_at
                        .remove(&key)
                        .and_then(|seq| self.held[(seq - self.held_front) as usize].take());
                    match held {
                        Some(h) => {
                            // Settled before it was written: it never needs the disk, and
                            // its publisher may be told at once.
                            self.held_bytes -= h.value.msg.body.len();
                            if let Some(done) = h.done {
                                done(true);
                            }
                        }
                        None => {
                            batch.remove(&self.msgs, key);
                            self.note_delete(1);
                        }
                    }
                }
                Op::TransientLoaded {
                    queue,
                    below,
                    count,
                } => {
                    // Taken in order: a read of these records asked for earlier (an expired
                    // message's, to dead-letter it) has been served.
                    let mut marks = self.loaded.write().unwrap_or_else(|e| e.into_inner());
                    let mark = marks.entry(queue).or_default();
                    *mark = (*mark).max(below);
                    drop(marks);
                    self.transient_garbage += count;
                    self.live_records -= count as i64;
                }
                Op::DeleteRange { from, to } => {
                    self.release_held(true, &mut batch, &mut sync, &mut dones);
                    // A range is read from the tree: what this round wrote so far goes first.
                    ok &= self.commit(std::mem::replace(&mut batch, self.db.batch()));
                    ok &= self.remove_range(from, to);
                }
                Op::Delivered { queue, id } => {
                    batch.insert(&self.qstate, queue.to_be_bytes(), id.to_be_bytes());
                }
                Op::ForgetQueue { queue } => {
                    self.release_held(true, &mut batch, &mut sync, &mut dones);
                    ok &= self.commit(std::mem::replace(&mut batch, self.db.batch()));
                    ok &= self.remove_range(msg_key(queue, 0), msg_key(queue, u64::MAX));
                    batch.remove(&self.qstate, queue.to_be_bytes());
                    self.loaded
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&queue);
                }
                Op::MetaAppend { value, done } => {
                    self.release_held(true, &mut batch, &mut sync, &mut dones);
                    batch.insert(&self.meta, self.next_meta.to_be_bytes(), value);
                    self.next_meta += 1;
                    sync = true;
                    dones.push(done);
                }
                Op::Read { .. } | Op::ReadIds { .. } => {
                    self.release_held(true, &mut batch, &mut sync, &mut dones);
                    reads.push(op)
                }
                Op::Barrier(done) => {
                    self.release_held(true, &mut batch, &mut sync, &mut dones);
                    sync = true;
                    dones.push(done);
                }
                Op::Taken(done) => dones.push(done),
                Op::Shutdown(done) => done(false),
            }
        }
        let now = Instant::now();
        if deleted {
            self.last_delete = Some(now);
        }
        let acking = self
            .last_delete
            .is_some_and(|at| now.duration_since(at) < ACKING_RECENTLY);
        let all = release
            || !acking
            || self.held_at.len() >= MAX_HELD
            || self.held_bytes >= MAX_HELD_BYTES;
        // Otherwise only the writes that have waited `HOLD` go.
        self.release_held(all, &mut batch, &mut sync, &mut dones);
        ok &= self.commit(batch);
        // Reads see what the round committed; they do not wait for it to be durable, so a
        // queue refilling its memory never waits behind an fsync.
        for op in reads {
            match op {
                Op::Read {
                    queue,
                    from_id,
                    max_count,
                    max_bytes,
                    reply,
                } => reply(self.read(queue, from_id, max_count, max_bytes)),
                Op::ReadIds { queue, ids, reply } => reply(self.read_ids(queue, &ids)),
                _ => {}
            }
        }
        // One write to the OS for the whole round, and one fdatasync if anything waits on it.
        let mode = if sync {
            PersistMode::SyncData
        } else {
            PersistMode::Buffer
        };
        if ok {
            if let Err(e) = self.db.persist(mode) {
                tracing::error!(error = %e, "the message store failed to persist: no more writes are accepted, publishers are nacked");
                ok = false;
            }
        }
        if !ok {
            self.poisoned.store(true, Ordering::SeqCst);
        }
        for done in dones {
            done(ok);
        }
    }

    /// When the oldest write still held arrived (cancelled slots at the front are dropped).
    fn oldest_held(&mut self) -> Option<Instant> {
        while let Some(None) = self.held.front() {
            self.held.pop_front();
            self.held_front += 1;
        }
        self.held.front().and_then(|h| h.as_ref()).map(|h| h.at)
    }

    /// Adds held writes to `batch`, oldest first: all of them, or those that waited `HOLD`.
    fn release_held(
        &mut self,
        all: bool,
        batch: &mut fjall::OwnedWriteBatch,
        sync: &mut bool,
        dones: &mut Vec<Done>,
    ) {
        let now = Instant::now();
        let mut written = 0;
        while let Some(at) = self.oldest_held() {
            if !all && now.duration_since(at) < HOLD {
                break;
            }
            let Some(Some(h)) = self.held.pop_front() else {
                break;
            };
            self.held_front += 1;
            self.held_at.remove(&h.key);
            self.held_bytes -= h.value.msg.body.len();
            let Record {
                msg,
                durable,
                expires_at,
            } = &h.value;
            batch.insert(&self.msgs, h.key, encode_record(msg, *durable, *expires_at));
            written += 1;
            *sync |= h.sync;
            dones.extend(h.done);
        }
        self.live_records += written;
    }

    /// Gives disk space back once enough was deleted: the memtable is flushed (so the
    /// journal it pinned can go) and the tables compacted, which drops deleted records,
    /// tombstones and stale blob files. Runs only when the store is idle and most of what it
    /// holds is garbage, so a large backlog is never rewritten over and over.
    fn maintain(&mut self) {
        let garbage = self.deletes_since_maintenance + self.transient_garbage;
        if garbage < MAINTENANCE_MIN_DELETES || self.poisoned.load(Ordering::SeqCst) {
            return;
        }
        let live = self.live_records.max(0) as u64;
        if live > garbage {
            return;
        }
        let started = std::time::Instant::now();
        // Flush every keyspace, compact the messages, then make one more flush: journal
        // files are released (and old table versions collected) when a memtable rotates
        // after everything they hold is in tables, and a tiny write gives one to rotate.
        let marker = msg_key(u64::MAX, u64::MAX);
        let result = self
            .msgs
            .rotate_memtable_and_wait()
            .and_then(|_| self.msgs.major_compact())
            .and_then(|_| self.qstate.rotate_memtable_and_wait())
            .and_then(|_| self.meta.rotate_memtable_and_wait())
            .and_then(|_| self.msgs.insert(marker, []))
            .and_then(|_| self.msgs.rotate_memtable_and_wait())
            .and_then(|_| self.msgs.remove(marker));
        match result {
            Ok(()) => tracing::debug!(
                garbage,
                live,
                took_ms = started.elapsed().as_millis() as u64,
                "compacted the message store"
            ),
            Err(e) => tracing::warn!(error = %e, "failed to compact the message store"),
        }
        self.deletes_since_maintenance = 0;
        self.transient_garbage = 0;
    }

    fn note_delete(&mut self, n: u64) {
        self.deletes_since_maintenance += n;
        self.live_records -= n as i64;
    }

    /// Deletes every message record in `from..=to`, a chunk at a time: a long queue's
    /// removal never builds one batch the size of the queue, nor keeps one read snapshot
    /// open (which would pin in memory every memtable written meanwhile).
    fn remove_range(&mut self, from: [u8; 16], to: [u8; 16]) -> bool {
        let mut start = from.to_vec();
        loop {
            let chunk = match read_chunk(&self.msgs, &start, Some(&to)) {
                Ok(chunk) => chunk,
                Err(e) => {
                    tracing::error!(error = %e, "failed to read a range to delete");
                    return false;
                }
            };
            let Some((last, _)) = chunk.last() else {
                return true;
            };
            start = successor(last);
            let mut batch = self.db.batch();
            for (k, _) in &chunk {
                batch.remove(&self.msgs, k.clone());
            }
            if !self.commit(batch) {
                return false;
            }
            self.note_delete(chunk.len() as u64);
        }
    }

    fn commit(&self, batch: fjall::OwnedWriteBatch) -> bool {
        match batch.commit() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "the message store failed to write: no more writes are accepted, publishers are nacked");
                false
            }
        }
    }

    fn read_ids(&self, queue: u64, ids: &[u64]) -> Vec<StoredMessage> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            match self.msgs.get(msg_key(queue, id)) {
                Ok(Some(v)) => match decode_message(Bytes::from(v.to_vec())) {
                    Ok(d) => out.push(StoredMessage {
                        id,
                        msg: Arc::new(d.msg),
                        durable: d.durable,
                        expires_at: d.expires_at,
                    }),
                    Err(e) => {
                        tracing::warn!(queue, id, error = %e, "skipping an unreadable message record")
                    }
                },
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, queue, "failed to read a message from disk"),
            }
        }
        out
    }

    fn read(
        &self,
        queue: u64,
        from_id: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Vec<StoredMessage> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in self
            .msgs
            .range(msg_key(queue, from_id)..=msg_key(queue, u64::MAX))
        {
            let (k, v) = match item.into_inner() {
                Ok(kv) => kv,
                Err(e) => {
                    tracing::error!(error = %e, queue, "failed to read messages from disk");
                    break;
                }
            };
            let Some((_, id)) = split_key(&k) else {
                continue;
            };
            match decode_message(Bytes::from(v.to_vec())) {
                Ok(d) => {
                    bytes += d.msg.body.len();
                    out.push(StoredMessage {
                        id,
                        msg: Arc::new(d.msg),
                        durable: d.durable,
                        expires_at: d.expires_at,
                    });
                }
                Err(e) => {
                    tracing::warn!(queue, id, error = %e, "skipping an unreadable message record");
                }
            }
            if out.len() >= max_count || bytes >= max_bytes {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: &'static [u8]) -> Message {
        Message {
            exchange: Arc::from("x"),
            routing_key: Arc::from("rk"),
            extra_keys: Box::new([]),
            properties: Properties::default(),
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn message_records_round_trip() {
        let m = msg(b"hello");
        let d = decode_message(encode_message(&m, true, None)).expect("decodes");
        assert!(d.durable);
        assert_eq!(d.expires_at, None);
        let back = d.msg;
        assert_eq!(&*back.exchange, "x");
        assert_eq!(&*back.routing_key, "rk");
        assert_eq!(back.body, Bytes::from_static(b"hello"));
        assert_eq!(back.properties, m.properties);
        let cut = encode_message(&m, false, None).slice(..6);
        assert!(decode_message(cut).is_err());
        let mut with_keys = msg(b"x");
        with_keys.extra_keys = vec![Arc::from("cc1"), Arc::from("bcc")].into_boxed_slice();
        let record = encode_message(&with_keys, false, Some(1234));
        assert_eq!(record.len(), record_len(&with_keys, Some(1234)));
        let d = decode_message(record).expect("decodes");
        assert_eq!(d.expires_at, Some(1234));
        assert_eq!(
            d.msg.routing_keys().collect::<Vec<_>>(),
            vec!["rk", "cc1", "bcc"]
        );
    }

    /// A store worker on a fresh directory, driven round by round (no thread).
    fn worker(name: &str) -> (Worker, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "warren-store-{name}-{}-{}",
            std::process::id(),
            now_nanos()
        ));
        let o = Store::open(&dir).expect("store opens");
        let w = Worker {
            db: o.db,
            msgs: o.msgs,
            qstate: o.qstate,
            meta: o.meta,
            poisoned: Arc::new(AtomicBool::new(false)),
            next_meta: 1,
            deletes_since_maintenance: 0,
            live_records: 0,
            held: VecDeque::new(),
            held_front: 0,
            held_at: HashMap::new(),
            held_bytes: 0,
            last_delete: None,
            loaded: o.loaded,
            transient_garbage: 0,
        };
        (w, dir)
    }

    fn now_nanos() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }

    fn put(id: u64, log: &Arc<std::sync::Mutex<Vec<(u64, bool)>>>) -> Op {
        let log = log.clone();
        Op::Put {
            key: msg_key(7, id),
            value: Record {
                msg: Arc::new(msg(b"persistent")),
                durable: true,
                expires_at: None,
            },
            sync: true,
            done: Some(Box::new(move |ok| {
                log.lock().expect("log").push((id, ok));
            })),
        }
    }

    fn on_disk(w: &Worker, id: u64) -> bool {
        w.msgs.get(msg_key(7, id)).expect("reads").is_some()
    }

    #[test]
    fn a_message_acked_before_its_write_is_confirmed_and_never_written() {
        let (mut w, dir) = worker("held");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        // A consumer acks persistent messages: writes are held back from now on.
        w.round(&mut vec![Op::Delete { key: msg_key(7, 1) }], false);
        w.round(&mut vec![put(2, &log), put(3, &log)], false);
        assert!(log.lock().expect("log").is_empty(), "nothing durable yet");
        // Message 2 is acked before its write: confirmed at once, no write, no delete.
        w.round(&mut vec![Op::Delete { key: msg_key(7, 2) }], false);
        assert_eq!(log.lock().expect("log")[0], (2, true));
        assert!(!on_disk(&w, 2));
        // Message 3 is written (and only then confirmed) once released.
        w.round(&mut Vec::new(), true);
        assert_eq!(*log.lock().expect("log"), vec![(2, true), (3, true)]);
        assert!(on_disk(&w, 3));
        assert!(!on_disk(&w, 2));
        drop(w);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn without_acks_a_message_is_written_in_its_own_round() {
        let (mut w, dir) = worker("direct");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        w.round(&mut vec![put(5, &log)], false);
        assert_eq!(*log.lock().expect("log"), vec![(5, true)]);
        assert!(on_disk(&w, 5));
        drop(w);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_read_sees_the_writes_held_before_it() {
        let (mut w, dir) = worker("read");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        w.round(&mut vec![Op::Delete { key: msg_key(7, 1) }], false);
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let g = got.clone();
        w.round(
            &mut vec![
                put(2, &log),
                Op::Read {
                    queue: 7,
                    from_id: 0,
                    max_count: 10,
                    max_bytes: usize::MAX,
                    reply: Box::new(move |msgs| {
                        g.lock()
                            .expect("got")
                            .extend(msgs.into_iter().map(|m| m.id));
                    }),
                },
            ],
            false,
        );
        assert_eq!(*got.lock().expect("got"), vec![2]);
        assert_eq!(*log.lock().expect("log"), vec![(2, true)]);
        drop(w);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn keys_sort_by_queue_then_id() {
        assert!(msg_key(1, u64::MAX) < msg_key(2, 0));
        assert!(msg_key(1, 9) < msg_key(1, 10));
        assert_ne!(queue_id("/", "a"), queue_id("/", "b"));
        assert_eq!(queue_id("/", "a"), queue_id("/", "a"));
    }

    /// A write of message `id` of `queue`, durable or not, with nobody waiting on it.
    fn record(queue: u64, id: u64, durable: bool) -> Op {
        Op::Put {
            key: msg_key(queue, id),
            value: Record {
                msg: Arc::new(msg(b"body")),
                durable,
                expires_at: None,
            },
            sync: false,
            done: None,
        }
    }

    fn ids_on_disk(msgs: &Keyspace, queue: u64) -> Vec<u64> {
        msgs.range(msg_key(queue, 0)..=msg_key(queue, u64::MAX))
            .map(|item| {
                let k = item.key().expect("reads");
                split_key(&k).expect("a message key").1
            })
            .collect()
    }

    #[test]
    fn loaded_transient_records_go_at_compaction_and_durable_ones_stay() {
        let (mut w, dir) = worker("loaded");
        let mut ops: Vec<Op> = (0..10).map(|id| record(7, id, id % 3 == 0)).collect();
        ops.push(record(8, 1, false));
        w.round(&mut ops, false);
        // Queue 7 loaded everything below 6 back into memory.
        w.round(
            &mut vec![Op::TransientLoaded {
                queue: 7,
                below: 6,
                count: 4,
            }],
            false,
        );
        w.msgs.rotate_memtable_and_wait().expect("flush");
        w.msgs.major_compact().expect("compact");
        // Durable records (0, 3) stay until they are deleted; transient ones below the mark
        // (1, 2, 4, 5) are gone; the rest, and other queues, are untouched.
        assert_eq!(ids_on_disk(&w.msgs, 7), vec![0, 3, 6, 7, 8, 9]);
        assert_eq!(ids_on_disk(&w.msgs, 8), vec![1]);
        assert_eq!(w.transient_garbage, 4);
        drop(w);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_queue_longer_than_a_chunk_is_removed_whole() {
        let (mut w, dir) = worker("forget");
        let n = CHUNK_RECORDS as u64 * 2 + 17;
        let mut ops: Vec<Op> = (0..n).map(|id| record(7, id, true)).collect();
        ops.push(record(6, 1, true));
        ops.push(record(8, 1, true));
        w.round(&mut ops, false);
        assert_eq!(ids_on_disk(&w.msgs, 7).len() as u64, n);
        w.round(&mut vec![Op::ForgetQueue { queue: 7 }], false);
        assert!(ids_on_disk(&w.msgs, 7).is_empty());
        assert_eq!(ids_on_disk(&w.msgs, 6), vec![1]);
        assert_eq!(ids_on_disk(&w.msgs, 8), vec![1]);
        drop(w);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn recovery_drops_transient_records_a_chunk_at_a_time_and_keeps_durable_ones() {
        let (mut w, dir) = worker("recover");
        let n = CHUNK_RECORDS as u64 + 100;
        let mut ops: Vec<Op> = (0..n).map(|id| record(7, id, id % 1000 == 0)).collect();
        ops.push(record(9, 1, true));
        w.round(&mut ops, true);
        drop(w);
        let keep: std::collections::HashSet<u64> = [7].into_iter().collect();
        let (store, found) = Store::open(&dir)
            .expect("reopens")
            .recover(Some(&keep), &[])
            .expect("recovers");
        let q = found.get(&7).copied().expect("queue 7 recovered");
        assert_eq!((q.count, q.min_id, q.max_id), (17, 0, 16_000));
        assert!(!found.contains_key(&9), "a queue that is gone is dropped");
        let (tx, rx) = std::sync::mpsc::channel();
        store.shutdown(Box::new(move |ok| {
            let _ = tx.send(ok);
        }));
        assert_eq!(rx.recv(), Ok(true));
        let o = Store::open(&dir).expect("reopens");
        let left = ids_on_disk(&o.msgs, 7);
        assert_eq!(left, (0..=16).map(|i| i * 1000).collect::<Vec<_>>());
        assert!(ids_on_disk(&o.msgs, 9).is_empty());
        drop(o);
        let _ = std::fs::remove_dir_all(dir);
    }
}
