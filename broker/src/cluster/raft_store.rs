//! The Raft log and the state machine of the metadata group.
//!
//! [`LogStore`] keeps the log in memory (metadata changes are few and small) and, on a disc
//! node, writes every change through to the node's fjall store (keyspace `raft`) before
//! reporting it done: log entries, the vote, the committed index and the last purge. A RAM
//! node keeps all of it in memory only and catches up from the leader after a restart.
//!
//! [`StateMachine`] is the node's `meta::Metadata`: applying an entry executes its
//! `MetaCommand` on the node (`BrokerShared::apply_replicated`), which reacts as a single
//! node does. A snapshot is the metadata snapshot (the shortest list of commands rebuilding
//! it); a disc node keeps its latest snapshot in the same keyspace, so the log before it can
//! be purged and a restart starts from it.

// The error types are openraft's (its storage and network traits return them).
#![allow(clippy::result_large_err)]

use super::{Member, NodeId, Request, Response, TypeConfig};
use crate::broker::BrokerShared;
use fjall::{Database, Keyspace, PersistMode};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, Weak};

type SError = StorageError<NodeId>;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
const LOG_PREFIX: u8 = b'l';

fn log_key(index: u64) -> [u8; 9] {
    let mut k = [LOG_PREFIX; 9];
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The fjall keyspace a disc node persists its Raft state in.
#[derive(Clone)]
pub struct RaftDisk {
    db: Database,
    ks: Keyspace,
}

impl RaftDisk {
    /// Wraps the `raft` keyspace of the node's store.
    pub fn new(db: Database, ks: Keyspace) -> RaftDisk {
        RaftDisk { db, ks }
    }

    /// Writes (Some) or removes (None) keys in one batch and fsyncs, off the async workers.
    async fn write(&self, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>, sync: bool) -> std::io::Result<()> {
        let disk = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut batch = disk.db.batch();
            for (k, v) in ops {
                match v {
                    Some(v) => batch.insert(&disk.ks, k, v),
                    None => batch.remove(&disk.ks, k),
                }
            }
            batch.commit().map_err(std::io::Error::other)?;
            if sync {
                disk.db
                    .persist(PersistMode::SyncData)
                    .map_err(std::io::Error::other)?;
            }
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)?
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, SError> {
        let Some(v) = self.ks.get(key).map_err(|e| StorageIOError::read(&e))? else {
            return Ok(None);
        };
        serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| StorageIOError::read(&e).into())
    }

    /// True when the keyspace holds Raft state (the node was part of a cluster).
    pub fn has_state(&self) -> bool {
        matches!(self.ks.get(KEY_VOTE), Ok(Some(_)))
    }

    /// `force_boot`: appends to the log a membership entry whose voters are the current
    /// voters in `keep` (RAM members stay learners; lost disc members go). At the next
    /// start openraft takes the last membership in the log as the effective one, so the
    /// kept voters elect a leader among themselves and commit the entry: the cluster
    /// serves definition changes again. Returns the voters kept.
    pub fn force_membership(
        &self,
        keep: &std::collections::BTreeSet<NodeId>,
    ) -> std::io::Result<Vec<String>> {
        let bad = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
        let mut last: Option<LogId<NodeId>> = None;
        let mut membership: Option<openraft::Membership<NodeId, Member>> = None;
        for item in self.ks.prefix([LOG_PREFIX]) {
            let (_, v) = item.into_inner().map_err(|e| bad(&e))?;
            let entry: Entry<TypeConfig> = serde_json::from_slice(&v).map_err(|e| bad(&e))?;
            if let EntryPayload::Membership(m) = &entry.payload {
                membership = Some(m.clone());
            }
            last = Some(entry.log_id);
        }
        let snapshot: Option<StoredSnapshot> = self.get(KEY_SNAPSHOT).map_err(|e| bad(&e))?;
        let purged: Option<LogId<NodeId>> = self.get(KEY_PURGED).map_err(|e| bad(&e))?;
        let last = last
            .or(purged)
            .or_else(|| snapshot.as_ref().and_then(|s| s.meta.last_log_id))
            .ok_or_else(|| std::io::Error::other("this node has no Raft log: nothing to force"))?;
        let membership = membership
            .or_else(|| {
                snapshot
                    .as_ref()
                    .map(|s| s.meta.last_membership.membership().clone())
            })
            .ok_or_else(|| std::io::Error::other("no membership in the Raft log"))?;
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let new_voters: std::collections::BTreeSet<NodeId> = voters
            .iter()
            .copied()
            .filter(|id| keep.contains(id))
            .collect();
        if new_voters.is_empty() {
            return Err(std::io::Error::other(
                "this node is not a disc member of its cluster: nothing to force",
            ));
        }
        let nodes: BTreeMap<NodeId, Member> = membership
            .nodes()
            .filter(|(id, _)| new_voters.contains(id) || !voters.contains(id))
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        let kept: Vec<String> = nodes
            .iter()
            .filter(|(id, _)| new_voters.contains(id))
            .map(|(_, m)| m.name.clone())
            .collect();
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId::new(last.leader_id, last.index + 1),
            payload: EntryPayload::Membership(openraft::Membership::new(vec![new_voters], nodes)),
        };
        let v = serde_json::to_vec(&entry).map_err(|e| bad(&e))?;
        self.ks
            .insert(log_key(entry.log_id.index), v)
            .map_err(|e| bad(&e))?;
        self.db
            .persist(PersistMode::SyncData)
            .map_err(|e| bad(&e))?;
        Ok(kept)
    }

    /// Removes every Raft record (reset).
    pub fn clear(&self) -> std::io::Result<()> {
        let mut batch = self.db.batch();
        for item in self.ks.iter() {
            let k = item.key().map_err(std::io::Error::other)?;
            batch.remove(&self.ks, k);
        }
        batch.commit().map_err(std::io::Error::other)?;
        self.db
            .persist(PersistMode::SyncData)
            .map_err(std::io::Error::other)
    }
}

