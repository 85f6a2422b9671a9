//! A raw AMQP client for tests that send bytes no real client would: it speaks just enough
//! of the handshake to open a connection and a channel, then lets a test write anything and
//! read back the frames the server sends.

use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_amqp::frame::{decode_frame, encode_method, PROTOCOL_HEADER};
use warren_amqp::{connection, AMQPClass, Frame, LongString};

/// A TCP connection to the broker with a frame decoder.
pub struct RawClient {
    /// The socket, for tests that write bytes directly.
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawClient {
    /// Opens a TCP connection (no bytes sent yet).
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the broker");
        RawClient {
            stream,
            buf: BytesMut::with_capacity(8192),
        }
    }

    /// Connects and completes the handshake as guest on vhost `/`, with heartbeats off.
    pub async fn open(addr: SocketAddr) -> RawClient {
        let mut c = Self::connect(addr).await;
        c.write(PROTOCOL_HEADER).await;
        let start = c.read_frame().await.expect("connection.start");
        assert!(
            matches!(start, Frame::Method(0, ref m) if matches!(**m, AMQPClass::Connection(connection::AMQPMethod::Start(_)))),
            "got {start:?}"
        );
        c.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: Default::default(),
                mechanism: "PLAIN".into(),
                response: LongString::from(b"\0guest\0guest".to_vec()),
                locale: "en_US".into(),
            })),
        )
        .await;
        let tune = c.read_frame().await.expect("connection.tune");
        let frame_max = match tune {
            Frame::Method(0, m) => match *m {
                AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t.frame_max,
                other => panic!("expected tune, got {other:?}"),
            },
            other => panic!("expected tune, got {other:?}"),
        };
        c.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 2047,
                frame_max,
                heartbeat: 0,
            })),
        )
        .await;
        c.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        )
        .await;
        let ok = c.read_frame().await.expect("connection.open-ok");
        assert!(
            matches!(ok, Frame::Method(0, ref m) if matches!(**m, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))),
            "got {ok:?}"
        );
        c
    }

    /// Writes bytes as they are.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("write to the broker");
    }

    /// Encodes and writes one method frame.
    pub async fn send_method(&mut self, channel: u16, method: AMQPClass) {
        let mut out = BytesMut::new();
        encode_method(&mut out, channel, &method).expect("encode method");
        self.write(&out).await;
    }

    /// Reads the next frame, or `None` when the server closed the socket (or 5 s passed).
    pub async fn read_frame(&mut self) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match decode_frame(&mut self.buf, 0) {
                Ok(Some(f)) => return Some(f),
                Ok(None) => {}
                Err(e) => panic!("server sent an undecodable frame: {e}"),
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads raw bytes until the server closes the socket or 5 s pass.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let mut all = self.buf.split().to_vec();
        let mut chunk = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await
        {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&chunk[..n]);
        }
        all
    }

    /// Reads frames until a `connection.close` arrives; returns its code and text.
    pub async fn expect_connection_close(&mut self) -> (u16, String) {
        while let Some(frame) = self.read_frame().await {
            if let Frame::Method(0, m) = frame {
                if let AMQPClass::Connection(connection::AMQPMethod::Close(c)) = *m {
                    return (c.reply_code, c.reply_text.to_string());
                }
            }
        }
        panic!("the server closed the socket without connection.close");
    }

    /// Reads frames until a `channel.close` on `channel` arrives; returns its code and text.
    pub async fn expect_channel_close(&mut self, channel: u16) -> (u16, String) {
        while let Some(frame) = self.read_frame().await {
            if let Frame::Method(ch, m) = frame {
                if ch == channel {
                    if let AMQPClass::Channel(warren_amqp::channel::AMQPMethod::Close(c)) = *m {
                        return (c.reply_code, c.reply_text.to_string());
                    }
                }
            }
        }
        panic!("no channel.close on channel {channel}");
    }
}
