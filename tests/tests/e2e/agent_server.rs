//! The real agent binary against the real server and test pools: enrollment, mining, telemetry,
//! a 60-second server outage that loses no sample, a pool switch pushed from the server, and an
//! invalid config that is reported while the old one keeps mining.

use std::time::{Duration, Instant};

use rigfleet_engine::Algorithm;
use rigfleet_server::db::test_db::TestDb;
use rigfleet_stratum::pool::{Pool, PoolConfig, PoolHandle};
use rigfleet_tests::agent_proc::{run_agent, AgentProc};
use rigfleet_tests::server::*;
use rigfleet_tests::wait_until;

const USER_A: &str = "wallet.a";
const USER_B: &str = "wallet.b";

async fn pool() -> PoolHandle {
    Pool::bind(PoolConfig::new(Algorithm::Sha256d))
        .await
        .expect("pool binds")
}

fn config_json(pool: &PoolHandle, user: &str, algorithm: &str) -> String {
    format!(
        r#"{{"algorithm":"{algorithm}","pools":[{{"url":"{}","user":"{user}","password":"x"}}],"devices":[{{"device_id":"cpu","enabled":true,"threads":1}}]}}"#,
        pool.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_enrolls_mines_reports_survives_an_outage_and_follows_configs() {
    let pool_a = pool().await;
    let pool_b = pool().await;
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("agent");
    let state_arg = state_dir.to_str().unwrap().to_string();
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
    let (status, body) = ts
        .send(
            "PUT",
            &format!("/api/v1/rigs/{rig}/config"),
            &config_json(&pool_a, USER_A, "sha256d"),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let mut agent = AgentProc::spawn(
        &["run", "--state-dir", &state_arg, "--api-listen", "off"],
        &state.path().join("agent.log"),
    );
    let rig_row = ts.server.hub.store.rig_by_uid(&rig).await.unwrap().unwrap();
    let store = ts.server.hub.store.clone();
    // Connected, config 1 applied, shares accepted by pool A, telemetry stored.
    wait_until("config 1 applied", Duration::from_secs(60), async || {
        let r = store.rig_by_uid(&rig).await.ok()??;
        (r.applied_version == Some(1) && r.applied_ok == Some(true)).then_some(())
    })
    .await;
    wait_until("shares on pool A", Duration::from_secs(60), async || {
        (pool_a.stats().worker(USER_A).accepted >= 2).then_some(())
    })
    .await;
    wait_until(
        "telemetry with accepted shares",
        Duration::from_secs(60),
        async || {
            let (count, _, _) = store.raw_seq_stats(rig_row.id).await.ok()?;
            let live = ts.server.hub.live.get(rig_row.id)?;
            let accepted: u64 = live.sample?.devices.iter().map(|d| d.accepted).sum();
            (count >= 3 && accepted > 0).then_some(())
        },
    )
    .await;

    // The server goes away for 60 s while the agent mines; every sample of the outage arrives
    // exactly once after it returns.
    let (_, _, before_max) = store.raw_seq_stats(rig_row.id).await.unwrap();
    let before_max = before_max.unwrap();
    let addr = ts.addr();
    let TestServer {
        server,
        admin: _,
        data_dir,
        db,
    } = ts;
    server.stop().await;
    let accepted_before = pool_a.stats().worker(USER_A).accepted;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        pool_a.stats().worker(USER_A).accepted > accepted_before,
        "the agent kept mining while the server was down"
    );
    let mut config = test_config(data_dir.path(), db.url.clone());
    config.listen = addr;
    let server = rigfleet_server::start(config).await.unwrap();
    let admin = server
        .create_api_token("again", rigfleet_server::db::Scope::Admin)
        .await
        .unwrap();
    let ts = TestServer {
        server,
        admin,
        data_dir,
        db,
    };
    let store = ts.server.hub.store.clone();
    let (count, min, max) = wait_until(
        "the outage's samples",
        Duration::from_secs(60),
        async || {
            let (count, min, max) = store.raw_seq_stats(rig_row.id).await.ok()?;
            // 1 s telemetry: about 60 samples were queued during the outage.
            (max? >= before_max + 55).then_some((count, min?, max?))
        },
    )
    .await;
    assert_eq!(
        count as u64,
        max - min + 1,
        "no gap and no duplicate in seq {min}..={max}"
    );
    assert_eq!(min, 1, "nothing lost from the start");

    // Pool switch pushed from the server: mining on pool B within 5 s.
    let pushed = Instant::now();
    let (status, body) = ts
        .send(
            "PUT",
            &format!("/api/v1/rigs/{rig}/config"),
            &config_json(&pool_b, USER_B, "sha256d"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pushed"], true, "{body}");
    wait_until("a share on pool B", Duration::from_secs(5), async || {
        (pool_b.stats().worker(USER_B).accepted >= 1).then_some(())
    })
    .await;
    eprintln!(
        "pool switch: first share on the new pool {:?} after the push",
        pushed.elapsed()
    );

    // A config the agent cannot run: reported, and the previous one keeps mining.
    let (status, body) = ts
        .send(
            "PUT",
            &format!("/api/v1/rigs/{rig}/config"),
            &config_json(&pool_a, USER_A, "no-such-algorithm"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let bad_version = body["version"].as_u64().unwrap();
    let r = wait_until(
        "the failed apply reported",
        Duration::from_secs(20),
        async || {
            let r = store.rig_by_uid(&rig).await.ok()??;
            (r.applied_version == Some(bad_version)).then_some(r)
        },
    )
    .await;
    assert_eq!(r.applied_ok, Some(false));
    assert!(
        r.applied_error.as_deref().is_some_and(|e| !e.is_empty()),
        "{r:?}"
    );
    let b_before = pool_b.stats().worker(USER_B).accepted;
    wait_until(
        "mining goes on on pool B",
        Duration::from_secs(20),
        async || (pool_b.stats().worker(USER_B).accepted > b_before + 2).then_some(()),
    )
    .await;

    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.output());
    ts.finish().await;
}
