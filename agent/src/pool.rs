//! `rigfleet-agent pool`: the test pool (in progress).

use clap::Args;

/// Options of `pool`.
#[derive(Debug, Args)]
pub struct PoolArgs {}

pub fn run(_args: PoolArgs) -> anyhow::Result<()> {
    anyhow::bail!("the test pool is not built yet")
}
