//! `TestCluster`: N Warren nodes, each with its own AMQP port, distribution port, data
//! directory and `name@localhost` node name, sharing one cookie file. Nodes are clustered
//! the way an operator does it: `warrenctl stop_app`, `join_cluster`, `start_app`. A node
//! can be stopped and started again on the same ports and data.
//!
//! `TestCluster::start` runs the nodes in this process. `TestCluster::start_proxied` runs
//! them as `warren-server` child processes (so a node can be killed with SIGKILL) whose
//! distribution links all pass through fault-injecting proxies: node X reaches node Y at
//! the proxy P(X→Y), through the `cluster_peer_addresses` setting, so a test can cut, delay,
//! blackhole and heal each direction of each link (`partition(i)`, `heal(i)`).

use crate::process::{free_port, warrenctl_binary, ServerProcess};
use crate::proxy::Proxy;
use crate::CtlOutput;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One node of a test cluster.
pub struct ClusterNode {
    /// `name@localhost`.
    pub name: String,
    /// Its AMQP port.
    pub amqp_port: u16,
    /// Its distribution port.
    pub dist_port: u16,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its cookie file.
    pub cookie_file: PathBuf,
    /// Config file text (TOML) the node starts with, as `warren-server --config` reads it
    /// (ports, name, data directory and cookie are the harness's).
    pub config_toml: String,
    /// Extra environment for the warrenctl runs of `ctl` (TLS flags, for instance).
    pub ctl_env: Vec<(String, String)>,
    running: Option<warren_broker::RunningBroker>,
    /// A node run as a child process: the config file it reads.
    process_config: Option<PathBuf>,
    process: Option<ServerProcess>,
}

impl ClusterNode {
    /// A node (not started) with fresh ports under `dir`.
    pub fn new(dir: &std::path::Path, name: &str, cookie_file: PathBuf) -> ClusterNode {
        ClusterNode {
            name: format!("{name}@localhost"),
            amqp_port: free_port(),
            dist_port: free_port(),
            data_dir: dir.join(name),
            cookie_file,
            config_toml: String::new(),
            ctl_env: Vec::new(),
            running: None,
            process_config: None,
            process: None,
        }
    }

    /// `name@localhost:dist_port`, as `cluster_nodes` and warrenctl name this node.
    pub fn member(&self) -> String {
        self.node_arg()
    }

    /// Starts the node (recovering what its data directory holds); a process node returns
    /// once it accepts AMQP connections.
    pub async fn start(&mut self) {
        if let Some(config_file) = self.process_config.clone() {
            let (name, dist, cookie) = (
                self.name.clone(),
                self.dist_port.to_string(),
                self.cookie_file.clone(),
            );
            let process = ServerProcess::start_with(&self.data_dir, self.amqp_port, |cmd| {
                cmd.arg("--config")
                    .arg(&config_file)
                    .env("WARREN_NODENAME", &name)
                    .env("WARREN_DIST_PORT", &dist)
                    .env("WARREN_COOKIE_FILE", &cookie);
            })
            .await;
            self.process = Some(process);
            return;
        }
        let mut config = warren_broker::Config::for_tests(&self.data_dir);
        if !self.config_toml.is_empty() {
            let path = self
                .data_dir
                .with_file_name(format!("{}.toml", self.name.replace('@', "-")));
            config
                .apply_file(&path, &self.config_toml)
                .unwrap_or_else(|e| panic!("config of node {}: {e}", self.name));
        }
        config.port = self.amqp_port;
        config.dist_port = Some(self.dist_port);
        config.node_name = Some(self.name.clone());
        config.cookie_file = Some(self.cookie_file.clone());
        let running = warren_broker::Broker::start(config)
            .await
            .unwrap_or_else(|e| panic!("start node {}: {e}", self.name));
        self.running = Some(running);
    }

