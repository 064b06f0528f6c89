//! `rigfleet-agent mine`: the standalone miner (in progress).

use clap::Args;

/// Options of `mine`.
#[derive(Debug, Args)]
pub struct MineArgs {}

pub fn run(_args: MineArgs) -> anyhow::Result<()> {
    anyhow::bail!("the standalone miner is not built yet")
}
