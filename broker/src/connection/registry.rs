//! Every open client connection of the node, for `list_connections`, `list_channels`,
//! `list_consumers` and `close_connection`, and so that deleting a vhost or a user closes
//! the connections that use it. A connection registers once its handshake is done and is
//! removed when its task ends (a drop guard, so no path forgets it).

use crate::delivery::{ConnEvent, ConnSender};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::oneshot;

/// What `list_connections` shows about a connection.
#[derive(Debug)]
pub struct ConnectionEntry {
    /// The node-local id.
    pub id: u64,
    /// RabbitMQ's connection name: `client:port -> server:port`.
    pub name: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// The server address it connected to.
    pub local: SocketAddr,
    /// The authenticated user.
    pub user: Arc<str>,
    /// The vhost.
    pub vhost: Arc<str>,
    /// The SASL mechanism used.
    pub auth_mechanism: &'static str,
    /// TLS details, for an AMQPS connection.
    pub tls: Option<super::stream::TlsSession>,
    /// Selected client properties (product, version, platform, connection_name...).
    pub client_properties: serde_json::Value,
    /// When the handshake completed.
    pub connected_at: SystemTime,
    /// Negotiated limits.
    pub frame_max: u32,
    /// Negotiated channel_max.
    pub channel_max: u16,
    /// Negotiated heartbeat, seconds.
    pub heartbeat: u16,
    /// Open channels.
    pub channels: AtomicU32,
    /// The connection task's event queue, for closing and inspecting it.
    pub(crate) events: ConnSender,
    /// What the connection has carried so far.
    pub stats: Counters,
}

/// Message and byte counts, added up by each connection task from its plain
/// [`Counts`] once per loop turn (so the per-message path touches no shared cache line).
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages published (accepted for routing).
    pub published: AtomicU64,
    /// Messages delivered to consumers or fetched with basic.get.
    pub delivered: AtomicU64,
    /// Of those, deliveries flagged redelivered.
    pub redelivered: AtomicU64,
    /// Bytes read from the socket.
    pub recv_oct: AtomicU64,
    /// Bytes handed to the socket writer.
    pub send_oct: AtomicU64,
}

/// A connection task's own counts since its last flush into [`Counters`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Messages published.
    pub published: u64,
    /// Messages delivered or fetched.
    pub delivered: u64,
    /// Deliveries flagged redelivered.
    pub redelivered: u64,
    /// Bytes read.
    pub recv_oct: u64,
    /// Bytes written.
    pub send_oct: u64,
}

impl Counters {
    /// Adds `c` (and leaves the caller to reset it).
    pub fn add(&self, c: &Counts) {
        for (a, v) in [
            (&self.published, c.published),
            (&self.delivered, c.delivered),
            (&self.redelivered, c.redelivered),
            (&self.recv_oct, c.recv_oct),
            (&self.send_oct, c.send_oct),
        ] {
            if v > 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        }
    }

    /// The current values.
    pub fn snapshot(&self) -> Counts {
        Counts {
            published: self.published.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            redelivered: self.redelivered.load(Ordering::Relaxed),
            recv_oct: self.recv_oct.load(Ordering::Relaxed),
            send_oct: self.send_oct.load(Ordering::Relaxed),
        }
    }
}

impl Counts {
    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.published == 0
            && self.delivered == 0
            && self.redelivered == 0
            && self.recv_oct == 0
            && self.send_oct == 0
    }

    fn merge(&mut self, o: &Counts) {
        self.published += o.published;
        self.delivered += o.delivered;
        self.redelivered += o.redelivered;
        self.recv_oct += o.recv_oct;
        self.send_oct += o.send_oct;
    }
}

impl ConnectionEntry {
    /// Asks the connection to close with 320 CONNECTION_FORCED and this reason.
    pub fn close(&self, reason: &str) {
        let _ = self.events.send(ConnEvent::ForceClose {
            reason: reason.to_string(),
        });
    }

    /// The connection's channels and their consumers (None if it has gone).
    pub async fn channels(&self) -> Option<Vec<crate::channel::ChannelInfo>> {
        let (tx, rx) = oneshot::channel();
        self.events.send(ConnEvent::Inspect(tx)).ok()?;
        tokio::time::timeout(std::time::Duration::from_secs(5), rx)
            .await
            .ok()?
            .ok()
    }
}

/// The registry.
#[derive(Debug, Default)]
pub struct ConnectionRegistry {
    /// Entries by id. A std mutex: held only to insert, remove or copy the list out.
    entries: Mutex<HashMap<u64, Arc<ConnectionEntry>>>,
    /// What connections that have closed carried, so node totals never go down.
    closed: Counters,
    /// Connections opened since the node started.
    opened: AtomicU64,
}

/// Removes its connection from the registry when dropped.
pub struct Registration {
    registry: Arc<ConnectionRegistry>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let gone = self
            .registry
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        if let Some(e) = gone {
            self.registry.closed.add(&e.stats.snapshot());
        }
    }
}

impl ConnectionRegistry {
    /// Adds a connection; it stays until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, entry: Arc<ConnectionEntry>) -> Registration {
        let id = entry.id;
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, entry);
        Registration {
            registry: self.clone(),
            id,
        }
    }

    /// Every connection, oldest first.
    pub fn list(&self) -> Vec<Arc<ConnectionEntry>> {
        let mut all: Vec<_> = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|e| e.id);
        all
    }

    /// Node totals: every open connection's counters plus those of closed ones.
    pub fn totals(&self) -> Counts {
        let mut t = self.closed.snapshot();
        for e in self.list() {
            t.merge(&e.stats.snapshot());
        }
        t
    }

    /// Connections opened since the node started.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// How many open connections `pred` selects.
    pub fn count_where(&self, pred: impl Fn(&ConnectionEntry) -> bool) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|e| pred(e))
            .count()
    }

    /// Channels open on the connections `pred` selects.
    pub fn channels_where(&self, pred: impl Fn(&ConnectionEntry) -> bool) -> u64 {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|e| pred(e))
            .map(|e| u64::from(e.channels.load(Ordering::Relaxed)))
            .sum()
    }

    /// How many connections are open.
    pub fn count(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Closes every connection `pred` selects; returns how many.
    pub fn close_where(&self, pred: impl Fn(&ConnectionEntry) -> bool, reason: &str) -> usize {
        let selected: Vec<_> = self.list().into_iter().filter(|e| pred(e)).collect();
        for e in &selected {
            e.close(reason);
        }
        selected.len()
    }
}

impl ConnectionEntry {
    /// Records how many channels are open.
    pub(crate) fn set_channels(&self, n: usize) {
        self.channels
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }
}
