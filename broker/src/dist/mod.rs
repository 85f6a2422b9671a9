//! The distribution port: one authenticated, framed channel per peer, for warrenctl today
//! and for other nodes of a cluster later (Raft RPCs, forwarded queue operations).
//!
//! `protocol` is the wire format, `auth` the cookie and the mutual HMAC challenge-response
//! (the cookie never crosses the wire), `ctl` the admin commands. [`run`] serves the port;
//! [`Client`] is the other end, used by warrenctl. With `[dist_tls]` configured every
//! connection is mutual TLS (both ends present a certificate signed by the CA) and the
//! cookie handshake runs inside it: [`open_stream`] and [`accept_stream`] are the one place
//! a connection is opened or accepted, returning a [`DistStream`] either way.

pub mod auth;
pub mod ctl;
pub mod protocol;

use crate::cluster::node::Node;
use auth::Cookie;
use protocol::{
    b64, read_frame, unb64, write_frame, FrameError, Handshake, Op, RemoteError, Request, Response,
    Role, PROTOCOL_VERSION,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A distribution connection's byte stream: plain TCP, or TLS over it.
pub trait DistStream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> DistStream for T {}

/// A boxed [`DistStream`], so the framing and everything above it stay generic.
pub type BoxedStream = Box<dyn DistStream>;

fn load_pem_certs(
    what: &str,
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("dist_tls.{what}: failed to load {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "dist_tls.{what}: no certificate in {}",
            path.display()
        ));
    }
    Ok(certs)
}

fn load_identity(
    cfg: &crate::config::DistTlsConfig,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        Arc<rustls::RootCertStore>,
    ),
    String,
