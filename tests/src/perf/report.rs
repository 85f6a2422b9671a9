//! Where a scenario's output goes: progress and the human summary on stdout, or, with
//! `--json`, progress on stderr and one JSON object on stdout for scripts; plus the number
//! formats the summaries share.

use serde::Serialize;
use std::io::Write;

/// A scenario's output channel.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    json: bool,
}

impl Output {
    /// Human output, or JSON on stdout with progress on stderr.
    pub fn new(json: bool) -> Output {
        Output { json }
    }

    /// True when the summary is JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// A progress line (per-second rates, phases).
    pub fn progress(&self, line: &str) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
            let _ = std::io::stdout().flush();
        }
    }

    /// The summary: `human` lines, or `report` as JSON.
    pub fn summary<T: Serialize>(&self, report: &T, human: &[String]) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string(report)?);
        } else {
            for line in human {
                println!("{line}");
            }
        }
        Ok(())
    }
}

/// A rate with no decimals below 100 and none needed above.
pub fn rate(r: f64) -> String {
    if r < 100.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.0}")
    }
}

/// A byte count in KiB, MiB or GiB.
pub fn bytes(b: f64) -> String {
    const KIB: f64 = 1024.0;
    let a = b.abs();
    if a >= KIB * KIB * KIB {
        format!("{:.2} GiB", b / (KIB * KIB * KIB))
    } else if a >= KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else if a >= KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{b:.0} B")
    }
}

/// A duration given in microseconds, in µs or ms.
pub fn micros(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// The `host:port` of an AMQP URI, for reports (no credentials).
pub fn broker_of(uri: &super::uri::AmqpUri) -> String {
    uri.addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(rate(12.345), "12.3");
        assert_eq!(rate(123456.7), "123457");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(2048.0), "2.0 KiB");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
        assert_eq!(bytes(-2048.0), "-2.0 KiB");
        assert_eq!(micros(250.0), "250 µs");
        assert_eq!(micros(1500.0), "1.50 ms");
    }
}
