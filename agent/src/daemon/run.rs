//! `rigfleet-agent run`: the rig daemon, offline half (issue 4). It loads the local config,
//! mines on the last applied desired config from the state folder (idle when there is none),
//! serves the cgminer-format local API, logs a status line every [`STATUS_EVERY`], and stops
//! cleanly on SIGTERM or Ctrl-C with exit code 0.
//!
//! With an identity in the state folder (`rigfleet-agent enroll`) the online half runs too
//! ([`super::online`]): the server link, telemetry into the on-disk queue and out in batches,
//! signed orders, and the device watchdog's events. Without one the agent mines offline and says
//! so. Under systemd it sends `READY=1` once running and `WATCHDOG=1` at half the unit's
//! watchdog period.
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

use std::future::Future;
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
use super::identity::{create_private_dir, Identity, IdentityError, OrderCounters};
use super::link::backoff::Jitter;
use super::link::orders::PersistedCounters;
use super::link::target::{LinkTls, ServerUrl};
use super::link::{Link, LinkTimings};
use super::mining::{MiningRuntime, MiningSnapshot, RuntimeOptions, CPU_DEVICE_ID};
use super::online::{Online, OnlineParts};
use super::queue::{QueueOptions, TelemetryQueue};
use super::sampler::Sampler;
use super::sd_notify::{self, Notifier};
use super::telemetry::host::HostSample;
use super::telemetry::SysRoot;
use super::watchdog::{Action, Watchdog, WatchdogPolicy};
use crate::mine::{format_rate, init_tracing, shutdown_signal};

/// The telemetry queue's folder inside the state folder.
pub const QUEUE_DIR: &str = "telemetry-queue";
/// How often the watchdog looks at the devices.
pub const WATCHDOG_EVERY: Duration = Duration::from_secs(10);

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
    /// The server's URL; the identity from `enroll` names it already, and wins when they differ.
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
    // One that existed already keeps its mode: say so when others may read or enter it.
    if let Ok(meta) = std::fs::metadata(&config.state_dir) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                folder = %config.state_dir.display(),
                mode = %format!("{mode:o}"),
                "The state folder is open to its group or to everyone: chmod 700 it"
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The CPU kernel path and thread count are measured on this machine and cached in the
    // state folder, and GPUs mine beside the CPU (issue 18); tests leave both off.
    let options = DaemonOptions {
        runtime: RuntimeOptions {
            cpu: super::mining::CpuTuning::new(config.state_dir.clone(), config.cpu.clone()),
            gpus: true,
            ..RuntimeOptions::default()
        },
        ..DaemonOptions::default()
    };
    runtime.block_on(daemon(config, options, shutdown_signal()))
}

/// Knobs of the daemon that are not user settings (tests shorten them).
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Link time limits.
    pub timings: LinkTimings,
    /// Where sensors are read.
    pub sys_root: SysRoot,
    /// The telemetry queue's tuning.
    pub queue: QueueOptions,
    /// Fixed telemetry interval instead of the server's.
    pub telemetry_every: Option<Duration>,
    /// Watchdog thresholds (its reboot step follows the local opt-in).
    pub watchdog: WatchdogPolicy,
    /// How often the watchdog looks.
    pub watchdog_every: Duration,
    /// Mining options.
    pub runtime: RuntimeOptions,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            timings: LinkTimings::default(),
            sys_root: SysRoot::system(),
            queue: QueueOptions::default(),
            telemetry_every: None,
            watchdog: WatchdogPolicy::default(),
            watchdog_every: WATCHDOG_EVERY,
            runtime: RuntimeOptions::default(),
        }
    }
}