> {
    let certs = load_pem_certs("certfile", &cfg.certfile)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.keyfile).map_err(|e| {
        format!(
            "dist_tls.keyfile: failed to load {}: {e}",
            cfg.keyfile.display()
        )
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for c in load_pem_certs("cacertfile", &cfg.cacertfile)? {
        roots
            .add(c)
            .map_err(|e| format!("dist_tls.cacertfile: {}: {e}", cfg.cacertfile.display()))?;
    }
    Ok((certs, key, Arc::new(roots)))
}

/// The listener's TLS configuration: it presents its certificate and requires one from
/// every peer, verified against the CA (RabbitMQ's `verify_peer` with
/// `fail_if_no_peer_cert`).
pub fn tls_acceptor(cfg: &crate::config::DistTlsConfig) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (certs, key, roots) = load_identity(cfg)?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("dist_tls: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("dist_tls: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("dist_tls: certfile and keyfile: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The connecting side's TLS configuration (nodes and warrenctl): it presents its
/// certificate and verifies the node's against the CA. Host names are not checked, as
/// nodes are often reached by address: the CA vouches for every member (RabbitMQ's
/// inter-node TLS guide disables server name checks the same way).
pub fn tls_connector(
    cfg: &crate::config::DistTlsConfig,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (certs, key, roots) = load_identity(cfg)?;
    let webpki =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("dist_tls: {e}"))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("dist_tls: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CaOnlyVerifier(webpki)))
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("dist_tls: certfile and keyfile: {e}"))?;
    Ok(Arc::new(config))
}

/// Verifies a node's certificate chain against the CA, ignoring the name it was reached by.
#[derive(Debug)]
struct CaOnlyVerifier(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for CaOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// How long an idle distribution connection waits before probing its peer.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// Probes 1 s apart; after this many unanswered the connection is closed.
const KEEPALIVE_PROBES: u32 = 5;
/// How long sent data may stay unacknowledged before the connection is closed.
const UNACKED_LIMIT: Duration = Duration::from_secs(10);

/// Makes a distribution connection notice a peer that vanished (its machine stopped, the
/// network between them cut) within about 10 s, idle or not, instead of when TCP gives up
/// after many minutes: Raft already notices through its heartbeats, but a queue link
/// carries nothing while its queues are idle. (A peer process that exits is noticed at
/// once: its OS closes the connection.)
fn detect_dead_peer(socket: &TcpStream) {
    let s = socket2::SockRef::from(socket);
    let probes = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(Duration::from_secs(1))
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = s.set_tcp_keepalive(&probes) {
        tracing::debug!(error = %e, "could not enable TCP keepalive");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = s.set_tcp_user_timeout(Some(UNACKED_LIMIT)) {
        tracing::debug!(error = %e, "could not set TCP_USER_TIMEOUT");
    }
}

/// Opens a distribution connection to `addr`: TLS when `tls` is given, plain otherwise.
pub async fn open_stream(
    addr: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<BoxedStream, ClientError> {
    let socket = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|e| ClientError::Connect(format!("could not connect to {addr}: {e}")))?;
    let _ = socket.set_nodelay(true);
    detect_dead_peer(&socket);
    let Some(tls) = tls else {
        return Ok(Box::new(socket));
    };
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsConnector::from(tls.clone()).connect(name, socket),
    )
    .await
    .map_err(|_| ClientError::Timeout)?
    .map_err(|e| ClientError::Refused(format!("TLS handshake with {addr} failed: {e}")))?;
    Ok(Box::new(stream))
}

/// Accepts a distribution connection: the TLS handshake first when the port runs TLS (a
/// peer without a certificate signed by the CA is refused here).
pub async fn accept_stream(
    socket: TcpStream,
    tls: Option<&TlsAcceptor>,
) -> std::io::Result<BoxedStream> {
    let _ = socket.set_nodelay(true);
    detect_dead_peer(&socket);
    let Some(acceptor) = tls else {
        return Ok(Box::new(socket));
    };
    // A client without TLS waits for our challenge and sends nothing: close soon, so it
    // hears the port wants TLS instead of waiting for its own timeout.
    let mut first = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(3), socket.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => {
            return Err(std::io::Error::other(
                "the peer sent no TLS handshake (it does not use dist_tls)",
            ))
        }
    }
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
    Ok(Box::new(stream))
}

/// How long a peer has to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the distribution port until the node shuts down.
pub async fn run(node: Arc<Node>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    let cookie = node.identity.cookie.clone();
    let tls = tls.map(Arc::new);
    loop {
        let accepted = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((socket, peer)) => {
                let (node, cookie, tls) = (node.clone(), cookie.clone(), tls.clone());
                tokio::spawn(async move {
                    let socket = match accept_stream(socket, tls.as_deref()).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "distribution connection refused: TLS handshake failed (the peer needs a certificate signed by dist_tls.cacertfile)");
                            return;
                        }
                    };
                    if let Err(e) = serve(node, socket, peer, &cookie).await {
                        tracing::debug!(%peer, error = %e, "distribution connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "failed to accept a distribution connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(
    shared: Arc<Node>,
    mut socket: BoxedStream,
    peer: SocketAddr,
    cookie: &Cookie,
) -> Result<(), FrameError> {
    let node = shared.name().to_string();
    let server_nonce = auth::nonce();
    write_frame(
        &mut socket,
        &Handshake::Challenge {
            protocol: PROTOCOL_VERSION,
            node: node.clone(),
            nonce: b64(&server_nonce),
        },
    )
    .await?;
    let answer: Handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut socket))
        .await
        .map_err(|_| FrameError::Malformed("handshake timed out".into()))??;
    let Handshake::Response {
        protocol,
        role,
        name,
        nonce,
        proof,
    } = answer
    else {
        return Err(FrameError::Malformed(
            "expected the handshake response".into(),
        ));
    };
    let refuse = |reason: String| Handshake::Refused { reason };
    if protocol != PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {protocol} is not supported (this node speaks {PROTOCOL_VERSION})"
        );
        write_frame(&mut socket, &refuse(reason)).await?;
        return Ok(());
    }
    let (Some(client_nonce), Some(proof)) = (unb64(&nonce), unb64(&proof)) else {
        write_frame(&mut socket, &refuse("malformed handshake".into())).await?;
        return Ok(());
    };
    if !auth::verify_client_proof(
        cookie,
        &server_nonce,
        &client_nonce,
        role.name(),
        &name,
        &proof,
    ) {
        tracing::warn!(%peer, %name, role = role.name(), "distribution connection refused: the cookie does not match");
        let reason = format!("authentication failed: the cookie does not match node {node}'s");
        write_frame(&mut socket, &refuse(reason)).await?;
        return Ok(());
    }
    let proof = auth::server_proof(cookie, &server_nonce, &client_nonce, &node);
    write_frame(&mut socket, &Handshake::Accepted { proof: b64(&proof) }).await?;
    tracing::debug!(%peer, %name, role = role.name(), "distribution peer authenticated");
    if role == Role::QueueLink {
        // From here on the connection speaks the queue link's binary frames.
        crate::cluster::link::serve(&shared, socket, name).await;
        return Ok(());
    }
    loop {
        let request: Request = tokio::select! {
            r = read_frame(&mut socket) => match r {
                Ok(r) => r,
                Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            },
            _ = shared.stopped.cancelled() => return Ok(()),
        };
        let stop = matches!(request.op, Op::Ctl(ctl::CtlOp::Stop));
        let result = match (role, request.op) {
            (_, Op::Ctl(ctl::CtlOp::Stop)) => Ok(ctl::Reply::Done),
            (Role::Ctl | Role::Node | Role::QueueLink, Op::Ctl(op)) => shared.handle_ctl(op).await,
            (Role::Node, Op::Peer(op)) => shared.handle_peer(op).await,
            (Role::Ctl | Role::QueueLink, Op::Peer(_)) => Err(RemoteError::usage(
                "peer requests are only accepted from cluster nodes",
            )),
        };
        let failed = result.is_err();
        write_frame(
            &mut socket,
            &Response {
                id: request.id,
                result,
            },
        )
        .await?;
        if stop && !failed {
            // The same path as SIGTERM; the client sees this socket close once the node
            // has stopped (or the process has exited).
            tracing::info!(%peer, "stop requested over the distribution port");
            shared.shutdown.cancel();
            shared.stopped.cancelled().await;
            return Ok(());
        }
    }
}

/// Errors of a distribution client.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The node could not be reached.
    Connect(String),
    /// The node refused the handshake (wrong cookie, protocol mismatch).
    Refused(String),
    /// The node's proof did not verify: it does not hold our cookie.
    BadServerProof,
    /// The connection broke or the peer spoke something else.
    Protocol(String),
    /// The node refused or failed the request.
    Remote(RemoteError),
    /// No answer in time.
    Timeout,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "{e}"),
            ClientError::Refused(r) => write!(f, "the node refused the connection: {r}"),
            ClientError::BadServerProof => write!(
                f,
                "the node could not prove it holds the same cookie; refusing to talk to it"
            ),
            ClientError::Protocol(e) => write!(f, "distribution protocol error: {e}"),
            ClientError::Remote(e) => write!(f, "{}", e.message),
            ClientError::Timeout => write!(f, "the node did not answer in time"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

/// An authenticated connection to a node's distribution port.
pub struct Client {
    socket: BoxedStream,
    next_id: u64,
    node: String,
}

impl Client {
    /// Connects and authenticates (mutually: the node proves it holds the cookie too).
    pub async fn connect(
        addr: SocketAddr,
        cookie: &Cookie,
        role: Role,
        name: &str,
    ) -> Result<Client, ClientError> {
        let tls = cookie.tls().is_some();
        let mut socket = open_stream(addr, cookie.tls()).await?;
        let handshake = async {
            let challenge: Handshake = read_frame(&mut socket).await.map_err(|e| {
                // A node refuses a TLS client's certificate (or a plain client on a TLS
                // port) by closing the connection before its challenge.
                if tls {
                    ClientError::Refused(format!(
                        "the node refused this end's TLS certificate ({e}); it must be signed by the node's dist_tls.cacertfile"
                    ))
                } else {
                    ClientError::Refused(format!(
                        "the node closed the connection before its challenge ({e}); does it require TLS on its distribution port (dist_tls)?"
                    ))
                }
            })?;
            let Handshake::Challenge {
                protocol: _,
                node,
                nonce,
            } = challenge
            else {
                return Err(ClientError::Protocol(
                    "expected the node's challenge".into(),
                ));
            };
            let server_nonce =
                unb64(&nonce).ok_or_else(|| ClientError::Protocol("malformed challenge".into()))?;
            let client_nonce = auth::nonce();
            let proof = auth::client_proof(cookie, &server_nonce, &client_nonce, role.name(), name);
            write_frame(
                &mut socket,
                &Handshake::Response {
                    protocol: PROTOCOL_VERSION,
                    role,
                    name: name.to_string(),
                    nonce: b64(&client_nonce),
                    proof: b64(&proof),
                },
            )
            .await?;
            match read_frame::<_, Handshake>(&mut socket).await? {
                Handshake::Accepted { proof } => {
                    let ok = unb64(&proof).is_some_and(|p| {
                        auth::verify_server_proof(cookie, &server_nonce, &client_nonce, &node, &p)
                    });
                    if !ok {
                        return Err(ClientError::BadServerProof);
                    }
                    Ok(node)
                }
                Handshake::Refused { reason } => Err(ClientError::Refused(reason)),
                _ => Err(ClientError::Protocol("unexpected handshake message".into())),
            }
        };
        let node = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| ClientError::Timeout)??;
        Ok(Client {
            socket,
            next_id: 1,
            node,
        })
    }

    /// The authenticated connection itself, for a peer that switches to another framing
    /// after the handshake (`Role::QueueLink`).
    pub fn into_stream(self) -> BoxedStream {
        self.socket
    }

    /// The name of the node this client is connected to.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Sends an admin command and waits for its answer, up to `timeout`.
    pub async fn call(
        &mut self,
        op: ctl::CtlOp,
        timeout: Duration,
    ) -> Result<ctl::Reply, ClientError> {
        self.request(Op::Ctl(op), timeout).await
    }

    /// Sends a request and waits for its answer, up to `timeout`.
    pub async fn request(&mut self, op: Op, timeout: Duration) -> Result<ctl::Reply, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let exchange = async {
            write_frame(&mut self.socket, &Request { id, op }).await?;
            loop {
                let r: Response = read_frame(&mut self.socket).await?;
                if r.id == id {
                    return r.result.map_err(ClientError::Remote);
                }
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Waits until the node closes the connection (after `stop`), up to `timeout`.
    pub async fn wait_closed(&mut self, timeout: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        tokio::time::timeout(timeout, async {
            loop {
                match self.socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn distribution_sockets_probe_idle_peers_and_limit_unacked_data() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (client, (server, _)) = (client.expect("connect"), accepted.expect("accept"));
        for socket in [&client, &server] {
            detect_dead_peer(socket);
            let s = socket2::SockRef::from(socket);
            assert!(s.keepalive().expect("SO_KEEPALIVE"));
            assert_eq!(
                s.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
                KEEPALIVE_IDLE
            );
            assert_eq!(
                s.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
                Duration::from_secs(1)
            );
            assert_eq!(
                s.tcp_keepalive_retries().expect("TCP_KEEPCNT"),
                KEEPALIVE_PROBES
            );
            #[cfg(target_os = "linux")]
            assert_eq!(
                s.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
                Some(UNACKED_LIMIT)
            );
        }
    }
}