#[derive(Default)]
struct LogInner {
    logs: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
}

/// The Raft log, vote and committed index: in memory, written through on disc nodes.
#[derive(Clone)]
pub struct LogStore {
    /// A std mutex: only held to copy in or out, never across an await.
    inner: Arc<Mutex<LogInner>>,
    disk: Option<RaftDisk>,
}

fn io_err(e: std::io::Error) -> SError {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    /// Opens the log: loads what a disc node persisted (None: a RAM node, memory only).
    pub fn open(disk: Option<RaftDisk>) -> Result<LogStore, SError> {
        let mut inner = LogInner::default();
        if let Some(d) = &disk {
            inner.vote = d.get(KEY_VOTE)?;
            inner.committed = d.get(KEY_COMMITTED)?;
            inner.purged = d.get(KEY_PURGED)?;
            for item in d.ks.prefix([LOG_PREFIX]) {
                let (_, v) = item
                    .into_inner()
                    .map_err(|e| StorageIOError::read_logs(&e))?;
                let entry: Entry<TypeConfig> =
                    serde_json::from_slice(&v).map_err(|e| StorageIOError::read_logs(&e))?;
                inner.logs.insert(entry.log_id.index, entry);
            }
        }
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
            disk,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current vote (for cluster_status).
    pub fn vote(&self) -> Option<Vote<NodeId>> {
        self.lock().vote
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SError> {
        Ok(self
            .lock()
            .logs
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SError> {
        let inner = self.lock();
        let last = inner
            .logs
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.purged);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SError> {
        self.lock().vote = Some(*vote);
        if let Some(d) = &self.disk {
            let v = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
            d.write(vec![(KEY_VOTE.to_vec(), Some(v))], true)
                .await
                .map_err(|e| SError::from(StorageIOError::write_vote(&e)))?;
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SError> {
        self.lock().committed = committed;
        if let Some(d) = &self.disk {
            let v = serde_json::to_vec(&committed).map_err(|e| StorageIOError::write(&e))?;
            // Not fsynced: losing it only means waiting for the leader to say it again.
            d.write(vec![(KEY_COMMITTED.to_vec(), Some(v))], false)
                .await
                .map_err(io_err)?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SError> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let mut ops = Vec::new();
        if self.disk.is_some() {
            for e in &entries {
                let v = serde_json::to_vec(e).map_err(|err| StorageIOError::write_logs(&err))?;
                ops.push((log_key(e.log_id.index).to_vec(), Some(v)));
            }
        }
        {
            let mut inner = self.lock();
            for e in entries {
                inner.logs.insert(e.log_id.index, e);
            }
        }
        let result = match &self.disk {
            Some(d) => d.write(ops, true).await,
            None => Ok(()),
        };
        let failed = result
            .as_ref()
            .err()
            .map(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(result);
        match failed {
            Some(e) => Err(io_err(e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        let removed: Vec<u64> = {
            let mut inner = self.lock();
            let gone = inner.logs.split_off(&log_id.index);
            gone.keys().copied().collect()
        };
        if let Some(d) = &self.disk {
            let ops = removed
                .into_iter()
                .map(|i| (log_key(i).to_vec(), None))
                .collect();
            d.write(ops, true).await.map_err(io_err)?;
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        let removed: Vec<u64> = {
            let mut inner = self.lock();
            let keep = inner.logs.split_off(&(log_id.index + 1));
            let gone = std::mem::replace(&mut inner.logs, keep);
            inner.purged = Some(log_id);
            gone.keys().copied().collect()
        };
        if let Some(d) = &self.disk {
            let mut ops: Vec<(Vec<u8>, Option<Vec<u8>>)> = removed
                .into_iter()
                .map(|i| (log_key(i).to_vec(), None))
                .collect();
            let v = serde_json::to_vec(&log_id).map_err(|e| StorageIOError::write(&e))?;
            ops.push((KEY_PURGED.to_vec(), Some(v)));
            d.write(ops, true).await.map_err(io_err)?;
        }
        Ok(())
    }
}

/// A snapshot as stored and sent: its metadata and the commands rebuilding the definitions.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

/// The node's definitions as a Raft state machine.
pub struct StateMachine {
    shared: Weak<BrokerShared>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
    /// The latest snapshot, shared with the builders: a snapshot built in the background is
    /// the one sent to a follower that lags behind the purged log. A std mutex: only held
    /// to replace or clone it.
    snapshot: Arc<std::sync::Mutex<Option<StoredSnapshot>>>,
    disk: Option<RaftDisk>,
    /// Snapshots built so far (part of the snapshot id).
    built: u64,
}

fn lock_snapshot(
    slot: &std::sync::Mutex<Option<StoredSnapshot>>,
) -> std::sync::MutexGuard<'_, Option<StoredSnapshot>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

impl StateMachine {
    /// A state machine applying to `shared`; a disc node starts from its stored snapshot.
    pub fn open(shared: Weak<BrokerShared>, disk: Option<RaftDisk>) -> Result<Self, SError> {
        let snapshot: Option<StoredSnapshot> = match &disk {
            Some(d) => d.get(KEY_SNAPSHOT)?,
            None => None,
        };
        let mut sm = StateMachine {
            shared,
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: Arc::default(),
            disk,
            built: 0,
        };
        if let Some(s) = snapshot {
            sm.load(&s)?;
            *lock_snapshot(&sm.snapshot) = Some(s);
        }
        Ok(sm)
    }

    /// Replaces the definitions by a snapshot's.
    fn load(&mut self, s: &StoredSnapshot) -> Result<(), SError> {
        let commands: Vec<crate::meta::MetaCommand> =
            serde_json::from_slice(&s.data).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        if let Some(shared) = self.shared.upgrade() {
            shared.replace_metadata(commands);
        }
        self.last_applied = s.meta.last_log_id;
        self.membership = s.meta.last_membership.clone();
        Ok(())
    }
}

/// Builds a snapshot from the definitions captured when it was asked for.
pub struct SnapshotBuilder {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
    disk: Option<RaftDisk>,
    /// The state machine's current snapshot, replaced once this one is built.
    current: Arc<std::sync::Mutex<Option<StoredSnapshot>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SError> {
        let stored = StoredSnapshot {
            meta: self.meta.clone(),
            data: self.data.clone(),
        };
        if let Some(d) = &self.disk {
            let v = serde_json::to_vec(&stored).map_err(|e| StorageIOError::write(&e))?;
            d.write(vec![(KEY_SNAPSHOT.to_vec(), Some(v))], true)
                .await
                .map_err(io_err)?;
        }
        // openraft purges the log up to this snapshot next: from now on a lagging follower
        // is sent this one (keeping the older one here made `get_current_snapshot` return
        // nothing or a snapshot older than the purged log).
        {
            let mut current = lock_snapshot(&self.current);
            let newer = current
                .as_ref()
                .is_none_or(|c| c.meta.last_log_id <= stored.meta.last_log_id);
            if newer {
                *current = Some(stored);
            }
        }
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(self.data.clone())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), SError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let shared = self.shared.upgrade();
        let mut out = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(req) => match (&shared, req) {
                    (Some(s), Request::Meta(cmd)) => Response::from(s.apply_replicated(cmd)),
                    (Some(s), Request::Seed(commands)) => {
                        s.replace_metadata(commands);
                        Response::default()
                    }
                    (None, _) => Response::default(),
                },
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::default()
                }
            };
            out.push(response);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let commands = self
            .shared
            .upgrade()
            .map(|s| s.with_meta(|m| m.snapshot()))
            .unwrap_or_default();
        self.built += 1;
        let snapshot_id = format!(
            "{}-{}",
            self.last_applied.map(|l| l.index).unwrap_or(0),
            self.built
        );
        SnapshotBuilder {
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            data: serde_json::to_vec(&commands).unwrap_or_default(),
            disk: self.disk.clone(),
            current: self.snapshot.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SError> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        self.load(&stored)?;
        if let Some(d) = &self.disk {
            let v = serde_json::to_vec(&stored).map_err(|e| StorageIOError::write(&e))?;
            d.write(vec![(KEY_SNAPSHOT.to_vec(), Some(v))], true)
                .await
                .map_err(io_err)?;
        }
        *lock_snapshot(&self.snapshot) = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SError> {
        Ok(lock_snapshot(&self.snapshot).as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}
