//! `faultharness`: the server, real agents and `rigfleet-agent simulate` under faults, each
//! scenario ending with the comparison of what every agent sent with what the database holds.
//! Prints one table row per scenario and backend. Run through `scripts/faultharness.sh`; the
//! e2e tests `fault_*` run short versions of the same scenarios.

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use rigfleet_tests::fault_scenarios::*;

#[derive(Debug, Parser)]
struct Args {
    /// Scenarios to run (comma-separated): cuts, kill, skew, remove, disk (disk-server,
    /// disk-agent), noisy, or all.
    #[arg(long, default_value = "all")]
    only: String,
    /// sqlite, postgres or both.
    #[arg(long, default_value = "both")]
    backends: String,
    /// Short and long database cuts (each).
    #[arg(long, default_value_t = 24)]
    cuts: usize,
    /// kill -9 of the server.
    #[arg(long, default_value_t = 100)]
    kills: usize,
    /// Simulated agents in the cut and kill scenarios.
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// Backlog each agent starts with in the cut scenario (s at 1 s).
    #[arg(long, default_value_t = 3600)]
    backlog_secs: u64,
    /// Seconds of each noisy-agent phase.
    #[arg(long, default_value_t = 60)]
    noisy_secs: u64,
}

fn backends(args: &Args) -> Vec<On> {
    match args.backends.as_str() {
        "sqlite" => vec![On::Sqlite],
        "postgres" => vec![On::Postgres],
        _ => vec![On::Sqlite, On::Postgres],
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    // FAULTHARNESS_KEEP=1 keeps the logs, databases and reports for a look afterwards.
    let kept = std::env::var_os("FAULTHARNESS_KEEP").is_some();
    let work = tmp.path().to_path_buf();
    if kept {
        eprintln!("work folder (kept): {}", work.display());
    }
    let want = |s: &str| args.only == "all" || args.only.split(',').any(|x| x == s);
    let mut rows: Vec<Row> = Vec::new();
    let mut push = |r: Option<Row>| {
        if let Some(r) = r {
            println!("{}", r.line());
            rows.push(r);
        }
    };
    if want("cuts") && args.backends != "sqlite" {
        let plan = CutPlan {
            agents: args.agents,
            backlog_secs: args.backlog_secs,
            short_cuts: args.cuts,
            short: Duration::from_millis(200),
            long_cuts: args.cuts,
            long: Duration::from_secs(10),
            gap: Duration::from_secs(2),
        };
        push(db_cuts(&work, &plan).await?);
    }
    if want("kill") {
        for on in backends(&args) {
            let plan = KillPlan {
                agents: args.agents,
                kills: args.kills,
                backlog_secs: 600,
                min_up: Duration::from_millis(500),
                max_up: Duration::from_secs(3),
            };
            push(kill9(&work, on, &plan).await?);
        }
    }
    if want("skew") {
        for on in backends(&args) {
            push(
                clock_skew(
                    &work,
                    on,
                    &[3600, -3600, 86_400, -86_400],
                    Duration::from_secs(20),
                )
                .await?,
            );
        }
    }
    if want("remove") {
        for on in backends(&args) {
            push(rig_removed(&work, on, Duration::from_secs(30)).await?);
        }
    }
    if (want("disk") || want("disk-server")) && args.backends != "postgres" {
        push(server_disk_full(&work, Duration::from_secs(20)).await?);
    }
    if (want("disk") || want("disk-agent")) && args.backends != "postgres" {
        push(agent_disk_full(&work, Duration::from_secs(20)).await?);
    }
    if want("noisy") {
        for on in backends(&args) {
            push(noisy_neighbour(&work, on, 20, 100, Duration::from_secs(args.noisy_secs)).await?);
        }
    }
    println!();
    println!("| scenario | backend | figures | sent / stored | result |");
    println!("| --- | --- | --- | --- | --- |");
    for r in &rows {
        println!("{}", r.line());
    }
    let failed = rows.iter().filter(|r| !r.failures.is_empty()).count();
    println!("\n{} scenario runs, {failed} failed", rows.len());
    if kept {
        let _ = tmp.keep();
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
