//! Clustering: the definitions of every node replicated through one Raft group (openraft).
//!
//! A node is standalone until it joins a cluster or another node joins it; it then keeps a
//! `cluster.json` in its data directory and, at every start, runs a Raft member whose state
//! machine is the node's `meta::Metadata` (`raft_store`). Disc nodes are voters and persist
//! the log; RAM nodes are learners and keep it in memory. `BrokerShared::execute` sends a
//! definition change to the leader (`client_write` there, forwarded over the distribution
//! link from a follower) and every node applies the committed commands in log order,
//! reacting as a single node does. Without a reachable majority of disc nodes a change is
//! refused at once, with a clear error, while the node keeps serving its queues.
//!
//! `network` is Raft's transport over the distribution port (`node` role, cookie HMAC);
//! `node` runs the application (start_app/stop_app, join_cluster, reset...) under the
//! distribution listener, which stays up while the application is stopped.

pub mod link;
pub mod network;
pub mod node;
pub mod raft_store;
pub mod remote_queue;

use crate::broker::BrokerShared;
use crate::dist::auth::Cookie;
use crate::dist::protocol::RemoteError;
use crate::error::ChannelError;
use crate::meta::MetaCommand;
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use warren_amqp::ReplyCode;

/// A member's Raft id: derived from its node name, so it is the same on every node.
pub type NodeId = u64;

/// A cluster member as Raft knows it: its node name and distribution address.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// `name@host`.
    pub name: String,
    /// `host:port` of its distribution listener.
    pub addr: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.addr)
    }
}

/// What the replicated log carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// A definition change.
    Meta(MetaCommand),
    /// The definitions a standalone node had when it formed the cluster: they replace
    /// whatever a node applying it has (a joining node was reset, the founder has them).
    Seed(Vec<MetaCommand>),
}

/// The outcome of applying a log entry: the AMQP error it failed with, if any.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    /// Reply code and text.
    pub error: Option<(u16, String)>,
    /// The log index the change was committed at (set by the leader for a forwarded
    /// change, so the forwarding node can wait until it has applied it too).
    #[serde(default)]
    pub index: u64,
}

impl From<Result<(), ChannelError>> for Response {
    fn from(r: Result<(), ChannelError>) -> Self {
        Response {
            error: r.err().map(|e| (e.code.code(), e.text)),
            index: 0,
        }
    }
}

impl Response {
    fn into_result(self) -> Result<(), ChannelError> {
        match self.error {
            None => Ok(()),
            Some((code, text)) => Err(ChannelError {
                code: ReplyCode::from_code(code).unwrap_or(ReplyCode::InternalError),
                text,
                class_id: 0,
                method_id: 0,
            }),
        }
    }
}

openraft::declare_raft_types!(
    /// The metadata group's types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The metadata Raft group.
pub type Raft = openraft::Raft<TypeConfig>;

/// A node's Raft id.
pub fn node_id(name: &str) -> NodeId {
    use sha2::Digest;
    let d = sha2::Sha256::digest(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// How long a definition change may wait for the cluster.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A leader that heard from no majority for this long cannot commit anything.
const QUORUM_STALE_MS: u64 = 1500;

/// The requests nodes send each other (role `node` on the distribution port).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PeerOp {
    /// Raft append-entries (openraft's request as JSON).
    AppendEntries(Value),
    /// Raft vote.
    Vote(Value),
    /// Raft snapshot chunk.
    InstallSnapshot(Value),
    /// A definition change forwarded to the leader.
    Write(Request),
    /// Add a node to the cluster (forwarded to the leader).
    Join {
        /// The joining node.
        member: Member,
        /// As a RAM node (learner).
        ram: bool,
    },
    /// Remove a node from the cluster (forwarded to the leader).
    Remove {
        /// Its name.
        name: String,
    },
    /// Make a member a disc (voter) or RAM (learner) node (forwarded to the leader).
    SetType {
        /// Its name.
        name: String,
        /// RAM node.
        ram: bool,
    },
    /// Is the node up, and its application running?
    Ping,
    /// An operation on a queue homed on the receiving node (or consumer events for it).
    Queue(remote_queue::QueueOp),
}

/// What `cluster.json` in the data directory records: this node is a cluster member.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterFile {
    /// A RAM node (Raft learner, log in memory).
    pub ram: bool,
    /// The members last known (to reach the cluster while the application is stopped).
    #[serde(default)]
    pub members: Vec<Member>,
}

fn cluster_file_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster.json")
}

