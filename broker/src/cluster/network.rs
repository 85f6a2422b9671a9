//! Raft's transport: RPCs to another node over its distribution port, on a connection
//! authenticated with the cookie in the `node` role, one connection per Raft peer stream
//! (reconnected on failure). A peer that cannot be reached is reported `Unreachable`, so
//! openraft backs off instead of spinning.

// The error types are openraft's (its storage and network traits return them).
#![allow(clippy::result_large_err)]

use super::{Member, NodeId, PeerOp, TypeConfig};
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
    /// The cluster's cookie.
    pub cookie: Arc<Cookie>,
    /// This node's name (sent in the handshake).
    pub me: String,
}

/// One Raft stream to one peer.
pub struct PeerConn {
    target: NodeId,
    member: Member,
    cookie: Arc<Cookie>,
    me: String,
    client: Option<Client>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConn {
        PeerConn {
            target,
            member: node.clone(),
            cookie: self.cookie.clone(),
            me: self.me.clone(),
            client: None,
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
        if self.client.is_none() {
            match tokio::time::timeout(ttl, connect_peer(&self.member.addr, &self.cookie, &self.me))
                .await
            {
                Ok(Ok(c)) => self.client = Some(c),
                Ok(Err(e)) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
                Err(_) => {
                    return Err(RPCError::Unreachable(Unreachable::new(
                        &ClientError::Timeout,
                    )))
                }
            }
        }
        let client = self.client.as_mut().expect("connected just above");
        match client.request(Op::Peer(op), ttl).await {
            Ok(reply) => match decode::<Result<T, RaftError<NodeId, E>>>(reply) {
                Ok(r) => Ok(r),
                Err(e) => {
                    self.client = None;
                    Err(RPCError::Network(NetworkError::new(&e)))
                }
            },
            Err(e) => {
                // The connection's state is unknown after an error: start afresh next time.
                self.client = None;
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
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
