//! The agent against a fake server (`testkit`): enrollment, the handshake, telemetry acks and
//! resends across a lost connection, signed orders through the daemon, a 10,000-order mutation
//! harness through the real order handler, and the simulator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use rigfleet_proto::config::DesiredConfig;
use rigfleet_proto::enroll::ApiError;
use rigfleet_proto::signing::{OrderKind, SignedOrder};
use rigfleet_proto::{RigId, ServerMessage};
use tokio::sync::oneshot;

use crate::daemon::config::{self, AgentConfig};
use crate::daemon::identity::{Identity, OrderCounters, IDENTITY_FILE, KEY_FILE};
use crate::daemon::link::backoff::Jitter;
use crate::daemon::link::now_unix_ms;
use crate::daemon::link::orders::PersistedCounters;
use crate::daemon::link::target::{LinkTls, ServerUrl};
use crate::daemon::link::{Link, LinkEvent, LinkTimings};
use crate::daemon::mining::{MiningRuntime, RuntimeOptions};
use crate::daemon::online::{Input, Online, OnlineParts};
use crate::daemon::queue::{FsyncPolicy, QueueOptions, TelemetryQueue};
use crate::daemon::run::{daemon, DaemonOptions, QUEUE_DIR};
use crate::daemon::watchdog::{Watchdog, WatchdogPolicy};
use crate::daemon::{desired, telemetry::SysRoot};
use crate::enroll::{cpu_device, enroll, EnrollOptions};
use crate::testkit::{sign_order, FakeServer};

const WAIT: Duration = Duration::from_secs(10);

fn enroll_options(fake: &FakeServer, dir: &Path) -> EnrollOptions {
    EnrollOptions {
        server: fake.url.clone(),
        token: fake.token(),
        state_dir: dir.to_path_buf(),
        tls: LinkTls::default(),
        hostname: "test-rig".into(),
        rig_name: "test-rig".into(),
        devices: vec![cpu_device(Some("Test CPU"))],
        force: false,
    }
}

fn agent_config(dir: &Path) -> AgentConfig {
    let text = format!(
        "state_dir = {:?}\n[api]\nlisten = \"off\"\n",
        dir.display().to_string()
    );
    config::from_toml(Path::new("test.toml"), &text).expect("valid test config")
}

fn fast_options() -> DaemonOptions {
    DaemonOptions {
        timings: LinkTimings::fast(),
        sys_root: SysRoot::system(),
        queue: QueueOptions {
            fsync: FsyncPolicy::Never,
            ..QueueOptions::default()
        },
        telemetry_every: Some(Duration::from_millis(100)),
        watchdog: WatchdogPolicy::default(),
        watchdog_every: Duration::from_secs(3600),
        runtime: RuntimeOptions::default(),
    }
}

/// Runs the daemon on `dir` while `body` runs; stops it when `body` ends.
async fn with_daemon<F: std::future::Future<Output = ()>>(dir: &Path, body: F) {
    with_daemon_options(dir, fast_options(), body).await;
}

