//! `rigfleet-agent`: the rig daemon (`run`), enrollment (`enroll`), the load generator
//! (`simulate`), the engine benchmark (`bench`), the standalone miner (`mine`) and the test pool
//! (`pool`).

mod bench;
mod daemon;
mod enroll;
mod gpu_check;
#[cfg(test)]
mod link_tests;
mod mine;
mod pool;
mod simulate;
#[cfg(test)]
mod testkit;

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
    /// Check and measure the GPUs (kernels against the CPU path, rates, NVML readings; read-only).
    GpuCheck(gpu_check::GpuCheckArgs),
    /// Mine on Stratum pools with this machine's CPU, without a server (standalone miner).
    Mine(mine::MineArgs),
    /// Run a small validating Stratum pool (for tests and the demo).
    Pool(pool::PoolArgs),
    /// Run the rig daemon.
    Run(daemon::run::RunArgs),
    /// Register this rig with a server (once).
    Enroll(enroll::EnrollArgs),
    /// Run many simulated agents against a server (load test).
    Simulate(simulate::SimulateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(&args),
        Command::GpuCheck(args) => gpu_check::run(&args),
        Command::Mine(args) => mine::run(args),
        Command::Pool(args) => pool::run(args),
        Command::Run(args) => daemon::run::run(args),
        Command::Enroll(args) => enroll::run(args),
        Command::Simulate(args) => simulate::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
