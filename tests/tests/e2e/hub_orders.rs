//! Orders through the hub over real sockets, on SQLite and PostgreSQL (issue 11): config pushes
//! to one rig reach it in version order, and command waiters do not outlive their caller.

use std::time::Duration;

use rigfleet_engine::Algorithm;
use rigfleet_proto::command::Command;
use rigfleet_proto::config::{DesiredConfig, PoolSpec};
use rigfleet_proto::server_to_agent::ServerMessage;
use rigfleet_server::db::test_db::TestDb;
use rigfleet_stratum::pool::{Pool, PoolConfig};
use rigfleet_tests::agent_proc::{run_agent, AgentProc};
use rigfleet_tests::server::*;
use rigfleet_tests::wait_until;

/// Generous cap for something that happens at once when it works.
const CAP: Duration = Duration::from_secs(30);

fn config(user: &str) -> DesiredConfig {
    DesiredConfig {
        version: 0,
        algorithm: "sha256d".into(),
        pools: vec![PoolSpec {
            url: "stratum+tcp://127.0.0.1:3333".into(),
            user: user.into(),
            password: "x".into(),
        }],
        devices: vec![],
        telemetry_interval_secs: Some(10),
    }
}

/// Waits until the server is past the connection's `after_welcome` (its reconcile included):
/// a telemetry frame is only acked by the serve loop that follows it.
async fn settled(ws: &mut Ws, rig: &rigfleet_proto::RigId) {
    let now = rigfleet_server::now_ms();
    send(ws, &telemetry(rig, vec![sample(1, now, 1)])).await;
    recv_until(ws, |m| match m {
        ServerMessage::Ack(_) => Some(()),
        _ => None,
    })
    .await
    .expect("an ack");
}

/// The next `set_config` frame: (counter, version, pool user).
async fn next_config(ws: &mut Ws) -> (u64, u64, String) {
    let order = recv_until(ws, |m| match m {
        ServerMessage::SetConfig(o) => Some(o),
        _ => None,
    })
    .await
    .expect("a set_config");
    let cfg: DesiredConfig = serde_json::from_str(&order.payload).expect("config payload");
    let user = cfg
        .pools
        .first()
        .map(|p| p.user.clone())
        .unwrap_or_default();
    (order.counter, cfg.version, user)
}

/// Issue 11, item 8 (server side): concurrent pushes to one rig are serialised, and a push of
/// a desired config that a newer one replaced sends the newer one, so the rig never receives
/// an older version after a newer one (with a higher counter, which it would accept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_pushes_reach_the_rig_in_version_order() {
    for ts in servers().await {
        let token = ts.enroll_token("{}").await;
        let agent = FakeAgent::enroll(ts.addr(), &token, 1).await;
        let rig = agent.rig_ids[0].clone();
        let mut ws = agent.connect(ts.addr()).await.expect("connects");
        settled(&mut ws, &rig).await;
        let hub = ts.server.hub.clone();
        let rig_id = hub
            .store
            .rig_by_uid(rig.as_str())
            .await
            .expect("store")
            .expect("rig")
            .id;

        // A reconcile that read version 1 pushes after version 2 was stored: version 2 goes.
        let now = rigfleet_server::now_ms();
        let old = hub
            .store
            .set_desired_config(rig_id, &config("w.1"), None, now)
            .await
            .expect("v1");
        let new = hub
            .store
            .set_desired_config(rig_id, &config("w.2"), None, now)
            .await
            .expect("v2");
        assert!(hub.push_config(rig_id, &rig, &old).await.expect("push"));
        let (first_counter, version, user) = next_config(&mut ws).await;
        assert_eq!((version, user.as_str()), (new.version, "w.2"));

        // Concurrent pushes: every one arrives, in version order, with increasing counters.
        let pushes: Vec<_> = (0..24)
            .map(|i| {
                let hub = hub.clone();
                let rig = rig.clone();
                tokio::spawn(async move {
                    hub.set_desired_config(rig_id, &rig, &config(&format!("c.{i}")), Some("t"))
                        .await
                        .expect("push")
                        .0
                        .version
                })
            })
            .collect();
        let mut stored = Vec::new();
        for p in pushes {
            stored.push(p.await.expect("push task"));
        }
        let newest = stored.iter().copied().max().expect("versions");
        let mut seen = vec![(first_counter, version)];
        while seen.last().map(|s| s.1) != Some(newest) {
            let (counter, version, _) = tokio::time::timeout(CAP, next_config(&mut ws))
                .await
                .expect("frames in time");
            seen.push((counter, version));
        }
        for pair in seen.windows(2) {
            assert!(pair[1].0 > pair[0].0, "counters increase: {seen:?}");
            assert!(pair[1].1 > pair[0].1, "versions increase: {seen:?}");
        }
        assert_eq!(seen.len(), 25, "every push was sent: {seen:?}");
        let current = hub.store.desired_config(rig_id).await.expect("store");
        assert_eq!(current.map(|c| c.version), Some(newest));
        ts.finish().await;
    }
}