async fn with_daemon_options<F: std::future::Future<Output = ()>>(
    dir: &Path,
    options: DaemonOptions,
    body: F,
) {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let run = daemon(agent_config(dir), options, async move {
        let _ = stop_rx.await;
    });
    let test = async move {
        body.await;
        let _ = stop_tx.send(());
    };
    let (result, ()) = tokio::join!(run, test);
    result.expect("daemon ran");
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn config_payload(version: u64, algorithm: &str, interval: Option<u32>) -> String {
    let pools = if algorithm.is_empty() {
        "[]".to_string()
    } else {
        r#"[{"url":"stratum+tcp://127.0.0.1:1","user":"wallet.rig","password":"hunter2"}]"#
            .to_string()
    };
    let interval = interval.map_or("null".to_string(), |i| i.to_string());
    format!(
        r#"{{"version":{version},"algorithm":"{algorithm}","pools":{pools},"devices":[],"telemetry_interval_secs":{interval}}}"#
    )
}

#[tokio::test]
async fn enroll_saves_the_identity_and_pins_the_server_key() {
    let fake = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut options = enroll_options(&fake, &state);
    options.tls.cert_fingerprint = Some(format!("sha256:{}", "ab".repeat(32)));
    let enrolled = enroll(&options).await.expect("enrolls");
    assert_eq!(enrolled.identity.agent_id.as_str(), "agt-1");
    assert_eq!(enrolled.identity.rig_ids, vec![RigId::from("rig-1")]);
    let loaded = Identity::load(&state).expect("saved");
    assert_eq!(loaded.server_key(), &fake.key.verifying_key());
    assert_eq!(loaded.server_url, fake.url);
    // The TLS trust given at enrollment travels with the identity, for `run`.
    assert_eq!(loaded.tls_cert_fingerprint, options.tls.cert_fingerprint);
    // The server registered the key the agent holds.
    assert_eq!(fake.state().agents[0].1, loaded.public_key());

    // A second enrollment does not overwrite it without --force.
    options.tls.cert_fingerprint = None;
    let err = enroll(&options).await.expect_err("identity exists");
    assert!(err.to_string().contains("--force"), "{err}");
    options.force = true;
    // The config applied as the previous rig goes with it: its version is not this rig's.
    let old: DesiredConfig = serde_json::from_str(&config_payload(40, "", None)).expect("json");
    desired::save(&state, &old).expect("save");
    let again = enroll(&options).await.expect("forced");
    assert_eq!(again.identity.agent_id.as_str(), "agt-2");
    assert_eq!(desired::load(&state).expect("ok"), None);
}

#[tokio::test]
async fn tls_with_a_pinned_certificate_or_a_ca_file_carries_enrollment_and_the_link() {
    let fake = FakeServer::start().await;
    let (https, pem, fingerprint) = fake.tls_front().await;
    let dir = tempfile::tempdir().expect("tempdir");

    // A wrong pin: the TLS handshake fails, nothing is saved.
    let wrong = dir.path().join("wrong");
    let mut options = enroll_options(&fake, &wrong);
    options.server = https.clone();
    options.tls.cert_fingerprint = Some(format!("sha256:{}", "00".repeat(32)));
    let err = enroll(&options).await.expect_err("pin mismatch");
    assert!(format!("{err:#}").contains("TLS"), "{err:#}");
    assert!(files_in(&wrong).is_empty());

    // The right pin: enrolled, and `run` connects over wss with the pin kept in the identity.
    let pinned = dir.path().join("pinned");
    let mut options = enroll_options(&fake, &pinned);
    options.server = https.clone();
    options.tls.cert_fingerprint = Some(fingerprint);
    enroll(&options).await.expect("enrolls over TLS");
    let f = fake.clone();
    with_daemon(&pinned, async move {
        assert!(
            f.wait_for(WAIT, |s| s.auth_ok >= 1 && !s.samples.is_empty())
                .await
        );
    })
    .await;

    // A CA file instead of a pin.
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).expect("write");
    let by_ca = dir.path().join("by-ca");
    let mut options = enroll_options(&fake, &by_ca);
    options.server = https;
    options.tls.ca_file = Some(ca);
    enroll(&options)
        .await
        .expect("enrolls trusting the CA file");
    let f = fake.clone();
    with_daemon(&by_ca, async move {
        assert!(f.wait_for(WAIT, |s| s.auth_ok >= 2).await);
    })
    .await;
}

#[tokio::test]
async fn a_server_whose_key_does_not_match_the_token_is_refused_and_nothing_saved() {
    let fake = FakeServer::start().await;
    fake.state().impostor_key = Some(SigningKey::from_bytes(&[5u8; 32]).verifying_key());
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let err = enroll(&enroll_options(&fake, &state))
        .await
        .expect_err("impostor");
    let text = format!("{err:#}");
    assert!(text.contains("does not match"), "{text}");
    assert!(!state.join(KEY_FILE).exists() && !state.join(IDENTITY_FILE).exists());
    assert!(files_in(&state).is_empty(), "{:?}", files_in(&state));
}