/// Reads `cluster.json` (None: a standalone node).
pub fn read_cluster_file(data_dir: &Path) -> Option<ClusterFile> {
    let text = std::fs::read_to_string(cluster_file_path(data_dir)).ok()?;
    match serde_json::from_str(&text) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(error = %e, "cluster.json is unreadable; starting as a standalone node");
            None
        }
    }
}

/// Writes `cluster.json`.
pub fn write_cluster_file(data_dir: &Path, file: &ClusterFile) -> std::io::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let text = serde_json::to_string_pretty(file).map_err(std::io::Error::other)?;
    let path = cluster_file_path(data_dir);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

/// Removes `cluster.json` (reset).
pub fn remove_cluster_file(data_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(cluster_file_path(data_dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The queues homed on `node` that go when it goes down: its non-durable queues and its
/// exclusive ones (their owners' connections were on it). (vhost, name) pairs.
pub fn transient_queues_of(shared: &BrokerShared, node: &str) -> Vec<(String, String)> {
    shared.with_meta(|m| {
        m.vhosts
            .iter()
            .flat_map(|(v, vh)| {
                vh.queues
                    .values()
                    .filter(|q| q.node.as_deref() == Some(node))
                    .filter(|q| !q.durable || q.exclusive_owner.is_some())
                    .map(move |q| (v.clone(), q.name.clone()))
            })
            .collect()
    })
}

/// How long a member must be unreachable (or its application stopped) before the leader
/// deletes its transient and exclusive queues.
pub const NODE_DOWN_GRACE: Duration = Duration::from_secs(2);

/// Watches the other members from the leader: a member unreachable or stopped for
/// [`NODE_DOWN_GRACE`] is down, and its transient and exclusive queues are deleted, as
/// RabbitMQ's other nodes do on `nodedown`. Durable queues stay defined (unavailable until
/// their node returns). Also keeps `cluster.json`'s member list current.
pub fn spawn_node_monitor(shared: &Arc<BrokerShared>, cluster: Arc<Cluster>) {
    let weak = Arc::downgrade(shared);
    let shutdown = shared.shutdown.clone();
    let data_dir = shared.config.data_dir.clone();
    tokio::spawn(async move {
        let mut down_since: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
        let mut known: Vec<Member> = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            let Some(shared) = weak.upgrade() else { return };
            let (disc, ram) = cluster.members();
            let all: Vec<Member> = disc.into_iter().chain(ram).collect();
            if all != known && !all.is_empty() {
                if let Some(mut file) = read_cluster_file(&data_dir) {
                    file.members = all.clone();
                    if let Err(e) = write_cluster_file(&data_dir, &file) {
                        tracing::warn!(error = %e, "failed to write cluster.json");
                    }
                }
                known = all.clone();
            }
            if !cluster.is_leader() {
                down_since.clear();
                continue;
            }
            let mut probes = tokio::task::JoinSet::new();
            for m in all.into_iter().filter(|m| m.name != cluster.me.name) {
                let cookie = cluster.cookie.clone();
                let me = cluster.me.name.clone();
                let addr = cluster.dial_addr(&m);
                probes.spawn(async move {
                    let r: Result<Value, _> = network::peer_call(
                        &addr,
                        &cookie,
                        &me,
                        PeerOp::Ping,
                        Duration::from_secs(1),
                    )
                    .await;
                    let up = matches!(r, Ok(v) if v.get("running") == Some(&Value::Bool(true)));
                    (m.name, up)
                });
            }
            let now = tokio::time::Instant::now();
            let mut seen = BTreeSet::new();
            while let Some(Ok((name, up))) = probes.join_next().await {
                seen.insert(name.clone());
                if up {
                    down_since.remove(&name);
                } else {
                    down_since.entry(name).or_insert(now);
                }
            }
            down_since.retain(|n, _| seen.contains(n));
            for (node, since) in &down_since {
                if since.elapsed() < NODE_DOWN_GRACE {
                    continue;
                }
                for (vhost, name) in transient_queues_of(&shared, node) {
                    let cmd = MetaCommand::DeleteQueue {
                        vhost: vhost.clone(),
                        name: name.clone(),
                    };
                    match cluster.write(Request::Meta(cmd)).await {
                        Ok(()) => {
                            tracing::info!(%node, %vhost, queue = %name, "deleted a transient or exclusive queue of a node that is down")
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "could not delete a queue of a node that is down")
                        }
                    }
                }
            }
        }
    });
}

/// Who this node is in a cluster, known before its application starts.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Name and distribution address.
    pub me: Member,
    /// The cookie peers prove they hold.
    pub cookie: Arc<Cookie>,
    /// `cluster_peer_addresses`: members this node reaches at another address than the one
    /// they advertise (NAT, port forwarding, a proxy), by node name.
    pub peer_addresses: Arc<BTreeMap<String, String>>,
}

