//! A producer: one connection, one channel, publishing copies of a [`PublishTemplate`] in
//! batches (many messages encoded into one buffer, one write), optionally paced to a rate
//! and optionally bounded by a window of unconfirmed messages.
//!
//! The socket is split: the writer half is driven by the publishing loop, the reader half
//! by a task that counts confirms and returns window permits, so confirms never wait
//! behind writes.

use super::client::{close_method, Connection};
use super::confirm::ConfirmTracker;
use super::wire::{next_inbound, now_ns, Inbound, PublishTemplate};
use super::Counters;
use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use warren_amqp::{channel, connection, AMQPClass, Frame};

/// Most bytes encoded into one write: large enough that a write costs little per message,
/// small enough to stay in cache.
const BATCH_BYTES: usize = 128 * 1024;
/// The channel every producer publishes on.
const CHANNEL: u16 = 1;
/// How long a stopping producer waits for its last write and for close-ok.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What a producer publishes.
#[derive(Debug, Clone)]
pub struct PublisherSpec {
    /// Exchange to publish to ("" for the default exchange).
    pub exchange: String,
    /// Routing key of every message.
    pub routing_key: String,
    /// Body size in bytes.
    pub body_size: usize,
    /// Delivery mode 2.
    pub persistent: bool,
    /// Publisher confirms with this many unconfirmed messages at most.
    pub confirm: Option<u32>,
    /// Messages per second (unlimited when absent).
    pub rate: Option<f64>,
    /// Stop after this many messages (and, with confirms, once all are confirmed).
    pub limit: Option<u64>,
}

/// Paces a producer to a fixed rate: message `k` (from 0) is due `k / rate` seconds after
/// the start, and whatever is due is sent at once, so the average rate holds even when the
/// timer fires late.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    per_sec: f64,
}

impl Pacer {
    /// A pacer for `per_sec` messages per second.
    pub fn new(per_sec: f64) -> Pacer {
        Pacer { per_sec }
    }

    /// How many messages are due after `elapsed` when `sent` have been sent.
    pub fn due(&self, elapsed: Duration, sent: u64) -> u64 {
        let by_now = (elapsed.as_secs_f64() * self.per_sec).floor() as u64 + 1;
        by_now.saturating_sub(sent)
    }

    /// When message number `sent` (from 0) is due, from the start.
    pub fn due_at(&self, sent: u64) -> Duration {
        Duration::from_secs_f64(sent as f64 / self.per_sec)
    }
}

/// Publishes until `stop` is cancelled (or `spec.limit` is reached); returns how many
/// messages were published.
pub async fn run(
    mut conn: Connection,
    spec: PublisherSpec,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    conn.open_channel(CHANNEL).await?;
    if spec.confirm.is_some() {
        conn.confirm_select(CHANNEL).await?;
    }
    let template = PublishTemplate::new(
        CHANNEL,
        &spec.exchange,
        &spec.routing_key,
        spec.body_size,
        spec.persistent,
        conn.frame_max,
    )?;
    let frame_max = conn.frame_max;
    let (reader, mut writer, buf) = conn.into_parts();
    let window = spec.confirm.map(|w| Arc::new(Semaphore::new(w as usize)));
    // Stopped by the run, or by the reader when the broker closes the channel.
    let halt = stop.child_token();
    let mut reader_task = tokio::spawn(read_confirms(
        reader,
        buf,
        frame_max,
        window.clone(),
        counters.clone(),
        halt.clone(),
    ));

    let batch_max = (BATCH_BYTES / template.len()).max(1);
    let pacer = spec.rate.map(Pacer::new);
    let mut out = BytesMut::with_capacity(batch_max * template.len());
    let start = Instant::now();
    let mut sent: u64 = 0;
    // False once a write was interrupted part-way: the stream may end inside a frame.
    let mut clean = true;
    loop {
        if halt.is_cancelled() {
            break;
        }
        let mut n = batch_max as u64;
        if let Some(limit) = spec.limit {
            n = n.min(limit - sent);
            if n == 0 {
                break;
            }
        }
        if let Some(p) = pacer {
            let due = p.due(start.elapsed(), sent);
            if due == 0 {
                tokio::select! {
                    _ = halt.cancelled() => break,
                    _ = tokio::time::sleep_until(start + p.due_at(sent)) => continue,
                }
            }
            n = n.min(due);
        }
        if let Some(sem) = &window {
            // Take what the window allows now, or wait for one permit.
            let take = (n as usize).min(sem.available_permits()).max(1);
            tokio::select! {
                biased;
                _ = halt.cancelled() => break,
                permit = sem.acquire_many(take as u32) => {
                    permit.context("confirm window closed")?.forget();
                    n = take as u64;
                }
            }
        }
        out.clear();
        template.append(&mut out, n as usize, now_ns());
        let write = writer.write_all(&out);
        tokio::pin!(write);
        let written = tokio::select! {
            biased;
            r = &mut write => Some(r),
            _ = halt.cancelled() => None,
        };
        let result = match written {
            Some(r) => r,
            // Stopping: finish this batch if the broker takes it soon, so that the stream
            // ends on a frame boundary and the connection can be closed properly.
            None => match tokio::time::timeout(STOP_GRACE, &mut write).await {
                Ok(r) => r,
                Err(_) => {
                    clean = false;
                    break;
                }
            },
        };
        result.context("publish")?;
        sent += n;
        counters.published.fetch_add(n, Ordering::Relaxed);
    }

    if spec.limit.is_some() && !halt.is_cancelled() {
        if let (Some(sem), Some(w)) = (&window, spec.confirm) {
            // The limit was reached: wait until every message is confirmed.
            tokio::select! {
                _ = halt.cancelled() => {}
                permit = sem.acquire_many(w) => drop(permit.context("confirm window closed")?),
            }
        }
    }

    if clean {
        let mut close = BytesMut::new();
        warren_amqp::frame::encode_method(&mut close, 0, &close_method())
            .map_err(|e| anyhow!("{e}"))?;
        // The broker may already have closed the connection; closing is best effort.
        if writer.write_all(&close).await.is_ok() {
            match tokio::time::timeout(STOP_GRACE, &mut reader_task).await {
                Ok(joined) => joined.context("confirm reader")??,
                Err(_) => reader_task.abort(),
            }
            return Ok(sent);
        }
    }
    reader_task.abort();
    match reader_task.await {
        Ok(Err(e)) => Err(e),
        _ => Ok(sent),
    }
}

