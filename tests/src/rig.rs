//! A mining rig in a test: the engine's CPU device and miner driven by the Stratum client, as the
//! agent wires them, with a tap on found shares and a way to slow job switches down.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use rigfleet_engine::device::cpu::{CpuConfig, CpuDevice};
use rigfleet_engine::device::event_channel;
use rigfleet_engine::{Algorithm, Miner, Share, WorkSource};
use rigfleet_stratum::client::{forward_shares, Client, ClientConfig, ClientHandle, JobSink};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Found shares as the engine produced them (before the client submits them).
#[derive(Default)]
pub struct ShareTap {
    /// nVersion of every share found.
    pub versions: Vec<u32>,
}

/// A job sink that hands jobs to the miner after a delay: a slow device, so shares of replaced
/// jobs are found after `clean_jobs` (stale shares) deterministically.
pub struct DelayedSink {
    miner: Arc<Miner>,
    delay: Duration,
}

impl JobSink for DelayedSink {
    fn set_source(&self, source: Box<dyn WorkSource>) {
        let miner = Arc::clone(&self.miner);
        let delay = self.delay;
        // A thread per job is fine in a test: jobs arrive seconds apart.
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            miner.set_source(source);
        });
    }

    fn idle(&self) {
        self.miner.idle();
    }
}

/// A running rig.
pub struct TestRig {
    /// The miner (for stats).
    pub miner: Arc<Miner>,
    /// The client's handle (snapshots and events).
    pub client: ClientHandle,
    /// What the engine found.
    pub tap: Arc<Mutex<ShareTap>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// How to build a rig.
pub struct RigOptions {
    /// Worker threads.
    pub threads: usize,
    /// Nonces per header version before rolling the next (see `Miner::set_nonce_span`).
    pub nonce_span: Option<u64>,
    /// Delay between a job arriving and the devices switching to it.
    pub switch_delay: Option<Duration>,
}

impl Default for RigOptions {
    fn default() -> Self {
        Self {
            threads: 2,
            nonce_span: None,
            switch_delay: None,
        }
    }
}

impl TestRig {
    /// Starts the rig on the client config's pools.
    pub fn start(config: ClientConfig, algorithm: Algorithm, options: RigOptions) -> Result<Self> {
        let (events_tx, events_rx) = event_channel();
        let cpu = CpuDevice::new(
            CpuConfig {
                threads: options.threads,
                ..CpuConfig::new(algorithm)
            },
            events_tx,
        )?;
        let (share_tx, share_rx) = mpsc::channel::<Share>();
        let miner = Arc::new(Miner::new(vec![Box::new(cpu)], events_rx, share_tx)?);
        if let Some(span) = options.nonce_span {
            miner.set_nonce_span(span);
        }
        // Tap the shares on their way to the client.
        let tap = Arc::new(Mutex::new(ShareTap::default()));
        let (client_tx, client_rx) = mpsc::channel::<Share>();
        let tap_writer = Arc::clone(&tap);
        std::thread::spawn(move || {
            while let Ok(share) = share_rx.recv() {
                if let Ok(mut t) = tap_writer.lock() {
                    t.versions.push(share.version);
                }
                if client_tx.send(share).is_err() {
                    return;
                }
            }
        });
        let shares = forward_shares(client_rx)?;
        let sink: Arc<dyn JobSink> = match options.switch_delay {
            Some(delay) => Arc::new(DelayedSink {
                miner: Arc::clone(&miner),
                delay,
            }),
            None => Arc::clone(&miner) as Arc<dyn JobSink>,
        };
        let client = Client::new(config, sink, shares)?;
        let handle = client.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(client.run(async {
            let _ = stopped.await;
        }));
        Ok(Self {
            miner,
            client: handle,
            tap,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops the client (which idles the miner) and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}
