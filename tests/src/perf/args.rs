//! warren-perf's command line: one subcommand per scenario, flags named after RabbitMQ's
//! PerfTest where it has the same knob (`-x` producers, `-y` consumers, `-s` size,
//! `--multi-ack-every`, `--qos`, `--rate`, `--queue-pattern`), and the checks that reject
//! combinations that could not run (a multi-ack batch larger than the prefetch would stall).

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// Warren's load generator: drives an AMQP 0-9-1 broker (Warren or RabbitMQ) and reports
/// rates, latencies, and the broker's CPU and memory.
#[derive(Parser, Debug)]
#[command(name = "warren-perf", version)]
pub struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The scenarios.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Producers publish and consumers consume for a fixed time; per-second rates, then
    /// medians and latency percentiles.
    Throughput(ThroughputArgs),
    /// Opens N connections with a channel each and holds them: open rate and the broker's
    /// memory per connection.
    Connections(ConnectionsArgs),
    /// Declares, binds and deletes N queues: operations per second.
    Queues(QueuesArgs),
    /// Publishes N messages with no consumer, then drains them: both rates and the broker's
    /// peak memory.
    Backlog(BacklogArgs),
}

/// Flags every scenario takes.
#[derive(Args, Debug, Clone, Serialize)]
pub struct Common {
    /// The broker to drive.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// Print the summary as one JSON object on stdout (progress lines go to stderr).
    #[arg(long)]
    pub json: bool,
    /// The broker's process id, to report its CPU time and resident memory from /proc.
    #[arg(long)]
    pub broker_pid: Option<u32>,
}

/// Exchange types a throughput run can publish through.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    /// Routing key equals the binding key.
    Direct,
    /// Every bound queue.
    Fanout,
    /// Pattern match on dotted words.
    Topic,
}

impl ExchangeType {
    /// The AMQP name of the type.
    pub fn as_str(&self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Topic => "topic",
        }
    }
}

/// `warren-perf throughput`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ThroughputArgs {
    /// Common flags.
    #[command(flatten)]
    pub common: Common,
    /// Where producers connect (default: --uri, where the queues are declared); with a
    /// cluster, another node than the queues' home node.
    #[arg(long, value_name = "URI")]
    pub producer_uri: Option<String>,
    /// Where consumers connect (default: --uri).
    #[arg(long, value_name = "URI")]
    pub consumer_uri: Option<String>,
    /// Producers (one connection and channel each).
    #[arg(short = 'x', long, default_value_t = 1)]
    pub producers: u32,
    /// Consumers (one connection and channel each).
    #[arg(short = 'y', long, default_value_t = 1)]
    pub consumers: u32,
    /// Message body size in bytes; bodies of 8 bytes or more carry the send time, which
    /// is what latency is measured from.
    #[arg(short = 's', long, default_value_t = 16)]
    pub size: usize,
    /// Publisher confirms with at most this many unconfirmed messages per producer.
    #[arg(long, value_name = "N")]
    pub confirm: Option<u32>,
    /// Persistent messages (delivery mode 2) to durable queues.
    #[arg(long)]
    pub persistent: bool,
    /// Per-consumer prefetch (basic.qos).
    #[arg(long, value_name = "N")]
    pub qos: Option<u16>,
    /// Ack every N messages with one multiple ack (1: ack each message).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub multi_ack_every: u32,
    /// Consume without acks (no-ack mode).
    #[arg(long)]
    pub autoack: bool,
    /// Messages per second per producer (unlimited when absent).
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Queue name pattern, `%d` replaced by 1..=--queues (default: one queue named after
    /// this process).
    #[arg(long, value_name = "PATTERN")]
    pub queue_pattern: Option<String>,
    /// How many queues (with --queue-pattern or --exchange-type).
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// Publish through an exchange of this type bound to every queue (default: the default
    /// exchange, each producer to one queue).
    #[arg(long, value_enum)]
    pub exchange_type: Option<ExchangeType>,
    /// Run time in seconds.
    #[arg(long, default_value_t = 10)]
    pub time: u64,
    /// Keep the queues after the run (they are deleted by default).
    #[arg(long)]
    pub keep_queues: bool,
}

