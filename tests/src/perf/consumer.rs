//! A consumer: one connection, one channel, one `basic.consume`. Deliveries are read straight
//! from the read buffer ([`super::wire::next_inbound`]); per read it takes one clock
//! reading for the latency of every message in it, records latencies under one lock, adds
//! to the shared counter once and writes all its acks in one write.

use super::client::{close_method, Connection};
use super::histogram::Histogram;
use super::wire::{next_inbound, now_ns, ContentTracker, Delivered, Inbound};
use super::Counters;
use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use warren_amqp::frame::encode_ack;
use warren_amqp::{basic, channel, connection, AMQPClass, Frame};

/// The channel every consumer consumes on.
const CHANNEL: u16 = 1;
/// Room kept free in the read buffer before each read.
const READ_AHEAD: usize = 256 * 1024;

/// What a consumer consumes and how it acks.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// The queue.
    pub queue: String,
    /// Consume in no-ack mode.
    pub no_ack: bool,
    /// basic.qos prefetch_count, if any.
    pub prefetch: Option<u16>,
    /// Ack every N deliveries with one multiple ack.
    pub multi_ack_every: u32,
    /// Stop after this many deliveries.
    pub limit: Option<u64>,
}

/// Decides when to ack: every `every` deliveries, one ack covering them all.
#[derive(Debug)]
pub struct AckBatcher {
    every: u32,
    pending: u32,
    last: u64,
}

impl AckBatcher {
    /// Acks every `every` deliveries (at least 1).
    pub fn new(every: u32) -> AckBatcher {
        AckBatcher {
            every: every.max(1),
            pending: 0,
            last: 0,
        }
    }

    /// A delivery with `tag` was processed; returns the ack to send now, if any, as
    /// (delivery tag, multiple).
    pub fn delivered(&mut self, tag: u64) -> Option<(u64, bool)> {
        self.pending += 1;
        self.last = tag;
        if self.pending >= self.every {
            self.pending = 0;
            Some((tag, self.every > 1))
        } else {
            None
        }
    }

    /// The ack covering whatever is still unacked, if anything.
    pub fn flush(&mut self) -> Option<(u64, bool)> {
        if self.pending == 0 {
            return None;
        }
        self.pending = 0;
        Some((self.last, true))
    }
}

