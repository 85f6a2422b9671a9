//! A RabbitMQ node of the tests' own (Debian's rabbitmq-server, installed with apt-get if
//! missing): its own node name, AMQP and distribution ports, data, log and plugins files,
//! with the shovel plugin enabled offline (written into its enabled-plugins file before it
//! boots). One node is started per test binary run and shared; a watchdog process stops it
//! and removes its directory once the test binary has exited. The machine's own RabbitMQ is
//! never touched.

use crate::process::free_port;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The shared RabbitMQ node.
pub struct RabbitNode {
    /// AMQP port.
    pub port: u16,
    /// Erlang node name.
    pub node: String,
    /// Its directory.
    pub dir: PathBuf,
}

impl RabbitNode {
    /// The node, started on first use (this blocks: call it from `block_in_place`).
    pub fn shared() -> &'static RabbitNode {
        static NODE: OnceLock<RabbitNode> = OnceLock::new();
        NODE.get_or_init(start)
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Runs `rabbitmqctl -q -n NODE args`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run rabbitmqctl")
    }
}

fn as_rabbitmq_user() -> bool {
    // Root runs the node as the rabbitmq user, as the package's wrapper does.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    root && Command::new("id")
        .arg("rabbitmq")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn start() -> RabbitNode {
    let installed = Command::new("sh")
        .args(["-c", "command -v rabbitmq-server"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        let ok = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server",
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "rabbitmq-server is missing and apt-get could not install it"
        );
    }
    let pid = std::process::id();
    let port = free_port();
    let dist = free_port();
    let node = format!("warren-shovel-test-{pid}@localhost");
    let dir = std::env::temp_dir().join(format!("warren-shovel-rabbit-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the RabbitMQ directory");
    std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_shovel].\n")
        .expect("write enabled_plugins");
    let rabbit_user = as_rabbitmq_user();
    if rabbit_user {
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
    }
    let d = dir.display();
    let env = format!(
        "RABBITMQ_NODE_PORT={port} RABBITMQ_NODENAME={node} RABBITMQ_DIST_PORT={dist} \
         RABBITMQ_MNESIA_BASE={d}/mnesia RABBITMQ_LOG_BASE={d}/log RABBITMQ_PID_FILE={d}/pid \
         RABBITMQ_ENABLED_PLUGINS_FILE={d}/enabled_plugins RABBITMQ_CONFIG_FILE={d}/rabbitmq"
    );
    let server = if rabbit_user {
        format!("cd {d} && env {env} setsid su rabbitmq -s /bin/sh -c 'exec /usr/lib/rabbitmq/bin/rabbitmq-server'")
    } else {
        format!("cd {d} && env {env} setsid rabbitmq-server")
    };
    Command::new("sh")
        .args(["-c", &format!("{server} >{d}/out.log 2>&1 </dev/null &")])
        .status()
        .expect("start rabbitmq-server");
    // The watchdog: once the test binary is gone, stop our node and remove its files.
    Command::new("sh")
        .args([
            "-c",
            &format!(
                "setsid sh -c 'while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
                 rabbitmqctl -q -n {node} stop >/dev/null 2>&1; \
                 sleep 2; [ -s {d}/pid ] && kill -9 $(cat {d}/pid) 2>/dev/null; rm -rf {d}' \
                 >/dev/null 2>&1 </dev/null &"
            ),
        ])
        .status()
        .expect("start the RabbitMQ watchdog");
    for _ in 0..600 {
        if dir.join("pid").metadata().is_ok_and(|m| m.len() > 0) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let up = Command::new("rabbitmqctl")
        .args(["-q", "-n", &node, "await_startup", "--timeout", "90"])
        .stdin(Stdio::null())
        .output()
        .expect("run rabbitmqctl await_startup");
    assert!(
        up.status.success(),
        "our RabbitMQ node did not start: {}{} (see {d}/out.log)",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    RabbitNode { port, node, dir }
}
