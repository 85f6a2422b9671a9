//! A client connection: one task per connection.
//!
//! Responsibilities: the protocol header and the handshake (start, SASL, tune, open), the
//! frame loop that hands channel frames to their channel's state machine, events from queues
//! (deliveries, confirms, consumer cancellations), heartbeats in both directions,
//! `connection.close` in both directions, and on exit returning every unacked message and
//! deleting exclusive queues. Writes go through a separate writer task so that a slow reader
//! never stops this task from reading.

mod handshake;
pub mod registry;
pub mod stream;
pub mod writer;

use crate::broker::BrokerShared;
use crate::channel::Channel;
use crate::delivery::{ChannelFlow, ConnEvent, ConnSender};
use crate::error::ChannelError;
use crate::meta::MetaCommand;
use crate::vhost::Vhost;
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use stream::{Reader, Transport};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use warren_amqp::frame::{
    decode_frame, describe_frame, encode_header, encode_heartbeat, encode_method, Frame,
    FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT,
};
use warren_amqp::{connection, method, AMQPClass, ReplyCode};

/// Bodies at least this long are written from the buffer they arrived in (a vectored write)
/// rather than copied into the output buffer: below it, a copy is cheaper than an I/O slice.
const ZERO_COPY_BODY: usize = 8 * 1024;

/// What a channel's handlers need from their connection.
pub struct ConnState {
    /// The connection's id on this node.
    pub id: u64,
    /// The node.
    pub shared: Arc<BrokerShared>,
    /// The vhost opened.
    pub vhost: Arc<Vhost>,
    /// The authenticated user.
    pub user: Arc<str>,
    /// Where queues send this connection's events.
    pub events: ConnSender,
    /// Negotiated frame_max.
    pub frame_max: u32,
    /// Frames to write at the next flush.
    pub out: BytesMut,
    /// Bytes to write before `out` at the next flush: earlier frames and large bodies,
    /// written from their own buffers without a copy.
    pub out_parts: Vec<Bytes>,
    /// Delivery credit to return once `out` is written.
    pub credits: Vec<(Arc<ChannelFlow>, u32)>,
    /// The client understands server-sent basic.cancel.
    pub consumer_cancel_notify: bool,
    /// Exclusive queues this connection declared, deleted when it closes.
    pub exclusive_queues: Vec<String>,
    /// The connection has published: a resource alarm blocks it.
    pub published: bool,
    /// The user's compiled permissions in this vhost.
    pub access: crate::access::AccessCache,
    /// Messages and bytes since the last flush into the registry entry.
    pub counts: registry::Counts,
    /// Routed publishes not yet handed to their queues.
    pub batches: crate::queue::PublishBatches,
    /// A routed message's queues (kept, empty, between messages: no allocation each time).
    pub targets: Vec<crate::queue::QueueHandle>,
}

impl ConnState {
    /// Queues a method frame for writing.
    pub fn send_method(&mut self, channel: u16, m: &AMQPClass) {
        if let Err(e) = encode_method(&mut self.out, channel, m) {
            tracing::error!(error = %e, "failed to encode a method frame");
        }
    }

    /// Queues a content (header and body frames). A large body is not copied: its frames
    /// point at the buffer it arrived in and go out with one vectored write.
    pub fn send_content(&mut self, channel: u16, properties: &[u8], body: &Bytes) {
        use warren_amqp::frame::{encode_body_frame_start, encode_header, FRAME_END};
        if body.len() < ZERO_COPY_BODY {
            warren_amqp::frame::encode_content(
                &mut self.out,
                channel,
                properties,
                body,
                self.frame_max,
            );
            return;
        }
        encode_header(&mut self.out, channel, body.len() as u64, properties);
        let max_payload = match self.frame_max {
            0 => usize::MAX,
            m => (m as usize)
                .saturating_sub(warren_amqp::frame::FRAME_OVERHEAD)
                .max(1),
        };
        let mut at = 0;
        while at < body.len() {
            let end = body.len().min(at.saturating_add(max_payload));
            encode_body_frame_start(&mut self.out, channel, (end - at) as u32);
            self.out_parts.push(self.out.split().freeze());
            self.out_parts.push(body.slice(at..end));
            self.out.put_u8(FRAME_END);
            at = end;
        }
    }

