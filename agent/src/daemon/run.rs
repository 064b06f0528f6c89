//! `rigfleet-agent run`: the rig daemon, offline half (issue 4). It loads the local config,
//! mines on the last applied desired config from the state folder (idle when there is none),
//! serves the cgminer-format local API, logs a status line every [`STATUS_EVERY`], and stops
//! cleanly on SIGTERM or Ctrl-C with exit code 0.
//!
//! Not here yet: the server link (enrollment, handshake, `set_config`, commands, telemetry
//! upload). A configured server URL is only logged as such; the agent does not pretend to talk
//! to it.
//!
//! Order of start, so that every refusal happens before anything runs: config (a bad file ends
//! the process with the line and key), state folder, local API bind (a taken port ends it too:
//! the owner asked for that address, and two agents on one port is a config mistake to fix, not
//! to hide), and only then mining.
//!
//! How the API sees the runtime: [`MiningRuntime::apply`] is async and takes `&mut self`, so the
//! runtime cannot sit behind a lock the API's synchronous [`ViewSource`] would take. Instead the
//! daemon loop, the runtime's only owner, publishes a [`MiningSnapshot`] into a
//! [`tokio::sync::watch`] channel every [`PUBLISH_EVERY`]; the API clones the latest one. No
//! tokio worker ever waits on the runtime, and API figures are at most a second old, finer than
//! the 5 s rate the API reports.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::cgminer_api::{ApiServer, ApiView, ViewSource};
use super::config::{self, AgentConfig, Overrides};
use super::desired;
use super::identity::create_private_dir;
use super::mining::{MiningRuntime, MiningSnapshot, RuntimeOptions};
use crate::mine::{format_rate, init_tracing, shutdown_signal};

/// Time between two status lines in the log.
pub const STATUS_EVERY: Duration = Duration::from_secs(10);
/// Time between two snapshots published to the local API.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Options of `run`; each one overrides the config file and the `RIGFLEET_*` environment.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The local config file (TOML); default /etc/rigfleet/agent.toml, which may be absent.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Folder for the identity, the last applied desired config and the telemetry queue.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Address of the cgminer-format local API, or `off`.
    #[arg(long, value_name = "ADDR|off")]
    api_listen: Option<String>,
    /// The server's URL (the link to it comes in a later version).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
}

impl RunArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            config_path: self.config.clone(),
            server_url: self.server.clone(),
            state_dir: self.state_dir.clone(),
            api_listen: self.api_listen.clone(),
        }
    }
}

/// Runs the daemon until SIGTERM or Ctrl-C. Errors are refusals to start (bad config, state
/// folder not creatable, API address taken); once mining runs, failures are logged instead.
pub fn run(args: RunArgs) -> Result<()> {
    // Before tracing and before anything starts: a bad config is the whole answer.
    let config = config::load(&args.overrides())?;
    init_tracing();
    // Owner-only: it will hold the private key and pool passwords.
    create_private_dir(&config.state_dir).context("cannot create the state folder")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(daemon(config))
}

async fn daemon(config: AgentConfig) -> Result<()> {
    let started = Instant::now();
    let mut mining = MiningRuntime::new(config.safety.clone(), RuntimeOptions::default());

    let (snapshots, latest) = watch::channel(mining.snapshot());
    let view: ViewSource = Arc::new(move || {
        // Clone so the channel's lock is held only for the copy, not while the view is built.
        let snap = latest.borrow().clone();
        ApiView::from_snapshot(&snap, started.elapsed())
    });
    let api = ApiServer::from_config(&config.api, view)
        .await
        .context("cannot start the local API (change api.listen or pass --api-listen off)")?;
    match &api {
        Some(api) => tracing::info!(addr = %api.local_addr(), "Local API listening"),
        None => tracing::info!("Local API off"),
    }

    if let Some(url) = &config.link.url {
        tracing::info!(
            server = %url,
            "The server link comes in a later version of the agent; running offline"
        );
    }

    apply_persisted(&mut mining, &config.state_dir).await;
    snapshots.send_replace(mining.snapshot());

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut publish = tokio::time::interval(PUBLISH_EVERY);
    publish.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut status = tokio::time::interval(STATUS_EVERY);
    status.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Both intervals tick at once; the first status line would only say "starting".
    status.tick().await;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = publish.tick() => {
                snapshots.send_replace(mining.snapshot());
            }
            _ = status.tick() => log_status(&mining.snapshot()),
        }
    }

    if let Some(api) = api {
        api.stop();
    }
    let last = mining.snapshot();
    mining.shutdown().await;
    tracing::info!(
        accepted = last.shares.accepted,
        rejected = last.shares.rejected,
        stale = last.shares.stale,
        uptime_secs = started.elapsed().as_secs(),
        "Stopped"
    );
    Ok(())
}

