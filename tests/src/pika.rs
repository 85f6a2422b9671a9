//! A Python with pika for tests that drive Warren with pika: a venv under
//! `$HOME/.cache/warren-tests-pika` with the pinned pika, created on first use (pip from
//! PyPI) and reused after. A machine without python3 or without access to PyPI fails the
//! tests that need it, loudly.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The pika version the tests use (the interop suite pins the same).
pub const PIKA_VERSION: &str = "1.4.4";

/// The venv's python, with pika installed.
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let base = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(".cache/warren-tests-pika");
        let py = base.join("bin/python");
        let has_pika = |py: &PathBuf| {
            Command::new(py)
                .args([
                    "-c",
                    &format!("import pika; assert pika.__version__ == '{PIKA_VERSION}'"),
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !has_pika(&py) {
            let status = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&base)
                .status()
                .expect("python3 is needed for the pika tests");
            assert!(status.success(), "python3 -m venv failed");
            let status = Command::new(&py)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    &format!("pika=={PIKA_VERSION}"),
                ])
                .status()
                .expect("run pip");
            assert!(status.success(), "pip install pika=={PIKA_VERSION} failed");
            assert!(has_pika(&py), "pika is not importable after installing it");
        }
        py
    })
    .clone()
}