    /// Counts a delivery written for `flow` (credit returned after the write).
    pub fn count_delivery(&mut self, flow: &Arc<ChannelFlow>) {
        match self.credits.last_mut() {
            Some((f, n)) if Arc::ptr_eq(f, flow) => *n += 1,
            _ => self.credits.push((flow.clone(), 1)),
        }
    }
}

/// A channel slot: open, or closed by the server and waiting for the client's close-ok.
enum Slot {
    Open(Box<Channel>),
    Closing,
}

struct Connection {
    state: ConnState,
    reader: Reader,
    buf: BytesMut,
    writer: mpsc::UnboundedSender<writer::Batch>,
    events_rx: mpsc::UnboundedReceiver<ConnEvent>,
    /// Looked up for every frame: hashed with foldhash rather than SipHash.
    channels: HashMap<u16, Slot, foldhash::fast::RandomState>,
    channel_max: u16,
    heartbeat: u16,
    last_read: Instant,
    last_write: Instant,
    next_epoch: u64,
    /// Set once connection.close was sent: only close-ok (or close) is read after that.
    closing_since: Option<Instant>,
    /// Publishes on never-opened channels, by body bytes still expected (None: no header yet).
    unopened_content: HashMap<u16, Option<u64>>,
    /// The input stream could not be framed: everything read is dropped.
    unframeable: bool,
    /// Channels with publisher confirms ready to send.
    confirms_pending: Vec<u16>,
    /// The client understands connection.blocked / unblocked.
    blocked_capability: bool,
    /// connection.blocked was sent and not yet followed by unblocked.
    blocked_sent: bool,
    alarms: tokio::sync::watch::Receiver<crate::alarm::Alarms>,
    /// This connection's entry in the node's registry.
    entry: Arc<registry::ConnectionEntry>,
}

/// How a connection ended, for the log.
enum End {
    ClientClosed,
    ServerClosed,
    SocketClosed,
    Error(String),
}

/// Serves one client until it disconnects or the node stops.
pub async fn serve(shared: Arc<BrokerShared>, transport: Transport) {
    let Transport {
        reader,
        writer: write_half,
        peer,
        local,
        tls,
    } = transport;
    let (wtx, wrx) = mpsc::unbounded_channel();
    let writer_task = tokio::spawn(writer::run(write_half, wrx));
    let outcome = handshake::run(&shared, reader, &wtx, peer, tls.as_ref()).await;
    let Some(h) = outcome else {
        drop(wtx);
        let _ = writer_task.await;
        return;
    };
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let id = shared.next_id();
    tracing::debug!(%peer, user = %h.user, vhost = %h.vhost.name, "connection opened");
    let entry = Arc::new(registry::ConnectionEntry {
        id,
        name: format!("{peer} -> {local}"),
        peer,
        local,
        user: h.user.clone(),
        vhost: h.vhost.name.clone(),
        auth_mechanism: h.mechanism,
        tls,
        client_properties: h.client_properties.clone(),
        connected_at: std::time::SystemTime::now(),
        frame_max: h.frame_max,
        channel_max: h.channel_max,
        heartbeat: h.heartbeat,
        channels: Default::default(),
        events: events_tx.clone(),
        stats: Default::default(),
    });
    let _registration = shared.connections.register(entry.clone());
    // A vhost or user deleted during the handshake: do not serve it.
    let vhost_gone = shared.vhost(&h.vhost.name).is_none();
    let user_gone = shared.with_meta(|m| !m.users.contains_key(&*h.user));
    let mut conn = Connection {
        state: ConnState {
            id,
            shared: shared.clone(),
            vhost: h.vhost,
            user: h.user,
            events: events_tx,
            frame_max: h.frame_max,
            out: BytesMut::with_capacity(16 * 1024),
            out_parts: Vec::new(),
            credits: Vec::new(),
            consumer_cancel_notify: h.consumer_cancel_notify,
            exclusive_queues: Vec::new(),
            published: false,
            access: Default::default(),
            counts: Default::default(),
            batches: Default::default(),
            targets: Vec::new(),
        },
        reader: h.reader,
        buf: h.buf,
        writer: wtx,
        events_rx,
        channels: HashMap::default(),
        channel_max: h.channel_max,
        heartbeat: h.heartbeat,
        last_read: Instant::now(),
        last_write: Instant::now(),
        next_epoch: 1,
        closing_since: None,
        unopened_content: HashMap::new(),
        unframeable: false,
        confirms_pending: Vec::new(),
        blocked_capability: h.connection_blocked,
        blocked_sent: false,
        alarms: shared.alarms.clone(),
        entry,
    };
    if vhost_gone {
        let reason = format!("vhost '{}' is deleted", conn.state.vhost.name);
        conn.force_close(&reason);
    } else if user_gone {
        let reason = format!("user '{}' is deleted", conn.state.user);
        conn.force_close(&reason);
    }
    let end = conn.run().await;
    match &end {
        End::Error(e) => tracing::info!(%peer, error = %e, "connection closed"),
        End::SocketClosed => tracing::debug!(%peer, "client closed the socket"),
        End::ClientClosed | End::ServerClosed => tracing::debug!(%peer, "connection closed"),
    }
    conn.cleanup().await;
    conn.flush();
    if matches!(end, End::ClientClosed) {
        // As RabbitMQ does, leave closing the socket to the client once it has close-ok.
        let mut sink = [0u8; 512];
        let wait = async {
            while let Ok(n) = conn.reader.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(Duration::from_secs(2), wait) => {}
            _ = shared.shutdown.cancelled() => {}
        }
    }
    drop(conn);
    let _ = writer_task.await;
}

