//! A minimal AMQP 0-9-1 client for the load generator, on Warren's own codec.
//!
//! It does the handshake (SASL PLAIN, tune with heartbeats off, open), then the synchronous
//! methods a scenario needs to set up (channel.open, declares, binds, qos, consume,
//! confirm.select) one request and one reply at a time. For the measured part a scenario
//! takes the socket apart with [`Connection::into_parts`] and drives it with the hot-path
//! readers and writers of [`super::publisher`] and [`super::consumer`].

use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use warren_amqp::frame::{decode_frame, encode_method, PROTOCOL_HEADER};
use warren_amqp::{
    basic, channel, confirm, connection, exchange, queue, AMQPClass, AMQPValue, FieldTable, Frame,
    LongString,
};

use super::uri::AmqpUri;

/// How long a synchronous reply may take before the scenario gives up.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// An open AMQP connection in its synchronous (set-up) mode.
pub struct Connection {
    stream: TcpStream,
    buf: BytesMut,
    out: BytesMut,
    /// The negotiated frame_max (bytes per frame, overhead included).
    pub frame_max: u32,
}

/// Exchange declare options.
#[derive(Debug, Clone, Copy, Default)]
pub struct Durability {
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last consumer or binding goes.
    pub auto_delete: bool,
}

/// The error text of a `channel.close` or `connection.close` sent by the broker.
fn close_reason(m: &AMQPClass) -> Option<String> {
    match m {
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => Some(format!(
            "broker closed the channel: {} {}",
            c.reply_code, c.reply_text
        )),
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => Some(format!(
            "broker closed the connection: {} {}",
            c.reply_code, c.reply_text
        )),
        _ => None,
    }
}

/// Client properties announcing the load generator, so it is recognisable in the broker's
/// connection list.
fn client_properties(name: &str) -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert(
        "product".into(),
        AMQPValue::LongString(LongString::from("warren-perf")),
    );
    props.insert(
        "connection_name".into(),
        AMQPValue::LongString(LongString::from(name)),
    );
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props
}