/// Consumes until `stop` is cancelled (or `spec.limit` deliveries arrived); returns how many
/// deliveries arrived. Latencies of stamped messages go into `latency`; `ready` gets a
/// message once the broker has confirmed the consumer.
pub async fn run(
    mut conn: Connection,
    spec: ConsumerSpec,
    counters: Arc<Counters>,
    latency: Arc<Mutex<Histogram>>,
    stop: CancellationToken,
    ready: Option<tokio::sync::mpsc::Sender<()>>,
) -> anyhow::Result<u64> {
    conn.open_channel(CHANNEL).await?;
    if let Some(n) = spec.prefetch {
        conn.qos(CHANNEL, n).await?;
    }
    conn.consume(CHANNEL, &spec.queue, spec.no_ack).await?;
    if let Some(ready) = ready {
        // The receiver may be gone if the run already stopped; that is not this task's error.
        let _ = ready.send(()).await;
    }
    let frame_max = conn.frame_max;
    let (mut reader, mut writer, mut buf) = conn.into_parts();
    let mut content = ContentTracker::default();
    let mut acks = AckBatcher::new(spec.multi_ack_every);
    let mut out = BytesMut::with_capacity(4096);
    let mut latencies: Vec<u64> = Vec::with_capacity(4096);
    let mut received: u64 = 0;
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let limit = spec.limit.unwrap_or(u64::MAX);

    loop {
        // Every frame in the buffer arrived by now: one clock reading serves them all.
        let now = now_ns();
        let mut batch = 0u64;
        let mut complete = |d: Delivered, out: &mut BytesMut, latencies: &mut Vec<u64>| {
            batch += 1;
            if let Some(stamp) = d.stamp {
                latencies.push(now.saturating_sub(stamp));
            }
            if !spec.no_ack {
                if let Some((tag, multiple)) = acks.delivered(d.delivery_tag) {
                    encode_ack(out, CHANNEL, tag, multiple);
                }
            }
        };
        while let Some(frame) = next_inbound(&mut buf, frame_max)? {
            match frame {
                Inbound::Deliver { delivery_tag, .. } => content.deliver(delivery_tag),
                Inbound::Header { body_size, .. } => {
                    if let Some(d) = content.header(body_size) {
                        complete(d, &mut out, &mut latencies);
                    }
                }
                Inbound::Body { len, head, .. } => {
                    if let Some(d) = content.body(len, head) {
                        complete(d, &mut out, &mut latencies);
                    }
                }
                Inbound::Other(Frame::Method(_, m)) => check_method(&m)?,
                _ => {}
            }
        }
        if !latencies.is_empty() {
            let mut h = latency.lock().unwrap_or_else(|e| e.into_inner());
            for &l in &latencies {
                h.record(l);
            }
            latencies.clear();
        }
        if batch > 0 {
            received += batch;
            counters.consumed.fetch_add(batch, Ordering::Relaxed);
        }
        let done = received >= limit;
        if done && !spec.no_ack {
            if let Some((tag, multiple)) = acks.flush() {
                encode_ack(&mut out, CHANNEL, tag, multiple);
            }
        }
        if !out.is_empty() {
            writer.write_all(&out).await.context("ack")?;
            out.clear();
        }
        if done {
            break;
        }
        if buf.capacity() - buf.len() < READ_AHEAD / 4 {
            buf.reserve(READ_AHEAD);
        }
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            r = reader.read_buf(&mut buf) => {
                if r.context("read deliveries")? == 0 {
                    bail!("the broker closed the connection");
                }
            }
        }
    }

    // Close: whatever is still delivered meanwhile is dropped (the broker requeues it).
    let mut close = BytesMut::new();
    warren_amqp::frame::encode_method(&mut close, 0, &close_method())
        .map_err(|e| anyhow!("{e}"))?;
    writer
        .write_all(&close)
        .await
        .context("send connection.close")?;
    let wait = async {
        loop {
            while let Some(frame) = next_inbound(&mut buf, frame_max)? {
                if let Inbound::Other(Frame::Method(0, m)) = frame {
                    if matches!(
                        *m,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
                    ) {
                        return Ok(());
                    }
                }
            }
            buf.reserve(READ_AHEAD);
            if reader.read_buf(&mut buf).await? == 0 {
                return Ok::<(), anyhow::Error>(());
            }
        }
    };
    // Best effort: a broker slow to answer does not change the figures.
    let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
    Ok(received)
}

/// Fails on the methods that end a consumer: closes and consumer cancellation.
fn check_method(m: &AMQPClass) -> anyhow::Result<()> {
    match m {
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => bail!(
            "broker closed the connection: {} {}",
            c.reply_code,
            c.reply_text
        ),
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => bail!(
            "broker closed the channel: {} {}",
            c.reply_code,
            c.reply_text
        ),
        AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => {
            bail!("broker cancelled consumer {}", c.consumer_tag)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_each_message() {
        let mut a = AckBatcher::new(1);
        assert_eq!(a.delivered(1), Some((1, false)));
        assert_eq!(a.delivered(2), Some((2, false)));
        assert_eq!(a.flush(), None);
    }

    #[test]
    fn multi_ack_every_n_then_flush_the_rest() {
        let mut a = AckBatcher::new(3);
        assert_eq!(a.delivered(1), None);
        assert_eq!(a.delivered(2), None);
        assert_eq!(a.delivered(3), Some((3, true)));
        assert_eq!(a.delivered(4), None);
        assert_eq!(a.flush(), Some((4, true)));
        assert_eq!(a.flush(), None);
    }

    #[test]
    fn zero_means_each() {
        let mut a = AckBatcher::new(0);
        assert_eq!(a.delivered(9), Some((9, false)));
    }
}
