//! The interop suite: real third-party AMQP clients against Warren.
//!
//! `tests/interop/setup.sh` installs the clients (pika, aio-pika, kombu and Celery in a venv;
//! amqplib and amqp-connection-manager from npm; amqp091-go, the RabbitMQ Java client and
//! rabbitmq-c's tools from Debian) into `$HOME/.cache/warren-interop`, and prints where they
//! are. Each client has one scenario program under `tests/interop/`; this test asks each
//! program for its scenarios (`--list`), runs every scenario as its own process against a
//! fresh broker (a `warren-server` child process on a free port) with a timeout, prints one
//! report line per client and scenario, and fails if any scenario failed.
//!
//! A scenario that needs a broker restart prints `WARREN-INTEROP:restart-broker` on stdout;
//! the harness stops the `warren-server` process cleanly, starts it again on the same port and
//! data directory, and answers `restarted` on the program's stdin. `WARREN_TEST_EXTERNAL_URI` points the suite at another broker (such as
//! RabbitMQ, to check the scenarios themselves); restarts are then delegated to the command in
//! `WARREN_INTEROP_RESTART_CMD`. `WARREN_INTEROP_ONLY` (comma-separated `client` or
//! `client/scenario`) runs a subset. See `tests/interop/README.md`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// The line a scenario prints to ask for a broker restart.
const RESTART_REQUEST: &str = "WARREN-INTEROP:restart-broker";

/// How a client's scenario program is started. `{KEY}` in an argument is replaced by the
/// value `setup.sh` printed for `KEY` (`INTEROP_DIR` is the directory `tests/interop`).
struct Client {
    name: &'static str,
    argv: &'static [&'static str],
    /// Longest a single scenario may run.
    timeout: Duration,
}

const PY: &str = "{VENV}/bin/python";