    /// Stops the node (as SIGTERM does) and waits until it has stopped.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        if let Some(mut p) = self.process.take() {
            tokio::task::spawn_blocking(move || p.stop())
                .await
                .expect("the node stopped");
        }
    }

    /// Stops the node abruptly: a process node gets SIGKILL (waited for); an in-process
    /// node stops with no clean application stop (the in-process stand-in for a crash: its
    /// listeners and Raft member go, nothing is handed over).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
        if let Some(r) = self.running.take() {
            r.shutdown_in_background();
        }
    }

    /// True while the node runs.
    pub fn is_running(&self) -> bool {
        self.running.is_some() || self.process.is_some()
    }

    /// True while the node runs with its application started.
    pub fn app_running(&self) -> bool {
        self.shared().is_some()
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// The `-n` argument for warrenctl: `name@localhost:dist_port`.
    pub fn node_arg(&self) -> String {
        format!("{}:{}", self.name, self.dist_port)
    }

    /// The running application's shared state (an in-process node only).
    pub fn shared(&self) -> Option<Arc<warren_broker::broker::BrokerShared>> {
        self.running.as_ref().and_then(|r| r.node().app())
    }

    /// Runs `warrenctl -n <this node> ARGS`.
    pub async fn ctl(&self, args: &[&str]) -> CtlOutput {
        let mut full = vec!["-n".to_string(), self.node_arg()];
        full.extend(args.iter().map(|a| a.to_string()));
        let cookie = self.cookie_file.clone();
        let env = self.ctl_env.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(warrenctl_binary())
                .args(&full)
                .envs(env)
                .env("WARREN_COOKIE_FILE", cookie)
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run warrenctl");
            CtlOutput {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
        .await
        .expect("warrenctl ran")
    }

    /// Like `ctl`, asserting success; returns stdout.
    pub async fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args).await;
        assert_eq!(
            out.code, 0,
            "warrenctl {args:?} on {} failed: {}{}",
            self.name, out.stdout, out.stderr
        );
        out.stdout
    }

    /// Makes this node join `other`'s cluster (stop_app, join_cluster, start_app).
    pub async fn join(&self, other: &ClusterNode, ram: bool) {
        self.ctl_ok(&["stop_app"]).await;
        let target = other.node_arg();
        let mut args = vec!["join_cluster"];
        if ram {
            args.push("--ram");
        }
        args.push(&target);
        self.ctl_ok(&args).await;
        self.ctl_ok(&["start_app"]).await;
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown_in_background();
        }
    }
}

/// N in-process nodes sharing a cookie, in one temporary directory.
pub struct TestCluster {
    /// The nodes, in creation order.
    pub nodes: Vec<ClusterNode>,
    /// The shared directory.
    pub dir: tempfile::TempDir,
    /// The proxy on each distribution link of a proxied cluster, by (from, to) node index:
    /// node `from` dials node `to` at `links[(from, to)]`.
    links: HashMap<(usize, usize), Proxy>,
    /// Clusters run one at a time: several Raft groups electing leaders on a loaded 2-core
    /// machine at once miss their election timeouts.
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

/// Builds warren-server and warrenctl (a no-op when up to date) before a test's time
/// limits start: a build on a loaded machine can take minutes.
async fn prebuild() {
    tokio::task::spawn_blocking(|| {
        crate::process::server_binary();
        warrenctl_binary();
    })
    .await
    .expect("build the binaries");
}

fn turns() -> Arc<tokio::sync::Mutex<()>> {
    static TURNS: std::sync::OnceLock<Arc<tokio::sync::Mutex<()>>> = std::sync::OnceLock::new();
    TURNS.get_or_init(Default::default).clone()
}

impl TestCluster {
    /// Starts `n` standalone nodes (not clustered yet), once no other test cluster runs.
    pub async fn standalone(n: usize) -> TestCluster {
        let turn = turns().lock_owned().await;
        prebuild().await;
        crate::within(60, "start the nodes", Self::standalone_now(n, turn)).await
    }

    /// `n` nodes, not started (to set their `config_toml` first), once no other test
    /// cluster runs.
    pub async fn unstarted(n: usize) -> TestCluster {
        let turn = turns().lock_owned().await;
        prebuild().await;
        Self::unstarted_now(n, turn)
    }