impl Connection {
    /// Connects and completes the handshake; `name` is shown by the broker as the
    /// connection's name.
    pub async fn open(uri: &AmqpUri, name: &str) -> anyhow::Result<Connection> {
        let addr = uri.addr();
        let stream = TcpStream::connect(&addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        // Latency matters more than segment count: small confirms and acks go out at once.
        stream.set_nodelay(true).context("set TCP_NODELAY")?;
        let mut c = Connection {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            out: BytesMut::with_capacity(4096),
            frame_max: 131_072,
        };
        c.stream
            .write_all(PROTOCOL_HEADER)
            .await
            .context("send the protocol header")?;
        match c.read_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(s)) => {
                let mechs = s.mechanisms.to_string();
                if !mechs.split(' ').any(|m| m == "PLAIN") {
                    bail!("the broker does not offer SASL PLAIN (offers {mechs})");
                }
            }
            other => bail!("expected connection.start, got {other:?}"),
        }
        let response = format!("\0{}\0{}", uri.user, uri.password);
        c.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: client_properties(name),
                mechanism: "PLAIN".into(),
                response: LongString::from(response.into_bytes()),
                locale: "en_US".into(),
            })),
        )
        .await?;
        let tune = match c.read_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => bail!("expected connection.tune, got {other:?}"),
        };
        c.frame_max = if tune.frame_max == 0 {
            131_072
        } else {
            tune.frame_max
        };
        // Heartbeats off: a measurement run is short and must not spend anything on timers.
        c.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: c.frame_max,
                heartbeat: 0,
            })),
        )
        .await?;
        c.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: uri.vhost.as_str().into(),
            })),
        )
        .await?;
        match c.read_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => Ok(c),
            other => bail!("expected connection.open-ok, got {other:?}"),
        }
    }

    /// Encodes and writes one method frame.
    pub async fn send(&mut self, ch: u16, method: &AMQPClass) -> anyhow::Result<()> {
        self.out.clear();
        encode_method(&mut self.out, ch, method).map_err(|e| anyhow!("{e}"))?;
        self.stream
            .write_all(&self.out)
            .await
            .context("write to the broker")
    }

    /// Reads frames until a method arrives on `ch`; a close from the broker is an error.
    pub async fn read_method(&mut self, ch: u16) -> anyhow::Result<AMQPClass> {
        let deadline = tokio::time::Instant::now() + RPC_TIMEOUT;
        loop {
            match decode_frame(&mut self.buf, 0).map_err(|e| anyhow!("bad frame: {e}"))? {
                Some(Frame::Method(c, m)) => {
                    if let Some(reason) = close_reason(&m) {
                        bail!(reason);
                    }
                    if c == ch {
                        return Ok(*m);
                    }
                }
                Some(_) => {}
                None => {
                    let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                        .await
                        .map_err(|_| anyhow!("no reply from the broker in {RPC_TIMEOUT:?}"))?
                        .context("read from the broker")?;
                    if n == 0 {
                        bail!("the broker closed the connection");
                    }
                }
            }
        }
    }

    /// Sends a synchronous method and returns the reply.
    pub async fn rpc(&mut self, ch: u16, method: AMQPClass) -> anyhow::Result<AMQPClass> {
        self.send(ch, &method).await?;
        self.read_method(ch).await
    }

    /// Opens channel `ch`.
    pub async fn open_channel(&mut self, ch: u16) -> anyhow::Result<()> {
        let reply = self
            .rpc(
                ch,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            )
            .await?;
        match reply {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => Ok(()),
            other => bail!("expected channel.open-ok, got {other:?}"),
        }
    }

    /// Declares a queue; returns its message count.
    pub async fn declare_queue(
        &mut self,
        ch: u16,
        name: &str,
        durability: Durability,
    ) -> anyhow::Result<u32> {
        let reply = self
            .rpc(
                ch,
                AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                    queue: name.into(),
                    passive: false,
                    durable: durability.durable,
                    exclusive: false,
                    auto_delete: durability.auto_delete,
                    nowait: false,
                    arguments: FieldTable::default(),
                })),
            )
            .await?;
        match reply {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.message_count),
            other => bail!("expected queue.declare-ok, got {other:?}"),
        }
    }

    /// Declares an exchange of `kind` (direct, fanout, topic, headers).
    pub async fn declare_exchange(
        &mut self,
        ch: u16,
        name: &str,
        kind: &str,
        durability: Durability,
    ) -> anyhow::Result<()> {
        let reply = self
            .rpc(
                ch,
                AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                    exchange: name.into(),
                    kind: kind.into(),
                    passive: false,
                    durable: durability.durable,
                    auto_delete: durability.auto_delete,
                    internal: false,
                    nowait: false,
                    arguments: FieldTable::default(),
                })),
            )
            .await?;
        match reply {
            AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_)) => Ok(()),
            other => bail!("expected exchange.declare-ok, got {other:?}"),
        }
    }

    /// Binds a queue to an exchange.
    pub async fn bind_queue(
        &mut self,
        ch: u16,
        queue_name: &str,
        exchange_name: &str,
        routing_key: &str,
    ) -> anyhow::Result<()> {
        let reply = self
            .rpc(
                ch,
                AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                    queue: queue_name.into(),
                    exchange: exchange_name.into(),
                    routing_key: routing_key.into(),
                    nowait: false,
                    arguments: FieldTable::default(),
                })),
            )
            .await?;
        match reply {
            AMQPClass::Queue(queue::AMQPMethod::BindOk(_)) => Ok(()),
            other => bail!("expected queue.bind-ok, got {other:?}"),
        }
    }

    /// Deletes a queue; returns how many messages it held.
    pub async fn delete_queue(&mut self, ch: u16, name: &str) -> anyhow::Result<u32> {
        let reply = self
            .rpc(
                ch,
                AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                    queue: name.into(),
                    if_unused: false,
                    if_empty: false,
                    nowait: false,
                })),
            )
            .await?;
        match reply {
            AMQPClass::Queue(queue::AMQPMethod::DeleteOk(ok)) => Ok(ok.message_count),
            other => bail!("expected queue.delete-ok, got {other:?}"),
        }
    }

    /// Deletes an exchange.
    pub async fn delete_exchange(&mut self, ch: u16, name: &str) -> anyhow::Result<()> {
        let reply = self
            .rpc(
                ch,
                AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                    exchange: name.into(),
                    if_unused: false,
                    nowait: false,
                })),
            )
            .await?;
        match reply {
            AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(_)) => Ok(()),
            other => bail!("expected exchange.delete-ok, got {other:?}"),
        }
    }

    /// Sets the channel's per-consumer prefetch.
    pub async fn qos(&mut self, ch: u16, prefetch_count: u16) -> anyhow::Result<()> {
        let reply = self
            .rpc(
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                    prefetch_count,
                    global: false,
                })),
            )
            .await?;
        match reply {
            AMQPClass::Basic(basic::AMQPMethod::QosOk(_)) => Ok(()),
            other => bail!("expected basic.qos-ok, got {other:?}"),
        }
    }

    /// Puts the channel in publisher-confirm mode.
    pub async fn confirm_select(&mut self, ch: u16) -> anyhow::Result<()> {
        let reply = self
            .rpc(
                ch,
                AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                    nowait: false,
                })),
            )
            .await?;
        match reply {
            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => Ok(()),
            other => bail!("expected confirm.select-ok, got {other:?}"),
        }
    }

    /// Starts a consumer; returns its consumer tag. Deliveries may follow at once, so the
    /// caller switches to [`Connection::into_parts`] next.
    pub async fn consume(
        &mut self,
        ch: u16,
        queue_name: &str,
        no_ack: bool,
    ) -> anyhow::Result<String> {
        self.send(
            ch,
            &AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue_name.into(),
                consumer_tag: "".into(),
                no_local: false,
                no_ack,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await?;
        // Read only up to consume-ok: frames after it (deliveries) stay in the buffer for the
        // hot-path reader.
        match self.read_method(ch).await? {
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)) => Ok(ok.consumer_tag.to_string()),
            other => bail!("expected basic.consume-ok, got {other:?}"),
        }
    }

    /// Sends `connection.close` and waits (briefly) for close-ok.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.send(0, &close_method()).await?;
        let wait = async {
            loop {
                match decode_frame(&mut self.buf, 0) {
                    Ok(Some(Frame::Method(0, m)))
                        if matches!(
                            *m,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
                        ) =>
                    {
                        return Ok(());
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => match self.stream.read_buf(&mut self.buf).await {
                        Ok(0) => return Ok(()),
                        Ok(_) => {}
                        Err(e) => return Err(anyhow!("read close-ok: {e}")),
                    },
                    Err(e) => return Err(anyhow!("bad frame while closing: {e}")),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .map_err(|_| anyhow!("no connection.close-ok in 5 s"))?
    }

    /// The socket halves and whatever was read but not decoded yet.
    pub fn into_parts(self) -> (OwnedReadHalf, OwnedWriteHalf, BytesMut) {
        let (r, w) = self.stream.into_split();
        (r, w, self.buf)
    }
}

/// A normal `connection.close` from the client.
pub fn close_method() -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: 200,
        reply_text: "OK".into(),
        class_id: 0,
        method_id: 0,
    }))
}
