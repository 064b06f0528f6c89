//! `rigfleet-agent`: the rig daemon (`run`), the engine benchmark (`bench`), the standalone
//! miner (`mine`) and the test pool (`pool`).

mod bench;
// The daemon's building blocks run ahead of their wiring (server link, telemetry, queue).
#[allow(dead_code)]
mod daemon;
mod mine;
mod pool;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The rigfleet rig agent.
#[derive(Debug, Parser)]
#[command(name = "rigfleet-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure the hashing engine on this CPU.
    Bench(bench::BenchArgs),
    /// Mine on Stratum pools with this machine's CPU, without a server (standalone miner).
    Mine(mine::MineArgs),
    /// Run a small validating Stratum pool (for tests and the demo).
    Pool(pool::PoolArgs),
    /// Run the rig daemon.
    Run(daemon::run::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(&args),
        Command::Mine(args) => mine::run(args),
        Command::Pool(args) => pool::run(args),
        Command::Run(args) => daemon::run::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
