//! Client tests over in-memory pipes: a fake network of [`AutoPool`]s that can be taken down and
//! brought back, and a fake engine that records what it was told. Backoff and timeouts run on
//! paused time.

use std::collections::HashMap;
use std::sync::Mutex;

use rigfleet_engine::device::DeviceId;
use rigfleet_engine::Work;
use serde_json::json;
use tokio::sync::oneshot;

use super::*;
use crate::message::Frame;
use crate::test_utils::{notify_params, AutoPool, AutoPoolLog, AutoPoolScript};
use crate::transport::{BoxedStream, ConnectFuture, TransportError};
use tokio::sync::broadcast;

/// Long in virtual time, so that only the client's own timers decide (paused tests), and a
/// hang still fails (real-time tests).
const WAIT: Duration = Duration::from_secs(600);

/// One fake pool host.
struct FakeHost {
    up: bool,
    script: AutoPoolScript,
    log: Arc<Mutex<AutoPoolLog>>,
    /// Control of each connection, newest last.
    controls: Vec<mpsc::UnboundedSender<Option<String>>>,
}

/// Hosts by name; a host that is missing or down refuses connections.
#[derive(Default)]
struct FakeNet {
    hosts: Mutex<HashMap<String, FakeHost>>,
}

impl FakeNet {
    fn add(&self, host: &str, script: AutoPoolScript, up: bool) -> Arc<Mutex<AutoPoolLog>> {
        let log = Arc::new(Mutex::new(AutoPoolLog::default()));
        self.hosts.lock().unwrap().insert(
            host.to_string(),
            FakeHost {
                up,
                script,
                log: Arc::clone(&log),
                controls: Vec::new(),
            },
        );
        log
    }

    fn set_up(&self, host: &str, up: bool) {
        self.hosts.lock().unwrap().get_mut(host).unwrap().up = up;
    }

    /// Sends a line on the newest connection to `host` (`None` hangs up).
    fn send(&self, host: &str, line: Option<String>) {
        let hosts = self.hosts.lock().unwrap();
        let control = hosts[host].controls.last().expect("a connection");
        control.send(line).unwrap();
    }

    fn connections(&self, host: &str) -> usize {
        self.hosts.lock().unwrap()[host].controls.len()
    }
}

