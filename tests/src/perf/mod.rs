//! warren-perf, Warren's load generator: scenarios that drive a broker (Warren or RabbitMQ)
//! over plain AMQP 0-9-1 and measure rates, latencies, CPU and memory.
//!
//! It is built so that it is not the bottleneck: a hand-written client on Warren's own codec
//! ([`client`]), publishes encoded once and copied in batches into single writes
//! ([`wire::PublishTemplate`]), deliveries and confirms read from the buffer without
//! allocation ([`wire::next_inbound`]), and shared state touched once per batch, not per
//! message. Scenarios: [`throughput`], [`connections`], [`queues`], [`backlog`].

pub mod args;
pub mod backlog;
pub mod client;
pub mod confirm;
pub mod connections;
pub mod consumer;
pub mod histogram;
pub mod proc;
pub mod publisher;
pub mod queues;
pub mod report;
pub mod stats;
pub mod throughput;
pub mod uri;
pub mod wire;

use std::sync::atomic::AtomicU64;

/// A counter on its own cache line, so producers and consumers on different cores do not
/// slow each other down by sharing one.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct PaddedCounter(AtomicU64);

impl std::ops::Deref for PaddedCounter {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

/// Totals every producer and consumer adds to (once per batch) and the reporter reads.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages written to the socket.
    pub published: PaddedCounter,
    /// Messages confirmed with `basic.ack`.
    pub confirmed: PaddedCounter,
    /// Messages refused with `basic.nack`.
    pub nacked: PaddedCounter,
    /// Deliveries received.
    pub consumed: PaddedCounter,
}

/// A name unique to this run, for queues and exchanges on a shared broker.
pub fn run_name(what: &str) -> String {
    format!("warren-perf-{what}-{}", std::process::id())
}
