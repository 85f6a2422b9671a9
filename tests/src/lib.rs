//! Warren's test harness: a real broker on an ephemeral port, driven over TCP.
//!
//! `TestBroker::start()` runs a `warren-server` in-process on `127.0.0.1:0` with a temporary
//! data directory and stops it on drop. Setting `WARREN_TEST_EXTERNAL_URI` (for instance to
//! `amqp://guest:guest@127.0.0.1:5672/%2f`) points the same tests at another broker, such as
//! RabbitMQ, to check that they encode RabbitMQ's behaviour.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// A broker for one test.
pub struct TestBroker {
    addr: SocketAddr,
    uri: String,
    running: Option<warren_broker::RunningBroker>,
    _dir: Option<tempfile::TempDir>,
}

impl TestBroker {
    /// Starts a broker with default settings.
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker after `tweak` adjusted its configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut warren_broker::Config)) -> TestBroker {
        if let Ok(uri) = std::env::var("WARREN_TEST_EXTERNAL_URI") {
            let addr = external_addr(&uri);
            return TestBroker {
                addr,
                uri,
                running: None,
                _dir: None,
            };
        }
        let dir = tempfile::tempdir().expect("create a temporary data dir");
        let mut config = warren_broker::Config::for_tests(dir.path());
        tweak(&mut config);
        let running = warren_broker::Broker::start(config)
            .await
            .expect("start the broker");
        let addr = running.local_addr();
        TestBroker {
            addr,
            uri: format!("amqp://guest:guest@{addr}/%2f"),
            running: Some(running),
            _dir: Some(dir),
        }
    }

    /// The AMQP address the broker listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The in-process node's shared state (None against an external broker).
    pub fn shared(&self) -> Option<&std::sync::Arc<warren_broker::broker::BrokerShared>> {
        self.running.as_ref().map(|r| r.shared())
    }

    /// True when the tests run against an external broker (e.g. RabbitMQ) instead of Warren.
    pub fn is_external(&self) -> bool {
        self.running.is_none()
    }

    /// Stops the broker and waits until it has closed every connection.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown_in_background();
        }
    }
}

fn external_addr(uri: &str) -> SocketAddr {
    use std::net::ToSocketAddrs;
    let rest = uri.split("://").nth(1).unwrap_or(uri);
    let host_port = rest.rsplit('@').next().unwrap_or(rest);
    let host_port = host_port.split('/').next().unwrap_or(host_port);
    let host_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5672")
    };
    host_port
        .to_socket_addrs()
        .expect("resolve WARREN_TEST_EXTERNAL_URI")
        .next()
        .expect("WARREN_TEST_EXTERNAL_URI has an address")
}

/// A name unique to this process and call, for queues and exchanges on a shared broker.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `fut` with a timeout, panicking with `what` if it takes longer.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}

pub mod perf;
pub mod process;
pub mod raw;