const CLIENTS: &[Client] = &[
    Client {
        name: "pika-blocking",
        argv: &[PY, "{INTEROP_DIR}/python/pika_blocking.py"],
        timeout: Duration::from_secs(60),
    },
    Client {
        name: "pika-select",
        argv: &[PY, "{INTEROP_DIR}/python/pika_select.py"],
        timeout: Duration::from_secs(60),
    },
    Client {
        name: "aio-pika",
        argv: &[PY, "{INTEROP_DIR}/python/aio_pika_client.py"],
        timeout: Duration::from_secs(60),
    },
    Client {
        name: "kombu",
        argv: &[PY, "{INTEROP_DIR}/python/kombu_client.py"],
        timeout: Duration::from_secs(60),
    },
    Client {
        name: "celery",
        argv: &[PY, "{INTEROP_DIR}/python/celery_client.py"],
        timeout: Duration::from_secs(120),
    },
    Client {
        name: "amqplib-callback",
        argv: &["{NODE}", "{INTEROP_DIR}/node/callback_api.js"],
        timeout: Duration::from_secs(60),
    },
    Client {
        name: "amqplib-promise",
        argv: &["{NODE}", "{INTEROP_DIR}/node/promise_api.js"],
        timeout: Duration::from_secs(60),
    },
    Client {
        name: "amqp091-go",
        argv: &["{GO_BIN}"],
        timeout: Duration::from_secs(60),
    },
    Client {
        name: "java",
        argv: &["{JAVA}", "-cp", "{JAVA_CP}", "Interop"],
        timeout: Duration::from_secs(60),
    },
    Client {
        name: "rabbitmq-c",
        argv: &["bash", "{INTEROP_DIR}/c/amqp_tools.sh"],
        timeout: Duration::from_secs(60),
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_clients_pass_every_interop_scenario() {
    let started = Instant::now();
    let interop_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop");
    let vars = setup(&interop_dir).await;
    let known = known_failures(&interop_dir.join("known-failures.txt"));
    let only = std::env::var("WARREN_INTEROP_ONLY").unwrap_or_default();
    let only: Vec<&str> = only.split(',').filter(|s| !s.is_empty()).collect();
    let selected = |client: &str, scenario: Option<&str>| {
        only.is_empty()
            || only.iter().any(|o| match (o.split_once('/'), scenario) {
                (Some((c, s)), Some(sc)) => c == client && s == sc,
                (Some((c, _)), None) => c == client,
                (None, _) => *o == client,
            })
    };

    // Where Node finds amqplib and amqp-connection-manager.
    let env = vec![("NODE_PATH".to_string(), vars["NODE_PATH"].clone())];
    let mut report = Report::default();
    for client in CLIENTS {
        if !selected(client.name, None) {
            continue;
        }
        let argv: Vec<String> = client.argv.iter().map(|a| substitute(a, &vars)).collect();
        let scenarios = match list_scenarios(&argv, &env).await {
            Ok(s) => s,
            Err(e) => {
                report.record(client.name, "--list", Outcome::Fail, Duration::ZERO, e);
                continue;
            }
        };
        for scenario in scenarios {
            if !selected(client.name, Some(&scenario)) {
                continue;
            }
            let begun = Instant::now();
            let run = run_scenario(&argv, &env, &scenario, client.timeout).await;
            let took = begun.elapsed();
            let known_reason = known.get(&(client.name.to_string(), scenario.clone()));
            let (outcome, detail) = match (run.passed, known_reason) {
                (true, None) => (Outcome::Pass, String::new()),
                (false, None) => (Outcome::Fail, run.output),
                (false, Some(reason)) => (Outcome::KnownFail(reason.clone()), run.output),
                (true, Some(_)) => (
                    Outcome::Fail,
                    format!(
                        "{}FAILED: listed in tests/interop/known-failures.txt but passed: \
                         remove the entry",
                        run.output
                    ),
                ),
            };
            report.record(client.name, &scenario, outcome, took, detail);
        }
    }
    let text = report.render(started.elapsed());
    // Written past libtest's output capture so the report shows on every run.
    let _ = std::io::stderr().write_all(text.as_bytes());
    if let Some(cache) = vars.get("CACHE") {
        let _ = std::fs::write(Path::new(cache).join("last-report.txt"), &text);
    }
    assert!(
        report.failed() == 0 && report.passed() > 0,
        "{} interop scenario(s) failed, {} passed: see the report above",
        report.failed(),
        report.passed()
    );
}

/// Runs `setup.sh`, which installs or reuses the clients and prints `KEY=VALUE` lines.
async fn setup(interop_dir: &Path) -> BTreeMap<String, String> {
    let begun = Instant::now();
    // Its progress (installs can take minutes) goes straight to the terminal.
    let out = Command::new("bash")
        .arg(interop_dir.join("setup.sh"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run bash tests/interop/setup.sh")
        .wait_with_output()
        .await
        .expect("run bash tests/interop/setup.sh");
    assert!(
        out.status.success(),
        "tests/interop/setup.sh failed ({}): see its messages above",
        out.status
    );
    let mut vars: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.insert(
        "INTEROP_DIR".into(),
        interop_dir.to_string_lossy().into_owned(),
    );
    for key in [
        "VENV",
        "NODE",
        "NODE_PATH",
        "GO_BIN",
        "JAVA",
        "JAVA_CP",
        "CACHE",
    ] {
        assert!(vars.contains_key(key), "setup.sh did not print {key}=");
    }
    let _ = writeln!(
        std::io::stderr(),
        "interop: setup done in {:.1}s",
        begun.elapsed().as_secs_f64()
    );
    vars
}

fn substitute(arg: &str, vars: &BTreeMap<String, String>) -> String {
    let mut s = arg.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// `client scenario reason...` lines; `#` starts a comment.
fn known_failures(path: &Path) -> BTreeMap<(String, String), String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.splitn(3, char::is_whitespace);
            let client = parts.next()?.to_string();
            let scenario = parts.next()?.to_string();
            let reason = parts.next().unwrap_or("").trim().to_string();
            Some(((client, scenario), reason))
        })
        .collect()
}

async fn list_scenarios(argv: &[String], env: &Env) -> Result<Vec<String>, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        command(argv, env)
            .arg("--list")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .map_err(|_| format!("{} --list timed out", argv.join(" ")))?
    .map_err(|e| format!("cannot start {}: {e}", argv.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{} --list failed ({}):\n{}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        return Err(format!("{} --list printed no scenario", argv.join(" ")));
    }
    Ok(names)
}

/// Environment variables every scenario program gets.
type Env = Vec<(String, String)>;

fn command(argv: &[String], env: &Env) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    // Its own process group, so a timeout also ends whatever the scenario started (a Celery
    // worker, a consumer tool).
    cmd.process_group(0);
    cmd.kill_on_drop(true);
    cmd
}

struct Run {
    passed: bool,
    output: String,
}

/// Runs one scenario against a fresh broker, serving restart requests.
async fn run_scenario(argv: &[String], env: &Env, scenario: &str, timeout: Duration) -> Run {
    let mut broker = match Broker::start().await {
        Ok(b) => b,
        Err(e) => {
            return Run {
                passed: false,
                output: format!("FAILED: {e}\n"),
            }
        }
    };
    let prefix = format!(
        "interop-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let mut child = match command(argv, env)
        .arg(scenario)
        .env("AMQP_URL", broker.uri())
        .env("WARREN_INTEROP_PREFIX", &prefix)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Run {
                passed: false,
                output: format!("cannot start {}: {e}", argv.join(" ")),
            }
        }
    };
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stderr_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        buf
    });

    let mut transcript = String::new();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut timed_out = false;
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Err(_) => {
                timed_out = true;
                break;
            }
            Ok(Ok(Some(line))) if line.trim() == RESTART_REQUEST => {
                transcript.push_str("[harness] restarting the broker\n");
                let answer = match broker.restart().await {
                    Ok(()) => "restarted".to_string(),
                    Err(e) => format!("unsupported: {e}"),
                };
                transcript.push_str(&format!("[harness] {answer}\n"));
                let _ = stdin.write_all(format!("{answer}\n").as_bytes()).await;
                let _ = stdin.flush().await;
            }
            Ok(Ok(Some(line))) => {
                transcript.push_str(&line);
                transcript.push('\n');
            }
            Ok(Ok(None)) | Ok(Err(_)) => break,
        }
    }
    let status = if timed_out {
        None
    } else {
        tokio::time::timeout_at(deadline, child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    };
    kill_group(&mut child).await;
    let err = tokio::time::timeout(Duration::from_secs(5), stderr_task)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    transcript.push_str(&String::from_utf8_lossy(&err));
    let broker_log = broker.stop().await;
    let passed = matches!(status, Some(s) if s.success());
    if !passed && !broker_log.is_empty() {
        transcript.push_str("[harness] the end of warren-server's log:\n");
        transcript.push_str(&broker_log);
        transcript.push('\n');
    }
    if status.is_none() {
        transcript.push_str(&format!(
            "[harness] timed out after {}s\n",
            timeout.as_secs()
        ));
    } else if let Some(s) = status.filter(|s| !s.success()) {
        transcript.push_str(&format!("[harness] exited with {s}\n"));
    }
    Run {
        passed,
        output: transcript,
    }
}

