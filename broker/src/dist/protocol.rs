//! The distribution protocol's wire format: frames of a 4-byte big-endian length followed
//! by a JSON message, the handshake messages, and the request/response envelope.
//!
//! A session: the server sends a [`Handshake::Challenge`]; the client answers with
//! [`Handshake::Response`] (its role, name, nonce and proof); the server replies
//! [`Handshake::Accepted`] with its own proof, or [`Handshake::Refused`] and closes. Then the
//! client sends [`Request`]s and the server answers each with a [`Response`] carrying the
//! same id. Roles: `ctl` (warrenctl) today; `node` (another cluster member) will carry Raft
//! and queue traffic over the same framing.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol revision both ends must speak.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame either end accepts (a definitions import can be large).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Who is connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The admin CLI.
    Ctl,
    /// Another node of the cluster.
    Node,
    /// Another node's queue link: after the handshake the connection carries the binary
    /// frames of `cluster::link` (publishes, deliveries, acks of queues homed here).
    QueueLink,
}

impl Role {
    /// The name used in proofs.
    pub fn name(self) -> &'static str {
        match self {
            Role::Ctl => "ctl",
            Role::Node => "node",
            Role::QueueLink => "queue_link",
        }
    }
}

/// The handshake messages.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Handshake {
    /// Server to client, first: who the node is and its nonce (base64).
    Challenge {
        /// The server's protocol revision.
        protocol: u32,
        /// The node's name.
        node: String,
        /// The server's nonce.
        nonce: String,
    },
    /// Client to server: its identity, nonce and proof.
    Response {
        /// The client's protocol revision.
        protocol: u32,
        /// What it is.
        role: Role,
        /// Its name (a node name, or `warrenctl-<pid>`).
        name: String,
        /// The client's nonce (base64).
        nonce: String,
        /// HMAC proof (base64), see `auth::client_proof`.
        proof: String,
    },
    /// Server to client: authenticated; the server's own proof (base64).
    Accepted {
        /// See `auth::server_proof`.
        proof: String,
    },
    /// Server to client: refused, then the server closes.
    Refused {
        /// Why.
        reason: String,
    },
}

/// A request from an authenticated client.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    /// Echoed in the response.
    pub id: u64,
    /// What to do.
    pub op: Op,
}

/// What a request asks for, by role.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Op {
    /// An admin command.
    Ctl(super::ctl::CtlOp),
    /// A request from another node (Raft RPCs, forwarded changes, membership).
    Peer(crate::cluster::PeerOp),
}

/// The answer to a request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// What happened.
    pub result: Result<super::ctl::Reply, RemoteError>,
}

/// A refused or failed request, with the exit code warrenctl uses (rabbitmqctl's codes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    /// 64 usage, 65 bad data, 67 no such user, 69 unavailable, 70 internal error.
    pub code: i32,
    /// What went wrong.
    pub message: String,
}

impl RemoteError {
    /// Bad data in the request (65, EX_DATAERR).
    pub fn data(message: impl Into<String>) -> Self {
        RemoteError {
            code: 65,
            message: message.into(),
        }
    }

    /// A user that does not exist (67, EX_NOUSER).
    pub fn no_user(message: impl Into<String>) -> Self {
        RemoteError {
            code: 67,
            message: message.into(),
        }
    }

    /// Something the request needs does not exist (69, EX_UNAVAILABLE).
    pub fn unavailable(message: impl Into<String>) -> Self {
        RemoteError {
            code: 69,
            message: message.into(),
        }
    }

    /// An internal failure or a conflict (70, EX_SOFTWARE).
    pub fn software(message: impl Into<String>) -> Self {
        RemoteError {
            code: 70,
            message: message.into(),
        }
    }

    /// A malformed request (64, EX_USAGE).
    pub fn usage(message: impl Into<String>) -> Self {
        RemoteError {
            code: 64,
            message: message.into(),
        }
    }
}

/// Errors reading or writing frames.
#[derive(Debug)]
#[non_exhaustive]
pub enum FrameError {
    /// The socket failed or closed.
    Io(std::io::Error),
    /// A frame was larger than [`MAX_FRAME`].
    TooLarge(usize),
    /// A frame did not hold the expected message.
    Malformed(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::TooLarge(n) => {
                write!(f, "frame of {n} bytes exceeds the limit of {MAX_FRAME}")
            }
            FrameError::Malformed(e) => write!(f, "malformed message: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Writes one message as a frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame and decodes its message.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Base64 (standard alphabet) for nonces and proofs.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes base64, or None.
pub fn unb64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}
