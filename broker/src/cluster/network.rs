//! Raft's transport: RPCs to another node over its distribution port, on a connection
//! authenticated with the cookie in the `node` role, one connection per Raft peer stream
//! (reconnected on failure). A peer that cannot be reached is reported `Unreachable`, so
//! openraft backs off instead of spinning.
//!
//! openraft gives an append-entries RPC one heartbeat interval (150 ms) and drops it after
//! that. Opening a connection takes two round trips (the cookie handshake), more than that
//! on a slow link, so a connection is opened by a task of its own that outlives the RPC
//! which started it: the next RPC finds it open. A connection whose RPC was dropped
//! mid-exchange is closed (its stream position is unknown).

// The error types are openraft's (its storage and network traits return them).
#![allow(clippy::result_large_err)]

use super::{Identity, Member, NodeId, PeerOp, TypeConfig};
use crate::dist::auth::Cookie;
use crate::dist::ctl::Reply;
use crate::dist::protocol::{Op, Role};
use crate::dist::{Client, ClientError};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError as RaftRemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// Opens peer connections for Raft.
pub struct Network {
    /// This node: its name (sent in the handshake), the cookie, the peers' addresses.
    pub identity: Identity,
}

/// One Raft stream to one peer.
pub struct PeerConn {
    target: NodeId,
    member: Member,
    /// Where the peer is dialed (`Identity::dial_addr`).
    addr: String,
    cookie: Arc<Cookie>,
    me: String,
    client: Option<Client>,
    /// A connection being opened (see the module comment).
    connecting: Option<tokio::task::JoinHandle<Result<Client, ClientError>>>,
}

/// How long opening a peer connection may take, handshake included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Drop for PeerConn {
    fn drop(&mut self) {
        if let Some(task) = self.connecting.take() {
            task.abort();
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConn {
        PeerConn {
            target,
            member: node.clone(),
            addr: self.identity.dial_addr(node),
            cookie: self.identity.cookie.clone(),
            me: self.identity.me.name.clone(),
            client: None,
            connecting: None,
        }
    }
}

/// Connects to a member's distribution port as a peer node.
pub async fn connect_peer(addr: &str, cookie: &Cookie, me: &str) -> Result<Client, ClientError> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| ClientError::Connect(format!("could not resolve {addr}: {e}")))?
        .collect();
    let mut last = ClientError::Connect(format!("no address for {addr}"));
    for a in addrs {
        match Client::connect(a, cookie, Role::Node, me).await {
            Ok(c) => return Ok(c),
            Err(e @ ClientError::Connect(_)) | Err(e @ ClientError::Timeout) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Sends one peer request on a fresh connection and decodes the answer.
pub async fn peer_call<T: DeserializeOwned>(
    addr: &str,
    cookie: &Cookie,
    me: &str,
    op: PeerOp,
    timeout: Duration,
) -> Result<T, ClientError> {
    let mut client = tokio::time::timeout(timeout, connect_peer(addr, cookie, me))
        .await
        .map_err(|_| ClientError::Timeout)??;
    decode(client.request(Op::Peer(op), timeout).await?)
}

/// Decodes a peer answer (a JSON document).
pub fn decode<T: DeserializeOwned>(reply: Reply) -> Result<T, ClientError> {
    match reply {
        Reply::Document(v) => serde_json::from_value(v)
            .map_err(|e| ClientError::Protocol(format!("unexpected peer answer: {e}"))),
        other => Err(ClientError::Protocol(format!(
            "unexpected peer answer: {other:?}"
        ))),
    }
}

impl PeerConn {
    async fn call<T: DeserializeOwned, E: std::error::Error>(
        &mut self,
        op: PeerOp,
        option: &RPCOption,
    ) -> Result<Result<T, RaftError<NodeId, E>>, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        RaftError<NodeId, E>: DeserializeOwned,
    {
        let ttl = option.hard_ttl();
        let mut client = match self.client.take() {
            Some(c) => c,
            None => {
                let task = self.connecting.get_or_insert_with(|| {
                    let (addr, cookie, me) =
                        (self.addr.clone(), self.cookie.clone(), self.me.clone());
                    tokio::spawn(async move {
                        tokio::time::timeout(CONNECT_TIMEOUT, connect_peer(&addr, &cookie, &me))
                            .await
                            .map_err(|_| ClientError::Timeout)?
                    })
                });
                // Waiting on `&mut JoinHandle` leaves the task running when this RPC is
                // dropped or times out.
                let joined = match tokio::time::timeout(ttl, task).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        return Err(RPCError::Unreachable(Unreachable::new(
                            &ClientError::Timeout,
                        )))
                    }
                };
                self.connecting = None;
                match joined {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
                    Err(e) => {
                        return Err(RPCError::Unreachable(Unreachable::new(
                            &ClientError::Connect(format!("connecting failed: {e}")),
                        )))
                    }
                }
            }
        };
        // Taken out while in use: if this RPC is dropped mid-exchange, so is the connection.
        match client.request(Op::Peer(op), ttl).await {
            Ok(reply) => match decode::<Result<T, RaftError<NodeId, E>>>(reply) {
                Ok(r) => {
                    self.client = Some(client);
                    Ok(r)
                }
                Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
            },
            // The connection's state is unknown after an error: start afresh next time.
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(&e))),
        }
    }

    fn remote<T, E: std::error::Error>(
        &self,
        r: Result<T, RaftError<NodeId, E>>,
    ) -> Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>> {
        r.map_err(|e| {
            RPCError::RemoteError(RaftRemoteError::new_with_node(
                self.target,
                self.member.clone(),
                e,
            ))
        })
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let r = self
            .call(PeerOp::AppendEntries(to_json(&rpc)), &option)
            .await?;
        self.remote(r)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let r = self
            .call(PeerOp::InstallSnapshot(to_json(&rpc)), &option)
            .await?;
        self.remote(r)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let r = self.call(PeerOp::Vote(to_json(&rpc)), &option).await?;
        self.remote(r)
    }
}