/// Ends the scenario's process group (the program and anything it started).
async fn kill_group(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status()
            .await;
    }
    let _ = child.kill().await;
}

/// The broker a scenario runs against: a `warren-server` child process on a free port with a
/// fresh data directory, so a restart is a real stop (SIGINT: a clean shutdown that closes
/// every connection with 320 CONNECTION_FORCED) and start of the process on the same port and
/// data directory; or the external broker named by `WARREN_TEST_EXTERNAL_URI`.
struct Broker {
    uri: String,
    /// None for an external broker.
    warren: Option<Warren>,
}

struct Warren {
    child: Option<Child>,
    port: u16,
    /// Its distribution port (a free one, kept across restarts).
    dist_port: u16,
    /// Its HTTP port (likewise).
    http_port: u16,
    dir: tempfile::TempDir,
}

impl Broker {
    async fn start() -> Result<Broker, String> {
        if let Ok(uri) = std::env::var("WARREN_TEST_EXTERNAL_URI") {
            return Ok(Broker { uri, warren: None });
        }
        let dir = tempfile::tempdir().map_err(|e| format!("create a data dir: {e}"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("find a free port: {e}"))?;
        let mut warren = Warren {
            child: None,
            port,
            dist_port: warren_tests::process::free_port(),
            http_port: warren_tests::process::free_port(),
            dir,
        };
        warren.spawn().await?;
        Ok(Broker {
            uri: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            warren: Some(warren),
        })
    }

    fn uri(&self) -> &str {
        &self.uri
    }

    /// Stops the broker, leaves the port closed for a moment, then starts it again.
    async fn restart(&mut self) -> Result<(), String> {
        let Some(warren) = &mut self.warren else {
            return restart_external().await;
        };
        warren.stop().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        warren.spawn().await
    }

    /// Stops the broker; returns the end of its log.
    async fn stop(self) -> String {
        let Some(mut warren) = self.warren else {
            return String::new();
        };
        if let Err(e) = warren.stop().await {
            return e;
        }
        let log = std::fs::read_to_string(warren.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Warren {
    fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("warren-server.log")
    }

    /// Starts `warren-server` and waits until it accepts connections.
    async fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("open the broker log: {e}"))?;
        let child = Command::new(server_binary())
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .env("WARREN_DIST_PORT", self.dist_port.to_string())
            .env("WARREN_HTTP_PORT", self.http_port.to_string())
            .env("WARREN_COOKIE_FILE", self.dir.path().join("cookie"))
            .env("WARREN_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start warren-server: {e}"))?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("warren-server exited at startup: {status}"));
            }
            if tokio::time::Instant::now() > deadline {
                return Err("warren-server did not accept connections within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGINT (warren-server's clean shutdown), then waits up to 20 s for the process to end.
    async fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = child.kill().await;
                Err("warren-server did not stop within 20 s of SIGINT".into())
            }
        }
    }
}