impl Connector for FakeNet {
    fn connect<'a>(&'a self, endpoint: &'a Endpoint) -> ConnectFuture<'a> {
        let mut hosts = self.hosts.lock().unwrap();
        let host = hosts.get_mut(&endpoint.url.host).filter(|h| h.up);
        let Some(host) = host else {
            let addr = endpoint.url.to_string();
            return Box::pin(async move {
                Err(TransportError::Connect {
                    addr,
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                })
            });
        };
        let (client, server) = tokio::io::duplex(1 << 16);
        let (control, control_rx) = mpsc::unbounded_channel();
        host.controls.push(control);
        tokio::spawn(AutoPool::serve(
            server,
            host.script.clone(),
            Arc::clone(&host.log),
            control_rx,
        ));
        Box::pin(async move { Ok(Box::new(client) as BoxedStream) })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SinkCall {
    Source,
    Idle,
}

/// Records what the client asks of the engine and keeps the sources to make shares from.
#[derive(Default)]
struct FakeSink {
    calls: Mutex<Vec<SinkCall>>,
    sources: Mutex<Vec<Box<dyn WorkSource>>>,
}

impl JobSink for FakeSink {
    fn set_source(&self, source: Box<dyn WorkSource>) {
        self.calls.lock().unwrap().push(SinkCall::Source);
        self.sources.lock().unwrap().push(source);
    }

    fn idle(&self) {
        self.calls.lock().unwrap().push(SinkCall::Idle);
    }
}

impl FakeSink {
    /// Work from the newest source.
    fn work(&self) -> Work {
        let mut sources = self.sources.lock().unwrap();
        sources
            .last_mut()
            .expect("a job was set")
            .next_work()
            .expect("the job has work")
    }

    fn calls(&self) -> Vec<SinkCall> {
        self.calls.lock().unwrap().clone()
    }
}

/// A share as the engine would report it (the client does not recheck the hash).
fn share(work: Work) -> Share {
    let header = work.header_with_nonce(0x1234_5678);
    Share {
        device: DeviceId("cpu".into()),
        nonce: 0x1234_5678,
        version: work.version(),
        header,
        hash: [0x11; 32],
        work: Arc::new(work),
    }
}

struct Harness {
    sink: Arc<FakeSink>,
    shares: mpsc::Sender<Share>,
    handle: ClientHandle,
    events: broadcast::Receiver<ClientEvent>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

fn pool(host: &str, priority: u32) -> PoolConfig {
    let mut p = PoolConfig::new(&format!("stratum+tcp://{host}:3333"), "wallet.rig1", "x").unwrap();
    p.priority = priority;
    p
}

fn start(net: Arc<FakeNet>, pools: Vec<PoolConfig>) -> Harness {
    let sink = Arc::new(FakeSink::default());
    let (shares, share_rx) = mpsc::channel(16);
    let config = ClientConfig::new(pools, Algorithm::Sha256d);
    let client = Client::new(config, sink.clone(), share_rx)
        .unwrap()
        .with_connector(net.clone())
        .with_jitter(Jitter::seeded(42));
    let handle = client.handle();
    let events = handle.subscribe();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(client.run(async move {
        let _ = stopped.await;
    }));
    Harness {
        sink,
        shares,
        handle,
        events,
        stop: Some(stop),
        task,
    }
}

impl Harness {
    /// Every event up to and including the first that `pred` accepts.
    async fn until(&mut self, pred: impl Fn(&ClientEvent) -> bool) -> Vec<ClientEvent> {
        let mut seen = Vec::new();
        loop {
            let event = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("event in time")
                .expect("client running");
            let done = pred(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }

    async fn until_mining_on(&mut self, pool: usize) -> Vec<ClientEvent> {
        self.until(|e| matches!(e, ClientEvent::Switched { to, .. } if to.index == pool))
            .await
    }

    async fn share_outcome(&mut self, work: Work) -> ShareOutcome {
        self.shares.send(share(work)).await.unwrap();
        let events = self.until(|e| matches!(e, ClientEvent::Share { .. })).await;
        match events.last() {
            Some(ClientEvent::Share { outcome, .. }) => outcome.clone(),
            other => panic!("{other:?}"),
        }
    }

    /// Waits until the pool has seen `n` jobs (polling the snapshot).
    async fn until_jobs(&self, pool: usize, n: u64) {
        for _ in 0..1000 {
            if self.handle.snapshot().pools[pool].jobs >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("pool {pool} never got {n} jobs");
    }

    async fn stop(mut self) -> Self {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("client stops")
            .unwrap();
        self
    }
}

#[tokio::test]
async fn clean_jobs_reach_the_engine_and_shares_of_replaced_jobs_are_stale() {
    let net = Arc::new(FakeNet::default());
    let log = net.add("primary", AutoPoolScript::default(), true);
    let mut h = start(net.clone(), vec![pool("primary", 0)]);
    let events = h.until_mining_on(0).await;
    assert!(matches!(
        &events[..],
        [
            ClientEvent::Connecting { probe: false, .. },
            ClientEvent::Switched {
                from: None,
                reason: SwitchReason::Start,
                ..
            }
        ]
    ));
    let old_work = h.sink.work();
    assert_eq!(&*old_work.job_id, "1/job1");

    // A clean job replaces it on the devices.
    net.send(
        "primary",
        Some(Frame::request(
            serde_json::Value::Null,
            "mining.notify",
            notify_params("job2", true),
        )),
    );
    h.until_jobs(0, 2).await;
    assert_eq!(h.sink.calls(), vec![SinkCall::Source, SinkCall::Source]);
    let snap = h.handle.snapshot();
    assert_eq!(snap.clean_job_latency.count, 2);
    assert_eq!(snap.job_latency.count, 2);
    let new_work = h.sink.work();
    assert_eq!(&*new_work.job_id, "2/job2");

    // A share of the replaced job is stale and not sent; one of the new job is accepted.
    assert_eq!(
        h.share_outcome(old_work).await,
        ShareOutcome::Stale(StaleKind::Replaced)
    );
    assert_eq!(h.share_outcome(new_work).await, ShareOutcome::Accepted);
    let submits = log.lock().unwrap().submits.clone();
    assert_eq!(submits.len(), 1);
    assert_eq!(submits[0][0], json!("wallet.rig1"));
    assert_eq!(submits[0][1], json!("job2"));
    let stats = &h.handle.snapshot().pools[0].shares;
    assert_eq!((stats.submitted, stats.accepted, stats.stale), (1, 1, 1));
    assert_eq!(stats.latency.count, 1);

    let h = h.stop().await;
    assert_eq!(h.sink.calls().last(), Some(&SinkCall::Idle));
    let snap = h.handle.snapshot();
    assert_eq!(snap.current, None);
}

#[tokio::test]
async fn pool_error_codes_are_counted_by_code() {
    for code in [20, 22, 23, 24, 25, 21] {
        let net = Arc::new(FakeNet::default());
        net.add(
            "p",
            AutoPoolScript {
                reject_with: Some(code),
                ..AutoPoolScript::default()
            },
            true,
        );
        let mut h = start(net, vec![pool("p", 0)]);
        h.until_mining_on(0).await;
        let outcome = h.share_outcome(h.sink.work()).await;
        let stats = h.handle.snapshot().pools[0].shares.clone();
        if code == 21 {
            assert_eq!(outcome, ShareOutcome::Stale(StaleKind::PoolSaidStale));
            assert_eq!((stats.stale, stats.rejected_total()), (1, 0));
        } else {
            assert!(
                matches!(&outcome, ShareOutcome::Rejected(e) if e.code == code),
                "{outcome:?}"
            );
            assert_eq!(stats.rejected_with(code), 1);
            assert_eq!(stats.rejected[&code].last_reason, format!("code {code}"));
        }
        assert_eq!(stats.accepted, 0);
        h.stop().await;
    }
}

/// Issue 11, item 11: a pool credits the difficulty it asked for, so "Difficulty Accepted" sums
/// that, while the best share is the luckiest hash's own difficulty.
#[tokio::test]
async fn accepted_difficulty_is_the_pool_difficulty_and_best_share_the_hash() {
    let net = Arc::new(FakeNet::default());
    net.add(
        "p",
        AutoPoolScript {
            difficulty: 4.0,
            ..AutoPoolScript::default()
        },
        true,
    );
    let mut h = start(net, vec![pool("p", 0)]);
    h.until_mining_on(0).await;
    let mut best = 0.0f64;
    for lucky_byte in [1u8, 0x40] {
        let mut s = share(h.sink.work());
        // Read little-endian: 2^192 or so, a hash far below the difficulty-4 target.
        s.hash = [0; 32];
        s.hash[24] = lucky_byte;
        let own = s.difficulty();
        assert!(own > 1e6, "a lucky hash: {own}");
        best = best.max(own);
        h.shares.send(s).await.unwrap();
        let events = h.until(|e| matches!(e, ClientEvent::Share { .. })).await;
        match events.last() {
            Some(ClientEvent::Share {
                outcome,
                difficulty,
                ..
            }) => {
                assert_eq!(outcome, &ShareOutcome::Accepted);
                assert_eq!(*difficulty, own, "events carry the share's own difficulty");
            }
            other => panic!("{other:?}"),
        }
    }
    let stats = h.handle.snapshot().pools[0].shares.clone();
    assert_eq!(stats.accepted, 2);
    assert!(
        (stats.accepted_difficulty - 8.0).abs() < 1e-9,
        "two shares at pool difficulty 4: {}",
        stats.accepted_difficulty
    );
    assert_eq!(stats.best_difficulty, best);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn fails_over_when_the_primary_refuses_and_returns_to_it_when_it_recovers() {
    let net = Arc::new(FakeNet::default());
    net.add("primary", AutoPoolScript::default(), false);
    let backup_script = AutoPoolScript {
        job_prefix: "b".into(),
        ..AutoPoolScript::default()
    };
    net.add("backup", backup_script, true);
    let mut h = start(net.clone(), vec![pool("primary", 0), pool("backup", 1)]);

    let events = h.until_mining_on(1).await;
    let summary: Vec<String> = events.iter().map(describe).collect();
    assert_eq!(
        summary,
        [
            "connecting #0",
            "failed #0 connect",
            "connecting #1",
            "switched None -> #1"
        ],
        "{events:?}"
    );
    let backup_work = h.sink.work();

    // The primary comes back: a probe finds it healthy and mining returns to it.
    net.set_up("primary", true);
    let events = h.until_mining_on(0).await;
    let summary: Vec<String> = events.iter().map(describe).collect();
    assert_eq!(
        summary.last().map(String::as_str),
        Some("switched Some(1) -> #0")
    );
    assert!(events.iter().any(|e| matches!(
        e,
        ClientEvent::Switched {
            reason: SwitchReason::Recovered,
            ..
        }
    )));
    assert!(summary.contains(&"probe #0".to_string()), "{summary:?}");
    // No idle gap: the primary's job replaced the backup's directly.
    assert_eq!(
        h.sink.calls(),
        vec![SinkCall::Source, SinkCall::Source],
        "the engine never idled"
    );
    let snap = h.handle.snapshot();
    assert_eq!(snap.current, Some(0));
    assert_eq!(snap.pools[0].state, PoolState::Mining);
    assert_eq!(snap.pools[1].state, PoolState::Standby);
    assert_eq!(snap.switches, 2);

    // A late share of the backup's job is dropped and counted on the backup.
    assert_eq!(h.share_outcome(backup_work).await, ShareOutcome::Dropped);
    assert_eq!(h.handle.snapshot().pools[1].shares.dropped, 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn refused_authorization_fails_over_with_a_clear_reason() {
    let net = Arc::new(FakeNet::default());
    net.add(
        "primary",
        AutoPoolScript {
            authorize: false,
            ..AutoPoolScript::default()
        },
        true,
    );
    net.add("backup", AutoPoolScript::default(), true);
    let mut h = start(net, vec![pool("primary", 0), pool("backup", 1)]);
    let events = h.until_mining_on(1).await;
    let failed = events
        .iter()
        .find_map(|e| match e {
            ClientEvent::PoolFailed { pool, reason, .. } if pool.index == 0 => Some(reason.clone()),
            _ => None,
        })
        .expect("the primary failed");
    assert!(failed.is_auth_failure(), "{failed:?}");
    let snap = h.handle.snapshot();
    assert!(snap.pools[0]
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("authorization refused")));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pool_that_stops_sending_jobs_is_failed_over() {
    let net = Arc::new(FakeNet::default());
    net.add("primary", AutoPoolScript::default(), true);
    net.add("backup", AutoPoolScript::default(), true);
    let mut h = start(net.clone(), vec![pool("primary", 0), pool("backup", 1)]);
    h.until_mining_on(0).await;
    let started = Instant::now();
    // The primary stays connected but silent.
    let events = h.until_mining_on(1).await;
    assert!(events.iter().any(|e| matches!(
        e,
        ClientEvent::PoolFailed {
            reason: FailReason::NoJob(_),
            ..
        }
    )));
    assert!(started.elapsed() >= DEFAULT_NO_JOB_TIMEOUT);
    // The engine was idled between the two pools (the primary's job was worthless).
    assert_eq!(
        h.sink.calls(),
        vec![SinkCall::Source, SinkCall::Idle, SinkCall::Source]
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pool_that_breaks_the_framing_is_failed_over() {
    let net = Arc::new(FakeNet::default());
    net.add("primary", AutoPoolScript::default(), true);
    net.add("backup", AutoPoolScript::default(), true);
    let mut h = start(net.clone(), vec![pool("primary", 0), pool("backup", 1)]);
    h.until_mining_on(0).await;
    // Garbage and wrong types are only counted...
    net.send("primary", Some("not json at all".into()));
    net.send(
        "primary",
        Some(r#"{"id":null,"method":"mining.notify","params":[1,2,3]}"#.into()),
    );
    // ...but a 1 MiB line breaks the framing: the connection is dropped, mining moves on.
    net.send("primary", Some("x".repeat(1 << 20)));
    let events = h.until_mining_on(1).await;
    let reason = events
        .iter()
        .find_map(|e| match e {
            ClientEvent::PoolFailed { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .expect("the primary failed");
    assert!(
        matches!(reason, FailReason::Session(SessionEnd::BrokenFraming(_))),
        "{reason:?}"
    );
    let snap = h.handle.snapshot();
    assert_eq!(snap.pools[0].malformed_lines, 2);
    assert!(
        snap.pools[0].retry_in_secs.is_some(),
        "the primary backs off"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pool_without_a_first_job_is_failed_over() {
    let net = Arc::new(FakeNet::default());
    net.add(
        "primary",
        AutoPoolScript {
            send_job: false,
            ..AutoPoolScript::default()
        },
        true,
    );
    net.add("backup", AutoPoolScript::default(), true);
    let mut h = start(net, vec![pool("primary", 0), pool("backup", 1)]);
    let events = h.until_mining_on(1).await;
    assert!(events.iter().any(|e| matches!(
        e,
        ClientEvent::PoolFailed {
            reason: FailReason::NoFirstJob(_),
            ..
        }
    )));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn with_every_pool_down_retries_back_off_exponentially() {
    let net = Arc::new(FakeNet::default());
    net.add("only", AutoPoolScript::default(), false);
    let mut h = start(net.clone(), vec![pool("only", 0)]);
    let mut waits = Vec::new();
    while waits.len() < 8 {
        let events = h
            .until(|e| matches!(e, ClientEvent::PoolFailed { .. }))
            .await;
        if let Some(ClientEvent::PoolFailed { retry_in, .. }) = events.last() {
            waits.push(*retry_in);
        }
    }
    let backoff = Backoff::default();
    for (i, wait) in waits.iter().enumerate() {
        assert!(*wait <= backoff.ceiling(i as u32 + 1), "try {i}: {wait:?}");
    }
    let total: Duration = waits.iter().sum();
    assert!(total > Duration::from_secs(30), "backs off: {waits:?}");
    assert_eq!(h.handle.snapshot().pools[0].failures, 8);
    assert_eq!(h.handle.snapshot().pools[0].state, PoolState::Backoff);
    assert!(
        h.sink.calls().is_empty(),
        "nothing to mine, nothing started"
    );

    // It comes up: mining starts without a restart.
    net.set_up("only", true);
    h.until_mining_on(0).await;
    assert_eq!(h.handle.snapshot().pools[0].failures, 0);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn reconnect_requests_resume_the_session_on_the_same_pool() {
    let net = Arc::new(FakeNet::default());
    let log = net.add("primary", AutoPoolScript::default(), true);
    let mut h = start(net.clone(), vec![pool("primary", 0)]);
    h.until_mining_on(0).await;
    net.send(
        "primary",
        Some(Frame::request(
            serde_json::Value::Null,
            "client.reconnect",
            json!(["evil.example", 4444, 0]),
        )),
    );
    let events = h.until_mining_on(0).await;
    assert!(matches!(
        events.last(),
        Some(ClientEvent::Switched { from: Some(f), .. }) if f.index == 0
    ));
    assert_eq!(
        net.connections("primary"),
        2,
        "reconnected to the configured host"
    );
    let subscribes = log.lock().unwrap().subscribes.clone();
    assert_eq!(
        subscribes[1][1],
        json!("s1"),
        "the session id is offered back"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_healthy_session_that_drops_is_retried_at_once() {
    let net = Arc::new(FakeNet::default());
    net.add("primary", AutoPoolScript::default(), true);
    net.add("backup", AutoPoolScript::default(), true);
    let mut h = start(net.clone(), vec![pool("primary", 0), pool("backup", 1)]);
    h.until_mining_on(0).await;
    // Mine a while (jobs keep coming), then the pool restarts.
    for i in 0..4 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        net.send(
            "primary",
            Some(Frame::request(
                serde_json::Value::Null,
                "mining.notify",
                notify_params(&format!("k{i}"), false),
            )),
        );
    }
    net.send("primary", None);
    let events = h.until_mining_on(0).await;
    assert!(events.iter().any(|e| matches!(
        e,
        ClientEvent::PoolFailed { retry_in, reason: FailReason::Session(SessionEnd::Eof), .. }
            if retry_in.is_zero()
    )));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ClientEvent::Switched { to, .. } if to.index == 1)),
        "no detour to the backup"
    );
    h.stop().await;
}

#[tokio::test]
async fn bad_configurations_are_refused() {
    let sink: Arc<dyn JobSink> = Arc::new(FakeSink::default());
    let (_tx, rx) = mpsc::channel(1);
    assert!(matches!(
        Client::new(
            ClientConfig::new(vec![], Algorithm::Sha256d),
            sink.clone(),
            rx
        ),
        Err(ClientError::NoPools)
    ));
    let mut p = pool("x", 0);
    p.user = " ".into();
    let (_tx, rx) = mpsc::channel(1);
    assert!(matches!(
        Client::new(
            ClientConfig::new(vec![p], Algorithm::Sha256d),
            sink.clone(),
            rx
        ),
        Err(ClientError::EmptyUser(_))
    ));
    let mut p = pool("x", 0);
    p.options.suggest_difficulty = Some(-1.0);
    let (_tx, rx) = mpsc::channel(1);
    assert!(matches!(
        Client::new(
            ClientConfig::new(vec![p], Algorithm::Sha256d),
            sink.clone(),
            rx
        ),
        Err(ClientError::BadSuggestedDifficulty(_))
    ));
    let mut p = PoolConfig::new("stratum+ssl://x:443", "w", "x").unwrap();
    p.options.tls.ca_file = Some("/nonexistent/ca.pem".into());
    let (_tx, rx) = mpsc::channel(1);
    let err = Client::new(ClientConfig::new(vec![p], Algorithm::Sha256d), sink, rx)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("ca.pem"), "{err}");
    // Debug output never shows the password.
    let mut p = pool("x", 0);
    p.password = "hunter2".into();
    assert!(!format!("{p:?}").contains("hunter2"));
}

/// A short text per event for order assertions.
fn describe(e: &ClientEvent) -> String {
    match e {
        ClientEvent::Connecting { pool, probe: false } => format!("connecting #{}", pool.index),
        ClientEvent::Connecting { pool, probe: true } => format!("probe #{}", pool.index),
        ClientEvent::PoolFailed { pool, reason, .. } => {
            let kind = match reason {
                FailReason::Connect(_) => "connect",
                FailReason::Session(_) => "session",
                FailReason::NoFirstJob(_) => "no first job",
                FailReason::NoJob(_) => "no job",
            };
            format!("failed #{} {kind}", pool.index)
        }
        ClientEvent::Switched { from, to, .. } => {
            format!(
                "switched {:?} -> #{}",
                from.as_ref().map(|f| f.index),
                to.index
            )
        }
        other => format!("{other:?}"),
    }
}
