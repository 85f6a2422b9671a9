//! What a shovel reports: its one state (`starting | running | blocked |
//! terminated(reason)`), its last error and when it happened, how often it reconnected,
//! and how many messages it forwarded and has in flight. The same numbers go to the
//! `metrics` facade, labelled by vhost and shovel name.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// A shovel's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum State {
    /// Connecting or setting up its ends (also while waiting to reconnect).
    Starting,
    /// Forwarding.
    Running,
    /// The destination blocked the connection (`connection.blocked`): consuming paused.
    Blocked,
    /// Stopped for good, with why.
    Terminated(String),
}

impl State {
    /// The state's name.
    pub fn name(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Blocked => "blocked",
            State::Terminated(_) => "terminated",
        }
    }

    fn metric(&self) -> f64 {
        match self {
            State::Starting => 0.0,
            State::Running => 1.0,
            State::Blocked => 2.0,
            State::Terminated(_) => 3.0,
        }
    }
}

/// Whether a shovel came from the config file or a runtime parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// From the config file.
    Static,
    /// From a `shovel` runtime parameter.
    Dynamic,
}

impl Kind {
    /// The kind's name, as RabbitMQ shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Static => "static",
            Kind::Dynamic => "dynamic",
        }
    }
}

/// A snapshot of a shovel's status.
#[derive(Clone, Debug, Serialize)]
pub struct ShovelStatus {
    /// Name.
    pub name: String,
    /// Vhost.
    pub vhost: String,
    /// Static or dynamic.
    pub kind: Kind,
    /// State.
    #[serde(flatten)]
    pub state: State,
    /// The source URI in use (password hidden) and what it consumes.
    pub source: String,
    /// The destination URI in use and where it publishes.
    pub destination: String,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When the last error happened.
    #[serde(with = "time_secs")]
    pub last_error_time: Option<SystemTime>,
    /// Reconnections so far.
    pub reconnects: u64,
    /// Messages forwarded (confirmed by the destination in on-confirm mode).
    pub forwarded: u64,
    /// Messages received from the source and not yet settled there.
    pub in_flight: u64,
}

mod time_secs {
    use serde::Serializer;
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            Some(d) => s.serialize_some(&d.as_secs()),
            None => s.serialize_none(),
        }
    }
}

struct Mutable {
    state: State,
    source: String,
    destination: String,
    last_error: Option<(String, SystemTime)>,
}

/// A running shovel's live status, shared by its task and the registry.
pub struct StatusCell {
    name: String,
    vhost: String,
    kind: Kind,
    /// A std mutex: held only to copy or replace a few strings, never across an await.
    inner: Mutex<Mutable>,
    reconnects: AtomicU64,
    forwarded: AtomicU64,
    in_flight: AtomicU64,
    m_forwarded: metrics::Counter,
    m_reconnects: metrics::Counter,
    m_in_flight: metrics::Gauge,
    m_state: metrics::Gauge,
}

impl StatusCell {
    /// A new status in the `starting` state.
    pub fn new(name: &str, vhost: &str, kind: Kind) -> StatusCell {
        let labels = [("vhost", vhost.to_owned()), ("shovel", name.to_owned())];
        StatusCell {
            name: name.to_owned(),
            vhost: vhost.to_owned(),
            kind,
            inner: Mutex::new(Mutable {
                state: State::Starting,
                source: String::new(),
                destination: String::new(),
                last_error: None,
            }),
            reconnects: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            m_forwarded: metrics::counter!("warren_shovel_forwarded_total", &labels),
            m_reconnects: metrics::counter!("warren_shovel_reconnects_total", &labels),
            m_in_flight: metrics::gauge!("warren_shovel_in_flight", &labels),
            m_state: metrics::gauge!("warren_shovel_state", &labels),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mutable> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves to `state`.
    pub fn set_state(&self, state: State) {
        self.m_state.set(state.metric());
        self.lock().state = state;
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.lock().state.clone()
    }

    /// Records the ends in use.
    pub fn set_ends(&self, source: String, destination: String) {
        let mut m = self.lock();
        m.source = source;
        m.destination = destination;
    }

    /// Records an error.
    pub fn error(&self, text: String) {
        self.lock().last_error = Some((text, SystemTime::now()));
    }

    /// Counts a reconnection.
    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        self.m_reconnects.increment(1);
    }

    /// Counts `n` messages received from the source.
    pub fn received(&self, n: u64) {
        let v = self.in_flight.fetch_add(n, Ordering::Relaxed) + n;
        self.m_in_flight.set(v as f64);
    }

    /// Counts `n` messages settled: `forwarded` of them reached the destination.
    pub fn settled(&self, n: u64, forwarded: u64) {
        let v = self
            .in_flight
            .fetch_sub(n, Ordering::Relaxed)
            .saturating_sub(n);
        self.m_in_flight.set(v as f64);
        if forwarded > 0 {
            self.forwarded.fetch_add(forwarded, Ordering::Relaxed);
            self.m_forwarded.increment(forwarded);
        }
    }

    /// Forgets what was in flight (the source redelivers it after a reconnect).
    pub fn reset_in_flight(&self) {
        self.in_flight.store(0, Ordering::Relaxed);
        self.m_in_flight.set(0.0);
    }

    /// A snapshot.
    pub fn snapshot(&self) -> ShovelStatus {
        let m = self.lock();
        ShovelStatus {
            name: self.name.clone(),
            vhost: self.vhost.clone(),
            kind: self.kind,
            state: m.state.clone(),
            source: m.source.clone(),
            destination: m.destination.clone(),
            last_error: m.last_error.as_ref().map(|(t, _)| t.clone()),
            last_error_time: m.last_error.as_ref().map(|(_, t)| *t),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}