/// An external broker is "restarted" by the command in `WARREN_INTEROP_RESTART_CMD`.
async fn restart_external() -> Result<(), String> {
    let cmd = std::env::var("WARREN_INTEROP_RESTART_CMD").map_err(|_| {
        "an external broker cannot be restarted: set WARREN_INTEROP_RESTART_CMD".to_string()
    })?;
    let status = Command::new("bash")
        .args(["-c", &cmd])
        .status()
        .await
        .map_err(|e| format!("run {cmd}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} exited with {status}"))
    }
}

/// The `warren-server` binary of this build, built first (a no-op when up to date) so the
/// suite never runs a stale broker.
fn server_binary() -> std::path::PathBuf {
    warren_tests::process::server_binary()
}

enum Outcome {
    Pass,
    Fail,
    KnownFail(String),
}

struct Entry {
    client: String,
    scenario: String,
    outcome: Outcome,
    took: Duration,
    detail: String,
}

#[derive(Default)]
struct Report {
    entries: Vec<Entry>,
}

impl Report {
    fn record(
        &mut self,
        client: &str,
        scenario: &str,
        outcome: Outcome,
        took: Duration,
        detail: String,
    ) {
        let label = match &outcome {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::KnownFail(_) => "KNOWN-FAIL",
        };
        // Progress as it happens; the full report follows at the end.
        let _ = writeln!(
            std::io::stderr(),
            "interop: {label:<10} {client:<17} {scenario:<22} {:>6.2}s",
            took.as_secs_f64()
        );
        self.entries.push(Entry {
            client: client.into(),
            scenario: scenario.into(),
            outcome,
            took,
            detail,
        });
    }

    fn passed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Pass))
    }

    fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Fail))
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.entries.iter().filter(|e| f(&e.outcome)).count()
    }

    fn render(&self, total: Duration) -> String {
        let mut out = String::from("\n==== interop report ====\n");
        for e in &self.entries {
            let (label, note) = match &e.outcome {
                Outcome::Pass => ("PASS", String::new()),
                Outcome::Fail => ("FAIL", last_line(&e.detail)),
                Outcome::KnownFail(reason) => ("KNOWN-FAIL", reason.clone()),
            };
            out.push_str(&format!(
                "{label:<10} {:<17} {:<22} {:>6.2}s  {note}\n",
                e.client,
                e.scenario,
                e.took.as_secs_f64()
            ));
        }
        for e in &self.entries {
            if matches!(e.outcome, Outcome::Pass) {
                continue;
            }
            out.push_str(&format!(
                "\n---- {} {} output (last 40 lines) ----\n",
                e.client, e.scenario
            ));
            let lines: Vec<&str> = e.detail.lines().collect();
            for l in &lines[lines.len().saturating_sub(40)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        let known = self.count(|o| matches!(o, Outcome::KnownFail(_)));
        out.push_str(&format!(
            "\ninterop: {known} known failure(s), not counted as passed; total {:.1}s\n",
            total.as_secs_f64()
        ));
        out.push_str(&format!(
            "{} passed, {} failed\n",
            self.passed(),
            self.failed()
        ));
        out
    }
}

/// The line that says why a scenario failed: the last `FAILED:` line its program printed, or
/// else its last non-empty line.
fn last_line(s: &str) -> String {
    let lines = || s.lines().rev().map(str::trim);
    lines()
        .find(|l| l.starts_with("FAILED:"))
        .or_else(|| lines().find(|l| !l.is_empty() && !l.starts_with("[harness] exited")))
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}