impl Identity {
    /// The address this node dials to reach `member`: the one configured for it in
    /// `cluster_peer_addresses`, else the one it advertises. Every connection to a peer
    /// (Raft, forwarded changes, membership requests, queue traffic, status probes) is
    /// opened to this address.
    pub fn dial_addr(&self, member: &Member) -> String {
        self.peer_addresses
            .get(&member.name)
            .cloned()
            .unwrap_or_else(|| member.addr.clone())
    }
}

/// A running member of the metadata group.
pub struct Cluster {
    /// The Raft instance.
    pub raft: Raft,
    /// This node's id.
    pub id: NodeId,
    /// This node.
    pub me: Member,
    /// The cookie.
    pub cookie: Arc<Cookie>,
    /// Who this node is (for the addresses peers are dialed at).
    identity: Identity,
    /// When the leader last reached this node (a follower's view of the majority). A std
    /// mutex: only held to read or write the instant.
    last_leader_contact: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Errors starting the Raft member.
pub fn start_error(e: impl std::fmt::Display) -> crate::broker::StartError {
    crate::broker::StartError::Task(format!("failed to start the cluster member: {e}"))
}

impl Cluster {
    /// Starts this node's Raft member; on a disc node the log is re-applied up to the last
    /// commit it knows, so its definitions (and queues) are back before any peer answers.
    pub async fn start(
        shared: &Arc<BrokerShared>,
        identity: &Identity,
        disk: Option<raft_store::RaftDisk>,
    ) -> Result<Arc<Cluster>, crate::broker::StartError> {
        let config = openraft::Config {
            cluster_name: "warren".into(),
            heartbeat_interval: 150,
            election_timeout_min: 800,
            election_timeout_max: 1600,
            // A snapshot every 1,000 changes keeps a restart's log replay short; a node
            // that fell behind the purged log is sent the snapshot.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 500,
            // Sending a snapshot chunk (JSON over the distribution link) and installing the
            // last one (replacing every definition) takes far longer than openraft's 200 ms
            // default; timed out, the leader sent the snapshot again and again and the
            // follower never got the entries after it.
            install_snapshot_timeout: 10_000,
            snapshot_max_chunk_size: 256 * 1024,
            ..Default::default()
        }
        .validate()
        .map_err(start_error)?;
        let id = node_id(&identity.me.name);
        let log = raft_store::LogStore::open(disk.clone()).map_err(start_error)?;
        let sm =
            raft_store::StateMachine::open(Arc::downgrade(shared), disk).map_err(start_error)?;
        let network = network::Network {
            identity: identity.clone(),
        };
        let raft = Raft::new(id, Arc::new(config), network, log, sm)
            .await
            .map_err(start_error)?;
        Ok(Arc::new(Cluster {
            raft,
            id,
            me: identity.me.clone(),
            cookie: identity.cookie.clone(),
            identity: identity.clone(),
            last_leader_contact: std::sync::Mutex::new(None),
        }))
    }

    /// Makes this node the first member of a new cluster, seeded with `definitions`.
    pub async fn found(&self, definitions: Vec<MetaCommand>) -> Result<(), RemoteError> {
        let mut members = BTreeMap::new();
        members.insert(self.id, self.me.clone());
        self.raft
            .initialize(members)
            .await
            .map_err(|e| RemoteError::software(format!("failed to form the cluster: {e}")))?;
        self.raft
            .wait(Some(Duration::from_secs(10)))
            .state(ServerState::Leader, "leader of the new cluster")
            .await
            .map_err(|e| RemoteError::software(format!("failed to form the cluster: {e}")))?;
        self.raft
            .client_write(Request::Seed(definitions))
            .await
            .map_err(|e| RemoteError::software(format!("failed to form the cluster: {e}")))?;
        Ok(())
    }

