//! Rotating the server's signing key: the real agent is rolled over by a signed order when it
//! reconnects and then follows orders signed by the new key; a token made before the rotation
//! still enrolls; once the previous key is retired, a rig that still pins it is refused.

use std::time::Duration;

use ed25519_dalek::{Signature, VerifyingKey};
use rigfleet_proto::server_to_agent::ServerMessage;
use rigfleet_proto::signing::OrderKind;
use rigfleet_server::db::test_db::TestDb;
use rigfleet_server::keys::{retire_previous, rotate};
use rigfleet_stratum::pool::{Pool, PoolConfig};
use rigfleet_tests::agent_proc::{run_agent, AgentProc};
use rigfleet_tests::server::*;
use rigfleet_tests::wait_until;

/// Stops the server, runs `between` on its data folder (the CLI's key commands run while the
/// server is down), and starts it again on the same address, data folder and database.
async fn restart(ts: TestServer, between: impl FnOnce(&std::path::Path)) -> TestServer {
    let addr = ts.addr();
    let TestServer {
        server,
        data_dir,
        db,
        ..
    } = ts;
    server.stop().await;
    between(data_dir.path());
    let mut config = test_config(data_dir.path(), db.url.clone());
    config.listen = addr;
    let server = rigfleet_server::start(config).await.unwrap();
    let admin = server
        .create_api_token("again", rigfleet_server::db::Scope::Admin)
        .await
        .unwrap();
    TestServer {
        server,
        admin,
        data_dir,
        db,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_rolls_rigs_over_without_enrolling_them_again() {
    let pool = Pool::bind(PoolConfig::new(rigfleet_engine::Algorithm::Sha256d))
        .await
        .expect("pool binds");
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let old_fp = ts.server.hub.key.fingerprint();
    let old_token = ts.enroll_token(r#"{"max_uses": 2}"#).await;
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().join("agent").to_str().unwrap().to_string();
    let (ok, out) = run_agent(&[
        "enroll",
        "--server",
        &ts.server.url,
        "--token",
        &old_token,
        "--state-dir",
        &state_arg,
    ]);
    assert!(ok, "enroll failed:\n{out}");
    let mut agent = AgentProc::spawn(
        &["run", "--state-dir", &state_arg, "--api-listen", "off"],
        &state.path().join("agent.log"),
    );
    let store = ts.server.hub.store.clone();
    wait_until(
        "the agent on the first key",
        Duration::from_secs(30),
        async || {
            let counts = store.agents_by_pinned_key().await.ok()?;
            (counts == [(Some(old_fp.clone()), 1)]).then_some(())
        },
    )
    .await;

    let mut new_fp = String::new();
    let ts = restart(ts, |dir| {
        let r = rotate(dir, false).unwrap();
        assert_eq!(r.previous, old_fp);
        new_fp = r.current;
    })
    .await;
    assert_eq!(ts.server.hub.key.fingerprint(), new_fp);
    let store = ts.server.hub.store.clone();
    wait_until(
        "the agent rolled over",
        Duration::from_secs(90),
        async || {
            let counts = store.agents_by_pinned_key().await.ok()?;
            (counts == [(Some(new_fp.clone()), 1)]).then_some(())
        },
    )
    .await;

    // Orders signed by the new key are followed.
    let (_, list) = ts.get("/api/v1/rigs").await;
    let rig = list["items"][0]["id"].as_str().unwrap().to_string();
    let config = format!(
        r#"{{"algorithm":"sha256d","pools":[{{"url":"{}","user":"w.rot","password":"x"}}],"devices":[{{"device_id":"cpu","enabled":true,"threads":1}}]}}"#,
        pool.url()
    );
    let (status, body) = ts
        .send("PUT", &format!("/api/v1/rigs/{rig}/config"), &config)
        .await;
    assert_eq!(status, 200, "{body}");
    let version = body["version"].as_u64().unwrap();
    wait_until("the config applied", Duration::from_secs(30), async || {
        let r = store.rig_by_uid(&rig).await.ok()??;
        (r.applied_version == Some(version) && r.applied_ok == Some(true)).then_some(())
    })
    .await;
    wait_until("a share", Duration::from_secs(30), async || {
        (pool.stats().worker("w.rot").accepted >= 1).then_some(())
    })
    .await;

    // A token made before the rotation still enrolls: the rig pins the previous key and is
    // sent a rollover signed by it, naming the new key, as the first order on its link.
    let late = FakeAgent::enroll(ts.addr(), &old_token, 1).await;
    let previous_pk = VerifyingKey::from_bytes(&late.server_key).unwrap();
    assert_eq!(
        rigfleet_proto::signing::key_fingerprint(previous_pk.as_bytes()),
        old_fp
    );
    let mut ws = late.connect(ts.addr()).await.unwrap();
    let order = match recv(&mut ws).await {
        Some(ServerMessage::KeyRollover(o)) => o,
        other => panic!("expected a key rollover, got {other:?}"),
    };
    let sig = Signature::from_bytes(&order.signature().unwrap());
    previous_pk
        .verify_strict(&order.signing_bytes(OrderKind::KeyRollover), &sig)
        .expect("signed by the previous key");
    let payload: serde_json::Value = serde_json::from_str(&order.payload).unwrap();
    assert_eq!(payload["new_key"], ts.server.hub.key.public_key_hex());
    drop(ws);

    // A new token names the new key.
    let fresh = FakeAgent::enroll(ts.addr(), &ts.enroll_token("{}").await, 1).await;
    assert_eq!(
        rigfleet_proto::signing::key_fingerprint(&fresh.server_key),
        new_fp
    );

    // Retired: the rig that never took the rollover is refused; the real agent goes on.
    let ts = restart(ts, |dir| {
        assert_eq!(retire_previous(dir).unwrap(), Some(old_fp.clone()));
    })
    .await;
    assert!(late.connect(ts.addr()).await.is_err());
    assert!(fresh.connect(ts.addr()).await.is_ok());
    let hub = ts.server.hub.clone();
    let rig_row = hub.store.rig_by_uid(&rig).await.unwrap().unwrap();
    wait_until("the agent back", Duration::from_secs(90), async || {
        hub.live.get(rig_row.id).filter(|l| l.connected).map(|_| ())
    })
    .await;
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.output());
    ts.finish().await;
}