impl ThroughputArgs {
    /// Rejects combinations that cannot run.
    pub fn validate(&self) -> Result<(), String> {
        if self.producers == 0 && self.consumers == 0 {
            return Err("nothing to do: -x 0 and -y 0".into());
        }
        if self.queues == 0 {
            return Err("--queues must be at least 1".into());
        }
        if self.queues > 1 && self.queue_pattern.is_none() && self.exchange_type.is_none() {
            return Err("--queues > 1 needs --queue-pattern or --exchange-type".into());
        }
        if let Some(p) = &self.queue_pattern {
            if self.queues > 1 && !p.contains("%d") {
                return Err(format!(
                    "--queue-pattern {p:?} needs %d to name {} queues",
                    self.queues
                ));
            }
        }
        if self.confirm == Some(0) {
            return Err("--confirm must be at least 1".into());
        }
        if self.multi_ack_every == 0 {
            return Err("--multi-ack-every must be at least 1".into());
        }
        if let (Some(qos), false) = (self.qos, self.autoack) {
            if qos != 0 && self.multi_ack_every > u32::from(qos) {
                return Err(format!(
                    "--multi-ack-every {} is larger than --qos {qos}: consumers would stall",
                    self.multi_ack_every
                ));
            }
        }
        if let Some(r) = self.rate {
            if r.is_nan() || r <= 0.0 {
                return Err("--rate must be a positive number".into());
            }
        }
        if self.time == 0 {
            return Err("--time must be at least 1 second".into());
        }
        Ok(())
    }

    /// The names of the queues used by this run.
    pub fn queue_names(&self, default_name: &str) -> Vec<String> {
        match &self.queue_pattern {
            Some(p) => (1..=self.queues)
                .map(|i| p.replace("%d", &i.to_string()))
                .collect(),
            None if self.queues == 1 => vec![default_name.to_string()],
            None => (1..=self.queues)
                .map(|i| format!("{default_name}-{i}"))
                .collect(),
        }
    }
}

/// `warren-perf connections`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ConnectionsArgs {
    /// Common flags.
    #[command(flatten)]
    pub common: Common,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub count: u32,
    /// Connections opened at the same time.
    #[arg(long, default_value_t = 16)]
    pub parallel: u32,
    /// Seconds to hold them open once all are open.
    #[arg(long, default_value_t = 2)]
    pub hold: u64,
}

/// `warren-perf queues`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct QueuesArgs {
    /// Common flags.
    #[command(flatten)]
    pub common: Common,
    /// Queues to declare, bind and delete.
    #[arg(long, default_value_t = 1000)]
    pub count: u32,
    /// Declare durable queues.
    #[arg(long)]
    pub durable: bool,
}

/// `warren-perf backlog`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct BacklogArgs {
    /// Common flags.
    #[command(flatten)]
    pub common: Common,
    /// Messages to publish before consuming.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Message body size in bytes.
    #[arg(short = 's', long, default_value_t = 16)]
    pub size: usize,
    /// Persistent messages to a durable queue.
    #[arg(long)]
    pub persistent: bool,
    /// Unconfirmed messages allowed in flight while publishing.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub confirm: u32,
    /// Prefetch of the draining consumer.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub qos: u16,
    /// The draining consumer acks every N messages with one multiple ack.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub multi_ack_every: u32,
}