impl Connection {
    async fn run(&mut self) -> End {
        let shutdown = self.state.shared.shutdown.clone();
        let tick = if self.heartbeat > 0 {
            Duration::from_millis(u64::from(self.heartbeat) * 500)
        } else {
            Duration::from_secs(3600)
        };
        let mut next_tick = Instant::now() + tick;
        loop {
            let paused = self.apply_alarms();
            // After connection.close the client has a few seconds to answer close-ok.
            let close_deadline = self
                .closing_since
                .map(|since| since + Duration::from_secs(3))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(close_deadline), if self.closing_since.is_some() => {
                    return End::ServerClosed;
                }
                _ = shutdown.cancelled(), if self.closing_since.is_none() => {
                    self.close_connection(
                        ReplyCode::ConnectionForced,
                        &ReplyCode::ConnectionForced
                            .text("broker forced connection closure with reason 'shutdown'"),
                        0,
                        0,
                    );
                }
                ev = self.events_rx.recv() => {
                    if let Some(ev) = ev {
                        self.handle_event(ev).await;
                        for _ in 0..512 {
                            match self.events_rx.try_recv() {
                                Ok(ev) => self.handle_event(ev).await,
                                Err(_) => break,
                            }
                        }
                        self.send_confirms();
                    }
                }
                _ = self.alarms.changed() => {}
                read = self.reader.read_buf(&mut self.buf), if !paused => {
                    match read {
                        Ok(0) => return End::SocketClosed,
                        Ok(_) if self.unframeable => self.buf.clear(),
                        Ok(n) => {
                            self.state.counts.recv_oct += n as u64;
                            self.last_read = Instant::now();
                            let end = self.handle_input().await;
                            self.entry.set_channels(self.channels.len());
                            if let Some(end) = end {
                                self.flush();
                                return end;
                            }
                        }
                        Err(e) => return End::Error(e.to_string()),
                    }
                }
                _ = tokio::time::sleep_until(next_tick) => {
                    next_tick = Instant::now() + tick;
                    if self.heartbeat > 0 {
                        let hb = Duration::from_secs(u64::from(self.heartbeat));
                        // A blocked connection is not read, so its heartbeats are not seen.
                        if !paused && self.last_read.elapsed() > hb * 2 {
                            return End::Error(format!(
                                "missed heartbeats from client, timeout: {}s",
                                self.heartbeat
                            ));
                        }
                        if self.last_write.elapsed() >= tick && self.state.out.is_empty() {
                            encode_heartbeat(&mut self.state.out);
                        }
                    }
                }
            }
            self.flush();
        }
    }

    /// Blocks a publishing connection while a resource alarm is raised (and tells the client
    /// if it understands `connection.blocked`); returns true while reading is paused.
    fn apply_alarms(&mut self) -> bool {
        let alarms = *self.alarms.borrow_and_update();
        let paused = alarms.any() && self.state.published && self.closing_since.is_none();
        if paused && !self.blocked_sent && self.blocked_capability {
            self.state.send_method(
                0,
                &AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: alarms.reason().into(),
                })),
            );
            self.blocked_sent = true;
            self.flush();
        } else if !alarms.any() && self.blocked_sent {
            self.state.send_method(
                0,
                &AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
            );
            self.blocked_sent = false;
            self.flush();
        }
        paused
    }

    /// RabbitMQ's `max-channels` user limit: channels open on all the user's connections.
    fn check_user_channel_limit(&self) -> Result<(), ChannelError> {
        let user = &self.state.user;
        let max = self
            .state
            .shared
            .with_meta(|m| m.users.get(&**user).and_then(|u| u.limit("max-channels")));
        let Some(max) = max else {
            return Ok(());
        };
        let id = self.state.id;
        let elsewhere = self
            .state
            .shared
            .connections
            .channels_where(|c| c.id != id && c.user == *user);
        if elsewhere + self.channels.len() as u64 >= max {
            return Err(ChannelError::new(
                ReplyCode::NotAllowed,
                format!(
                    "number of channels opened for user '{user}' has reached the maximum allowed user limit of ({max})"
                ),
            ));
        }
        Ok(())
    }

    fn flush(&mut self) {
        // Large bodies wait in `out_parts`, outside `out`: they count as sent bytes too.
        let out_len = self.state.out.len() as u64
            + self
                .state
                .out_parts
                .iter()
                .map(|p| p.len() as u64)
                .sum::<u64>();
        self.state.counts.send_oct += out_len;
        if !self.state.counts.is_empty() {
            self.entry
                .stats
                .add(&std::mem::take(&mut self.state.counts));
        }
        if self.state.out.is_empty() && self.state.out_parts.is_empty() {
            return;
        }
        let data = self.state.out.split().freeze();
        let parts = std::mem::take(&mut self.state.out_parts);
        let written = std::mem::take(&mut self.state.credits);
        if self
            .writer
            .send(writer::Batch {
                parts,
                data,
                written,
            })
            .is_err()
        {
            tracing::debug!("writer gone");
        }
        self.last_write = Instant::now();
    }

    /// Decodes and handles every complete frame in the buffer. Some(end) stops the loop.
    async fn handle_input(&mut self) -> Option<End> {
        let end = self.handle_frames().await;
        // What this read brought is routed: its queues take it now.
        if !self.state.batches.is_empty() {
            self.state.batches.flush().await;
        }
        end
    }

    async fn handle_frames(&mut self) -> Option<End> {
        loop {
            let frame = match decode_frame(&mut self.buf, self.state.frame_max) {
                Ok(Some(f)) => f,
                Ok(None) => return None,
                Err(e) => {
                    if self.closing_since.is_some() || e.silent {
                        return Some(End::Error(e.text));
                    }
                    self.close_connection(e.code, &e.text, e.class_id, e.method_id);
                    // The rest of the stream cannot be framed: it is read and dropped until
                    // the close deadline, so the client sees the close rather than a reset.
                    tracing::info!(error = %e.text, "closing a connection that sent a bad frame");
                    self.unframeable = true;
                    self.buf.clear();
                    return None;
                }
            };
            if let Some(end) = self.handle_frame(frame).await {
                return Some(end);
            }
            if self.state.out.len() > 64 * 1024 || self.state.out_parts.len() > 64 {
                // Replies written now follow the publishes before them into their queues.
                if !self.state.batches.is_empty() {
                    self.state.batches.flush().await;
                }
                self.flush();
            }
        }
    }

    async fn handle_frame(&mut self, frame: Frame) -> Option<End> {
        let channel = frame.channel();
        if self.closing_since.is_some() {
            // After connection.close only close/close-ok matter.
            if let Frame::Method(0, m) = frame {
                match *m {
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                        return Some(End::ServerClosed)
                    }
                    AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                        self.state.send_method(
                            0,
                            &AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )),
                        );
                        return Some(End::ServerClosed);
                    }
                    _ => {}
                }
            }
            return None;
        }
        if channel == 0 {
            return self.handle_connection_frame(frame.into_generic());
        }
        let result = match frame {
            Frame::Heartbeat(_) => Err(ChannelError::new(
                ReplyCode::UnexpectedFrame,
                describe_frame(FRAME_HEARTBEAT, &[]),
            )),
            Frame::Method(_, m) => {
                // Publishes routed so far reach their queues before anything else happens:
                // a get, purge, delete or close after them sees them.
                if !self.state.batches.is_empty()
                    && !matches!(
                        *m,
                        AMQPClass::Basic(warren_amqp::basic::AMQPMethod::Publish(_))
                    )
                {
                    self.state.batches.flush().await;
                }
                self.handle_channel_method(channel, *m).await
            }
            Frame::Publish(_, p) => match self.channels.get_mut(&channel) {
                // The common case, without building amq-protocol's method.
                Some(Slot::Open(ch)) => ch.publish_frame(&mut self.state, &p),
                _ => self.handle_channel_method(channel, p.to_method()).await,
            },
            Frame::Header(_, h) => match self.channels.get_mut(&channel) {
                Some(Slot::Open(ch)) => match ch.publish_header(&mut self.state, h) {
                    Ok(Some(handoff)) => {
                        ch.complete(&mut self.state, handoff).await;
                        Ok(())
                    }
                    other => other.map(drop),
                },
                Some(Slot::Closing) => Ok(()),
                None => self.unopened_content(channel, &Frame::Header(channel, h)),
            },
            Frame::Body(_, b) => match self.channels.get_mut(&channel) {
                Some(Slot::Open(ch)) => match ch.publish_body(&mut self.state, b) {
                    Ok(Some(handoff)) => {
                        ch.complete(&mut self.state, handoff).await;
                        Ok(())
                    }
                    other => {
                        // A queue that took the message at once did not make this task
                        // yield: it does so now and then, as a send would, so the queue and
                        // its consumers get their turn on this thread.
                        tokio::task::consume_budget().await;
                        other.map(drop)
                    }
                },
                Some(Slot::Closing) => Ok(()),
                None => self.unopened_content(channel, &Frame::Body(channel, b)),
            },
        };
        match result {
            Ok(()) => None,
            Err(e) if e.code.is_hard() => {
                self.close_connection(e.code, &e.text, e.class_id, e.method_id);
                None
            }
            Err(e) => {
                self.close_channel(channel, e).await;
                None
            }
        }
    }

    fn handle_connection_frame(&mut self, frame: Frame) -> Option<End> {
        match frame {
            Frame::Heartbeat(_) => None,
            Frame::Method(_, m) => match *m {
                AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                    self.state.send_method(
                        0,
                        &AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    );
                    Some(End::ClientClosed)
                }
                AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                    self.state.send_method(
                        0,
                        &AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                            connection::UpdateSecretOk {},
                        )),
                    );
                    None
                }
                other => {
                    let (c, m) = method::ids(&other);
                    self.close_connection(
                        ReplyCode::ChannelError,
                        &ReplyCode::ChannelError
                            .text("unexpected method in connection state running"),
                        c,
                        m,
                    );
                    None
                }
            },
            Frame::Header(_, h) => {
                let mut payload = BytesMut::new();
                encode_header(&mut payload, 0, h.body_size, h.properties.raw());
                // The frame's payload without its 7-byte header and frame-end octet.
                let payload = &payload[7..payload.len() - 1];
                let mut payload = payload.to_vec();
                payload[0..2].copy_from_slice(&h.class_id.to_be_bytes());
                self.close_connection(
                    ReplyCode::UnexpectedFrame,
                    &ReplyCode::UnexpectedFrame.text(describe_frame(FRAME_HEADER, &payload)),
                    0,
                    0,
                );
                None
            }
            // Not reached: channel-0 frames come here through `Frame::into_generic`.
            Frame::Publish(..) => None,
            Frame::Body(_, b) => {
                self.close_connection(
                    ReplyCode::UnexpectedFrame,
                    &ReplyCode::UnexpectedFrame.text(describe_frame(FRAME_BODY, &b)),
                    0,
                    0,
                );
                None
            }
        }
    }

    async fn handle_channel_method(
        &mut self,
        channel: u16,
        m: AMQPClass,
    ) -> Result<(), ChannelError> {
        let (class_id, method_id) = method::ids(&m);
        if let AMQPClass::Connection(_) = m {
            return Err(ChannelError::command_invalid(format!(
                "connection method {} on channel {channel}",
                method::name(class_id, method_id)
            ))
            .on(class_id, method_id));
        }
        match self.channels.get_mut(&channel) {
            None => match m {
                AMQPClass::Channel(warren_amqp::channel::AMQPMethod::Open(_)) => {
                    let open = self.channels.len();
                    if open >= usize::from(self.channel_max) {
                        return Err(ChannelError::new(
                            ReplyCode::NotAllowed,
                            format!(
                                "number of channels opened ({open}) has reached the negotiated channel_max ({})",
                                self.channel_max
                            ),
                        ));
                    }
                    self.check_user_channel_limit()?;
                    let epoch = self.next_epoch;
                    self.next_epoch += 1;
                    let ch = Channel::new(channel, epoch, &self.state);
                    self.channels.insert(channel, Slot::Open(Box::new(ch)));
                    self.state.send_method(
                        channel,
                        &AMQPClass::Channel(warren_amqp::channel::AMQPMethod::OpenOk(
                            warren_amqp::channel::OpenOk {},
                        )),
                    );
                    Ok(())
                }
                AMQPClass::Basic(warren_amqp::basic::AMQPMethod::Publish(_)) => {
                    // As RabbitMQ does, the content is read before the channel is checked.
                    self.unopened_content.insert(channel, None);
                    Ok(())
                }
                _ => Err(
                    ChannelError::new(ReplyCode::ChannelError, "expected 'channel.open'")
                        .on(class_id, method_id),
                ),
            },
            Some(Slot::Closing) => {
                match m {
                    AMQPClass::Channel(warren_amqp::channel::AMQPMethod::CloseOk(_)) => {
                        self.channels.remove(&channel);
                    }
                    AMQPClass::Channel(warren_amqp::channel::AMQPMethod::Close(_)) => {
                        // Both sides closed at once: answer and forget the channel.
                        self.state.send_method(
                            channel,
                            &AMQPClass::Channel(warren_amqp::channel::AMQPMethod::CloseOk(
                                warren_amqp::channel::CloseOk {},
                            )),
                        );
                        self.channels.remove(&channel);
                    }
                    AMQPClass::Channel(warren_amqp::channel::AMQPMethod::Open(_)) => {
                        return Err(ChannelError::new(
                            ReplyCode::ChannelError,
                            "second 'channel.open' seen",
                        )
                        .on(class_id, method_id))
                    }
                    _ => {}
                }
                Ok(())
            }
            Some(Slot::Open(ch)) => match m {
                AMQPClass::Channel(warren_amqp::channel::AMQPMethod::Open(_)) => Err(
                    ChannelError::new(ReplyCode::ChannelError, "second 'channel.open' seen")
                        .on(class_id, method_id),
                ),
                AMQPClass::Channel(warren_amqp::channel::AMQPMethod::Close(_)) => {
                    if let Some(Slot::Open(ch)) = self.channels.remove(&channel) {
                        ch.close(&mut self.state).await;
                    }
                    self.state.send_method(
                        channel,
                        &AMQPClass::Channel(warren_amqp::channel::AMQPMethod::CloseOk(
                            warren_amqp::channel::CloseOk {},
                        )),
                    );
                    Ok(())
                }
                AMQPClass::Channel(warren_amqp::channel::AMQPMethod::CloseOk(_)) => {
                    Err(ChannelError::command_invalid("unimplemented method")
                        .on(class_id, method_id))
                }
                m => ch
                    .handle_method(&mut self.state, m)
                    .await
                    .map_err(|e| e.on(class_id, method_id)),
            },
        }
    }

    /// Content on a channel that was never opened: read to its end, then refused.
    fn unopened_content(&mut self, channel: u16, frame: &Frame) -> Result<(), ChannelError> {
        let done = match (self.unopened_content.get_mut(&channel), frame) {
            (Some(remaining @ None), Frame::Header(_, h)) => {
                *remaining = Some(h.body_size);
                h.body_size == 0
            }
            (Some(Some(left)), Frame::Body(_, b)) => {
                *left = left.saturating_sub(b.len() as u64);
                *left == 0
            }
            _ => return Err(crate::channel::expected_method_frame()),
        };
        if done {
            self.unopened_content.remove(&channel);
            return Err(
                ChannelError::new(ReplyCode::ChannelError, "expected 'channel.open'").on(60, 40),
            );
        }
        Ok(())
    }

    async fn close_channel(&mut self, channel: u16, e: ChannelError) {
        if let Some(Slot::Open(ch)) = self.channels.remove(&channel) {
            ch.close(&mut self.state).await;
        }
        self.channels.insert(channel, Slot::Closing);
        self.state.send_method(
            channel,
            &method::channel_close(e.code.code(), &e.text, e.class_id, e.method_id),
        );
    }

    fn close_connection(&mut self, code: ReplyCode, text: &str, class_id: u16, method_id: u16) {
        if self.closing_since.is_some() {
            return;
        }
        self.state.send_method(
            0,
            &method::connection_close(code.code(), text, class_id, method_id),
        );
        self.closing_since = Some(Instant::now());
    }

    /// Sends the publisher confirms that events made ready, folded per channel.
    fn send_confirms(&mut self) {
        for id in std::mem::take(&mut self.confirms_pending) {
            if let Some(Slot::Open(ch)) = self.channels.get_mut(&id) {
                ch.send_confirms(&mut self.state);
            }
        }
    }

    /// Closes the connection with 320 CONNECTION_FORCED, as RabbitMQ does when a vhost or
    /// user is deleted or an operator closes it.
    fn force_close(&mut self, reason: &str) {
        self.close_connection(
            ReplyCode::ConnectionForced,
            &ReplyCode::ConnectionForced.text(reason),
            0,
            0,
        );
    }

    async fn handle_event(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::ForceClose { reason } => self.force_close(&reason),
            ConnEvent::Inspect(reply) => {
                let mut channels: Vec<_> = self
                    .channels
                    .values()
                    .filter_map(|slot| match slot {
                        Slot::Open(ch) => Some(ch.info()),
                        Slot::Closing => None,
                    })
                    .collect();
                channels.sort_by_key(|c| c.number);
                let _ = reply.send(channels);
            }
            ConnEvent::Deliver(d) => {
                let key = d.channel;
                match self.channels.get_mut(&key.channel) {
                    Some(Slot::Open(ch)) if ch.epoch() == key.epoch => {
                        ch.deliver(&mut self.state, d).await;
                    }
                    _ => crate::channel::return_delivery(d).await,
                }
            }
            ConnEvent::Confirm { channel, seq, ok } => {
                if let Some(Slot::Open(ch)) = self.channels.get_mut(&channel.channel) {
                    if ch.epoch() == channel.epoch {
                        ch.confirmed(seq, ok);
                        if !self.confirms_pending.contains(&channel.channel) {
                            self.confirms_pending.push(channel.channel);
                        }
                    }
                }
            }
            ConnEvent::ConsumerTimedOut {
                channel,
                consumer_tag,
                queue,
                msg_ids,
            } => {
                if let Some(Slot::Open(ch)) = self.channels.get_mut(&channel.channel) {
                    if ch.epoch() == channel.epoch {
                        ch.consumer_timed_out(&mut self.state, &consumer_tag, &queue, &msg_ids);
                    }
                }
            }
            ConnEvent::Reply {
                channel,
                consumer_tag,
                msg,
            } => {
                if let Some(Slot::Open(ch)) = self.channels.get_mut(&channel.channel) {
                    if ch.epoch() == channel.epoch {
                        ch.deliver_reply(&mut self.state, &consumer_tag, &msg);
                    }
                }
            }
            ConnEvent::ConsumerCancelled {
                channel,
                consumer_tag,
            } => {
                if let Some(Slot::Open(ch)) = self.channels.get_mut(&channel.channel) {
                    if ch.epoch() == channel.epoch {
                        ch.consumer_cancelled(&mut self.state, &consumer_tag);
                    }
                }
            }
        }
    }

    /// Returns unacked messages, cancels consumers and deletes exclusive queues.
    async fn cleanup(&mut self) {
        for (_, slot) in self.channels.drain() {
            if let Slot::Open(ch) = slot {
                ch.close(&mut self.state).await;
            }
        }
        let vhost = self.state.vhost.name.to_string();
        for name in std::mem::take(&mut self.state.exclusive_queues) {
            let _ = self
                .state
                .shared
                .execute(MetaCommand::DeleteQueue {
                    vhost: vhost.clone(),
                    name,
                })
                .await;
        }
    }
}