    /// The address to dial `member` at (see [`Identity::dial_addr`]).
    pub fn dial_addr(&self, member: &Member) -> String {
        self.identity.dial_addr(member)
    }

    fn metrics(&self) -> openraft::RaftMetrics<NodeId, Member> {
        self.raft.metrics().borrow().clone()
    }

    /// The members by kind: (disc, ram), names sorted.
    pub fn members(&self) -> (Vec<Member>, Vec<Member>) {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut disc = Vec::new();
        let mut ram = Vec::new();
        for (id, node) in membership.nodes() {
            if voters.contains(id) {
                disc.push(node.clone());
            } else {
                ram.push(node.clone());
            }
        }
        disc.sort();
        ram.sort();
        (disc, ram)
    }

    /// The leader's name, if one is known.
    pub fn leader(&self) -> Option<Member> {
        let m = self.metrics();
        let leader = m.current_leader?;
        m.membership_config.membership().get_node(&leader).cloned()
    }

    /// The refusal text: which majority is missing.
    fn majority_text(&self) -> String {
        let (disc, _) = self.members();
        let needed = disc.len() / 2 + 1;
        let names: Vec<&str> = disc.iter().map(|d| d.name.as_str()).collect();
        format!(
            "definition change refused: no majority of disc nodes is reachable from node {} ({} of {} disc nodes needed: {})",
            self.me.name,
            needed,
            disc.len(),
            names.join(", ")
        )
    }

    /// Why a definition change cannot be committed now, if it cannot.
    fn no_majority(&self) -> Option<String> {
        let m = self.metrics();
        let voters = m.membership_config.membership().voter_ids().count();
        match m.current_leader {
            None => Some(self.majority_text()),
            Some(l) if l == self.id => {
                let stale = voters > 1
                    && m.millis_since_quorum_ack
                        .is_none_or(|ms| ms > QUORUM_STALE_MS);
                stale.then(|| self.majority_text())
            }
            Some(_) => {
                // A follower that has not heard from its leader lately has lost it (the
                // leader or the majority is gone), even before the election timeout says so.
                let last = *self
                    .last_leader_contact
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let stale = last.is_none_or(|t| t.elapsed().as_millis() as u64 > QUORUM_STALE_MS);
                stale.then(|| self.majority_text())
            }
        }
    }

    /// True on the leader while it hears from a majority.
    pub fn is_leader(&self) -> bool {
        self.metrics().current_leader == Some(self.id) && self.no_majority().is_none()
    }

    /// A short sentence on what the node waits for, if it cannot change definitions now.
    pub fn waiting_for(&self) -> Option<String> {
        self.no_majority()
    }

    /// Executes a definition change through the log: on the leader, or forwarded to it.
    /// Fails at once without a majority, and after a few seconds at most.
    pub async fn write(&self, req: Request) -> Result<(), ChannelError> {
        if let Some(reason) = self.no_majority() {
            return Err(ChannelError::new(ReplyCode::InternalError, reason));
        }
        let refused = |detail: String| {
            ChannelError::new(
                ReplyCode::InternalError,
                format!("{} ({detail})", self.majority_text()),
            )
        };
        // A change forwarded to a leader that another one replaces meanwhile (it was cut
        // off from the majority) goes to the new leader instead of waiting out the timeout.
        // (Had the old leader committed it just before, the new one has it too and applies
        // it again: a declaration is then equivalent, a deletion or a creation answers
        // as for a second request. Without the retry the client got a refusal either way.)
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        let resp = loop {
            if self.metrics().current_leader == Some(self.id) {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, self.raft.client_write(req)).await {
                    Ok(Ok(resp)) => break resp.data,
                    Ok(Err(e)) => return Err(refused(e.to_string())),
                    Err(_) => return Err(refused("timed out".into())),
                }
            }
            let m = self.metrics();
            let Some((leader_id, leader)) = m.current_leader.and_then(|id| {
                let node = m.membership_config.membership().get_node(&id).cloned();
                node.map(|n| (id, n))
            }) else {
                return Err(refused("no leader".into()));
            };
            let mut watch = self.raft.metrics();
            let replaced = async {
                loop {
                    if watch.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    let now = watch.borrow().current_leader;
                    if now.is_some() && now != Some(leader_id) {
                        return;
                    }
                }
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let addr = self.dial_addr(&leader);
            let call = network::peer_call(
                &addr,
                &self.cookie,
                &self.me.name,
                PeerOp::Write(req.clone()),
                left,
            );
            let r: Result<Response, crate::dist::ClientError> = tokio::select! {
                r = call => r,
                _ = replaced => {
                    tracing::info!(old = %leader.name, "leader replaced while a change was forwarded to it: forwarding to the new one");
                    continue;
                }
            };
            let resp = match r {
                Ok(resp) => resp,
                Err(crate::dist::ClientError::Remote(e)) => {
                    return Err(ChannelError::new(ReplyCode::InternalError, e.message))
                }
                Err(e) => return Err(refused(format!("leader {} unreachable: {e}", leader.name))),
            };
            // Read-your-writes: the change is in effect here too before the client hears.
            let applied = self
                .raft
                .wait(Some(WRITE_TIMEOUT))
                .applied_index_at_least(Some(resp.index), "forwarded change applied")
                .await;
            if applied.is_err() {
                return Err(refused("not applied on this node in time".into()));
            }
            break resp;
        };
        resp.into_result()
    }

