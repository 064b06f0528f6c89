//! Rollouts over real sockets, on SQLite and PostgreSQL: one request changes the desired config
//! of a target, connected rigs get it at once and offline ones when they return, each rig's
//! result is recorded, identical content makes no new version, a staged rollout halts itself
//! after its failure limit and rolls back to each rig's previous config.

use std::time::Duration;

use rigfleet_proto::agent_to_server::{AgentMessage, ConfigApplied};
use rigfleet_proto::config::DesiredConfig;
use rigfleet_proto::server_to_agent::ServerMessage;
use rigfleet_proto::RigId;
use rigfleet_tests::server::*;

/// The next config pushed to this rig, at least `min_version`.
async fn next_config(ws: &mut Ws, min_version: u64) -> DesiredConfig {
    recv_until(ws, |m| match m {
        ServerMessage::SetConfig(o) => serde_json::from_str::<DesiredConfig>(&o.payload)
            .ok()
            .filter(|c| c.version >= min_version),
        _ => None,
    })
    .await
    .expect("no set_config")
}

async fn answer(ws: &mut Ws, rig: &RigId, cfg: &DesiredConfig, ok: bool) {
    send(
        ws,
        &AgentMessage::ConfigApplied(ConfigApplied {
            rig_id: rig.clone(),
            version: cfg.version,
            content_hash: cfg.content_hash(),
            ok,
            error: (!ok).then(|| "pool unreachable".into()),
        }),
    )
    .await;
}

/// Polls the rollout until `done` holds (10 s cap).
async fn wait_rollout(
    ts: &TestServer,
    id: i64,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, body) = ts.get(&format!("/api/v1/rollouts/{id}")).await;
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("rollout {id} never got there: {last}");
}

