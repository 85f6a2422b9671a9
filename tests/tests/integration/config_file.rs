//! The config file (`warren.toml`) and the environment: `warren-server` refuses bad files
//! at start with a message naming the key; settings apply with the precedence defaults <
//! file < environment (RabbitMQ's names accepted) < flags; `load_definitions` imports at
//! boot.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use warren_tests::process::{free_port, server_binary, ServerProcess};
use warren_tests::{within, TestBroker};

/// Runs warren-server with `args` and `env`, expecting it to refuse to start; returns its
/// stderr.
fn refuses(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(server_binary());
    cmd.args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("WARREN_COOKIE_FILE", dir.join("cookie"))
        .env("WARREN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start warren-server");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(!status.success(), "warren-server should refuse to start");
            let mut err = String::new();
            use std::io::Read;
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return err;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("warren-server did not refuse {args:?} {env:?}: it is running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.to_str().expect("utf-8 path").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_files_are_refused_at_start_naming_the_key() {
    if TestBroker::start().await.is_external() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let cases: &[(&str, &str)] = &[
        ("prot = 5672\n", "unknown field `prot`"),
        ("port = \"five\"\n", "key `port`"),
        ("port = 70000\n", "key `port`"),
        ("heartbeat = -1\n", "key `heartbeat`"),
        (
            "vm_memory_high_watermark = 2.0\n",
            "key `vm_memory_high_watermark`",
        ),
        ("frame_max = 100\n", "key `frame_max`"),
        (
            "auth_mechanisms = [\"CRAM-MD5\"]\n",
            "key `auth_mechanisms[0]`",
        ),
        ("loopback_users = \"guest\"\n", "key `loopback_users`"),
        (
            "[tls]\ncertfile = \"c.pem\"\nkeyfile = \"k.pem\"\nverify = \"verify_all\"\n",
            "key `tls.verify`",
        ),
        ("[tls]\nkeyfile = \"k.pem\"\n", "key `tls.certfile`"),
        (
            "[tls]\ncertfile = \"c.pem\"\nkeyfile = \"k.pem\"\nverify = \"verify_peer\"\n",
            "key `tls.cacertfile`",
        ),
        (
            "[tls]\ncertfile = \"c.pem\"\nkeyfile = \"k.pem\"\nprot = 1\n",
            "unknown field `prot`",
        ),
        (
            "[tls]\ncertfile = \"missing.pem\"\nkeyfile = \"k.pem\"\n",
            "tls.certfile: failed to load",
        ),
        ("port = \n", "warren.toml"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = write(d, "warren.toml", text);
        let err = tokio::task::spawn_blocking({
            let d = d.to_path_buf();
            move || refuses(&d, &["--config", &file], &[])
        })
        .await
        .expect("ran");
        assert!(
            err.contains(expected),
            "case {i} ({text:?}): expected {expected:?} in: {err}"
        );
    }
    // The file may also come from WARREN_CONFIG_FILE.
    let file = write(d, "env.toml", "colour = 1\n");
    let err = tokio::task::spawn_blocking({
        let d = d.to_path_buf();
        move || refuses(&d, &[], &[("WARREN_CONFIG_FILE", &file)])
    })
    .await
    .expect("ran");
    assert!(err.contains("colour") && err.contains("env.toml"), "{err}");
    // A missing file, and bad environment values, are named too.
    let err = tokio::task::spawn_blocking({
        let d = d.to_path_buf();
        move || refuses(&d, &["--config", "/nonexistent/warren.toml"], &[])
    })
    .await
    .expect("ran");
    assert!(err.contains("/nonexistent/warren.toml"), "{err}");
    let err = tokio::task::spawn_blocking({
        let d = d.to_path_buf();
        move || refuses(&d, &[], &[("RABBITMQ_NODE_PORT", "abc")])
    })
    .await
    .expect("ran");
    assert!(err.contains("RABBITMQ_NODE_PORT"), "{err}");
}

async fn accepts(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_then_environment_then_flags() {
    if TestBroker::start().await.is_external() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let (dist, http) = (free_port(), free_port());
    let config = write(
        dir.path(),
        "warren.toml",
        &format!(
            "port = {file_port}\ndist_port = {dist}\nhttp_port = {http}\ndefault_user = \"admin\"\ndefault_pass = \"from-file\"\ndata_dir = \"data\"\ncookie_file = \"cookie\"\n"
        ),
    );
    // File alone.
    let mut server = ServerProcess::start_with(dir.path(), file_port, |cmd| {
        // ServerProcess passes --port and --data-dir; run the binary without them.
        *cmd = Command::new(server_binary());
        cmd.arg("--config").arg(&config);
    })
    .await;
    let uri = format!("amqp://admin:from-file@127.0.0.1:{file_port}/%2f");
    within(
        10,
        "connect",
        lapin::Connection::connect(&uri, Default::default()),
    )
    .await
    .expect("the file's port and default user");
    assert!(
        dir.path().join("data").join("store").exists(),
        "data_dir is relative to the file"
    );
    assert!(
        dir.path().join("cookie").exists(),
        "cookie_file is relative to the file"
    );
    server.stop();
    // RabbitMQ's variable beats the file.
    let mut server = ServerProcess::start_with(dir.path(), env_port, |cmd| {
        *cmd = Command::new(server_binary());
        cmd.arg("--config")
            .arg(&config)
            .env("RABBITMQ_NODE_PORT", env_port.to_string());
    })
    .await;
    assert!(!accepts(file_port).await);
    server.stop();
    // A flag beats both.
    let _server = ServerProcess::start_with(dir.path(), flag_port, |cmd| {
        *cmd = Command::new(server_binary());
        cmd.arg("--config")
            .arg(&config)
            .arg("--port")
            .arg(flag_port.to_string())
            .env("WARREN_NODE_PORT", env_port.to_string());
    })
    .await;
    assert!(!accepts(env_port).await);
}