    /// Runs a membership request on the leader (here, or forwarded). While the cluster
    /// elects a leader (the old one just stopped) the request is retried for a few seconds.
    pub async fn membership(&self, op: PeerOp) -> Result<(), RemoteError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let retry = |e: RemoteError| async move {
                if tokio::time::Instant::now() >= deadline {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(())
            };
            if self.metrics().current_leader == Some(self.id) {
                return self.membership_on_leader(op).await;
            }
            let Some(leader) = self.leader() else {
                retry(RemoteError::unavailable(format!(
                    "the cluster has no leader: no majority of disc nodes is reachable from node {}",
                    self.me.name
                )))
                .await?;
                continue;
            };
            let r = network::peer_call::<()>(
                &self.dial_addr(&leader),
                &self.cookie,
                &self.me.name,
                op.clone(),
                Duration::from_secs(30),
            )
            .await;
            match r {
                Ok(()) => return Ok(()),
                // The leader refused the request itself: final.
                Err(crate::dist::ClientError::Remote(r)) if r.code != 69 => return Err(r),
                Err(other) => {
                    retry(RemoteError::unavailable(format!(
                        "could not reach the leader {}: {other}",
                        leader.name
                    )))
                    .await?
                }
            }
        }
    }

    async fn membership_on_leader(&self, op: PeerOp) -> Result<(), RemoteError> {
        let fail = |e: &dyn std::fmt::Display| RemoteError::software(format!("{e}"));
        let (disc, ram_members) = self.members();
        let find = |name: &str| {
            disc.iter()
                .chain(ram_members.iter())
                .find(|m| m.name == name)
                .cloned()
        };
        match op {
            PeerOp::Join { member, ram } => {
                let id = node_id(&member.name);
                if let Some(existing) = find(&member.name) {
                    if existing.addr != member.addr {
                        // The node moved: forget the old address first.
                        self.remove(&existing, &disc).await?;
                    }
                }
                tokio::time::timeout(
                    Duration::from_secs(20),
                    self.raft.add_learner(id, member.clone(), true),
                )
                .await
                .map_err(|_| {
                    RemoteError::software(format!(
                        "node {} did not catch up with the cluster in time",
                        member.name
                    ))
                })?
                .map_err(|e| fail(&e))?;
                let is_voter = self.members().0.iter().any(|m| m.name == member.name);
                if !ram && !is_voter {
                    self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                        .await?;
                } else if ram && is_voter {
                    self.demote(&member, &disc).await?;
                }
                tracing::info!(node = %member.name, ram, "node joined the cluster");
                Ok(())
            }
            PeerOp::Remove { name } => {
                let Some(member) = find(&name) else {
                    return Err(RemoteError::data(format!(
                        "Node {name} is not a member of the cluster"
                    )));
                };
                self.remove(&member, &disc).await?;
                tracing::info!(node = %name, "node removed from the cluster");
                Ok(())
            }
            PeerOp::SetType { name, ram } => {
                let Some(member) = find(&name) else {
                    return Err(RemoteError::data(format!(
                        "Node {name} is not a member of the cluster"
                    )));
                };
                let is_voter = disc.iter().any(|m| m.name == name);
                if ram && is_voter {
                    self.demote(&member, &disc).await
                } else if !ram && !is_voter {
                    self.change(
                        ChangeMembers::AddVoterIds(BTreeSet::from([node_id(&name)])),
                        false,
                    )
                    .await
                } else {
                    Ok(())
                }
            }
            _ => Err(RemoteError::usage("not a membership request")),
        }
    }

