//! The agent's mining runtime: turns the server's desired config into a running CPU miner and
//! Stratum client, and changes it in place when a new config arrives (issue 4, "Desired config";
//! STYLE Part 2, "Applying desired config").
//!
//! [`MiningRuntime::apply`] validates first and touches the running setup only when everything
//! checks out, so a failed apply leaves the previous config mining untouched. Then it applies
//! only what changed:
//! - same algorithm and thread count, other pools: the [`Miner`] and its hashing threads stay,
//!   only the Stratum client is replaced (no process restart);
//! - another algorithm or thread count: a new [`CpuDevice`] + [`Miner`] + client start first,
//!   and only once they run are the old ones stopped;
//! - empty algorithm (or the CPU device disabled): everything stops, the rig idles.
//!
//! Two pieces make the in-place pool switch safe. The miner's share channel is fixed at
//! [`Miner::new`], so one forwarding thread per miner routes shares to whichever client is
//! current ([`ShareRouter`]). And each client reaches the miner through a [`GatedSink`] that
//! forwards jobs only while its generation is current, so the old client's goodbye `idle()`
//! cannot stop the miner the new client already feeds.
//!
//! `apply` is async and must run inside a tokio runtime: the client task is spawned with
//! [`tokio::spawn`] and the old client is awaited (bounded) before `apply` returns, so once it
//! returns the previous pools get no more shares.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rigfleet_engine::device::cpu::{CpuConfig, CpuDevice};
use rigfleet_engine::device::event_channel;
use rigfleet_engine::{Algorithm, EngineError, Miner, MinerStats, Share, WorkSource};
use rigfleet_proto::config::{DesiredConfig, PoolSpec};
use rigfleet_proto::{DeviceId, ProtoError};
use rigfleet_stratum::client::{
    Client, ClientConfig, ClientError, ClientHandle, ClientSnapshot, JobSink, PoolConfig,
    PoolSnapshot, SHARE_QUEUE,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::config::{Adjustment, Refusal, SafetyBounds};

pub mod calibration;
pub use calibration::CpuTuning;

/// The stable id of the engine's CPU device; device settings for it set the thread count and
/// whether the CPU mines at all.
pub const CPU_DEVICE_ID: &str = "cpu";

/// How long a stopped client gets to close its connections: the client's own close grace is
/// 1 s, so 5 s only trips on a wedged task, which is then aborted.
const CLIENT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Local choices the desired config does not make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Threads when the config names none for the CPU device; 0 means one per core (still
    /// capped by the safety bounds' `max_cpu_threads`).
    pub default_threads: usize,
    /// Pin worker `i` to core `i`.
    pub pin: bool,
    /// The CPU kernel path and thread count by measurement (off by default; the daemon turns it
    /// on with its state folder). When on, a config that names no thread count mines with the
    /// measured best count instead of one per core.
    pub cpu: CpuTuning,
    /// Also mine on the GPUs the engine finds (OpenCL, else PTX through the CUDA driver), each
    /// a device beside the CPU. Off by default (tests); the daemon turns it on. A GPU that
    /// cannot be set up is logged and left out; the CPU mines regardless.
    pub gpus: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            default_threads: 0,
            pin: true,
            cpu: CpuTuning::default(),
            gpus: false,
        }
    }
}

/// What an apply changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Same mining setup as before (a new version with the same effective content).
    Unchanged,
    /// Only the pools changed: new Stratum client, same miner.
    PoolsSwitched,
    /// A new miner started (first config, another algorithm or thread count).
    MinerStarted,
    /// Mining stopped (empty algorithm or CPU disabled).
    Idled,
}

/// A successful apply.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyOutcome {
    /// The config version now applied.
    pub version: u64,
    /// What changed.
    pub change: Change,
    /// Device settings moved to the local safety bounds (each worth an event to the server).
    pub adjustments: Vec<(DeviceId, Adjustment)>,
    /// Device settings for devices this rig does not have (checked, then not used).
    pub ignored_devices: Vec<DeviceId>,
}

