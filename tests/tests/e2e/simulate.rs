//! `rigfleet-agent simulate` against the real server: enrollment of every simulated agent,
//! telemetry from all of them, and configs pushed to them answered.

use std::time::{Duration, Instant};

use rigfleet_server::db::test_db::TestDb;
use rigfleet_tests::agent_proc::AgentProc;
use rigfleet_tests::server::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_enroll_report_and_apply_configs() {
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let token = ts.enroll_token(r#"{"max_uses": 20}"#).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("sim");
    let mut sim = AgentProc::spawn(
        &[
            "simulate",
            "--server",
            &ts.server.url,
            "--token",
            &token,
            "--count",
            "20",
            "--devices",
            "4",
            "--interval-secs",
            "1",
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &dir.path().join("sim.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let rigs = loop {
        let (_, list) = ts.get("/api/v1/rigs?limit=100").await;
        let online = list["items"]
            .as_array()
            .map(|a| a.iter().filter(|r| r["status"] == "online").count())
            .unwrap_or(0);
        if online == 20 {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "only {online} of 20 simulated rigs online:\n{}",
            sim.output()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let rig = rigs["items"][0]["id"].as_str().unwrap().to_string();
    let config = r#"{"algorithm":"sha256d","pools":[{"url":"stratum+tcp://127.0.0.1:3333","user":"w","password":"x"}],"devices":[]}"#;
    let (status, body) = ts
        .send("PUT", &format!("/api/v1/rigs/{rig}/config"), config)
        .await;
    assert_eq!(status, 200, "{body}");
    let version = body["version"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, detail) = ts.get(&format!("/api/v1/rigs/{rig}")).await;
        if detail["config"]["applied_version"].as_u64() == Some(version) {
            assert_eq!(detail["config"]["applied_ok"], true);
            assert_eq!(
                detail["devices"].as_array().map(Vec::len),
                Some(4),
                "{detail}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "config not applied: {detail}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every rig's telemetry is contiguous from seq 1.
    for item in rigs["items"].as_array().unwrap() {
        let row = ts
            .server
            .hub
            .store
            .rig_by_uid(item["id"].as_str().unwrap())
            .await
            .unwrap()
            .unwrap();
        let (count, min, max) = ts.server.hub.store.raw_seq_stats(row.id).await.unwrap();
        // A rig online by its handshake may not have a committed sample yet.
        if count == 0 {
            continue;
        }
        assert_eq!(min, Some(1));
        assert_eq!(
            max.map(|m| m as i64 - count),
            Some(0),
            "gap in {}",
            item["id"]
        );
    }
    assert!(sim.stop(), "simulate exits cleanly:\n{}", sim.output());
    ts.finish().await;
}
