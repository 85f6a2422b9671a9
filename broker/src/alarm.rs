//! Resource alarms, as RabbitMQ raises them: when free disk space under the data directory
//! falls below `disk_free_limit`, or the node's resident memory rises above
//! `memory_high_watermark`, publishing connections are blocked (sent `connection.blocked`
//! and no longer read) until the alarm clears. Consumers keep draining, which is what clears
//! a memory alarm.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Which alarms are raised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Alarms {
    /// Free disk is below the limit.
    pub disk: bool,
    /// Memory is above the watermark.
    pub memory: bool,
}

impl Alarms {
    /// True when any alarm is raised.
    pub fn any(&self) -> bool {
        self.disk || self.memory
    }

    /// The reason sent in `connection.blocked`, as RabbitMQ words it.
    pub fn reason(&self) -> &'static str {
        match (self.disk, self.memory) {
            (true, true) => "low on disk, low on memory",
            (true, false) => "low on disk",
            (false, true) => "low on memory",
            (false, false) => "",
        }
    }
}

/// The limits, changeable at run time.
#[derive(Debug)]
pub struct Limits {
    /// Bytes of free disk below which the disk alarm is raised.
    pub disk_free_limit: AtomicU64,
    /// Bytes of resident memory above which the memory alarm is raised.
    pub memory_high_watermark: AtomicU64,
}

/// Total physical memory, from /proc/meminfo.
pub fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// This process's resident memory, from /proc/self/statm.
pub fn resident_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Checks the resources every `interval` and publishes the alarms until `stop`.
pub fn spawn_monitor(
    dir: PathBuf,
    limits: Arc<Limits>,
    tx: watch::Sender<Alarms>,
    interval: Duration,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let d = dir.clone();
            // statvfs can block on a slow filesystem: keep it off the workers.
            let free = tokio::task::spawn_blocking(move || fs2::available_space(&d).ok())
                .await
                .ok()
                .flatten();
            let alarms = Alarms {
                disk: free.is_some_and(|f| f < limits.disk_free_limit.load(Ordering::Relaxed)),
                memory: resident_memory()
                    .is_some_and(|m| m > limits.memory_high_watermark.load(Ordering::Relaxed)),
            };
            tx.send_if_modified(|cur| {
                if *cur != alarms {
                    if alarms.any() {
                        tracing::warn!(
                            reason = alarms.reason(),
                            free_disk = free,
                            "resource alarm raised: publishers are blocked"
                        );
                    } else {
                        tracing::info!("resource alarm cleared: publishers resume");
                    }
                    *cur = alarms;
                    true
                } else {
                    false
                }
            });
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    });
}
