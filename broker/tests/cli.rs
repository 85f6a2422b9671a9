//! The `warren-server` binary's command line (this test also makes `cargo test` build the
//! binary that the process-level tests in `tests/` start).

use std::process::Command;

#[test]
fn help_lists_the_port_data_dir_and_bind_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_warren-server"))
        .arg("--help")
        .output()
        .expect("run warren-server --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--port",
        "--data-dir",
        "--bind",
        "--nodename",
        "--max-message-size",
    ] {
        assert!(text.contains(flag), "--help mentions {flag}:\n{text}");
    }
}

#[test]
fn a_bad_port_value_is_refused_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_warren-server"))
        .args(["--port", "not-a-port"])
        .output()
        .expect("run warren-server");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("--port"), "{text}");
}