impl BacklogArgs {
    /// Rejects combinations that cannot run.
    pub fn validate(&self) -> Result<(), String> {
        if self.messages == 0 {
            return Err("--messages must be at least 1".into());
        }
        if self.confirm == 0 {
            return Err("--confirm must be at least 1".into());
        }
        if self.multi_ack_every == 0 || (self.qos != 0 && self.multi_ack_every > self.qos.into()) {
            return Err("--multi-ack-every must be between 1 and --qos".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("warren-perf").chain(args.iter().copied()))
    }

    fn throughput(args: &[&str]) -> ThroughputArgs {
        match parse(&[&["throughput"], args].concat()).expect("valid arguments") {
            Cli {
                command: Command::Throughput(t),
            } => t,
            other => panic!("expected throughput, got {other:?}"),
        }
    }

    #[test]
    fn throughput_defaults() {
        let t = throughput(&[]);
        assert_eq!(t.producers, 1);
        assert_eq!(t.consumers, 1);
        assert_eq!(t.size, 16);
        assert_eq!(t.time, 10);
        assert_eq!(t.multi_ack_every, 1);
        assert!(!t.autoack && !t.persistent && !t.common.json);
        assert_eq!(t.common.uri, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert!(t.validate().is_ok());
        assert_eq!(t.queue_names("perf-1"), vec!["perf-1"]);
    }

    #[test]
    fn throughput_all_flags() {
        let t = throughput(&[
            "--uri",
            "amqp://u:p@127.0.0.1:5682/%2f",
            "-x",
            "2",
            "-y",
            "10",
            "-s",
            "1024",
            "--confirm",
            "1000",
            "--persistent",
            "--qos",
            "1000",
            "--multi-ack-every",
            "100",
            "--rate",
            "500",
            "--exchange-type",
            "fanout",
            "--queue-pattern",
            "q-%d",
            "--queues",
            "3",
            "--time",
            "5",
            "--json",
            "--broker-pid",
            "42",
        ]);
        assert_eq!((t.producers, t.consumers, t.size), (2, 10, 1024));
        assert_eq!(t.confirm, Some(1000));
        assert_eq!(t.qos, Some(1000));
        assert_eq!(t.rate, Some(500.0));
        assert_eq!(t.exchange_type, Some(ExchangeType::Fanout));
        assert_eq!(t.common.broker_pid, Some(42));
        assert!(t.persistent && t.common.json);
        assert!(t.validate().is_ok());
        assert_eq!(t.queue_names("unused"), vec!["q-1", "q-2", "q-3"]);
    }

    #[test]
    fn fanout_without_pattern_names_queues_after_the_default() {
        let t = throughput(&["--exchange-type", "fanout", "--queues", "2"]);
        assert!(t.validate().is_ok());
        assert_eq!(t.queue_names("perf-9"), vec!["perf-9-1", "perf-9-2"]);
    }

    #[test]
    fn impossible_combinations_are_rejected() {
        assert!(throughput(&["--qos", "10", "--multi-ack-every", "100"])
            .validate()
            .is_err());
        // No acks, no stall.
        assert!(
            throughput(&["--qos", "10", "--multi-ack-every", "100", "--autoack"])
                .validate()
                .is_ok()
        );
        assert!(throughput(&["--queues", "3"]).validate().is_err());
        assert!(throughput(&["--queue-pattern", "q", "--queues", "3"])
            .validate()
            .is_err());
        assert!(throughput(&["--confirm", "0"]).validate().is_err());
        assert!(throughput(&["--rate", "0"]).validate().is_err());
        assert!(throughput(&["-x", "0", "-y", "0"]).validate().is_err());
        assert!(parse(&["throughput", "--exchange-type", "bogus"]).is_err());
        assert!(parse(&["throughput", "-s", "-1"]).is_err());
    }

    #[test]
    fn other_scenarios_parse() {
        match parse(&["connections", "--count", "500", "--broker-pid", "7"]).expect("valid") {
            Cli {
                command: Command::Connections(c),
            } => {
                assert_eq!(c.count, 500);
                assert_eq!(c.common.broker_pid, Some(7));
            }
            other => panic!("got {other:?}"),
        }
        match parse(&["queues", "--count", "20", "--durable"]).expect("valid") {
            Cli {
                command: Command::Queues(q),
            } => assert!(q.durable && q.count == 20),
            other => panic!("got {other:?}"),
        }
        match parse(&["backlog", "--messages", "1000", "-s", "64"]).expect("valid") {
            Cli {
                command: Command::Backlog(b),
            } => {
                assert_eq!((b.messages, b.size), (1000, 64));
                assert!(b.validate().is_ok());
            }
            other => panic!("got {other:?}"),
        }
        assert!(parse(&["backlog", "--messages", "0"]).is_ok());
        assert!(parse(&["nonsense"]).is_err());
    }
}
