//! A broker in a child process, for tests that must kill it (`kill -9`) or restart it on the
//! same data directory and port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// A `warren-server` child process.
pub struct ServerProcess {
    child: Option<Child>,
    addr: SocketAddr,
    dist_port: u16,
    data_dir: PathBuf,
}

/// The `warren-server` binary of this build, built first if needed.
pub fn server_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_binary("warren-server")).clone()
}

/// The `warrenctl` binary of this build, built first if needed.
pub fn warrenctl_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_binary("warrenctl")).clone()
}

/// The standalone `warren-shovel` binary of this build, built first if needed.
pub fn shovel_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_binary("warren-shovel")).clone()
}

/// Builds one of warren-broker's binaries (a no-op when it is up to date) and returns its
/// path.
fn build_binary(name: &str) -> PathBuf {
    // Builds run one at a time: concurrent cargo invocations would only queue on the lock.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    {
        // The test executable is `<target>/<profile>/deps/<name>`; the binary sits in
        // `<target>/<profile>/`.
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable is in <target>/<profile>/deps")
            .to_path_buf();
        let target_dir = profile_dir
            .parent()
            .expect("the profile directory is in the target directory");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        // Build it (a no-op when it is up to date) so a test never runs a stale binary.
        // The tests' targets are named too, so features unify as they do in `cargo test`:
        // otherwise the shared libraries would be rebuilt with other features here, and
        // back again by the next `cargo test`.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-q",
            "-p",
            "warren-broker",
            "-p",
            "warren-shovel",
            "-p",
            "warren-tests",
            "--bin",
            "warren-server",
            "--bin",
            "warrenctl",
            "--bin",
            "warren-shovel",
            "--tests",
        ])
        .arg("--target-dir")
        .arg(target_dir);
        // `cargo test` runs tests with variables of its own (CARGO_MANIFEST_DIR, CARGO_PKG_*
        // ...); build scripts that watch them (ring's does) would see other values than
        // `cargo test` saw and rebuild, here and again in the next `cargo test`.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("CARGO_") && !matches!(k.as_ref(), "CARGO_HOME" | "CARGO_TARGET_DIR") {
                cmd.env_remove(&key);
            }
        }
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building {name} failed");
        profile_dir.join(name)
    }
}

/// A free TCP port on loopback, below the system's ephemeral range (32768 and up on Linux):
/// a node stopped and started again on the same ports must not find one of them taken by
/// some other test's outgoing connection meanwhile. Ports are handed out in turn from a
/// start that depends on the process id, each checked free when handed out.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7_919)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        let port = u16::try_from(port).expect("ports below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

impl ServerProcess {
    /// Starts a broker on `port` with its data in `data_dir`, and waits until it accepts
    /// connections.
    pub async fn start(data_dir: &Path, port: u16) -> ServerProcess {
        Self::start_with(data_dir, port, |_| {}).await
    }

    /// Like `start`, after `tweak` added arguments or environment to the command (the
    /// distribution port defaults to a free one, the cookie to `<data_dir>/.cookie`).
    pub async fn start_with(
        data_dir: &Path,
        port: u16,
        tweak: impl FnOnce(&mut Command),
    ) -> ServerProcess {
        let dist_port = free_port();
        let mut cmd = Command::new(server_binary());
        cmd.arg("--port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .env("WARREN_DIST_PORT", dist_port.to_string())
            .env("WARREN_HTTP_PORT", free_port().to_string())
            .env("WARREN_COOKIE_FILE", data_dir.join(".cookie"));
        tweak(&mut cmd);
        let child = cmd
            .env("WARREN_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start warren-server");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut server = ServerProcess {
            child: Some(child),
            addr,
            dist_port,
            data_dir: data_dir.to_path_buf(),
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("warren-server exited during startup: {status}");
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "warren-server did not accept connections within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The AMQP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// The distribution port (unless the command's environment overrode it).
    pub fn dist_port(&self) -> u16 {
        self.dist_port
    }

    /// The cookie file (unless the command's environment overrode it).
    pub fn cookie_file(&self) -> PathBuf {
        self.data_dir.join(".cookie")
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id, for reading its memory use.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Kills the process with SIGKILL and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process with SIGTERM (a clean shutdown) and waits up to 20 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            for _ in 0..400 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("warren-server did not stop within 20 s of SIGTERM");
        }
    }

    /// Starts the broker again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.kill();
        let again = ServerProcess::start(&self.data_dir, self.addr.port()).await;
        *self = again;
    }

    /// Resident memory of the process in bytes (from /proc).
    pub fn rss_bytes(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
