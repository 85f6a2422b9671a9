//! `warren-perf`: Warren's load generator. Runs one scenario against a broker (Warren or
//! RabbitMQ) and prints its rates, latencies, CPU and memory, or one JSON object with
//! `--json`. See `warren-perf --help` and `warren-perf throughput --help`.

use clap::Parser;
use warren_tests::perf::args::{Cli, Command};
use warren_tests::perf::{backlog, connections, queues, throughput};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren-perf: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // A multi-threaded runtime: producers and consumers run on every core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Throughput(a) => throughput::run(a).await.map(|_| ()),
            Command::Connections(a) => connections::run(a).await.map(|_| ()),
            Command::Queues(a) => queues::run(a).await.map(|_| ()),
            Command::Backlog(a) => backlog::run(a).await.map(|_| ()),
        }
    })
}
