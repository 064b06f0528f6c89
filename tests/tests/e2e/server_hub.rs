//! The agent hub over real sockets, on SQLite and PostgreSQL: handshake, acks after the durable
//! commit, dedup of resent samples, refusals (wrong key, replayed answer, unknown rig, bad
//! frames, unsupported protocol), signed orders and their results.

use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use futures_util::SinkExt;
use rigfleet_proto::agent_to_server::{AgentMessage, Auth, CommandResult, ConfigApplied};
use rigfleet_proto::server_to_agent::{ErrorCode, ServerMessage};
use rigfleet_proto::signing::{auth_signing_bytes, decode_hex_array, OrderKind};
use rigfleet_tests::server::*;
use tokio_tungstenite::tungstenite::Message;

async fn next_ack(ws: &mut Ws) -> u64 {
    loop {
        match recv(ws).await {
            Some(ServerMessage::Ack(a)) => return a.seq,
            Some(_) => continue,
            None => panic!("link closed before an ack"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_is_acked_after_commit_and_resends_are_stored_once() {
    for ts in servers().await {
        let token = ts.enroll_token(r#"{"max_uses": 1}"#).await;
        let agent = FakeAgent::enroll(ts.addr(), &token, 1).await;
        let rig = agent.rig_ids[0].clone();
        let mut ws = agent.connect(ts.addr()).await.unwrap();
        let now = rigfleet_server::now_ms();
        let batch: Vec<_> = (1..=5)
            .map(|s| sample(s, now - 10_000 + s as i64 * 1000, 8))
            .collect();
        send(&mut ws, &telemetry(&rig, batch)).await;
        assert_eq!(next_ack(&mut ws).await, 5);
        drop(ws);
        // A reconnect resends 3..=7: 3..=5 are duplicates, acked all the same.
        let mut ws = agent.connect(ts.addr()).await.unwrap();
        let batch: Vec<_> = (3..=7)
            .map(|s| sample(s, now - 10_000 + s as i64 * 1000, 8))
            .collect();
        send(&mut ws, &telemetry(&rig, batch)).await;
        assert_eq!(next_ack(&mut ws).await, 7);
        let row = ts
            .server
            .hub
            .store
            .rig_by_uid(rig.as_str())
            .await
            .unwrap()
            .unwrap();
        let (count, min, max) = ts.server.hub.store.raw_seq_stats(row.id).await.unwrap();
        assert_eq!((count, min, max), (7, Some(1), Some(7)));
        let (status, list) = ts.get("/api/v1/rigs").await;
        assert_eq!(status, 200);
        assert_eq!(list["total"], 1);
        assert_eq!(list["items"][0]["id"], rig.as_str());
        assert_eq!(list["items"][0]["status"], "online");
        assert_eq!(list["items"][0]["connected"], true);
        assert!(list["items"][0]["hashrate_hps"].as_f64().unwrap() > 7e9);
        ts.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_replayed_answers_and_unknown_agents_are_refused() {
    for ts in servers().await {
        let token = ts.enroll_token(r#"{}"#).await;
        let agent = FakeAgent::enroll(ts.addr(), &token, 1).await;
        // Same agent id, another key.
        let mut impostor = FakeAgent::enroll(ts.addr(), &token, 1).await;
        impostor.agent_id = agent.agent_id.clone();
        impostor.rig_ids = agent.rig_ids.clone();
        let err = impostor.connect(ts.addr()).await.unwrap_err();
        assert!(err.contains("AuthFailed"), "{err}");

        // An answer captured on one link is useless on the next: the nonce differs.
        let mut ws1 = open_ws(ts.addr()).await;
        send(&mut ws1, &agent.hello()).await;
        let Some(ServerMessage::Challenge(c1)) = recv(&mut ws1).await else {
            panic!("no challenge")
        };
        let nonce1 = decode_hex_array::<32>(&c1.nonce).unwrap();
        let captured = agent.key.sign(&auth_signing_bytes(
            &nonce1,
            &agent.agent_id,
            &agent.server_key,
        ));
        let mut ws2 = open_ws(ts.addr()).await;
        send(&mut ws2, &agent.hello()).await;
        let Some(ServerMessage::Challenge(c2)) = recv(&mut ws2).await else {
            panic!("no challenge")
        };
        assert_ne!(c1.nonce, c2.nonce);
        send(
            &mut ws2,
            &AgentMessage::Auth(Auth {
                signature: hex(&captured.to_bytes()),
            }),
        )
        .await;
        match recv(&mut ws2).await {
            Some(ServerMessage::Error(e)) => assert_eq!(e.code, ErrorCode::AuthFailed),
            other => panic!("replayed answer accepted: {other:?}"),
        }

        // An agent id the server never issued.
        let mut stranger = FakeAgent::enroll(ts.addr(), &token, 1).await;
        stranger.agent_id = "agent-ffffffffffffffff".into();
        assert!(stranger.connect(ts.addr()).await.is_err());

        // A rig that belongs to another agent.
        let mut thief = FakeAgent::enroll(ts.addr(), &token, 1).await;
        thief.rig_ids = agent.rig_ids.clone();
        let err = thief.connect(ts.addr()).await.unwrap_err();
        assert!(err.contains("UnknownRig"), "{err}");

        // The real agent still gets in.
        assert!(agent.connect(ts.addr()).await.is_ok());
        ts.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_errors_and_the_server_keeps_serving() {
    for ts in servers().await {
        let token = ts.enroll_token(r#"{}"#).await;
        let agent = FakeAgent::enroll(ts.addr(), &token, 1).await;
        let rig = agent.rig_ids[0].clone();
        let mut ws = agent.connect(ts.addr()).await.unwrap();
        for bad in [
            "not json".to_string(),
            r#"{"v":1,"type":"launch_missiles"}"#.to_string(),
            r#"{"v":1,"type":"telemetry","rig_id":"x","samples":[]}"#.to_string(),
            r#"[1,2,3]"#.to_string(),
        ] {
            ws.send(Message::Text(bad.into())).await.unwrap();
            match recv(&mut ws).await {
                Some(ServerMessage::Error(e)) => assert_eq!(e.code, ErrorCode::BadFrame),
                other => panic!("expected bad_frame, got {other:?}"),
            }
        }
        // A rig this link did not name.
        send(
            &mut ws,
            &telemetry(&"rig-0000000000000000".into(), vec![sample(1, 1, 1)]),
        )
        .await;
        match recv(&mut ws).await {
            Some(ServerMessage::Error(e)) => assert_eq!(e.code, ErrorCode::UnknownRig),
            other => panic!("expected unknown_rig, got {other:?}"),
        }
        // The link still works.
        send(
            &mut ws,
            &telemetry(&rig, vec![sample(1, rigfleet_server::now_ms(), 1)]),
        )
        .await;
        assert_eq!(next_ack(&mut ws).await, 1);
        // An oversized frame closes the link without hurting the server.
        let huge = "x".repeat(2 << 20);
        let _ = ws.send(Message::Text(huge.into())).await;
        assert!(recv(&mut ws).await.is_none());
        // A protocol the server does not speak gets a clear error.
        let mut ws = open_ws(ts.addr()).await;
        let mut hello = agent.hello();
        if let AgentMessage::Hello(h) = &mut hello {
            h.protocol_min = 7;
            h.protocol_max = 9;
        }
        send(&mut ws, &hello).await;
        match recv(&mut ws).await {
            Some(ServerMessage::Error(e)) => {
                assert_eq!(e.code, ErrorCode::UnsupportedProtocol);
                assert!(e.message.contains("7..=9"), "{}", e.message);
            }
            other => panic!("expected unsupported_protocol, got {other:?}"),
        }
        assert!(agent.connect(ts.addr()).await.is_ok());
        ts.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_and_commands_are_signed_pushed_and_answered() {
    for ts in servers().await {
        let token = ts.enroll_token(r#"{}"#).await;
        let agent = FakeAgent::enroll(ts.addr(), &token, 1).await;
        let rig = agent.rig_ids[0].clone();
        let server_key = VerifyingKey::from_bytes(&agent.server_key).unwrap();
        let mut ws = agent.connect(ts.addr()).await.unwrap();
        let config = r#"{"algorithm":"sha256d","pools":[{"url":"stratum+tcp://127.0.0.1:3333","user":"w.1","password":"x"}],"devices":[]}"#;
        let mut counters = Vec::new();
        for round in 1..=2u64 {
            let (status, body) = ts
                .send("PUT", &format!("/api/v1/rigs/{rig}/config"), config)
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["version"], round);
            assert_eq!(body["pushed"], true);
            // The hub's reconcile at connect may push version 1 a second time (it runs after
            // the welcome, racing the first PUT); a repeat of an older version is skipped.
            let order = recv_until(&mut ws, |m| match m {
                ServerMessage::SetConfig(o)
                    if serde_json::from_str::<rigfleet_proto::config::DesiredConfig>(
                        &o.payload,
                    )
                    .is_ok_and(|c| c.version >= round) =>
                {
                    Some(o)
                }
                _ => None,
            })
            .await
            .expect("no set_config");
            let sig = Signature::from_bytes(&order.signature().unwrap());
            server_key
                .verify_strict(&order.signing_bytes(OrderKind::SetConfig), &sig)
                .expect("set_config signed by the pinned key");
            assert_eq!(order.rig_id, rig);
            assert!(order.expires_unix_ms > rigfleet_server::now_ms());
            counters.push(order.counter);
            let cfg: rigfleet_proto::config::DesiredConfig =
                serde_json::from_str(&order.payload).unwrap();
            assert_eq!(cfg.version, round);
            send(
                &mut ws,
                &AgentMessage::ConfigApplied(ConfigApplied {
                    rig_id: rig.clone(),
                    version: cfg.version,
                    content_hash: cfg.content_hash(),
                    ok: round == 1,
                    error: (round == 2).then(|| "pool unreachable".into()),
                }),
            )
            .await;
        }
        assert!(counters[1] > counters[0]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, detail) = ts.get(&format!("/api/v1/rigs/{rig}")).await;
        assert_eq!(detail["config"]["applied_version"], 2);
        assert_eq!(detail["config"]["applied_ok"], false);
        let (_, events) = ts.get(&format!("/api/v1/events?rig={rig}")).await;
        assert!(
            events
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "config_failed"),
            "{events}"
        );

        // A command waits for the rig's answer.
        let agent_task = tokio::spawn(async move {
            loop {
                match recv(&mut ws).await {
                    Some(ServerMessage::Command(o)) => {
                        let sig = Signature::from_bytes(&o.signature().unwrap());
                        server_key
                            .verify_strict(&o.signing_bytes(OrderKind::Command), &sig)
                            .unwrap();
                        let cmd: rigfleet_proto::command::CommandOrder =
                            serde_json::from_str(&o.payload).unwrap();
                        send(
                            &mut ws,
                            &AgentMessage::CommandResult(CommandResult {
                                rig_id: o.rig_id.clone(),
                                command_id: cmd.command_id,
                                ok: true,
                                output: "identified".into(),
                            }),
                        )
                        .await;
                        return ws;
                    }
                    Some(_) => continue,
                    None => panic!("no command"),
                }
            }
        });
        let (status, body) = ts
            .send(
                "POST",
                &format!("/api/v1/rigs/{rig}/commands"),
                r#"{"command":{"kind":"identify","seconds":5}}"#,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["ok"], true, "{body}");
        assert_eq!(body["output"], "identified");
        let _ws = agent_task.await.unwrap();
        let (_, list) = ts.get(&format!("/api/v1/rigs/{rig}/commands")).await;
        assert_eq!(list[0]["ok"], true, "{list}");
        assert_eq!(list[0]["command"]["kind"], "identify", "{list}");
        ts.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_refusals_are_clear() {
    for ts in servers().await {
        let single = ts.enroll_token(r#"{"max_uses": 1}"#).await;
        let a = FakeAgent::enroll(ts.addr(), &single, 1).await;
        let body = |token: &str, key: &str| {
            format!(
                r#"{{"token":"{token}","agent_public_key":"{key}","hostname":"h","agent_version":"v","rigs":[{{"name":"r"}}]}}"#
            )
        };
        let fresh_key = hex(SigningKey::from_bytes(&[7; 32]).verifying_key().as_bytes());
        let path = rigfleet_proto::enroll::ENROLL_PATH;
        let (status, text) = http(
            ts.addr(),
            "POST",
            path,
            None,
            Some(&body(&single, &fresh_key)),
        )
        .await;
        assert_eq!(status, 401, "{text}");
        assert!(text.contains("token_exhausted"), "{text}");
        let multi = ts.enroll_token(r#"{}"#).await;
        // Someone else's server made this token.
        let mut foreign = multi.clone();
        foreign.replace_range(foreign.len() - 4.., "0000");
        let (status, text) = http(
            ts.addr(),
            "POST",
            path,
            None,
            Some(&body(&foreign, &fresh_key)),
        )
        .await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("wrong_server"), "{text}");
        // A wrong secret.
        let parts: Vec<&str> = multi.split('.').collect();
        let bad_secret = format!("{}.{}.{}.{}", parts[0], parts[1], "00".repeat(16), parts[3]);
        let (status, text) = http(
            ts.addr(),
            "POST",
            path,
            None,
            Some(&body(&bad_secret, &fresh_key)),
        )
        .await;
        assert_eq!(status, 401, "{text}");
        // A known key (cloned disk image).
        let known = hex(a.key.verifying_key().as_bytes());
        let (status, text) = http(ts.addr(), "POST", path, None, Some(&body(&multi, &known))).await;
        assert_eq!(status, 409, "{text}");
        assert!(text.contains("key_in_use"), "{text}");
        let (status, _) = http(ts.addr(), "POST", path, None, Some("{garbage")).await;
        assert_eq!(status, 400);
        let (status, _) = http(
            ts.addr(),
            "POST",
            path,
            None,
            Some(&body(&multi, &fresh_key)),
        )
        .await;
        assert_eq!(status, 200);
        ts.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_rig_is_disconnected_and_its_key_stops_working() {
    for ts in servers().await {
        let token = ts.enroll_token(r#"{}"#).await;
        let agent = FakeAgent::enroll(ts.addr(), &token, 1).await;
        let rig = agent.rig_ids[0].clone();
        let mut ws = agent.connect(ts.addr()).await.unwrap();
        let (status, _) = ts.send("DELETE", &format!("/api/v1/rigs/{rig}"), "").await;
        assert_eq!(status, 204);
        assert!(recv(&mut ws).await.is_none(), "link closed");
        assert!(agent.connect(ts.addr()).await.is_err());
        let (status, _) = ts.get(&format!("/api/v1/rigs/{rig}")).await;
        assert_eq!(status, 404);
        ts.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_bad_handshakes_do_not_stop_good_agents() {
    let ts = start_on(
        rigfleet_server::db::test_db::TestDb::sqlite()
            .await
            .unwrap(),
    )
    .await;
    let token = ts.enroll_token(r#"{}"#).await;
    let good = FakeAgent::enroll(ts.addr(), &token, 1).await;
    let mut bad = FakeAgent::enroll(ts.addr(), &token, 1).await;
    bad.key = SigningKey::from_bytes(&[9; 32]);
    let bad = std::sync::Arc::new(bad);
    let addr = ts.addr();
    let attempts = 10_000usize;
    let mut tasks = Vec::new();
    for w in 0..50 {
        let bad = bad.clone();
        tasks.push(tokio::spawn(async move {
            let mut refused = 0;
            for _ in (w..attempts).step_by(50) {
                if bad.connect(addr).await.is_err() {
                    refused += 1;
                }
            }
            refused
        }));
    }
    // Good agents are served while the flood goes on.
    let mut ws = good.connect(addr).await.unwrap();
    send(
        &mut ws,
        &telemetry(
            &good.rig_ids[0],
            vec![sample(1, rigfleet_server::now_ms(), 2)],
        ),
    )
    .await;
    assert_eq!(next_ack(&mut ws).await, 1);
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    assert_eq!(refused, attempts);
    let (status, text) = http(addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    let line = text
        .lines()
        .find(|l| l.starts_with("rigfleet_errors_total{kind=\"auth_failed\"}"))
        .unwrap_or_default()
        .to_string();
    assert!(line.ends_with(&format!(" {attempts}")), "{line}");
    ts.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rig_gets_the_default_profile_on_connect() {
    for ts in servers().await {
        let profile = r#"{"is_default": true, "config": {"algorithm":"scrypt","pools":[{"url":"stratum+tcp://127.0.0.1:3334","user":"w","password":"x"}],"devices":[]}}"#;
        let (status, body) = ts.send("PUT", "/api/v1/profiles/litecoin", profile).await;
        assert_eq!(status, 200, "{body}");
        let (status, _) = ts
            .send(
                "PUT",
                "/api/v1/profiles/bad",
                r#"{"config":{"algorithm":"sha256d","pools":[],"devices":[]}}"#,
            )
            .await;
        assert_eq!(status, 400);
        let token = ts.enroll_token(r#"{}"#).await;
        let agent = FakeAgent::enroll(ts.addr(), &token, 1).await;
        let mut ws = agent.connect(ts.addr()).await.unwrap();
        let order = recv_until(&mut ws, |m| match m {
            ServerMessage::SetConfig(o) => Some(o),
            _ => None,
        })
        .await
        .expect("no set_config from the default profile");
        let cfg: rigfleet_proto::config::DesiredConfig =
            serde_json::from_str(&order.payload).unwrap();
        assert_eq!(cfg.algorithm, "scrypt");
        assert_eq!(cfg.version, 1);
        ts.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_agents_with_one_identity_flag_the_rig() {
    let ts = start_on(
        rigfleet_server::db::test_db::TestDb::sqlite()
            .await
            .unwrap(),
    )
    .await;
    let token = ts.enroll_token(r#"{}"#).await;
    let agent = FakeAgent::enroll(ts.addr(), &token, 1).await;
    let rig = agent.rig_ids[0].clone();
    let mut first = agent.connect(ts.addr()).await.unwrap();
    send(
        &mut first,
        &telemetry(&rig, vec![sample(1, rigfleet_server::now_ms(), 1)]),
    )
    .await;
    assert_eq!(next_ack(&mut first).await, 1);
    // The clone of the disk image connects while the original is busy.
    let _second = agent.connect(ts.addr()).await.unwrap();
    assert!(recv(&mut first).await.is_none(), "the older link is closed");
    let (_, detail) = ts.get(&format!("/api/v1/rigs/{rig}")).await;
    let (_, events) = ts.get(&format!("/api/v1/events?rig={rig}")).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "duplicate_identity"),
        "{events}"
    );
    let (_, list) = ts.get("/api/v1/rigs").await;
    assert!(
        list["items"][0]["flagged"].is_string() || detail["summary"]["flagged"].is_string(),
        "{detail}"
    );
    ts.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_agent_does_not_starve_the_others() {
    let ts = start_on(
        rigfleet_server::db::test_db::TestDb::sqlite()
            .await
            .unwrap(),
    )
    .await;
    let token = ts.enroll_token(r#"{}"#).await;
    let flooder = FakeAgent::enroll(ts.addr(), &token, 1).await;
    let quiet = FakeAgent::enroll(ts.addr(), &token, 1).await;
    let mut flood_ws = flooder.connect(ts.addr()).await.unwrap();
    let rig = flooder.rig_ids[0].clone();
    let now = rigfleet_server::now_ms();
    // Thousands of frames as fast as the socket takes them, never reading the acks.
    let flood = tokio::spawn(async move {
        let mut sent = 0u64;
        for seq in 1..=3000u64 {
            let frame = rigfleet_proto::encode_agent(&telemetry(
                &rig,
                vec![sample(seq, now + seq as i64, 8)],
            ))
            .unwrap();
            let send = flood_ws.send(tokio_tungstenite::tungstenite::Message::Text(frame.into()));
            match tokio::time::timeout(Duration::from_millis(200), send).await {
                Ok(Ok(())) => sent += 1,
                // The server paces this link: the socket stops taking frames.
                _ => break,
            }
        }
        (sent, flood_ws)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ws = quiet.connect(ts.addr()).await.unwrap();
    let started = std::time::Instant::now();
    send(
        &mut ws,
        &telemetry(&quiet.rig_ids[0], vec![sample(1, now, 2)]),
    )
    .await;
    assert_eq!(next_ack(&mut ws).await, 1);
    let latency = started.elapsed();
    let (sent, _flood_ws) = flood.await.unwrap();
    assert!(
        sent < 3000,
        "the flooding link was paced (it sent {sent} frames unhindered)"
    );
    assert!(
        latency < Duration::from_secs(5),
        "the quiet agent waited {latency:?}"
    );
    eprintln!("flood: {sent} frames taken before pacing; quiet agent acked after {latency:?}");
    ts.finish().await;
}
