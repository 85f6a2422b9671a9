//! A node's life in a cluster beyond joining: auto-configuration from `cluster_nodes`,
//! `reset` of a node that cannot start (`warrenctl reset`, `warren-server --reset`), a
//! forgotten node refusing to start with RabbitMQ's `inconsistent_cluster` text,
//! `force_boot` after a majority of disc nodes is lost for good, the transient and exclusive
//! queues of a node that goes down, and mutual TLS on the distribution port.

use crate::cluster_common::{connect, json, status};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::Connection;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use warren_tests::cluster::{ClusterNode, TestCluster};
use warren_tests::process::server_binary;
use warren_tests::{eventually, unique, within};

async fn queue_names(node: &ClusterNode) -> Vec<String> {
    let out = node
        .ctl_ok(&["list_queues", "name", "--formatter", "json"])
        .await;
    let mut v: Vec<String> = json(&out)
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

fn sorted(names: &[&str]) -> serde_json::Value {
    let mut v: Vec<&str> = names.to_vec();
    v.sort();
    serde_json::json!(v)
}

async fn declare(conn: &Connection, name: &str, durable: bool, exclusive: bool) {
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable,
            exclusive,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("declare {name}: {e}"));
}

/// Waits until `node`'s cluster_status lists exactly these disc and RAM nodes.
async fn wait_members(node: &ClusterNode, disc: &[&str], ram: &[&str]) {
    let (d, r) = (sorted(disc), sorted(ram));
    let ok = eventually(Duration::from_secs(15), || async {
        let s = node.ctl(&["cluster_status", "--formatter", "json"]).await;
        s.code == 0 && {
            let s = json(&s.stdout);
            s["disk_nodes"] == d && s["ram_nodes"] == r && s["waiting_for"].is_null()
        }
    })
    .await;
    assert!(
        ok,
        "cluster_status on {}: {}",
        node.name,
        status(node).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_config_forms_a_cluster_at_first_start_only() {
    let mut cluster = TestCluster::unstarted(4).await;
    let members: Vec<String> = cluster.nodes[..3].iter().map(|n| n.member()).collect();
    let list = members
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    for (i, node) in cluster.nodes[..3].iter_mut().enumerate() {
        let kind = if i == 2 { "ram" } else { "disc" };
        node.config_toml = format!(
            "cluster_nodes = [{list}]\ncluster_node_type = \"{kind}\"\n[cluster_formation]\ndiscovery_retry_limit = 3\ndiscovery_retry_interval = 200\n"
        );
    }
    // The fourth node lists only itself: it starts standalone at once.
    let own = cluster.nodes[3].member();
    cluster.nodes[3].config_toml = format!("cluster_nodes = [\"{own}\"]\n");
    within(60, "start the nodes", async {
        for node in cluster.nodes.iter_mut() {
            node.start().await;
        }
    })
    .await;
    let [a, b, c, d] = &cluster.nodes[..] else {
        unreachable!()
    };
    for n in [a, b, c] {
        wait_members(n, &[&a.name, &b.name], &[&c.name]).await;
    }
    let sd = status(d).await;
    assert_eq!(sd["disk_nodes"], sorted(&[&d.name]), "{sd}");

    // A definition made on the RAM node reaches the others.
    let q = unique("auto");
    let conn = connect(c).await;
    declare(&conn, &q, true, false).await;
    let _ = conn.close(200, "bye".into()).await;
    assert!(queue_names(a).await.contains(&q));

    // A restart does not run peer discovery again: B keeps its membership and
    // definitions (it is not reset), and so does the RAM node.
    let cluster_ref = &mut cluster;
    within(60, "restart B and C", async {
        cluster_ref.nodes[1].stop().await;
        cluster_ref.nodes[1].start().await;
        cluster_ref.nodes[2].stop().await;
        cluster_ref.nodes[2].start().await;
    })
    .await;
    let [a, b, c, _] = &cluster.nodes[..] else {
        unreachable!()
    };
    for n in [a, b, c] {
        wait_members(n, &[&a.name, &b.name], &[&c.name]).await;
    }
    let ok = eventually(Duration::from_secs(10), || async {
        queue_names(b).await.contains(&q) && queue_names(c).await.contains(&q)
    })
    .await;
    assert!(ok, "the queue survives the restarts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_node_refuses_to_start_until_reset_then_joins_again() {
    let mut cluster = TestCluster::start(3).await;
    let q = unique("kept");
    {
        let conn = connect(&cluster.nodes[0]).await;
        declare(&conn, &q, true, false).await;
        let _ = conn.close(200, "bye".into()).await;
    }
    within(30, "stop C", cluster.nodes[2].stop()).await;
    let c_name = cluster.nodes[2].name.clone();
    cluster.nodes[0]
        .ctl_ok(&["forget_cluster_node", &c_name])
        .await;
    within(30, "start C again", cluster.nodes[2].start()).await;
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    // C's distribution port answers; its application refused to start.
    assert!(
        !c.app_running(),
        "a forgotten node must not start its application"
    );
    let out = c.ctl(&["cluster_status"]).await;
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr.contains("inconsistent_cluster")
            && out
                .stderr
                .contains(&format!("Node {c_name} thinks it's clustered with node"))
            && out.stderr.contains("disagrees"),
        "{}",
        out.stderr
    );
    let out = c.ctl(&["await_startup", "-t", "2"]).await;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("inconsistent_cluster"),
        "{}",
        out.stderr
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", c.amqp_port))
            .await
            .is_err(),
        "no AMQP listener on a node whose application did not start"
    );
    // start_app refuses the same way.
    let out = c.ctl(&["start_app"]).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("disagrees"), "{}", out.stderr);

    // reset works against it (the cluster no longer knows it: nothing to leave), and
    // it can join again.
    let out = c.ctl_ok(&["reset"]).await;
    assert!(out.contains("Resetting node"), "{out}");
    c.ctl_ok(&["start_app"]).await;
    assert!(c.app_running());
    assert!(!queue_names(c).await.contains(&q), "a reset node is fresh");
    c.join(a, false).await;
    for n in [a, b, c] {
        wait_members(n, &[&a.name, &b.name, &c.name], &[]).await;
    }
    assert!(queue_names(c).await.contains(&q));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_server_reset_takes_a_stopped_node_out_of_its_cluster() {
    let mut cluster = TestCluster::start(3).await;
    within(30, "stop C", cluster.nodes[2].stop()).await;
    let c = &cluster.nodes[2];
    let run = |args: Vec<String>| {
        let c_cookie = c.cookie_file.clone();
        let out = std::process::Command::new(server_binary())
            .args(args)
            .env("WARREN_COOKIE_FILE", c_cookie)
            .env("WARREN_LOG", "warn")
            .env_remove("WARREN_CONFIG_FILE")
            .output()
            .expect("run warren-server --reset");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let args = vec![
        "--reset".to_string(),
        "--nodename".into(),
        c.name.clone(),
        "--port".into(),
        c.amqp_port.to_string(),
        "--dist-port".into(),
        c.dist_port.to_string(),
        "--data-dir".into(),
        c.data_dir.display().to_string(),
    ];
    let (code, stdout, stderr) = tokio::task::block_in_place(|| run(args));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("Resetting node {}", c.name)),
        "{stdout}"
    );
    assert!(
        !c.data_dir.join("store").exists(),
        "the node's data is gone"
    );
    assert!(!c.data_dir.join("cluster.json").exists());
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    wait_members(a, &[&a.name, &b.name], &[]).await;
    // The node starts fresh and standalone.
    within(30, "start C", cluster.nodes[2].start()).await;
    let c = &cluster.nodes[2];
    assert!(c.app_running());
    let s = status(c).await;
    assert_eq!(s["disk_nodes"], sorted(&[&c.name]), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_boot_serves_definitions_again_after_losing_two_of_three_disc_nodes() {
    let mut cluster = TestCluster::start(3).await;
    let q = unique("survives");
    {
        let conn = connect(&cluster.nodes[0]).await;
        declare(&conn, &q, true, false).await;
        let _ = conn.close(200, "bye".into()).await;
    }
    // Two disc nodes are lost for good.
    within(30, "stop B and C", async {
        cluster.nodes[2].stop().await;
        cluster.nodes[1].stop().await;
    })
    .await;
    let a = &cluster.nodes[0];
    let ok = eventually(Duration::from_secs(10), || async {
        !status(a).await["waiting_for"].is_null()
    })
    .await;
    assert!(ok, "A waits for a majority: {}", status(a).await);
    let out = a.ctl(&["add_vhost", &unique("vh")]).await;
    assert_ne!(out.code, 0, "no definition change without a majority");

    let started = std::time::Instant::now();
    a.ctl_ok(&["stop_app"]).await;
    let out = a.ctl_ok(&["force_boot"]).await;
    assert!(out.contains("Forcing boot"), "{out}");
    a.ctl_ok(&["start_app"]).await;
    wait_members(a, &[&a.name], &[]).await;
    let vh = unique("vh");
    let ok = eventually(Duration::from_secs(10), || async {
        a.ctl(&["add_vhost", &vh]).await.code == 0
    })
    .await;
    assert!(ok, "definition changes are accepted again");
    eprintln!(
        "force_boot: stop_app + force_boot + start_app to a definition change: {:?}",
        started.elapsed()
    );
    assert!(queue_names(a).await.contains(&q), "definitions are kept");
    let conn = connect(a).await;
    declare(&conn, &unique("after"), true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_and_exclusive_queues_of_a_killed_node_are_deleted() {
    let mut cluster = TestCluster::start(3).await;
    let (durable, transient, exclusive) = (unique("dur"), unique("tr"), unique("ex"));
    let conn = connect(&cluster.nodes[2]).await;
    declare(&conn, &durable, true, false).await;
    declare(&conn, &transient, false, false).await;
    declare(&conn, &exclusive, false, true).await;
    let a = &cluster.nodes[0];
    let ok = eventually(Duration::from_secs(10), || async {
        let names = queue_names(a).await;
        names.contains(&durable) && names.contains(&transient) && names.contains(&exclusive)
    })
    .await;
    assert!(ok, "A sees C's queues");
    let killed = std::time::Instant::now();
    cluster.nodes[2].kill();
    drop(conn);
    let a = &cluster.nodes[0];
    let b = &cluster.nodes[1];
    let ok = eventually(Duration::from_secs(20), || async {
        let names = queue_names(a).await;
        !names.contains(&transient) && !names.contains(&exclusive)
    })
    .await;
    assert!(
        ok,
        "C's transient and exclusive queues are deleted: {:?}",
        queue_names(a).await
    );
    eprintln!(
        "transient queues of a killed node gone after {:?}",
        killed.elapsed()
    );
    for n in [a, b] {
        let names = queue_names(n).await;
        assert!(
            names.contains(&durable),
            "{} keeps the durable queue",
            n.name
        );
        assert!(!names.contains(&transient), "{}: {names:?}", n.name);
    }
}

/// A CA and certificates for mutual TLS on the distribution port: nodes present theirs
/// as server and as client.
struct DistCa {
    issuer: Issuer<'static, KeyPair>,
    ca_file: PathBuf,
}

impl DistCa {
    fn new(dir: &Path, name: &str) -> DistCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-sign");
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, cert.pem()).expect("write CA");
        DistCa {
            issuer: Issuer::new(params, key),
            ca_file,
        }
    }

    /// (certificate file, key file).
    fn issue(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, stem);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let (c, k) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }

    fn toml(&self, dir: &Path, stem: &str) -> String {
        let (c, k) = self.issue(dir, stem);
        format!(
            "[dist_tls]\ncertfile = \"{}\"\nkeyfile = \"{}\"\ncacertfile = \"{}\"\n",
            c.display(),
            k.display(),
            self.ca_file.display()
        )
    }

    fn ctl_env(&self, dir: &Path, stem: &str) -> Vec<(String, String)> {
        let (c, k) = self.issue(dir, stem);
        vec![
            ("WARREN_DIST_TLS_CERTFILE".into(), c.display().to_string()),
            ("WARREN_DIST_TLS_KEYFILE".into(), k.display().to_string()),
            (
                "WARREN_DIST_TLS_CACERTFILE".into(),
                self.ca_file.display().to_string(),
            ),
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_cluster_over_mutual_tls_and_refuse_peers_without_a_valid_certificate() {
    let mut cluster = TestCluster::unstarted(3).await;
    let dir = cluster.dir.path().to_path_buf();
    let ca = DistCa::new(&dir, "cluster");
    for i in 0..2 {
        let stem = format!("node{i}");
        cluster.nodes[i].config_toml = ca.toml(&dir, &stem);
        cluster.nodes[i].ctl_env = ca.ctl_env(&dir, &format!("ctl{i}"));
    }
    within(60, "start the nodes", async {
        for node in cluster.nodes.iter_mut() {
            node.start().await;
        }
    })
    .await;
    let [a, b, plain] = &cluster.nodes[..] else {
        unreachable!()
    };
    b.join(a, false).await;
    for n in [a, b] {
        wait_members(n, &[&a.name, &b.name], &[]).await;
    }
    let q = unique("tls");
    let conn = connect(b).await;
    declare(&conn, &q, true, false).await;
    assert!(queue_names(a).await.contains(&q));

    // warrenctl without a certificate, and with one from another CA: refused.
    let mut bare = ClusterNode::new(&dir, "unused", a.cookie_file.clone());
    bare.dist_port = a.dist_port;
    bare.name = a.name.clone();
    let out = bare.ctl(&["cluster_status"]).await;
    assert_eq!(out.code, 69, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("require TLS"), "{}", out.stderr);
    let rogue = DistCa::new(&dir, "rogue");
    bare.ctl_env = rogue.ctl_env(&dir, "rogue-ctl");
    let out = bare.ctl(&["cluster_status"]).await;
    assert_eq!(out.code, 69, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("TLS"), "{}", out.stderr);

    // A node without a certificate cannot join.
    plain.ctl_ok(&["stop_app"]).await;
    let out = plain.ctl(&["join_cluster", &a.node_arg()]).await;
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("require TLS"), "{}", out.stderr);
    wait_members(a, &[&a.name, &b.name], &[]).await;
}