/// Counts confirms and refills the window until the broker closes the connection (after
/// our close, or with an error, which is returned after stopping the publisher).
async fn read_confirms(
    mut reader: OwnedReadHalf,
    mut buf: BytesMut,
    frame_max: u32,
    window: Option<Arc<Semaphore>>,
    counters: Arc<Counters>,
    halt: CancellationToken,
) -> anyhow::Result<()> {
    let result = async {
        let mut tracker = ConfirmTracker::new();
        loop {
            let (mut acked, mut nacked) = (0u64, 0u64);
            while let Some(frame) = next_inbound(&mut buf, frame_max)? {
                match frame {
                    Inbound::Confirm {
                        tag, multiple, ack, ..
                    } => {
                        let n = tracker.settle(tag, multiple);
                        if ack {
                            acked += n;
                        } else {
                            nacked += n;
                        }
                    }
                    Inbound::Other(Frame::Method(_, m)) => match *m {
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                            return Ok(());
                        }
                        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                            bail!(
                                "broker closed the connection: {} {}",
                                c.reply_code,
                                c.reply_text
                            )
                        }
                        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                            bail!(
                                "broker closed the channel: {} {}",
                                c.reply_code,
                                c.reply_text
                            )
                        }
                        AMQPClass::Connection(connection::AMQPMethod::Blocked(b)) => {
                            eprintln!("producer blocked by the broker: {}", b.reason);
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
            if acked + nacked > 0 {
                counters.confirmed.fetch_add(acked, Ordering::Relaxed);
                counters.nacked.fetch_add(nacked, Ordering::Relaxed);
                if let Some(w) = &window {
                    w.add_permits((acked + nacked) as usize);
                }
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(64 * 1024);
            }
            if reader.read_buf(&mut buf).await.context("read confirms")? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }
    .await;
    if result.is_err() {
        halt.cancel();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_sends_the_first_message_at_once_then_keeps_the_rate() {
        let p = Pacer::new(1000.0);
        assert_eq!(p.due(Duration::ZERO, 0), 1);
        assert_eq!(p.due(Duration::ZERO, 1), 0);
        assert_eq!(p.due_at(1), Duration::from_millis(1));
        // 10 ms late: the 10 missed messages are due together.
        assert_eq!(p.due(Duration::from_millis(10), 1), 10);
        assert_eq!(p.due(Duration::from_secs(1), 1001), 0);
        assert_eq!(p.due_at(1001), Duration::from_millis(1001));
    }

    #[test]
    fn pacer_handles_fractional_rates() {
        let p = Pacer::new(0.5);
        assert_eq!(p.due(Duration::from_secs(1), 1), 0);
        assert_eq!(p.due(Duration::from_secs(2), 1), 1);
        assert_eq!(p.due_at(1), Duration::from_secs(2));
    }
}