#[tokio::test]
async fn enrollment_errors_from_the_server_are_clear() {
    let fake = FakeServer::start().await;
    fake.state().enroll_error = Some((
        403,
        ApiError {
            code: "token_exhausted".into(),
            message: "this token has been used 5 times".into(),
        },
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let err = enroll(&enroll_options(&fake, dir.path()))
        .await
        .expect_err("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("token_exhausted") && text.contains("403"),
        "{text}"
    );
    let mut bad = enroll_options(&fake, dir.path());
    bad.token = "rf1.nope".into();
    assert!(enroll(&bad).await.is_err());
}

#[tokio::test]
async fn handshake_authenticates_and_acks_drain_the_queue() {
    let fake = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    enroll(&enroll_options(&fake, dir.path()))
        .await
        .expect("enrolls");
    let f = fake.clone();
    with_daemon(dir.path(), async move {
        assert!(
            f.wait_for(WAIT, |s| s.auth_ok >= 1 && s.samples.len() >= 8)
                .await
        );
    })
    .await;
    // Stopping sent a close frame.
    assert!(fake.wait_for(WAIT, |s| s.closes == 1).await);
    let st = fake.state();
    assert_eq!(st.auth_failed, 0);
    assert_eq!(st.hello_acked.first(), Some(&Some(0)));
    let queue =
        TelemetryQueue::open(&dir.path().join(QUEUE_DIR), QueueOptions::default()).expect("queue");
    assert!(queue.acked_seq() >= 7, "acked {}", queue.acked_seq());
    assert!(queue.len() <= 2, "left {}", queue.len());
    // Seqs arrive in order, once each, on a healthy link.
    let seqs: Vec<u64> = st.samples.iter().map(|s| s.2).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

/// Issue 11, item 7: a TLS-terminating proxy holds a signed order back until it expired and
/// forges `welcome`'s unsigned offset to make it look fresh; the agent judges expiry with the
/// server time signed over its own nonce and refuses it. A welcome without a signed time is
/// refused outright.
#[tokio::test]
async fn an_order_held_back_past_its_expiry_is_refused_whatever_the_unsigned_offset_says() {
    let fake = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    enroll(&enroll_options(&fake, dir.path()))
        .await
        .expect("enrolls");
    // The server's clock is 10 minutes ahead of the rig's; the forged offset says an hour behind.
    fake.state().clock_ahead_ms = 600_000;
    fake.state().forged_offset_ms = Some(-3_600_000);
    let f = fake.clone();
    with_daemon(dir.path(), async move {
        assert!(f.wait_for(WAIT, |s| s.auth_ok >= 1).await);
        let rig = f.state().agents[0].2.clone();
        // Valid for 5 minutes from the rig's clock, so expired 5 minutes ago on the server's.
        let held_back = f.order(
            OrderKind::SetConfig,
            &rig,
            1,
            now_unix_ms() + 300_000,
            &config_payload(1, "", Some(1)),
        );
        f.send_all(ServerMessage::SetConfig(held_back));
        assert!(
            f.wait_for(WAIT, |s| {
                s.events
                    .iter()
                    .any(|e| e.kind == "order_refused" && e.message.contains("expired"))
            })
            .await,
            "{:?}",
            f.state().events
        );
        // A fresh order (on the server's clock) still goes through.
        let fresh = f.order(
            OrderKind::SetConfig,
            &rig,
            2,
            now_unix_ms() + 600_000 + 60_000,
            &config_payload(1, "", Some(1)),
        );
        f.send_all(ServerMessage::SetConfig(fresh));
        assert!(f.wait_for(WAIT, |s| s.applied.iter().any(|a| a.ok)).await);
        assert!(f.state().applied.iter().all(|a| a.version == 1));
    })
    .await;

    // A server (or proxy) that sends no signed time is not trusted with the clock.
    let fake = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    enroll(&enroll_options(&fake, dir.path()))
        .await
        .expect("enrolls");
    fake.state().unsigned_welcome = true;
    let f = fake.clone();
    with_daemon(dir.path(), async move {
        assert!(f.wait_for(WAIT, |s| s.connections >= 1).await);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        // Welcomed by the fake, but the agent dropped the link: it sends no telemetry.
        assert!(f.state().samples.is_empty());
    })
    .await;
}

#[tokio::test]
async fn queue_overflow_during_an_outage_is_reported_as_an_event() {
    let fake = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    enroll(&enroll_options(&fake, dir.path()))
        .await
        .expect("enrolls");
    fake.state().accepting = false;
    let mut options = fast_options();
    options.queue.capacity = 5;
    options.queue.segment_records = 2;
    let f = fake.clone();
    with_daemon_options(dir.path(), options, async move {
        // Ten samples at 100 ms overflow a five-sample queue while the server is away.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        f.state().accepting = true;
        assert!(
            f.wait_for(WAIT, |s| s
                .events
                .iter()
                .any(|e| e.kind == "telemetry_dropped"))
                .await
        );
    })
    .await;
    let st = fake.state();
    let seqs: Vec<u64> = st.samples.iter().map(|s| s.2).collect();
    // The oldest were dropped; what arrived is the newest, in order, with no gaps after.
    assert!(seqs.first().is_some_and(|s| *s > 1), "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

#[tokio::test]
async fn an_agent_whose_key_the_server_does_not_know_is_refused() {
    let fake = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    enroll(&enroll_options(&fake, dir.path()))
        .await
        .expect("enrolls");
    // The server forgets the agent (a removed rig).
    fake.state().agents.clear();
    let f = fake.clone();
    with_daemon(dir.path(), async move {
        assert!(f.wait_for(WAIT, |s| s.auth_failed >= 2).await);
    })
    .await;
    assert_eq!(fake.state().auth_ok, 0);
    assert!(fake.state().samples.is_empty());
}

#[tokio::test]
async fn a_lost_connection_is_retried_and_unacked_samples_are_resent_exactly_once() {
    let fake = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    enroll(&enroll_options(&fake, dir.path()))
        .await
        .expect("enrolls");
    let f = fake.clone();
    let seen_before = std::sync::Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let seen = std::sync::Arc::clone(&seen_before);
    with_daemon(dir.path(), async move {
        assert!(f.wait_for(WAIT, |s| s.samples.len() >= 3).await);
        f.state().acking = false;
        let n = f.state().samples.len();
        assert!(f.wait_for(WAIT, |s| s.samples.len() >= n + 3).await);
        // Outage: cut the socket and refuse new ones for a while.
        {
            let mut st = f.state();
            st.accepting = false;
        }
        f.drop_all();
        tokio::time::sleep(Duration::from_millis(800)).await;
        let max_before = f.state().samples.iter().map(|s| s.2).max().unwrap_or(0);
        let acked_before = {
            let q = f.state();
            // The last ack the server sent is for the last sample before acking stopped.
            q.samples[n - 1].2
        };
        *seen.lock().expect("lock") = (max_before, acked_before);
        {
            let mut st = f.state();
            st.accepting = true;
            st.acking = true;
        }
        assert!(
            f.wait_for(WAIT, |s| s.connections >= 2
                && s.samples.iter().any(|x| x.2 >= max_before + 10))
                .await
        );
    })
    .await;
    let (max_before, acked_before) = *seen_before.lock().expect("lock");
    let st = fake.state();
    assert_eq!(st.hello_acked.get(1), Some(&Some(acked_before)));
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    let mut after_reconnect: BTreeMap<u64, usize> = BTreeMap::new();
    for (conn, _, seq) in &st.samples {
        *count.entry(*seq).or_default() += 1;
        if *conn >= 2 {
            *after_reconnect.entry(*seq).or_default() += 1;
        }
    }
    let max = *count.keys().last().expect("samples");
    for seq in 1..=max {
        let n = count.get(&seq).copied().unwrap_or(0);
        assert!(n >= 1, "seq {seq} never arrived");
        if seq > max_before {
            // Taken during the outage or after: exactly once.
            assert_eq!(n, 1, "seq {seq} arrived {n} times");
        }
        if seq > acked_before {
            // Unacknowledged at the drop (or newer): resent exactly once after it.
            assert_eq!(after_reconnect.get(&seq).copied(), Some(1), "seq {seq}");
        } else {
            assert_eq!(after_reconnect.get(&seq), None, "acked seq {seq} resent");
        }
    }
    assert!(max_before > acked_before);
}

#[tokio::test]
async fn orders_are_applied_persisted_answered_or_refused() {
    let fake = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state: PathBuf = dir.path().to_path_buf();
    enroll(&enroll_options(&fake, dir.path()))
        .await
        .expect("enrolls");
    let f = fake.clone();
    let st_dir = state.clone();
    with_daemon(dir.path(), async move {
        assert!(f.wait_for(WAIT, |s| s.auth_ok >= 1).await);
        let rig = f.state().agents[0].2.clone();
        let soon = now_unix_ms() + 60_000;
        let set = |counter, payload: &str| {
            ServerMessage::SetConfig(f.order(OrderKind::SetConfig, &rig, counter, soon, payload))
        };
        let command = |counter, payload: &str| {
            ServerMessage::Command(f.order(OrderKind::Command, &rig, counter, soon, payload))
        };

        f.send_all(set(1, &config_payload(1, "", Some(1))));
        assert!(f.wait_for(WAIT, |s| s.applied.len() == 1).await);
        {
            let st = f.state();
            assert!(st.applied[0].ok, "{:?}", st.applied[0]);
            assert_eq!(st.applied[0].version, 1);
            let expected: DesiredConfig =
                serde_json::from_str(&config_payload(1, "", Some(1))).expect("json");
            assert_eq!(st.applied[0].content_hash, expected.content_hash());
        }
        let saved = desired::load(&st_dir).expect("readable").expect("saved");
        assert_eq!(saved.version, 1);

        // An algorithm the engine lacks: refused with the reason, version 1 keeps running.
        f.send_all(set(2, &config_payload(2, "x11", None)));
        assert!(f.wait_for(WAIT, |s| s.applied.len() == 2).await);
        {
            let st = f.state();
            assert!(!st.applied[1].ok);
            let error = st.applied[1].error.clone().unwrap_or_default();
            assert!(error.contains("x11"), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
        assert_eq!(
            desired::load(&st_dir).expect("ok").map(|c| c.version),
            Some(1)
        );

        // The same version and content again: ok. Same version, other content: refused.
        f.send_all(set(3, &config_payload(1, "", Some(1))));
        f.send_all(set(4, &config_payload(1, "", Some(2))));
        assert!(f.wait_for(WAIT, |s| s.applied.len() == 4).await);
        {
            let st = f.state();
            assert!(st.applied[2].ok && !st.applied[3].ok, "{:?}", st.applied);
        }

        // Commands: restart answered; shell without the local opt-in refused.
        f.send_all(command(
            5,
            r#"{"command_id":"c-1","command":{"kind":"restart_mining"}}"#,
        ));
        f.send_all(command(
            6,
            r#"{"command_id":"c-2","command":{"kind":"shell","command":"id"}}"#,
        ));
        f.send_all(command(
            7,
            r#"{"command_id":"c-3","command":{"kind":"switch_pool","index":3}}"#,
        ));
        assert!(f.wait_for(WAIT, |s| s.results.len() == 3).await);
        {
            let st = f.state();
            let by_id = |id: &str| {
                st.results
                    .iter()
                    .find(|r| r.command_id.as_str() == id)
                    .cloned()
            };
            assert!(by_id("c-1").is_some_and(|r| r.ok));
            assert!(
                by_id("c-2").is_some_and(|r| !r.ok && r.output.contains("allow_shell_commands"))
            );
            assert!(by_id("c-3").is_some_and(|r| !r.ok));
        }

        // Forged, replayed, expired and wrong-rig orders: refused, reported, not applied.
        let forger = SigningKey::from_bytes(&[77u8; 32]);
        let v9 = config_payload(9, "", None);
        let forged = sign_order(&forger, OrderKind::SetConfig, &rig, 10, soon, &v9);
        let replayed = f.order(OrderKind::SetConfig, &rig, 5, soon, &v9);
        let expired = f.order(OrderKind::SetConfig, &rig, 11, now_unix_ms() - 10_000, &v9);
        let wrong_rig = f.order(OrderKind::SetConfig, &"rig-999".into(), 12, soon, &v9);
        let events_before = f.state().events.len();
        for o in [forged, replayed, expired, wrong_rig] {
            f.send_all(ServerMessage::SetConfig(o));
        }
        assert!(
            f.wait_for(WAIT, |s| s
                .events
                .iter()
                .skip(events_before)
                .filter(|e| e.kind == "order_refused")
                .count()
                >= 4)
                .await
        );
        let st = f.state();
        let reasons: Vec<&str> = st.events[events_before..]
            .iter()
            .map(|e| e.message.as_str())
            .collect();
        for needle in ["bad signature", "not above", "expired", "does not front"] {
            assert!(
                reasons.iter().any(|r| r.contains(needle)),
                "{needle}: {reasons:?}"
            );
        }
        assert!(reasons.iter().all(|r| !r.contains("hunter2")));
        assert!(st.events.iter().all(|e| e.rig_id == rig));
        assert_eq!(st.applied.len(), 4);
    })
    .await;
    assert_eq!(
        desired::load(&state).expect("ok").map(|c| c.version),
        Some(1)
    );
    let counters = OrderCounters::load(&state).expect("counters");
    assert_eq!(counters.last(&"rig-1".into()), Some(7));
}

#[tokio::test]
async fn a_signed_key_rollover_pins_the_new_server_key() {
    let fake = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    enroll(&enroll_options(&fake, dir.path()))
        .await
        .expect("enrolls");
    let new_key = SigningKey::from_bytes(&[55u8; 32]);
    let f = fake.clone();
    let nk = new_key.clone();
    with_daemon(dir.path(), async move {
        assert!(f.wait_for(WAIT, |s| s.auth_ok >= 1).await);
        let rig = f.state().agents[0].2.clone();
        let soon = now_unix_ms() + 60_000;
        let payload = format!(
            r#"{{"new_key":"{}"}}"#,
            rigfleet_engine::hex::encode(nk.verifying_key().as_bytes())
        );
        // Signed by a stranger: refused.
        let forged = sign_order(&nk, OrderKind::KeyRollover, &rig, 1, soon, &payload);
        f.send_all(ServerMessage::KeyRollover(forged));
        // Signed by the pinned key: accepted.
        f.send_all(ServerMessage::KeyRollover(f.order(
            OrderKind::KeyRollover,
            &rig,
            2,
            soon,
            &payload,
        )));
        assert!(
            f.wait_for(WAIT, |s| s.events.iter().any(|e| e.kind == "key_rollover"))
                .await
        );
        // From now on only the new key's orders count.
        let v1 = config_payload(1, "", None);
        let old = f.order(OrderKind::SetConfig, &rig, 3, soon, &v1);
        f.send_all(ServerMessage::SetConfig(old));
        let new = sign_order(&nk, OrderKind::SetConfig, &rig, 4, soon, &v1);
        f.send_all(ServerMessage::SetConfig(new));
        assert!(f.wait_for(WAIT, |s| s.applied.len() == 1).await);
        let st = f.state();
        assert!(st.applied[0].ok);
        let refused = st
            .events
            .iter()
            .filter(|e| e.kind == "order_refused")
            .count();
        assert_eq!(refused, 2, "{:?}", st.events);
    })
    .await;
    let identity = Identity::load(dir.path()).expect("identity");
    assert_eq!(identity.server_key(), &new_key.verifying_key());
}

/// The issue's figure. The workspace builds the signature crates optimised even in the dev
/// profile, so 10,000 verifications take about a second.
const MUTATION_ROUNDS: u64 = 10_000;

/// The online half built by hand, never connected: orders go straight into its handler.
/// Issue 11, item 8 (agent side): a config version below the applied one is refused with a
/// clear `config_applied` error and a `config_refused` event, and the current config keeps
/// running. The reference is the version saved in the state folder, even when the runtime could
/// not start it at boot (here: an algorithm this build lacks), not only what is running.
#[tokio::test]
async fn config_versions_never_go_backwards() {
    let fake = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state: PathBuf = dir.path().to_path_buf();
    enroll(&enroll_options(&fake, dir.path()))
        .await
        .expect("enrolls");
    let saved: DesiredConfig = serde_json::from_str(&config_payload(5, "x11", None)).expect("json");
    desired::save(&state, &saved).expect("save");
    let f = fake.clone();
    let st_dir = state.clone();
    with_daemon(dir.path(), async move {
        assert!(f.wait_for(WAIT, |s| s.auth_ok >= 1).await);
        let rig = f.state().agents[0].2.clone();
        let soon = now_unix_ms() + 60_000;
        let set = |counter, payload: &str| {
            ServerMessage::SetConfig(f.order(OrderKind::SetConfig, &rig, counter, soon, payload))
        };

        // Version 3 after version 5 (saved, not running): refused, the file keeps version 5.
        f.send_all(set(1, &config_payload(3, "", None)));
        assert!(f.wait_for(WAIT, |s| s.applied.len() == 1).await);
        {
            let st = f.state();
            assert!(!st.applied[0].ok, "{:?}", st.applied[0]);
            assert_eq!(st.applied[0].version, 3);
            let error = st.applied[0].error.clone().unwrap_or_default();
            assert!(error.contains("below the applied version 5"), "{error}");
        }
        assert!(
            f.wait_for(WAIT, |s| s
                .events
                .iter()
                .any(|e| e.kind == "config_refused"))
                .await
        );
        assert_eq!(
            desired::load(&st_dir).expect("ok").map(|c| c.version),
            Some(5)
        );

        // Newer: applied. Then two pushes whose versions arrive out of order (increasing
        // counters, as a server racing two pushes would sign them): the rig stays on the newest.
        f.send_all(set(2, &config_payload(6, "", Some(1))));
        f.send_all(set(3, &config_payload(8, "", Some(2))));
        f.send_all(set(4, &config_payload(7, "", Some(3))));
        assert!(f.wait_for(WAIT, |s| s.applied.len() == 4).await);
        {
            let st = f.state();
            let answers: Vec<_> = st.applied[1..].iter().map(|a| (a.version, a.ok)).collect();
            assert_eq!(
                answers,
                [(6, true), (8, true), (7, false)],
                "{:?}",
                st.applied
            );
            let error = st.applied[3].error.clone().unwrap_or_default();
            assert!(error.contains("below the applied version 8"), "{error}");
        }
        assert_eq!(
            desired::load(&st_dir).expect("ok").map(|c| c.version),
            Some(8)
        );
    })
    .await;
}

fn offline_online(dir: &Path, identity: Identity) -> Online {
    let queue = TelemetryQueue::open(
        &dir.join(QUEUE_DIR),
        QueueOptions {
            fsync: FsyncPolicy::Never,
            ..QueueOptions::default()
        },
    )
    .expect("queue");
    let url = ServerUrl::parse("http://127.0.0.1:9").expect("url");
    Online::new(OnlineParts {
        link: Link::new(url, None, LinkTimings::fast(), Jitter::seeded(1)),
        identity,
        state_dir: dir.to_path_buf(),
        counters: PersistedCounters {
            counters: OrderCounters::load(dir).expect("counters"),
            dir: dir.to_path_buf(),
        },
        queue,
        opt_in: Default::default(),
        hostname: "h".into(),
        devices: vec![],
    })
    .expect("a rig")
}

#[tokio::test]
async fn ten_thousand_mutated_orders_are_all_refused_by_the_real_handler() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = SigningKey::from_bytes(&[21u8; 32]);
    let forger = SigningKey::from_bytes(&[22u8; 32]);
    let rig: RigId = "rig-1".into();
    let identity = Identity::new(
        "agt-1".into(),
        vec![rig.clone()],
        "http://127.0.0.1:9".into(),
        server.verifying_key(),
        crate::daemon::identity::generate_key().expect("random"),
    );
    identity.save(dir.path()).expect("save");
    let mut online = offline_online(dir.path(), identity);
    let mut mining = MiningRuntime::new(Default::default(), RuntimeOptions::default());
    let mut watchdog = Watchdog::new(WatchdogPolicy::default());
    let soon = now_unix_ms() + 600_000;

    // One genuine order first: version 1 at counter 1000.
    let first = sign_order(
        &server,
        OrderKind::SetConfig,
        &rig,
        1000,
        soon,
        &config_payload(1, "", None),
    );
    online
        .handle(
            Input::Link(LinkEvent::Message(ServerMessage::SetConfig(first))),
            &mut mining,
            &mut watchdog,
        )
        .await;
    assert_eq!(mining.applied().map(|c| c.version), Some(1));

    let rounds = MUTATION_ROUNDS;
    let mut j = Jitter::seeded(0xdead_beef);
    let payloads = [
        config_payload(2, "", None),
        r#"{"command_id":"c-9","command":{"kind":"restart_mining"}}"#.to_string(),
        format!(
            r#"{{"new_key":"{}"}}"#,
            rigfleet_engine::hex::encode(forger.verifying_key().as_bytes())
        ),
    ];
    let kinds = [
        OrderKind::SetConfig,
        OrderKind::Command,
        OrderKind::KeyRollover,
    ];
    for round in 0..rounds {
        let r = j.next_u64();
        let which = (r % 3) as usize;
        let mut kind = kinds[which];
        let payload = &payloads[which];
        // A fresh, genuine order of this kind: never sent as is.
        let good = || sign_order(&server, kind, &rig, 1001 + r % 1000, soon, payload);
        let order: SignedOrder = match round % 8 {
            0 => {
                let mut o = good();
                let mut bytes = o.payload.clone().into_bytes();
                let i = (r >> 8) as usize % bytes.len();
                bytes[i] = bytes[i].wrapping_add(1 + (r >> 40) as u8 % 60) & 0x7f;
                o.payload = String::from_utf8_lossy(&bytes).into_owned();
                o
            }
            1 => {
                let mut o = good();
                let mut sig = o.sig.clone().into_bytes();
                let i = (r >> 8) as usize % sig.len();
                sig[i] = if sig[i] == b'0' { b'1' } else { b'0' };
                o.sig = String::from_utf8_lossy(&sig).into_owned();
                o
            }
            // Replayed or reordered: genuinely signed, counter at or below the last accepted.
            2 => sign_order(&server, kind, &rig, r % 1001, soon, payload),
            // Expired by the server's clock.
            3 => sign_order(
                &server,
                kind,
                &rig,
                2000 + r % 1000,
                now_unix_ms() - 1 - (r % 1_000_000) as i64,
                payload,
            ),
            // Genuine, but for a rig this agent does not front.
            4 => sign_order(
                &server,
                kind,
                &format!("rig-{}", 2 + r % 50).as_str().into(),
                3000,
                soon,
                payload,
            ),
            // Forged with another key.
            5 => sign_order(&forger, kind, &rig, 4000 + r % 1000, soon, payload),
            // Signed for one kind, presented as another.
            6 => {
                let o = good();
                kind = kinds[(which + 1 + (r >> 20) as usize % 2) % 3];
                o
            }
            // Fields changed after signing.
            _ => {
                let mut o = good();
                match (r >> 16) % 3 {
                    0 => o.counter += 1 + (r >> 24) % 100,
                    1 => o.expires_unix_ms += 1,
                    _ => o.rig_id = "rig-1x".into(),
                }
                o
            }
        };
        let msg = match kind {
            OrderKind::SetConfig => ServerMessage::SetConfig(order),
            OrderKind::Command => ServerMessage::Command(order),
            OrderKind::KeyRollover => ServerMessage::KeyRollover(order),
        };
        online
            .handle(
                Input::Link(LinkEvent::Message(msg)),
                &mut mining,
                &mut watchdog,
            )
            .await;
        assert_eq!(
            mining.applied().map(|c| c.version),
            Some(1),
            "round {round} applied a config"
        );
    }
    let counters = OrderCounters::load(dir.path()).expect("counters");
    assert_eq!(counters.last(&rig), Some(1000));
    assert_eq!(online.identity().server_key(), &server.verifying_key());
    assert_eq!(
        Identity::load(dir.path()).expect("identity").server_key(),
        &server.verifying_key()
    );
    assert_eq!(
        desired::load(dir.path()).expect("ok").map(|c| c.version),
        Some(1)
    );
    mining.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_simulated_agents_enroll_stream_and_answer_orders() {
    use crate::simulate::{simulate, SimOptions};
    let fake = FakeServer::start().await;
    fake.state().interval_secs = 1;
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SimOptions {
        server: fake.url.clone(),
        token: fake.token(),
        count: 20,
        state_dir: dir.path().to_path_buf(),
        devices: 8,
        interval: Duration::from_millis(200),
        tls: LinkTls::default(),
        enroll_concurrency: 8,
        timings: LinkTimings::fast(),
        status_every: Duration::from_secs(1),
        faults: Default::default(),
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let f = fake.clone();
    let body = async move {
        assert!(
            f.wait_for(WAIT, |s| {
                let rigs: std::collections::BTreeSet<_> = s.samples.iter().map(|x| &x.1).collect();
                s.auth_ok >= 20 && rigs.len() == 20
            })
            .await
        );
        let rigs: Vec<RigId> = f.state().agents.iter().map(|a| a.2.clone()).collect();
        let soon = now_unix_ms() + 60_000;
        for rig in &rigs {
            let payload = r#"{"version":3,"algorithm":"scrypt","pools":[{"url":"stratum+tcp://p:3333","user":"w","password":"x"}],"devices":[]}"#;
            f.send_to(
                rig,
                ServerMessage::SetConfig(f.order(OrderKind::SetConfig, rig, 1, soon, payload)),
            );
            let cmd = r#"{"command_id":"id-1","command":{"kind":"identify","seconds":5}}"#;
            f.send_to(
                rig,
                ServerMessage::Command(f.order(OrderKind::Command, rig, 2, soon, cmd)),
            );
        }
        assert!(
            f.wait_for(WAIT, |s| s.applied.len() == 20 && s.results.len() == 20)
                .await
        );
        let _ = stop_tx.send(());
    };
    let (stats, ()) = tokio::join!(
        simulate(&options, async move {
            let _ = stop_rx.await;
        }),
        body
    );
    let stats = stats.expect("simulated");
    use std::sync::atomic::Ordering;
    assert_eq!(stats.configs_applied.load(Ordering::Relaxed), 20);
    assert!(stats.samples_acked.load(Ordering::Relaxed) >= 20);
    assert_eq!(stats.orders_refused.load(Ordering::Relaxed), 0);
    assert!(fake.state().applied.iter().all(|a| a.ok && a.version == 3));

    // A rerun reuses the saved identities: no new enrollment.
    let mut again = options.clone();
    again.count = 20;
    let f = fake.clone();
    let (stats, ()) = tokio::join!(
        simulate(&again, async move {
            let _ = f.wait_for(WAIT, |s| s.auth_ok >= 40).await;
        }),
        async {}
    );
    stats.expect("rerun");
    assert_eq!(fake.state().agents.len(), 20);
}

/// A larger simulator run, by hand: `cargo test -p rigfleet-agent -- --ignored many_simulated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load check, minutes in a debug build"]
async fn many_simulated_agents() {
    use crate::simulate::{simulate, status_line, SimOptions};
    let count = 300;
    let fake = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SimOptions {
        server: fake.url.clone(),
        token: fake.token(),
        count,
        state_dir: dir.path().to_path_buf(),
        devices: 8,
        interval: Duration::from_secs(1),
        tls: LinkTls::default(),
        enroll_concurrency: 16,
        timings: LinkTimings::default(),
        status_every: Duration::from_secs(5),
        faults: Default::default(),
    };
    let f = fake.clone();
    let started = std::time::Instant::now();
    let stats = simulate(&options, async move {
        assert!(
            f.wait_for(Duration::from_secs(300), |s| s.auth_ok >= count)
                .await
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
    })
    .await
    .expect("ran");
    eprintln!("{} in {:?}", status_line(&stats, count), started.elapsed());
}