fn count(body: &serde_json::Value, state: &str) -> u64 {
    body["counts"][state].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_converges_online_rigs_now_and_offline_rigs_on_return() {
    for ts in servers().await {
        let profile = r#"{"config": {"algorithm":"sha256d","pools":[{"url":"stratum+tcp://127.0.0.1:3333","user":"w.{rig}","password":"x"}],"devices":[]}}"#;
        let (status, body) = ts.send("PUT", "/api/v1/profiles/fleet", profile).await;
        assert_eq!(status, 200, "{body}");
        let token = ts.enroll_token(r#"{"max_uses": 10}"#).await;
        let mut agents = Vec::new();
        for _ in 0..4 {
            agents.push(FakeAgent::enroll(ts.addr(), &token, 1).await);
        }
        // Three connected, the fourth offline for now.
        let mut links = Vec::new();
        for a in &agents[..3] {
            links.push(a.connect(ts.addr()).await.unwrap());
        }
        let (status, body) = ts
            .send(
                "POST",
                "/api/v1/rollouts",
                r#"{"target":"all","profile":"fleet"}"#,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_i64().unwrap();
        assert_eq!(body["total"], 4, "{body}");
        for (i, ws) in links.iter_mut().enumerate() {
            let cfg = next_config(ws, 1).await;
            assert_eq!(cfg.pools[0].user, "w.fake-0", "{{rig}} expanded");
            answer(ws, &agents[i].rig_ids[0], &cfg, i != 2).await;
        }
        let body = wait_rollout(&ts, id, |b| {
            count(b, "applied") == 2 && count(b, "failed") == 1
        })
        .await;
        assert_eq!(count(&body, "pending"), 1, "the offline rig waits: {body}");
        assert_eq!(body["state"], "running");
        let failed = body["rigs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["state"] == "failed")
            .unwrap();
        assert_eq!(failed["error"], "pool unreachable");
        // The offline rig converges when it returns.
        let mut late = agents[3].connect(ts.addr()).await.unwrap();
        let cfg = next_config(&mut late, 1).await;
        assert_eq!(cfg.algorithm, "sha256d");
        answer(&mut late, &agents[3].rig_ids[0], &cfg, true).await;
        let body = wait_rollout(&ts, id, |b| b["state"] == "completed").await;
        assert_eq!(count(&body, "applied"), 3, "{body}");
        // The same again changes nothing: no rig gets a new version.
        let (status, body) = ts
            .send(
                "POST",
                "/api/v1/rollouts",
                r#"{"target":"all","profile":"fleet"}"#,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["total"], 0, "{body}");
        assert_eq!(body["state"], "completed");
        // A target that matches no rig, an unknown profile, two actions: refused.
        for (req, code) in [
            (
                r#"{"target":{"tag":"nowhere"},"profile":"fleet"}"#,
                "invalid_target",
            ),
            (r#"{"target":"all","profile":"nope"}"#, "invalid_rollout"),
            (
                r#"{"target":"all","profile":"fleet","switch_algorithm":"scrypt"}"#,
                "bad_request",
            ),
            (
                r#"{"target":{"rigs":["rig-nope"]},"profile":"fleet"}"#,
                "invalid_target",
            ),
        ] {
            let (status, body) = ts.send("POST", "/api/v1/rollouts", req).await;
            assert_eq!(status, 400, "{req}: {body}");
            assert_eq!(body["code"], code, "{req}: {body}");
        }
        // A profile some target rigs cannot mine is refused with their names.
        let scrypt = r#"{"config": {"algorithm":"scrypt","pools":[{"url":"stratum+tcp://127.0.0.1:3334","user":"w","password":"x"}],"devices":[]}}"#;
        assert_eq!(ts.send("PUT", "/api/v1/profiles/ltc", scrypt).await.0, 200);
        let (status, body) = ts
            .send(
                "POST",
                "/api/v1/rollouts",
                r#"{"target":"all","profile":"ltc"}"#,
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains(agents[0].rig_ids[0].as_str()),
            "{body}"
        );
        // Every change is in the audit log.
        let (_, audit) = ts.get("/api/v1/audit").await;
        assert!(audit.to_string().contains("rollout.create"), "{audit}");
        ts.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_rollout_halts_on_failures_and_rolls_back() {
    for ts in servers().await {
        let profile = r#"{"config": {"algorithm":"sha256d","pools":[{"url":"stratum+tcp://127.0.0.1:3333","user":"old","password":"x"}],"devices":[]}}"#;
        assert_eq!(
            ts.send("PUT", "/api/v1/profiles/base", profile).await.0,
            200
        );
        let token = ts.enroll_token(r#"{"max_uses": 10}"#).await;
        let mut agents = Vec::new();
        let mut links = Vec::new();
        for _ in 0..3 {
            let a = FakeAgent::enroll(ts.addr(), &token, 1).await;
            links.push(a.connect(ts.addr()).await.unwrap());
            agents.push(a);
        }
        let (status, body) = ts
            .send(
                "POST",
                "/api/v1/rollouts",
                r#"{"target":"all","profile":"base"}"#,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let first = body["id"].as_i64().unwrap();
        let mut before = Vec::new();
        for (i, ws) in links.iter_mut().enumerate() {
            let cfg = next_config(ws, 1).await;
            answer(ws, &agents[i].rig_ids[0], &cfg, true).await;
            before.push(cfg);
        }
        wait_rollout(&ts, first, |b| b["state"] == "completed").await;
        // Staged: one rig first; it fails; the limit is one failure.
        let (status, body) = ts
            .send(
                "POST",
                "/api/v1/rollouts",
                r#"{"target":"all","config":{"pools":[{"url":"stratum+tcp://127.0.0.1:3999","user":"new","password":"y"}]},"stage":{"first_rigs":1,"wait_secs":1,"max_failures":1}}"#,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_i64().unwrap();
        assert_eq!(body["total"], 3);
        assert_eq!(count(&body, "waiting"), 2, "{body}");
        let first_rig = body["rigs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["wave"] == 0)
            .unwrap()["rig"]
            .as_str()
            .unwrap()
            .to_string();
        let i = agents
            .iter()
            .position(|a| a.rig_ids[0].as_str() == first_rig)
            .unwrap();
        let cfg = next_config(&mut links[i], 2).await;
        assert_eq!(cfg.pools[0].user, "new");
        answer(&mut links[i], &agents[i].rig_ids[0], &cfg, false).await;
        let body = wait_rollout(&ts, id, |b| b["state"] == "halted").await;
        assert_eq!(count(&body, "waiting"), 2, "the rest never got it: {body}");
        let (status, body) = ts
            .send("POST", &format!("/api/v1/rollouts/{id}/rollback"), "")
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["state"], "rolled_back");
        let back = next_config(&mut links[i], 3).await;
        assert_eq!(
            back.content_hash(),
            before[i].content_hash(),
            "previous config again"
        );
        // Resume after roll-back is refused.
        let (status, _) = ts
            .send("POST", &format!("/api/v1/rollouts/{id}/resume"), "")
            .await;
        assert_eq!(status, 409);
        ts.finish().await;
    }
}
