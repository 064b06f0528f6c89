//! The REST API's contract: every documented route exists and needs authentication, scopes are
//! enforced, errors are JSON, /metrics passes promtool, and a restart keeps what was stored.

use std::collections::BTreeSet;

use rigfleet_server::api::ROUTES;
use rigfleet_server::db::Scope;
use rigfleet_tests::server::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_router() {
    let ts = start_on(
        rigfleet_server::db::test_db::TestDb::sqlite()
            .await
            .unwrap(),
    )
    .await;
    let (status, doc) = ts.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, routed,
        "OpenAPI paths and the route table differ"
    );
    // Each route exists (not 404/405) and refuses callers without a token.
    for (method, path) in ROUTES {
        let concrete = path
            .replace("{rig}", "rig-x")
            .replace("{id}", "x")
            .replace("{name}", "x")
            .replace("{algorithm}", "x");
        let body = (*method != "get").then_some("{}");
        let (status, text) = http(ts.addr(), &method.to_uppercase(), &concrete, None, body).await;
        assert_eq!(status, 401, "{method} {path}: {text}");
        let err: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(err["code"], "unauthorized");
    }
    ts.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_are_enforced_and_errors_are_json() {
    let ts = start_on(
        rigfleet_server::db::test_db::TestDb::sqlite()
            .await
            .unwrap(),
    )
    .await;
    let read = ts
        .server
        .create_api_token("reader", Scope::Read)
        .await
        .unwrap();
    let (status, _) = http(ts.addr(), "GET", "/api/v1/rigs", Some(&read), None).await;
    assert_eq!(status, 200);
    let (status, text) = http(
        ts.addr(),
        "POST",
        "/api/v1/enrollment-tokens",
        Some(&read),
        Some("{}"),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    let (status, text) = http(
        ts.addr(),
        "GET",
        "/api/v1/rigs?sort=evil;drop",
        Some(&read),
        None,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let (status, text) = http(ts.addr(), "GET", "/api/v1/rigs", Some("rft_nope"), None).await;
    assert_eq!(status, 401, "{text}");
    let (status, text) = http(
        ts.addr(),
        "GET",
        "/api/v1/rigs/rig-missing",
        Some(&read),
        None,
    )
    .await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("\"code\":\"not_found\""), "{text}");
    let big = format!("{{\"note\":\"{}\"}}", "x".repeat(2 << 20));
    let (status, _) = http(
        ts.addr(),
        "POST",
        "/api/v1/enrollment-tokens",
        Some(&ts.admin),
        Some(&big),
    )
    .await;
    assert_eq!(status, 413);
    let (status, _) = http(ts.addr(), "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    let (status, _) = http(ts.addr(), "GET", "/readyz", None, None).await;
    assert_eq!(status, 200);
    ts.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coin_data_is_set_listed_checked_and_removed() {
    for ts in servers().await {
        let read = ts
            .server
            .create_api_token("reader", Scope::Read)
            .await
            .unwrap();
        let btc = r#"{"coin":"BTC","network_difficulty":1e14,"block_reward":3.2,"price":90000,"currency":"USD","pool_fee_percent":2}"#;
        let (status, text) = http(
            ts.addr(),
            "PUT",
            "/api/v1/coins/sha256d",
            Some(&read),
            Some(btc),
        )
        .await;
        assert_eq!(status, 403, "{text}");
        let (status, body) = ts.send("PUT", "/api/v1/coins/sha256d", btc).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["algorithm"].as_str(), body["coin"].as_str()),
            (Some("sha256d"), Some("BTC"))
        );
        for (path, bad) in [
            ("/api/v1/coins/sha256d", btc.replace("1e14", "0")),
            ("/api/v1/coins/sha256d", btc.replace("90000", "-1")),
            ("/api/v1/coins/sha256d", btc.replace("\"BTC\"", "\"<b>\"")),
            ("/api/v1/coins/Not%20An%20Algo", btc.to_string()),
        ] {
            let (status, body) = ts.send("PUT", path, &bad).await;
            assert_eq!(status, 400, "{path} {bad}: {body}");
        }
        let (status, list) = http(ts.addr(), "GET", "/api/v1/coins", Some(&read), None).await;
        assert_eq!(status, 200);
        let list: serde_json::Value = serde_json::from_str(&list).unwrap();
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
        assert_eq!(list[0]["price"], 90000.0);
        let (status, _) = ts.send("DELETE", "/api/v1/coins/sha256d", "").await;
        assert_eq!(status, 204);
        // Both changes are audited with the token that made them; readers may not see that.
        let (status, audit) = ts.get("/api/v1/audit?limit=2").await;
        assert_eq!(status, 200, "{audit}");
        let actions: Vec<(&str, &str, &str)> = audit
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["action"].as_str().unwrap(),
                    e["target"].as_str().unwrap(),
                    e["actor"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            actions,
            [
                ("coin.delete", "sha256d", "token:tests"),
                ("coin.put", "sha256d", "token:tests")
            ]
        );
        let (status, _) = http(ts.addr(), "GET", "/api/v1/audit", Some(&read), None).await;
        assert_eq!(status, 403);
        let (status, _) = ts.send("DELETE", "/api/v1/coins/sha256d", "").await;
        assert_eq!(status, 404);
        let (_, list) = ts.get("/api/v1/coins").await;
        assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
        ts.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let ts = start_on(
        rigfleet_server::db::test_db::TestDb::sqlite()
            .await
            .unwrap(),
    )
    .await;
    let token = ts.enroll_token(r#"{"group":"east"}"#).await;
    let agent = FakeAgent::enroll(ts.addr(), &token, 2).await;
    let mut ws = agent.connect(ts.addr()).await.unwrap();
    for rig in &agent.rig_ids {
        send(
            &mut ws,
            &telemetry(rig, vec![sample(1, rigfleet_server::now_ms(), 4)]),
        )
        .await;
    }
    for _ in 0..2 {
        assert!(matches!(
            recv(&mut ws).await,
            Some(rigfleet_proto::ServerMessage::Ack(_))
        ));
    }
    let (status, text) = http(ts.addr(), "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("rigfleet_device_hashrate_hashes_per_second{"),
        "{text}"
    );
    assert!(text.contains("group=\"east\""), "{text}");
    assert!(text.contains("rigfleet_agents_connected 1"), "{text}");
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = promtool
        .expect("promtool (Debian package prometheus) must be installed; .ci/run installs it");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ts.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_token_is_required_when_set() {
    let db = rigfleet_server::db::test_db::TestDb::sqlite()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), db.url.clone());
    config.metrics_token = Some("s3cret".into());
    let server = rigfleet_server::start(config).await.unwrap();
    let (status, _) = http(server.addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = http(server.addr, "GET", "/metrics", Some("s3cret"), None).await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_rebuilds_the_fleet_from_the_database() {
    for ts in servers().await {
        let token = ts.enroll_token(r#"{}"#).await;
        let agent = FakeAgent::enroll(ts.addr(), &token, 1).await;
        let rig = agent.rig_ids[0].clone();
        let mut ws = agent.connect(ts.addr()).await.unwrap();
        let now = rigfleet_server::now_ms();
        send(
            &mut ws,
            &telemetry(
                &rig,
                (1..=3).map(|s| sample(s, now + s as i64, 3)).collect(),
            ),
        )
        .await;
        assert!(
            matches!(recv(&mut ws).await, Some(rigfleet_proto::ServerMessage::Ack(a)) if a.seq == 3)
        );
        let addr = ts.addr();
        let TestServer {
            server,
            data_dir,
            db,
            ..
        } = ts;
        server.stop().await;
        let mut config = test_config(data_dir.path(), db.url.clone());
        config.listen = addr;
        let server = rigfleet_server::start(config).await.unwrap();
        assert!(server.first_admin.is_none(), "the admin is made once");
        let admin = server
            .create_api_token("again", Scope::Admin)
            .await
            .unwrap();
        let (status, text) = http(
            addr,
            "GET",
            &format!("/api/v1/rigs/{rig}"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let detail: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(detail["last_seq"], 3);
        assert_eq!(detail["latest_sample"]["seq"], 3, "{detail}");
        // The agent's key still works and dedup survives the restart.
        let mut ws = agent.connect(addr).await.unwrap();
        send(
            &mut ws,
            &telemetry(
                &rig,
                (2..=4).map(|s| sample(s, now + s as i64, 3)).collect(),
            ),
        )
        .await;
        assert!(
            matches!(recv(&mut ws).await, Some(rigfleet_proto::ServerMessage::Ack(a)) if a.seq == 4)
        );
        let row = server
            .hub
            .store
            .rig_by_uid(rig.as_str())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            server.hub.store.raw_seq_stats(row.id).await.unwrap(),
            (4, Some(1), Some(4))
        );
        server.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_tls_is_served_and_pinned() {
    use rigfleet_stratum::transport::{tls_client_config, TlsOptions};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = rigfleet_server::db::test_db::TestDb::sqlite()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), db.url.clone());
    config.tls = rigfleet_server::config::TlsMode::SelfSigned;
    let server = rigfleet_server::start(config).await.unwrap();
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let fp = server.tls_fingerprint.clone().expect("fingerprint shown");
    let pin = TlsOptions::parse_fingerprint(fp.trim_start_matches("sha256:")).unwrap();
    let get = |pin: [u8; 32]| async move {
        let cfg = tls_client_config(&TlsOptions {
            pin_sha256: Some(pin),
            ca_file: None,
        })
        .unwrap();
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tls.read_to_string(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<String, String>(out)
    };
    let ok = get(pin).await.unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let mut wrong = pin;
    wrong[0] ^= 1;
    assert!(
        get(wrong).await.is_err(),
        "a different certificate is refused"
    );
    server.stop().await;
}
