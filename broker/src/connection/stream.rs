//! The byte stream under a client connection: plain TCP or TLS over TCP, split into a read
//! half (the connection task) and a write half (the writer task). An enum rather than a
//! boxed trait object, so a plain TCP connection keeps tokio's lock-free owned halves and
//! pays one match per read or write.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The read half of a client connection.
#[derive(Debug)]
pub enum Reader {
    /// Plain TCP.
    Tcp(OwnedReadHalf),
    /// TLS.
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// The write half of a client connection.
#[derive(Debug)]
pub enum Writer {
    /// Plain TCP.
    Tcp(OwnedWriteHalf),
    /// TLS.
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

/// What TLS settled for a connection.
#[derive(Clone, Debug, Default)]
pub struct TlsSession {
    /// `TLSv1.3` or `TLSv1.2`.
    pub protocol: String,
    /// The cipher suite.
    pub cipher: String,
    /// The client's certificate, when it presented one (it was verified against the CA).
    pub peer_cert: Option<crate::tls::PeerCertificate>,
}

/// An accepted client connection, before the AMQP handshake.
#[derive(Debug)]
pub struct Transport {
    /// Read half.
    pub reader: Reader,
    /// Write half.
    pub writer: Writer,
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// Set for an AMQPS connection.
    pub tls: Option<TlsSession>,
}

impl Transport {
    /// A plain TCP connection.
    pub fn tcp(socket: TcpStream, peer: SocketAddr) -> Transport {
        let local = socket.local_addr().unwrap_or(peer);
        let (r, w) = socket.into_split();
        Transport {
            reader: Reader::Tcp(r),
            writer: Writer::Tcp(w),
            peer,
            local,
            tls: None,
        }
    }

    /// A TLS connection whose TLS handshake is complete.
    pub fn tls(stream: TlsStream<TcpStream>, peer: SocketAddr, session: TlsSession) -> Transport {
        let local = stream.get_ref().0.local_addr().unwrap_or(peer);
        let (r, w) = tokio::io::split(stream);
        Transport {
            reader: Reader::Tls(r),
            writer: Writer::Tls(w),
            peer,
            local,
            tls: Some(session),
        }
    }
}

impl AsyncRead for Reader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Reader::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            Reader::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            Writer::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_flush(cx),
            Writer::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            Writer::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Writer::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Writer::Tcp(w) => w.is_write_vectored(),
            Writer::Tls(w) => w.is_write_vectored(),
        }
    }
}
