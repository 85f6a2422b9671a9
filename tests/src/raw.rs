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

    /// Opens a TCP connection from a given local address (no bytes sent yet).
    pub async fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(SocketAddr::new(local, 0))
            .expect("bind the local address");
        let stream = socket.connect(addr).await.expect("connect to the broker");
        RawClient {
            stream,
            buf: BytesMut::with_capacity(8192),
        }
    }

    /// Connects and completes the handshake as guest on vhost `/`, with heartbeats off.
    pub async fn open(addr: SocketAddr) -> RawClient {
        Self::open_as(addr, "guest", "guest", "/").await
    }

    /// Connects and completes the handshake as `user` on `vhost`, with heartbeats off.
    pub async fn open_as(addr: SocketAddr, user: &str, pass: &str, vhost: &str) -> RawClient {
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
                response: LongString::from(format!("\0{user}\0{pass}").into_bytes()),
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
                virtual_host: vhost.into(),
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

/// What one read from the socket produced.
#[derive(Debug)]
pub enum Read {
    /// A whole frame.
    Frame(Frame),
    /// The server closed (or reset) the connection.
    Closed,
    /// Nothing arrived in time.
    TimedOut,
}

/// The bytes of one frame: type, channel, size, `payload` and the frame-end octet.
pub fn frame_bytes(frame_type: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(frame_type);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(warren_amqp::frame::FRAME_END);
    out
}

/// The bytes of one method frame.
pub fn method_bytes(channel: u16, method: &AMQPClass) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_method(&mut out, channel, method).expect("encode method");
    out.to_vec()
}

/// The bytes of a content header frame of class basic with no properties.
pub fn header_bytes(channel: u16, body_size: u64) -> Vec<u8> {
    let mut out = BytesMut::new();
    warren_amqp::frame::encode_header(&mut out, channel, body_size, &[0, 0]);
    out.to_vec()
}

