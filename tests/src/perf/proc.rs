//! What `/proc` says about a process: its resident memory and the CPU time it has used,
//! for the broker (given `--broker-pid`) and for warren-perf itself, so a report can show
//! both sides' cost of the same run.

use anyhow::{anyhow, Context};
use std::time::Duration;

/// Clock ticks per second of `utime`/`stime` in `/proc/<pid>/stat`. Linux fixes USER_HZ at
/// 100 in its user-space ABI on every architecture Warren runs on.
const USER_HZ: f64 = 100.0;

/// Resident set size in bytes, from the `VmRSS:` line of a `/proc/<pid>/status` text.
pub fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User plus system CPU time from a `/proc/<pid>/stat` text (all threads of the process).
pub fn parse_cpu(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces or parentheses:
    // the fields after it start after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name, field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) as f64 / USER_HZ))
}

/// CPU time every core spent busy (not idle or waiting for I/O), from the first line of a
/// `/proc/stat` text.
pub fn parse_machine_busy(stat: &str) -> Option<Duration> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
    Some(Duration::from_secs_f64(busy as f64 / USER_HZ))
}

/// Busy CPU time of the whole machine so far.
pub fn machine_busy() -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    parse_machine_busy(&text).ok_or_else(|| anyhow!("unexpected format of /proc/stat"))
}

/// Which process: a pid, or this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    /// This process (`/proc/self`).
    This,
    /// Another process.
    Other(u32),
}

impl Pid {
    fn path(&self, file: &str) -> String {
        match self {
            Pid::This => format!("/proc/self/{file}"),
            Pid::Other(pid) => format!("/proc/{pid}/{file}"),
        }
    }

    /// Resident set size in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        let path = self.path("status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        parse_rss(&text).ok_or_else(|| anyhow!("no VmRSS in {path}"))
    }

    /// CPU time used so far (user plus system, all threads).
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        let path = self.path("stat");
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        parse_cpu(&text).ok_or_else(|| anyhow!("unexpected format of {path}"))
    }
}

/// CPU used by this process and (optionally) the broker between two points of a run.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    broker: Option<Pid>,
    tool_start: Duration,
    broker_start: Option<Duration>,
    machine_start: Duration,
    wall_start: std::time::Instant,
}

/// CPU seconds used over a stretch of wall time, and the share of one core that is.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CpuUse {
    /// Wall-clock seconds measured.
    pub wall_s: f64,
    /// warren-perf's CPU seconds.
    pub tool_cpu_s: f64,
    /// warren-perf's CPU as a percentage of one core.
    pub tool_core_pct: f64,
    /// The broker's CPU seconds (when its pid was given).
    pub broker_cpu_s: Option<f64>,
    /// The broker's CPU as a percentage of one core.
    pub broker_core_pct: Option<f64>,
    /// Every other process's CPU (the whole machine's busy time less warren-perf's and the
    /// broker's) as a percentage of one core: how much the run competed with. Without
    /// `--broker-pid` the broker is counted here.
    pub others_core_pct: f64,
}

impl CpuMeter {
    /// Starts measuring now.
    pub fn start(broker: Option<u32>) -> anyhow::Result<CpuMeter> {
        let broker = broker.map(Pid::Other);
        Ok(CpuMeter {
            broker,
            tool_start: Pid::This.cpu()?,
            broker_start: broker.map(|p| p.cpu()).transpose()?,
            machine_start: machine_busy()?,
            wall_start: std::time::Instant::now(),
        })
    }

    /// CPU used since `start`.
    pub fn stop(&self) -> anyhow::Result<CpuUse> {
        let wall = self.wall_start.elapsed().as_secs_f64();
        let tool = (Pid::This.cpu()? - self.tool_start).as_secs_f64();
        let broker = match (self.broker, self.broker_start) {
            (Some(pid), Some(start)) => Some(pid.cpu()?.saturating_sub(start).as_secs_f64()),
            _ => None,
        };
        let machine = machine_busy()?
            .saturating_sub(self.machine_start)
            .as_secs_f64();
        let pct = |s: f64| if wall > 0.0 { 100.0 * s / wall } else { 0.0 };
        Ok(CpuUse {
            wall_s: wall,
            tool_cpu_s: tool,
            tool_core_pct: pct(tool),
            broker_cpu_s: broker,
            broker_core_pct: broker.map(pct),
            others_core_pct: pct((machine - tool - broker.unwrap_or(0.0)).max(0.0)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_from_status() {
        let status = "Name:\tbeam.smp\nVmPeak:\t  999 kB\nVmRSS:\t   123456 kB\nThreads:\t12\n";
        assert_eq!(parse_rss(status), Some(123456 * 1024));
        assert_eq!(parse_rss("Name: x\n"), None);
    }

    #[test]
    fn cpu_from_stat_with_awkward_name() {
        // Field 2 holds spaces and a parenthesis; utime 250 and stime 50 ticks.
        let stat = "4242 (warren) (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0";
        assert_eq!(parse_cpu(stat), Some(Duration::from_secs(3)));
        assert_eq!(parse_cpu("garbage"), None);
    }

    #[test]
    fn machine_busy_from_stat() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        // user + nice + system + irq + softirq + steal = 161 ticks.
        assert_eq!(
            parse_machine_busy(stat),
            Some(Duration::from_secs_f64(1.61))
        );
        assert_eq!(parse_machine_busy("intr 1 2 3\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(Pid::This.rss().expect("rss") > 0);
        assert!(Pid::This.cpu().is_ok());
    }
}