/// Mines on the last applied desired config, if any. A missing, corrupt or unappliable file
/// leaves the rig idle rather than stopping the agent: the server (once linked) sends a fresh
/// config, and a rig that refuses to start cannot receive it.
async fn apply_persisted(mining: &mut MiningRuntime, state_dir: &Path) {
    let desired = match desired::load(state_dir) {
        Ok(Some(desired)) => desired,
        Ok(None) => {
            tracing::info!("No desired config saved yet; idle until the server sends one");
            return;
        }
        Err(error) => {
            tracing::error!(%error, "Cannot use the saved desired config; idle");
            return;
        }
    };
    match mining.apply(&desired).await {
        Ok(outcome) => {
            for (device, adjustment) in &outcome.adjustments {
                tracing::warn!(
                    device = %device.0,
                    field = adjustment.field,
                    requested = adjustment.requested,
                    applied = adjustment.applied,
                    "Device setting clamped to the local safety bounds"
                );
            }
            for device in &outcome.ignored_devices {
                tracing::info!(device = %device.0, "Settings for a device this rig lacks ignored");
            }
        }
        Err(error) => tracing::error!(
            %error,
            version = desired.version,
            "Cannot apply the saved desired config; idle"
        ),
    }
}

/// One status line: hash rates, shares, pool (as `mine` prints it, through tracing).
fn log_status(snap: &MiningSnapshot) {
    let Some(algorithm) = snap.algorithm else {
        tracing::info!(config_version = ?snap.version, "Idle");
        return;
    };
    let (rate_5s, rate_1m) = snap
        .miner
        .as_ref()
        .map_or((0.0, 0.0), |m| (m.rates.avg_5s_hps, m.rates.avg_1m_hps));
    let pool = snap.pool.as_ref().map_or_else(
        || "none".to_string(),
        |p| format!("{} ({})", p.url, p.state),
    );
    tracing::info!(
        config_version = ?snap.version,
        %algorithm,
        threads = snap.threads,
        rate_5s = %format_rate(rate_5s),
        rate_1m = %format_rate(rate_1m),
        accepted = snap.shares.accepted,
        rejected = snap.shares.rejected,
        stale = snap.shares.stale,
        %pool,
        "Mining"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: RunArgs,
    }

    #[test]
    fn flags_fill_the_overrides() {
        let cli = Cli::try_parse_from([
            "run",
            "--config",
            "/tmp/a.toml",
            "--state-dir",
            "/tmp/state",
            "--api-listen",
            "off",
            "--server",
            "https://farm:8443",
        ])
        .expect("valid flags");
        let o = cli.args.overrides();
        assert_eq!(o.config_path, Some(PathBuf::from("/tmp/a.toml")));
        assert_eq!(o.state_dir, Some(PathBuf::from("/tmp/state")));
        assert_eq!(o.api_listen.as_deref(), Some("off"));
        assert_eq!(o.server_url.as_deref(), Some("https://farm:8443"));
    }

    #[test]
    fn no_flags_override_nothing() {
        let cli = Cli::try_parse_from(["run"]).expect("no flags needed");
        let o = cli.args.overrides();
        assert!(o.config_path.is_none() && o.state_dir.is_none());
        assert!(o.api_listen.is_none() && o.server_url.is_none());
    }

    #[tokio::test]
    async fn a_corrupt_saved_config_leaves_the_rig_idle() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(desired::DESIRED_FILE), b"{ not json").expect("write file");
        let mut mining = MiningRuntime::new(Default::default(), RuntimeOptions::default());
        apply_persisted(&mut mining, dir.path()).await;
        let snap = mining.snapshot();
        assert!(snap.algorithm.is_none() && snap.version.is_none());
        mining.shutdown().await;
    }

    #[tokio::test]
    async fn an_unappliable_saved_config_leaves_the_rig_idle() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Valid JSON and shape, but an algorithm the engine does not have.
        let json = r#"{"version":3,"algorithm":"x11","pools":[
            {"url":"stratum+tcp://127.0.0.1:1","user":"w.1","password":"x"}]}"#;
        std::fs::write(dir.path().join(desired::DESIRED_FILE), json).expect("write file");
        let mut mining = MiningRuntime::new(Default::default(), RuntimeOptions::default());
        apply_persisted(&mut mining, dir.path()).await;
        let snap = mining.snapshot();
        assert!(snap.algorithm.is_none() && snap.version.is_none());
        mining.shutdown().await;
    }
}