    /// `n` nodes (not started) with fresh ports and names, in a new temporary directory.
    fn unstarted_now(n: usize, turn: tokio::sync::OwnedMutexGuard<()>) -> TestCluster {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let cookie_file = dir.path().join(".warren.cookie");
        let tag = crate::unique("c");
        let tag = tag.rsplit('-').take(2).collect::<Vec<_>>().join("");
        let nodes = (0..n)
            .map(|i| {
                ClusterNode::new(
                    dir.path(),
                    &format!("n{}-{tag}", i + 1),
                    cookie_file.clone(),
                )
            })
            .collect();
        TestCluster {
            nodes,
            dir,
            links: HashMap::new(),
            _turn: turn,
        }
    }

    async fn standalone_now(n: usize, turn: tokio::sync::OwnedMutexGuard<()>) -> TestCluster {
        let mut cluster = Self::unstarted_now(n, turn);
        for node in cluster.nodes.iter_mut() {
            node.start().await;
        }
        cluster
    }

    /// Starts `n` `warren-server` processes whose distribution links each pass through a
    /// proxy (node X dials node Y at the proxy P(X→Y), configured as Y's address in X's
    /// `cluster_peer_addresses`), and clusters them as `start` does.
    pub async fn start_proxied(n: usize) -> TestCluster {
        let turn = turns().lock_owned().await;
        prebuild().await;
        let mut cluster = Self::unstarted_now(n, turn);
        for from in 0..n {
            for to in (0..n).filter(|&to| to != from) {
                let target =
                    std::net::SocketAddr::from(([127, 0, 0, 1], cluster.nodes[to].dist_port));
                cluster.links.insert((from, to), Proxy::start(target).await);
            }
        }
        for from in 0..n {
            let mut text = String::from("[cluster_peer_addresses]\n");
            for to in (0..n).filter(|&to| to != from) {
                text.push_str(&format!(
                    "\"{}\" = \"{}\"\n",
                    cluster.nodes[to].name,
                    cluster.links[&(from, to)].addr()
                ));
            }
            let path = cluster.dir.path().join(format!("node{}.toml", from + 1));
            std::fs::write(&path, text).expect("write the node's config file");
            cluster.nodes[from].process_config = Some(path);
        }
        crate::within(120, "start and join the proxied nodes", async {
            for node in cluster.nodes.iter_mut() {
                node.start().await;
            }
            for i in 1..n {
                cluster.nodes[i].join(&cluster.nodes[0], false).await;
            }
        })
        .await;
        cluster
    }

    /// The proxy node `from` reaches node `to` through (a proxied cluster only).
    pub fn link(&self, from: usize, to: usize) -> &Proxy {
        self.links
            .get(&(from, to))
            .expect("a proxied cluster has a proxy on every link")
    }

    /// The links to and from node `i`, both directions.
    fn links_of(&self, i: usize) -> impl Iterator<Item = &Proxy> {
        self.links
            .iter()
            .filter(move |((from, to), _)| *from == i || *to == i)
            .map(|(_, p)| p)
    }

    /// Partitions node `i` from the others, both directions: its current distribution
    /// connections are cut and new ones are blackholed (accepted, never answered).
    pub fn partition(&self, i: usize) {
        for p in self.links_of(i) {
            p.blackhole(true);
            p.cut();
        }
    }

    /// Heals a partition of node `i`: new connections are forwarded again (connections held
    /// in the blackhole are dropped, so their dialers retry at once).
    pub fn heal(&self, i: usize) {
        for p in self.links_of(i) {
            p.blackhole(false);
            p.cut();
        }
    }

    /// Cuts every current distribution connection (nodes reconnect through the proxies).
    pub fn cut_links(&self) {
        for p in self.links.values() {
            p.cut();
        }
    }

    /// Adds `latency` in each direction of every distribution link.
    pub fn delay_links(&self, latency: Duration) {
        for p in self.links.values() {
            p.delay(latency);
        }
    }

    /// Starts `n` nodes and clusters them: every node after the first joins the first, as
    /// a disc node.
    pub async fn start(n: usize) -> TestCluster {
        let cluster = Self::standalone(n).await;
        crate::within(60, "join the nodes", async {
            for i in 1..n {
                cluster.nodes[i].join(&cluster.nodes[0], false).await;
            }
        })
        .await;
        cluster
    }
}
