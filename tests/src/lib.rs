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

    /// `amqp://user:pass@HOST:PORT/<vhost>` (the vhost percent-encoded).
    pub fn uri_for(&self, user: &str, pass: &str, vhost: &str) -> String {
        format!(
            "amqp://{}:{}@{}/{}",
            encode(user),
            encode(pass),
            self.addr,
            encode(vhost)
        )
    }

    /// The AMQPS address, when the broker has a TLS listener.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().and_then(|r| r.tls_addr())
    }

    /// The distribution port's address (None against an external broker).
    pub fn dist_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().map(|r| r.dist_addr())
    }

    /// The HTTP port's address: management API and /metrics (None against an external
    /// broker).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().map(|r| r.http_addr())
    }

    /// The node's cookie file (None against an external broker).
    pub fn cookie_file(&self) -> Option<std::path::PathBuf> {
        self.running
            .as_ref()
            .map(|r| r.shared().config.cookie_file())
    }

    /// Runs an admin command with rabbitmqctl's arguments: `warrenctl` against this node,
    /// or `rabbitmqctl` against an external broker (the command names and flags are the
    /// same).
    pub async fn admin(&self, args: &[&str]) -> CtlOutput {
        let (program, mut full): (std::path::PathBuf, Vec<String>) = match self.dist_addr() {
            Some(dist) => (
                process::warrenctl_binary(),
                vec!["-n".into(), format!("warren@{dist}")],
            ),
            None => ("rabbitmqctl".into(), Vec::new()),
        };
        full.extend(args.iter().map(|a| a.to_string()));
        let cookie = self.cookie_file();
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(&program);
            cmd.args(&full).stdin(std::process::Stdio::null());
            if let Some(c) = cookie {
                cmd.env("WARREN_COOKIE_FILE", c);
            }
            let out = cmd
                .output()
                .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
            CtlOutput {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
        .await
        .expect("the admin command ran")
    }

    /// Like `admin`, asserting that it succeeded; returns its output.
    pub async fn admin_ok(&self, args: &[&str]) -> String {
        let out = self.admin(args).await;
        assert_eq!(
            out.code, 0,
            "admin command {args:?} failed: {}{}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    /// The in-process node's shared state (None against an external broker).
    pub fn shared(&self) -> Option<std::sync::Arc<warren_broker::broker::BrokerShared>> {
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

/// What an admin command printed and how it exited.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    /// The exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Percent-encodes a URI component.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

pub mod certs;
pub mod cluster;
pub mod http;
pub mod perf;
pub mod pika;
pub mod process;
pub mod proxy;
pub mod rabbit;
pub mod raw;