/// The daemon until `shutdown` completes.
pub async fn daemon(
    config: AgentConfig,
    options: DaemonOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let started = Instant::now();
    // Polled once now so that the signal handlers exist from the start: a SIGTERM while the
    // rest starts up then stops the daemon cleanly instead of killing it.
    tokio::pin!(shutdown);
    let mut stop_requested = futures_util::FutureExt::now_or_never(shutdown.as_mut()).is_some();
    let mut mining = MiningRuntime::new(config.safety.clone(), options.runtime.clone());

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

    apply_persisted(&mut mining, &config.state_dir).await;
    snapshots.send_replace(mining.snapshot());

    let mut sampler = Sampler::new(options.sys_root.clone());
    let mut online = start_online(&config, &options, &mut sampler);
    let mut watchdog = Watchdog::new(WatchdogPolicy {
        reboot: options.watchdog.reboot
            || (config.opt_in.watchdog_reboot && config.opt_in.reboot_command.is_some()),
        ..options.watchdog
    });

    let notifier = Notifier::from_env();
    if let Some(n) = &notifier {
        if let Err(error) = n.notify("READY=1") {
            tracing::warn!(%error, "Cannot notify systemd");
        }
    }
    let sd_every = notifier
        .as_ref()
        .and_then(|_| sd_notify::watchdog_interval())
        .unwrap_or(Duration::from_secs(3600));
    let mut sd_tick = tokio::time::interval(sd_every);

    let mut publish = tokio::time::interval(PUBLISH_EVERY);
    publish.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut status = tokio::time::interval(STATUS_EVERY);
    status.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Both intervals tick at once; the first status line would only say "starting".
    status.tick().await;
    let mut dog = tokio::time::interval(options.watchdog_every);
    dog.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let interval_of = |online: &Option<Online>, mining: &MiningRuntime| {
        options
            .telemetry_every
            .or_else(|| online.as_ref().map(|o| o.interval(mining)))
            .unwrap_or(STATUS_EVERY)
    };
    let mut telemetry_every = interval_of(&online, &mining);
    let mut telemetry = tokio::time::interval(telemetry_every);
    telemetry.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !stop_requested {
        tokio::select! {
            () = &mut shutdown => stop_requested = true,
            _ = publish.tick() => {
                snapshots.send_replace(mining.snapshot());
            }
            _ = status.tick() => log_status(&mining.snapshot(), online.as_ref()),
            _ = telemetry.tick(), if online.is_some() => {
                if let Some(o) = online.as_mut() {
                    o.sample(&mining, &mut sampler).await;
                }
            }
            _ = dog.tick() => watch_devices(&mut mining, &mut watchdog, online.as_mut(), &config).await,
            _ = sd_tick.tick(), if notifier.is_some() => {
                if let Some(n) = &notifier {
                    let _ = n.notify("WATCHDOG=1");
                }
            }
            input = next_online(&mut online) => {
                if let Some(o) = online.as_mut() {
                    o.handle(input, &mut mining, &mut watchdog).await;
                }
            }
        }
        let every = interval_of(&online, &mining);
        if every != telemetry_every {
            tracing::info!(secs = every.as_secs_f64(), "Telemetry interval changed");
            telemetry_every = every;
            telemetry = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            telemetry.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
    }

    if let Some(n) = &notifier {
        let _ = n.notify("STOPPING=1");
    }
    if let Some(o) = online.as_mut() {
        o.shutdown().await;
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

/// The online half's next input, or never when offline.
async fn next_online(online: &mut Option<Online>) -> super::online::Input {
    match online.as_mut() {
        Some(o) => o.next().await,
        None => std::future::pending().await,
    }
}

/// Builds the online half when the state folder holds an identity; otherwise (or when anything
/// it needs fails) the agent runs offline and says why.
fn start_online(
    config: &AgentConfig,
    options: &DaemonOptions,
    sampler: &mut Sampler,
) -> Option<Online> {
    let identity = match Identity::load(&config.state_dir) {
        Ok(id) => id,
        Err(IdentityError::NotEnrolled { dir }) => {
            tracing::info!(
                state_dir = %dir.display(),
                "Not enrolled (run `rigfleet-agent enroll --server URL --token TOKEN`); running offline"
            );
            return None;
        }
        Err(error) => {
            tracing::error!(%error, "Cannot load the identity; running offline");
            return None;
        }
    };
    if let Some(url) = &config.link.url {
        if url.trim() != identity.server_url {
            tracing::warn!(
                configured = %url,
                enrolled = %identity.server_url,
                "The configured server differs from the one this agent enrolled with; using the enrolled one"
            );
        }
    }
    let offline = |what: &str, error: &dyn std::fmt::Display| {
        tracing::error!(%error, "{what}; running offline");
    };
    let url = match ServerUrl::parse(&identity.server_url) {
        Ok(u) => u,
        Err(e) => {
            offline("The enrolled server URL is not usable", &e);
            return None;
        }
    };
    if !url.tls && !url.is_loopback() {
        tracing::warn!(server = %identity.server_url, "The server link is plain text (http); use https outside a test bench");
    }
    let tls = LinkTls {
        ca_file: config
            .link
            .ca_file
            .clone()
            .or_else(|| identity.tls_ca_file.clone()),
        cert_fingerprint: config
            .link
            .cert_fingerprint
            .clone()
            .or_else(|| identity.tls_cert_fingerprint.clone()),
    };
    let tls = match tls.client_config(&url) {
        Ok(t) => t,
        Err(e) => {
            offline("TLS settings for the server", &e);
            return None;
        }
    };
    let counters = match OrderCounters::load(&config.state_dir) {
        Ok(c) => c,
        Err(e) => {
            offline("Cannot read the order counters", &e);
            return None;
        }
    };
    let queue = match open_queue(&config.state_dir.join(QUEUE_DIR), options.queue) {
        Ok(q) => q,
        Err(e) => {
            offline("Cannot open the telemetry queue", &e);
            return None;
        }
    };
    let host = HostSample::read(&options.sys_root);
    tracing::info!(
        agent = %identity.agent_id,
        server = %identity.server_url,
        server_key = %identity.server_key_fingerprint(),
        unacked = queue.len(),
        "Enrolled; connecting to the server"
    );
    let online = Online::new(OnlineParts {
        link: Link::new(url, tls, options.timings, Jitter::from_os()),
        identity,
        state_dir: config.state_dir.clone(),
        counters: PersistedCounters {
            counters,
            dir: config.state_dir.clone(),
        },
        queue,
        opt_in: config.opt_in.clone(),
        hostname: host.hostname.unwrap_or_else(|| "rig".into()),
        devices: std::iter::once(crate::enroll::cpu_device(host.cpu_model.as_deref()))
            .chain(sampler.gpu_devices())
            .collect(),
    });
    if online.is_none() {
        tracing::error!("The identity names no rig; running offline (enroll again with --force)");
    }
    online
}

/// One watchdog look at the devices: failed GPUs are reported, the CPU is restarted or disabled
/// when it stops hashing; each step is logged and reported.
async fn watch_devices(
    mining: &mut MiningRuntime,
    watchdog: &mut Watchdog,
    online: Option<&mut Online>,
    config: &AgentConfig,
) {
    use rigfleet_proto::agent_to_server::Severity;
    use rigfleet_stratum::client::PoolState;
    let mut online = online;
    // A GPU that failed (driver error, nonces refused by the CPU recheck) has stopped itself;
    // say so once, while the CPU and the other devices keep mining (issue 18).
    for (device, reason) in mining.new_device_failures() {
        tracing::warn!(%device, %reason, "Device failed and stopped; the other devices keep mining");
        if let Some(o) = online.as_mut() {
            o.event(
                Severity::Error,
                "device_failed",
                format!("device {device} stopped until the next config: {reason}"),
            )
            .await;
        }
    }
    let snap = mining.snapshot();
    let should_mine = snap.algorithm.is_some()
        && snap
            .pool
            .as_ref()
            .is_some_and(|p| p.state == PoolState::Mining);
    let rate = snap.miner.as_ref().map_or(0.0, |m| m.rates.avg_1m_hps);
    let Some(action) =
        watchdog.observe(CPU_DEVICE_ID, should_mine, rate, std::time::Instant::now())
    else {
        return;
    };
    let (severity, kind, message) = match &action {
        Action::Restart { device, n } => {
            let result = mining.restart().await;
            (
                Severity::Warning,
                "device_restarted",
                format!("device {device} had no hash rate; restarted (restart {n}): {result:?}"),
            )
        }
        Action::Disable { device } => {
            mining.stop_mining().await;
            (
                Severity::Error,
                "device_disabled",
                format!("device {device} still had no hash rate after restarts; disabled until the next config"),
            )
        }
        Action::Reboot { device } => {
            let argv = config.opt_in.reboot_command.clone().unwrap_or_default();
            let (ok, out) = if argv.is_empty() {
                (false, "no reboot command".to_string())
            } else {
                super::commands::run_job(&super::commands::Job::Reboot(argv))
            };
            (
                Severity::Error,
                "rig_reboot",
                format!("device {device} did not recover; rebooting by local policy: {ok} {out}"),
            )
        }
    };
    tracing::warn!(%kind, %message, "Watchdog");
    if let Some(o) = online {
        o.event(severity, kind, message).await;
    }
}

/// One status line: hash rates, shares, pool (as `mine` prints it, through tracing).
fn log_status(snap: &MiningSnapshot, online: Option<&Online>) {
    if let Some(o) = online {
        tracing::info!(
            connected = o.is_connected(),
            unacked = o.queue().len(),
            acked_seq = o.queue().acked_seq(),
            "Server link"
        );
    }
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

/// Opens the telemetry queue; a queue whose state file is damaged is moved aside (kept for a
/// look) and a new one, with a new stream, takes its place, so the rig keeps reporting.
fn open_queue(
    dir: &std::path::Path,
    options: super::queue::QueueOptions,
) -> Result<TelemetryQueue, super::queue::QueueError> {
    match TelemetryQueue::open(dir, options) {
        Err(super::queue::QueueError::CorruptState { path, reason }) => {
            let aside = dir.with_extension(format!("corrupt-{}", super::link::now_unix_ms()));
            tracing::error!(
                state = %path.display(),
                %reason,
                moved_to = %aside.display(),
                "The telemetry queue's state is damaged; moving it aside and starting a new stream"
            );
            std::fs::rename(dir, &aside).map_err(|source| super::queue::QueueError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            TelemetryQueue::open(dir, options)
        }
        other => other,
    }
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