    async fn change(
        &self,
        change: ChangeMembers<NodeId, Member>,
        retain: bool,
    ) -> Result<(), RemoteError> {
        tokio::time::timeout(
            Duration::from_secs(20),
            self.raft.change_membership(change, retain),
        )
        .await
        .map_err(|_| {
            RemoteError::software(
                "the membership change was not committed in time (is a majority of disc nodes running?)",
            )
        })?
        .map_err(|e| RemoteError::software(format!("membership change failed: {e}")))?;
        Ok(())
    }

    fn last_disc_refusal(member: &Member) -> RemoteError {
        RemoteError::software(format!(
            "node {} is the only disc node of the cluster; the cluster refuses to lose its last disc node (make another node a disc node first)",
            member.name
        ))
    }

    async fn demote(&self, member: &Member, disc: &[Member]) -> Result<(), RemoteError> {
        if disc.len() == 1 && disc[0].name == member.name {
            return Err(Self::last_disc_refusal(member));
        }
        self.change(
            ChangeMembers::RemoveVoters(BTreeSet::from([node_id(&member.name)])),
            true,
        )
        .await
    }

    async fn remove(&self, member: &Member, disc: &[Member]) -> Result<(), RemoteError> {
        let id = node_id(&member.name);
        if disc.iter().any(|m| m.name == member.name) {
            if disc.len() == 1 {
                return Err(Self::last_disc_refusal(member));
            }
            self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await?;
        }
        if self.members().1.iter().any(|m| m.name == member.name) {
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await?;
        }
        Ok(())
    }

    /// Stops the Raft member (application stop).
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "the cluster member did not stop cleanly");
        }
    }

    /// Handles a Raft RPC from a peer.
    pub async fn rpc(&self, op: PeerOp) -> Result<Value, RemoteError> {
        let bad = |e: serde_json::Error| RemoteError::usage(format!("malformed Raft request: {e}"));
        let to = |v: serde_json::Result<Value>| v.map_err(|e| RemoteError::software(e.to_string()));
        match op {
            PeerOp::AppendEntries(v) => {
                let req = serde_json::from_value(v).map_err(bad)?;
                *self
                    .last_leader_contact
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
                to(serde_json::to_value(self.raft.append_entries(req).await))
            }
            PeerOp::Vote(v) => {
                let req = serde_json::from_value(v).map_err(bad)?;
                to(serde_json::to_value(self.raft.vote(req).await))
            }
            PeerOp::InstallSnapshot(v) => {
                let req = serde_json::from_value(v).map_err(bad)?;
                to(serde_json::to_value(self.raft.install_snapshot(req).await))
            }
            PeerOp::Write(req) => {
                // Only the leader commits; a stale forward is refused, not forwarded again.
                if self.metrics().current_leader != Some(self.id) {
                    return Err(RemoteError::unavailable(format!(
                        "node {} is not the leader",
                        self.me.name
                    )));
                }
                let resp: Response =
                    match tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(req)).await {
                        Ok(Ok(r)) => Response {
                            index: r.log_id.index,
                            ..r.data
                        },
                        Ok(Err(e)) => {
                            return Err(RemoteError::software(
                                self.no_majority().unwrap_or_else(|| e.to_string()),
                            ))
                        }
                        Err(_) => {
                            return Err(RemoteError::software(self.no_majority().unwrap_or_else(
                                || "definition change refused: not committed in time".into(),
                            )))
                        }
                    };
                to(serde_json::to_value(resp))
            }
            op @ (PeerOp::Join { .. } | PeerOp::Remove { .. } | PeerOp::SetType { .. }) => {
                self.membership(op).await?;
                Ok(Value::Null)
            }
            PeerOp::Ping => Ok(json!({"running": true})),
            PeerOp::Queue(_) => Err(RemoteError::usage(
                "queue operations are served by the node",
            )),
        }
    }
}