/// The `response` of an AMQPLAIN `connection.start-ok`: a field table without its length
/// prefix, holding `LOGIN` and `PASSWORD` as long strings.
pub fn amqplain_response(user: &str, pass: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in [("LOGIN", user), ("PASSWORD", pass)] {
        out.push(key.len() as u8);
        out.extend_from_slice(key.as_bytes());
        out.push(b'S');
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Client properties announcing the `authentication_failure_close` capability, so that the
/// server explains a refused login with `connection.close` instead of dropping the socket.
pub fn auth_failure_close_properties() -> warren_amqp::FieldTable {
    let mut caps = warren_amqp::FieldTable::default();
    caps.insert(
        "authentication_failure_close".into(),
        warren_amqp::AMQPValue::Boolean(true),
    );
    let mut props = warren_amqp::FieldTable::default();
    props.insert(
        "capabilities".into(),
        warren_amqp::AMQPValue::FieldTable(caps),
    );
    props
}

impl RawClient {
    /// Reads the next frame, telling a closed socket apart from silence.
    pub async fn read_within(&mut self, timeout: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match decode_frame(&mut self.buf, 0) {
                Ok(Some(f)) => return Read::Frame(f),
                Ok(None) => {}
                Err(e) => panic!("server sent an undecodable frame: {e}"),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Read::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Asserts that the server closes the socket within `timeout` without sending a frame.
    pub async fn expect_closed_without_frame(&mut self, timeout: Duration) {
        match self.read_within(timeout).await {
            Read::Closed => {}
            Read::Frame(f) => panic!("expected the socket to be closed, got {f:?}"),
            Read::TimedOut => panic!("the socket was still open after {timeout:?}"),
        }
    }

    /// Asserts that the server closes the socket within `timeout`, skipping heartbeats.
    pub async fn expect_closed(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_within(left).await {
                Read::Closed => return,
                Read::Frame(Frame::Heartbeat(0)) => {}
                Read::Frame(f) => panic!("expected the socket to be closed, got {f:?}"),
                Read::TimedOut => panic!("the socket was still open after {timeout:?}"),
            }
        }
    }

    /// Asserts that nothing arrives (no frame, no close) for `duration`.
    pub async fn expect_silence(&mut self, duration: Duration) {
        match self.read_within(duration).await {
            Read::TimedOut => {}
            other => panic!("expected silence for {duration:?}, got {other:?}"),
        }
    }

    /// Connects, sends the protocol header and returns the server's `connection.start`.
    pub async fn start(addr: SocketAddr) -> (RawClient, connection::Start) {
        let mut c = Self::connect(addr).await;
        c.write(PROTOCOL_HEADER).await;
        let start = match c.read_frame().await {
            Some(Frame::Method(0, m)) => match *m {
                AMQPClass::Connection(connection::AMQPMethod::Start(s)) => s,
                other => panic!("expected connection.start, got {other:?}"),
            },
            other => panic!("expected connection.start, got {other:?}"),
        };
        (c, start)
    }

    /// Sends `connection.start-ok`.
    pub async fn start_ok(
        &mut self,
        client_properties: warren_amqp::FieldTable,
        mechanism: &str,
        response: &[u8],
    ) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties,
                mechanism: mechanism.into(),
                response: LongString::from(response.to_vec()),
                locale: "en_US".into(),
            })),
        )
        .await;
    }

    /// Reads the next frame and asserts it is `connection.tune`.
    pub async fn expect_tune(&mut self) -> connection::Tune {
        match self.expect_method(0).await {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => panic!("expected connection.tune, got {other:?}"),
        }
    }

    /// Sends `connection.tune-ok`.
    pub async fn tune_ok(&mut self, channel_max: u16, frame_max: u32, heartbeat: u16) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max,
                frame_max,
                heartbeat,
            })),
        )
        .await;
    }

    /// Sends `connection.open` for `vhost`.
    pub async fn send_connection_open(&mut self, vhost: &str) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: vhost.into(),
            })),
        )
        .await;
    }

    /// Completes the handshake as guest on `/`, advertising these client capabilities.
    pub async fn start_with_capabilities(
        addr: SocketAddr,
        capabilities: &[(&str, warren_amqp::AMQPValue)],
    ) -> RawClient {
        let mut caps = warren_amqp::FieldTable::default();
        for (k, v) in capabilities {
            caps.insert((*k).into(), v.clone());
        }
        let mut props = warren_amqp::FieldTable::default();
        props.insert(
            "capabilities".into(),
            warren_amqp::AMQPValue::FieldTable(caps),
        );
        let (mut c, _) = Self::start(addr).await;
        c.start_ok(props, "PLAIN", b"\0guest\0guest").await;
        let tune = c.expect_tune().await;
        c.tune_ok(tune.channel_max, tune.frame_max, 0).await;
        c.send_connection_open("/").await;
        match c.expect_method(0).await {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
        c
    }

    /// Completes the handshake as guest on `/` with the given tune-ok values.
    pub async fn open_tuned(
        addr: SocketAddr,
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    ) -> RawClient {
        let (mut c, _) = Self::start(addr).await;
        c.start_ok(Default::default(), "PLAIN", b"\0guest\0guest")
            .await;
        c.expect_tune().await;
        c.tune_ok(channel_max, frame_max, heartbeat).await;
        c.send_connection_open("/").await;
        match c.expect_method(0).await {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
        c
    }

    /// Reads the next frame that is not a heartbeat and asserts it is a method on `channel`.
    pub async fn expect_method(&mut self, channel: u16) -> AMQPClass {
        loop {
            match self.read_frame().await {
                Some(Frame::Heartbeat(0)) => {}
                Some(Frame::Method(ch, m)) if ch == channel => return *m,
                other => panic!("expected a method on channel {channel}, got {other:?}"),
            }
        }
    }

    /// Reads frames until a `connection.close` arrives and returns it whole (with the
    /// class and method ids of the offending method).
    pub async fn expect_connection_close_method(&mut self) -> connection::Close {
        while let Some(frame) = self.read_frame().await {
            if let Frame::Method(0, m) = frame {
                if let AMQPClass::Connection(connection::AMQPMethod::Close(c)) = *m {
                    return c;
                }
            }
        }
        panic!("the server closed the socket without connection.close");
    }

    /// Sends `connection.close-ok`.
    pub async fn send_close_ok(&mut self) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        )
        .await;
    }

    /// Sends `connection.close` with a normal reply.
    pub async fn send_connection_close(&mut self) {
        self.send_method(0, warren_amqp::method::connection_close(200, "bye", 0, 0))
            .await;
    }

    /// Opens `channel` and waits for `channel.open-ok`.
    pub async fn open_channel(&mut self, channel: u16) {
        self.send_method(
            channel,
            AMQPClass::Channel(warren_amqp::channel::AMQPMethod::Open(
                warren_amqp::channel::Open {},
            )),
        )
        .await;
        match self.expect_method(channel).await {
            AMQPClass::Channel(warren_amqp::channel::AMQPMethod::OpenOk(_)) => {}
            other => panic!("expected channel.open-ok on {channel}, got {other:?}"),
        }
    }

    /// Declares a server-named, exclusive, auto-delete queue on `channel`; returns its name.
    pub async fn declare_queue(&mut self, channel: u16) -> String {
        self.send_method(channel, queue_declare("", false)).await;
        match self.expect_method(channel).await {
            AMQPClass::Queue(warren_amqp::queue::AMQPMethod::DeclareOk(ok)) => ok.queue.to_string(),
            other => panic!("expected queue.declare-ok on {channel}, got {other:?}"),
        }
    }

    /// Publishes `body` to the default exchange with `routing_key`, splitting the body into
    /// frames of at most `frame_max` bytes.
    pub async fn publish(&mut self, channel: u16, routing_key: &str, body: &[u8], frame_max: u32) {
        let mut out = BytesMut::from(&method_bytes(channel, &basic_publish("", routing_key))[..]);
        warren_amqp::frame::encode_content(&mut out, channel, &[0, 0], body, frame_max);
        self.write(&out).await;
    }

    /// `basic.get` with no-ack: returns the body frames' payloads of the message, or `None`
    /// on `basic.get-empty`.
    pub async fn get_body_frames(&mut self, channel: u16, queue: &str) -> Option<Vec<Vec<u8>>> {
        self.send_method(
            channel,
            AMQPClass::Basic(warren_amqp::basic::AMQPMethod::Get(
                warren_amqp::basic::Get {
                    queue: queue.into(),
                    no_ack: true,
                },
            )),
        )
        .await;
        match self.expect_method(channel).await {
            AMQPClass::Basic(warren_amqp::basic::AMQPMethod::GetOk(_)) => {}
            AMQPClass::Basic(warren_amqp::basic::AMQPMethod::GetEmpty(_)) => return None,
            other => panic!("expected basic.get-ok on {channel}, got {other:?}"),
        }
        let size = match self.read_frame().await {
            Some(Frame::Header(ch, h)) if ch == channel => h.body_size,
            other => panic!("expected a content header on {channel}, got {other:?}"),
        };
        let mut frames = Vec::new();
        let mut got = 0u64;
        while got < size {
            match self.read_frame().await {
                Some(Frame::Body(ch, b)) if ch == channel => {
                    got += b.len() as u64;
                    frames.push(b.to_vec());
                }
                other => panic!("expected a content body on {channel}, got {other:?}"),
            }
        }
        Some(frames)
    }
}

/// `queue.declare` of `name` (server-named when empty), exclusive and auto-delete.
pub fn queue_declare(name: &str, passive: bool) -> AMQPClass {
    AMQPClass::Queue(warren_amqp::queue::AMQPMethod::Declare(
        warren_amqp::queue::Declare {
            queue: name.into(),
            passive,
            durable: false,
            exclusive: !passive,
            auto_delete: !passive,
            nowait: false,
            arguments: Default::default(),
        },
    ))
}

/// `basic.publish` to `exchange` with `routing_key`, neither mandatory nor immediate.
pub fn basic_publish(exchange: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Basic(warren_amqp::basic::AMQPMethod::Publish(
        warren_amqp::basic::Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        },
    ))
}