/// Issue 11, item 10: a command whose rig never answers leaves no waiter behind once its
/// caller stops waiting, and a waiter whose rig disconnects is woken (without a result).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_waiters_end_with_their_wait_or_the_link() {
    for ts in servers().await {
        let token = ts.enroll_token("{}").await;
        let agent = FakeAgent::enroll(ts.addr(), &token, 1).await;
        let rig = agent.rig_ids[0].clone();
        let mut ws = agent.connect(ts.addr()).await.expect("connects");
        settled(&mut ws, &rig).await;
        let hub = ts.server.hub.clone();
        assert_eq!(hub.pending_command_waiters(), 0);

        // Through the API: the rig is silent, the wait ends after 1 s with no result.
        for _ in 0..3 {
            let (status, body) = ts
                .send(
                    "POST",
                    &format!("/api/v1/rigs/{rig}/commands"),
                    r#"{"command":{"kind":"identify","seconds":5},"wait_secs":1}"#,
                )
                .await;
            assert_eq!(status, 200, "{body}");
            assert!(body["ok"].is_null(), "no answer came: {body}");
        }
        assert_eq!(
            hub.pending_command_waiters(),
            0,
            "timed-out waits are forgotten"
        );

        // Directly: a waiter counts while held and goes when its rig's link closes.
        let rig_id = hub
            .store
            .rig_by_uid(rig.as_str())
            .await
            .expect("store")
            .expect("rig")
            .id;
        let (_, wait) = hub
            .send_command(rig_id, &rig, Command::Identify { seconds: 5 }, None)
            .await
            .expect("sent");
        let (_, dropped) = hub
            .send_command(rig_id, &rig, Command::Identify { seconds: 5 }, None)
            .await
            .expect("sent");
        assert_eq!(hub.pending_command_waiters(), 2);
        drop(dropped);
        assert_eq!(hub.pending_command_waiters(), 1);
        drop(ws);
        let outcome = tokio::time::timeout(CAP, wait)
            .await
            .expect("woken when the link closed");
        assert!(outcome.is_err(), "no result: {outcome:?}");
        assert_eq!(hub.pending_command_waiters(), 0);
        ts.finish().await;
    }
}

/// Issue 11, item 8, both sides together: the real agent, pushed a burst of concurrent configs
/// through the REST API, ends on the newest one, reports every one applied, and refuses none
/// (before, it could receive an older version after a newer one and the server then showed the
/// refusal of the older one as the rig's state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_agent_ends_on_the_newest_of_concurrent_pushes() {
    let pool = Pool::bind(PoolConfig::new(Algorithm::Sha256d))
        .await
        .expect("pool binds");
    let ts = start_on(TestDb::sqlite().await.expect("sqlite")).await;
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().join("agent");
    let state_arg = state_dir.to_str().expect("utf-8 path").to_string();
    let token = ts.enroll_token(r#"{"max_uses": 1}"#).await;
    let (ok, out) = run_agent(&[
        "enroll",
        "--server",
        &ts.server.url,
        "--token",
        &token,
        "--state-dir",
        &state_arg,
    ]);
    assert!(ok, "enroll failed:\n{out}");
    let (_, list) = ts.get("/api/v1/rigs").await;
    let rig = list["items"][0]["id"]
        .as_str()
        .expect("enrolled rig listed")
        .to_string();
    let mut agent = AgentProc::spawn(
        &["run", "--state-dir", &state_arg, "--api-listen", "off"],
        &state.path().join("agent.log"),
    );
    let store = ts.server.hub.store.clone();
    wait_until("the agent connected", CAP, async || {
        ts.server
            .hub
            .store
            .rig_by_uid(&rig)
            .await
            .ok()?
            .map(|r| r.id)
            .filter(|id| ts.server.hub.is_connected(*id))
    })
    .await;

    let config = |user: &str| {
        format!(
            r#"{{"algorithm":"sha256d","pools":[{{"url":"{}","user":"{user}","password":"x"}}],"devices":[{{"device_id":"cpu","enabled":true,"threads":1}}]}}"#,
            pool.url()
        )
    };
    let bodies: Vec<String> = (0..12).map(|i| config(&format!("wallet.{i}"))).collect();
    let puts = bodies.iter().map(|body| {
        let path = format!("/api/v1/rigs/{rig}/config");
        let ts = &ts;
        async move { ts.send("PUT", &path, body).await }
    });
    let mut newest = 0;
    for (status, body) in futures_util::future::join_all(puts).await {
        assert_eq!(status, 200, "{body}");
        newest = newest.max(body["version"].as_u64().expect("a version"));
    }
    let r = wait_until("the newest version applied", CAP, async || {
        let r = store.rig_by_uid(&rig).await.ok()??;
        (r.applied_version == Some(newest)).then_some(r)
    })
    .await;
    assert_eq!(r.applied_ok, Some(true), "{r:?}");
    let (_, events) = ts.get(&format!("/api/v1/events?rig={rig}")).await;
    let failed: Vec<_> = events
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["kind"] == "config_failed" || e["kind"] == "config_refused")
                .collect()
        })
        .unwrap_or_default();
    assert!(failed.is_empty(), "no push was refused: {failed:?}");
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.output());
    ts.finish().await;
}