/// Why a config was not applied; the previous one keeps running.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Fails the protocol's own checks (limits, required fields).
    #[error("invalid config: {0}")]
    Invalid(#[from] ProtoError),
    /// The engine has no such algorithm.
    #[error("unknown algorithm {0:?}")]
    UnknownAlgorithm(String),
    /// A pool URL does not parse (pools are numbered from 0, in the config's order).
    #[error("pool {index}: {reason}")]
    BadPool {
        /// Position in the config's pool list.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A device setting no clamp makes safe.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The Stratum client refused the pool list (TLS settings, empty user…).
    #[error("pool client: {0}")]
    Client(#[from] ClientError),
    /// The CPU device or the miner did not start.
    #[error("cannot start mining: {0}")]
    Engine(#[from] EngineError),
    /// A helper thread did not start.
    #[error("cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Share counters summed over every client this runtime ran (a pool switch does not reset them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShareTotals {
    /// Accepted by a pool.
    pub accepted: u64,
    /// Rejected by a pool.
    pub rejected: u64,
    /// Found on a job the pool had already replaced.
    pub stale: u64,
}

impl ShareTotals {
    fn of(snapshot: &ClientSnapshot) -> Self {
        snapshot.pools.iter().fold(Self::default(), |acc, p| Self {
            accepted: acc.accepted + p.shares.accepted,
            rejected: acc.rejected + p.shares.rejected_total(),
            stale: acc.stale + p.shares.stale,
        })
    }

    fn plus(self, other: Self) -> Self {
        Self {
            accepted: self.accepted + other.accepted,
            rejected: self.rejected + other.rejected,
            stale: self.stale + other.stale,
        }
    }
}

/// What telemetry reads from the runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct MiningSnapshot {
    /// Version of the applied config, if any.
    pub version: Option<u64>,
    /// The algorithm being mined; `None` when idle.
    pub algorithm: Option<Algorithm>,
    /// CPU worker threads; 0 when idle.
    pub threads: usize,
    /// The pool mined on now.
    pub pool: Option<PoolSnapshot>,
    /// Every pool of the current client.
    pub client: Option<ClientSnapshot>,
    /// Hash rates and per-device figures.
    pub miner: Option<MinerStats>,
    /// Shares since the runtime started.
    pub shares: ShareTotals,
}

/// The running mining setup of one rig on the CPU. See the module docs.
pub struct MiningRuntime {
    bounds: SafetyBounds,
    options: RuntimeOptions,
    running: Option<Running>,
    applied: Option<DesiredConfig>,
    /// Share counters of clients already stopped.
    carried: ShareTotals,
    /// Device failures already reported (device id, reason), so each is reported once.
    reported_failures: std::collections::HashSet<(String, String)>,
}

impl MiningRuntime {
    /// An idle runtime that clamps device settings to `bounds`.
    pub fn new(bounds: SafetyBounds, options: RuntimeOptions) -> Self {
        Self {
            bounds,
            options,
            running: None,
            applied: None,
            carried: ShareTotals::default(),
            reported_failures: Default::default(),
        }
    }

    /// Devices of the running miner that stopped since the last call (a GPU whose driver failed
    /// or whose nonces failed the CPU recheck), each with its reason, once per device and reason.
    /// Such a device hashes no more until the next miner start; the others keep mining.
    pub fn new_device_failures(&mut self) -> Vec<(String, String)> {
        let Some(running) = &self.running else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for device in running.miner.stats().devices {
            if let Some(reason) = device.last_error {
                let key = (device.info.id.0.clone(), reason);
                if self.reported_failures.insert(key.clone()) {
                    out.push(key);
                }
            }
        }
        out
    }

    /// The last config applied successfully (what to persist and report as applied).
    pub fn applied(&self) -> Option<&DesiredConfig> {
        self.applied.as_ref()
    }

    /// Validates `config` and applies what changed; on an error nothing changed. Must be called
    /// inside a tokio runtime.
    pub async fn apply(&mut self, config: &DesiredConfig) -> Result<ApplyOutcome, ApplyError> {
        let plan = plan(config, &self.bounds, &self.options)?;
        let change = match plan.target {
            None => match self.running.take() {
                Some(old) => {
                    self.retire(old).await;
                    Change::Idled
                }
                None => Change::Unchanged,
            },
            Some((target, client_config)) => match self.running.as_mut() {
                Some(r) if r.target == target => Change::Unchanged,
                Some(r)
                    if r.target.algorithm == target.algorithm
                        && r.target.threads == target.threads
                        && r.target.path == target.path =>
                {
                    let old = r.switch_client(client_config, target.pools)?;
                    let stopped = old.stop().await;
                    self.carried = self.carried.plus(ShareTotals::of(&stopped));
                    Change::PoolsSwitched
                }
                _ => {
                    let new = Running::start(target, client_config, &self.options)?;
                    if let Some(old) = self.running.replace(new) {
                        self.retire(old).await;
                    }
                    Change::MinerStarted
                }
            },
        };
        tracing::info!(
            version = config.version,
            algorithm = %config.algorithm,
            ?change,
            "Desired config applied"
        );
        self.applied = Some(config.clone());
        Ok(ApplyOutcome {
            version: config.version,
            change,
            adjustments: plan.adjustments,
            ignored_devices: plan.ignored_devices,
        })
    }

    /// Restarts the miner and the pool client on the applied config (the `restart_mining`
    /// command and the watchdog's first step); idle stays idle.
    pub async fn restart(&mut self) -> Result<Change, ApplyError> {
        let Some(config) = self.applied.clone() else {
            return Ok(Change::Unchanged);
        };
        if let Some(old) = self.running.take() {
            self.retire(old).await;
        }
        Ok(self.apply(&config).await?.change)
    }

    /// Moves mining to the pool at `index` of the applied config now, the others following as
    /// failover, without restarting the miner. The applied config is unchanged, so the next
    /// `set_config` (or a restart) goes back to the server's order.
    pub async fn switch_pool(&mut self, index: usize) -> Result<(), ApplyError> {
        let Some(config) = self.applied.clone() else {
            return Err(ApplyError::BadPool {
                index,
                reason: "no config applied".into(),
            });
        };
        if index >= config.pools.len() {
            return Err(ApplyError::BadPool {
                index,
                reason: format!("the applied config has {} pools", config.pools.len()),
            });
        }
        let mut reordered = config.clone();
        let chosen = reordered.pools.remove(index);
        reordered.pools.insert(0, chosen);
        let plan = plan(&reordered, &self.bounds, &self.options)?;
        let (Some((target, client_config)), Some(running)) = (plan.target, self.running.as_mut())
        else {
            return Err(ApplyError::BadPool {
                index,
                reason: "not mining".into(),
            });
        };
        let old = running.switch_client(client_config, target.pools)?;
        let stopped = old.stop().await;
        self.carried = self.carried.plus(ShareTotals::of(&stopped));
        Ok(())
    }

    /// Stops mining but keeps the applied config (the watchdog disabling a failing device: the
    /// CPU is this runtime's only one). A later apply or restart starts it again.
    pub async fn stop_mining(&mut self) {
        if let Some(old) = self.running.take() {
            self.retire(old).await;
        }
    }

    /// Figures for telemetry.
    pub fn snapshot(&self) -> MiningSnapshot {
        let client = self.running.as_ref().map(|r| r.client.handle.snapshot());
        let shares = client
            .as_ref()
            .map_or(self.carried, |c| self.carried.plus(ShareTotals::of(c)));
        MiningSnapshot {
            version: self.applied.as_ref().map(|c| c.version),
            algorithm: self.running.as_ref().map(|r| r.target.algorithm),
            threads: self.running.as_ref().map_or(0, |r| r.target.threads),
            pool: client.as_ref().and_then(|c| c.current_pool().cloned()),
            client,
            miner: self.running.as_ref().map(|r| r.miner.stats()),
            shares,
        }
    }

    /// Stops mining: closes the pool connections and joins the hashing threads.
    pub async fn shutdown(mut self) {
        if let Some(old) = self.running.take() {
            self.retire(old).await;
        }
    }

    async fn retire(&mut self, old: Running) {
        let stopped = old.stop().await;
        self.carried = self.carried.plus(ShareTotals::of(&stopped));
    }
}

/// The effective mining setup, compared between applies to find what changed.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    algorithm: Algorithm,
    threads: usize,
    /// Kernel path (`None`: the engine's own choice).
    path: Option<String>,
    pools: Vec<PoolSpec>,
}

/// A checked config: `target` is `None` for idle.
struct Plan {
    target: Option<(Target, ClientConfig)>,
    adjustments: Vec<(DeviceId, Adjustment)>,
    ignored_devices: Vec<DeviceId>,
}

/// Every check that can fail, before anything runs.
fn plan(
    config: &DesiredConfig,
    bounds: &SafetyBounds,
    options: &RuntimeOptions,
) -> Result<Plan, ApplyError> {
    config.validate()?;
    let mut adjustments = Vec::new();
    let mut ignored_devices = Vec::new();
    let mut cpu = None;
    // Every device's settings are clamped, even of devices this rig lacks: a refused setting
    // refuses the whole config, whichever rig it was meant for.
    for device in &config.devices {
        let clamped = bounds.clamp(device)?;
        adjustments.extend(
            clamped
                .adjustments
                .into_iter()
                .map(|a| (device.device_id.clone(), a)),
        );
        if device.device_id.0 == CPU_DEVICE_ID {
            // Listed twice: the last entry wins, as a later override would.
            cpu = Some(clamped.settings);
        } else {
            ignored_devices.push(device.device_id.clone());
        }
    }
    let mut pools = Vec::with_capacity(config.pools.len());
    for (index, spec) in config.pools.iter().enumerate() {
        let mut pool = PoolConfig::new(&spec.url, spec.user.clone(), spec.password.clone())
            .map_err(|e| ApplyError::BadPool {
                index,
                reason: e.to_string(),
            })?;
        pool.priority = u32::try_from(index).expect("BUG: pool count is bounded by MAX_POOLS");
        pools.push(pool);
    }
    // Checked even when the CPU is disabled: the config must be one this rig could mine.
    let algorithm = match config.algorithm.as_str() {
        "" => None,
        name => Some(
            name.parse::<Algorithm>()
                .map_err(|_| ApplyError::UnknownAlgorithm(name.to_string()))?,
        ),
    };
    let Some(algorithm) = algorithm.filter(|_| cpu.as_ref().is_none_or(|c| c.enabled)) else {
        return Ok(Plan {
            target: None,
            adjustments,
            ignored_devices,
        });
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let capped = |n: usize| bounds.max_cpu_threads.map_or(n, |max| n.min(max as usize));
    let choice = options.cpu.choose(algorithm, capped(cores));
    let threads = match cpu.and_then(|c| c.threads) {
        // Already clamped to max_cpu_threads.
        Some(n) => n as usize,
        None => {
            let n = match (options.default_threads, &choice) {
                (0, Some(c)) => c.threads,
                (0, None) => cores,
                (n, _) => n,
            };
            capped(n)
        }
    };
    let target = Target {
        algorithm,
        threads,
        path: choice.map(|c| c.path),
        pools: config.pools.clone(),
    };
    Ok(Plan {
        target: Some((target, ClientConfig::new(pools, algorithm))),
        adjustments,
        ignored_devices,
    })
}

/// The GPUs of this rig as engine devices for `algorithm`. Every failure (no driver, no card, a
/// kernel that does not build) is logged and skips that GPU only.
fn gpu_devices(
    algorithm: Algorithm,
    events: &rigfleet_engine::device::EventSender,
) -> Vec<Box<dyn rigfleet_engine::Device>> {
    use rigfleet_engine::device::gpu::{discover, DiscoverOptions, GpuDevice};
    let found = discover(&DiscoverOptions::default());
    for problem in &found.problems {
        tracing::info!(%problem, "A GPU route is not available; the CPU and other GPUs mine");
    }
    let mut out: Vec<Box<dyn rigfleet_engine::Device>> = Vec::new();
    for scanner in found.scanners {
        let info = scanner.info().clone();
        match GpuDevice::new(scanner, algorithm, events.clone()) {
            Ok(dev) => {
                tracing::info!(
                    device = %info.id,
                    name = %info.name,
                    route = info.route.name(),
                    "Mining on a GPU"
                );
                out.push(Box::new(dev));
            }
            Err(error) => tracing::warn!(device = %info.id, %error, "GPU left out"),
        }
    }
    out
}

/// A running miner and the client feeding it.
struct Running {
    target: Target,
    miner: Arc<Miner>,
    router: Arc<ShareRouter>,
    /// The generation of the client allowed to steer the miner.
    gate: Arc<Mutex<u64>>,
    client: RunningClient,
    next_generation: u64,
}

impl Running {
    /// Starts a CPU device, a miner and a client on `config`'s pools.
    fn start(
        target: Target,
        config: ClientConfig,
        options: &RuntimeOptions,
    ) -> Result<Self, ApplyError> {
        let (device_events, device_event_rx) = event_channel();
        let cpu = CpuDevice::new(
            CpuConfig {
                threads: target.threads,
                pin: options.pin,
                path: target.path.clone(),
                ..CpuConfig::new(target.algorithm)
            },
            device_events.clone(),
        )?;
        let mut devices: Vec<Box<dyn rigfleet_engine::Device>> = vec![Box::new(cpu)];
        if options.gpus {
            devices.extend(gpu_devices(target.algorithm, &device_events));
        }
        let (share_tx, share_rx) = std::sync::mpsc::channel();
        let miner = Arc::new(Miner::new(devices, device_event_rx, share_tx)?);
        let router = Arc::new(ShareRouter::default());
        spawn_share_router(share_rx, Arc::clone(&router))?;
        let gate = Arc::new(Mutex::new(0));
        let (client, shares) = new_client(config, &miner, &gate, 0)?;
        router.set(shares);
        Ok(Self {
            target,
            miner,
            router,
            gate,
            client: RunningClient::spawn(client),
            next_generation: 1,
        })
    }

    /// Starts a client on new pools for the same miner and returns the old one, still to be
    /// stopped. On an error nothing changed.
    fn switch_client(
        &mut self,
        config: ClientConfig,
        pools: Vec<PoolSpec>,
    ) -> Result<RunningClient, ApplyError> {
        let generation = self.next_generation;
        let (client, shares) = new_client(config, &self.miner, &self.gate, generation)?;
        self.next_generation += 1;
        // From here the old client can no longer steer the miner, which keeps hashing its last
        // job until the new client's first one arrives.
        *lock(&self.gate) = generation;
        self.router.set(shares);
        self.target.pools = pools;
        Ok(std::mem::replace(
            &mut self.client,
            RunningClient::spawn(client),
        ))
    }

    /// Stops the client, then joins the hashing threads; returns the client's last figures.
    async fn stop(self) -> ClientSnapshot {
        let snapshot = self.client.stop().await;
        let miner = self.miner;
        // Dropping the last miner handle joins its threads: not on an async worker.
        let _ = tokio::task::spawn_blocking(move || drop(miner)).await;
        snapshot
    }
}

/// A client for `miner` under `generation`, with the sender its shares will arrive on.
fn new_client(
    config: ClientConfig,
    miner: &Arc<Miner>,
    gate: &Arc<Mutex<u64>>,
    generation: u64,
) -> Result<(Client, mpsc::Sender<Share>), ClientError> {
    let (tx, rx) = mpsc::channel(SHARE_QUEUE);
    let sink = Arc::new(GatedSink {
        miner: Arc::clone(miner),
        generation,
        gate: Arc::clone(gate),
    });
    Ok((Client::new(config, sink, rx)?, tx))
}

/// A spawned client task and how to stop it.
struct RunningClient {
    handle: ClientHandle,
    /// Dropping it stops the client too (the runtime dropped without `shutdown`).
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RunningClient {
    fn spawn(client: Client) -> Self {
        let handle = client.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(client.run(async move {
            let _ = stopped.await;
        }));
        Self { handle, stop, task }
    }

    /// Asks the client to close and waits for it (bounded); returns its last figures.
    async fn stop(self) -> ClientSnapshot {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(CLIENT_STOP_TIMEOUT, &mut task)
            .await
            .is_err()
        {
            tracing::warn!("Pool client did not stop in time; aborted");
            task.abort();
        }
        self.handle.snapshot()
    }
}

/// The miner as one client sees it: jobs pass only while that client's generation is current.
/// The gate is held across the miner call so a flip cannot slip between check and call.
struct GatedSink {
    miner: Arc<Miner>,
    generation: u64,
    gate: Arc<Mutex<u64>>,
}

impl JobSink for GatedSink {
    fn set_source(&self, source: Box<dyn WorkSource>) {
        let current = lock(&self.gate);
        if *current == self.generation {
            self.miner.set_source(source);
        }
    }

    fn idle(&self) {
        let current = lock(&self.gate);
        if *current == self.generation {
            self.miner.idle();
        }
    }
}

/// Where the miner's shares go now: the current client's queue.
#[derive(Default)]
struct ShareRouter {
    current: Mutex<Option<mpsc::Sender<Share>>>,
}

impl ShareRouter {
    fn set(&self, sender: mpsc::Sender<Share>) {
        *lock(&self.current) = Some(sender);
    }

    fn current(&self) -> Option<mpsc::Sender<Share>> {
        lock(&self.current).clone()
    }
}

/// Bridges the engine's blocking share channel to the current client. The thread ends when the
/// miner, the channel's only sender, is dropped. A share found on the previous client's job
/// reaches the new client, which counts it as an unknown job.
fn spawn_share_router(
    engine: std::sync::mpsc::Receiver<Share>,
    router: Arc<ShareRouter>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("share-route".into())
        .spawn(move || {
            while let Ok(share) = engine.recv() {
                if let Some(client) = router.current() {
                    // A closed queue (client stopping) drops the share: its pool is gone.
                    let _ = client.blocking_send(share);
                }
            }
        })?;
    Ok(())
}

/// Locks, ignoring poisoning: the guarded values are plain data, valid after any panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
