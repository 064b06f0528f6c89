//! The server's API surface against real servers: dangerous commands need the same proof as a
//! wallet change, wallets only for operators and up, desired-config numbers range-checked with
//! per-field errors, one audit entry for a config change from the API and the dashboard, every
//! REST error as JSON with one Content-Type rule, /metrics off loopback only with a token or an
//! explicit choice, and enrollment that counts rigs, refuses weak keys and limits each address.

use std::net::SocketAddr;
use std::time::Duration;

use rigfleet_server::db::test_db::TestDb;
use rigfleet_server::db::{Role, Scope};
use rigfleet_tests::browser::{enc, login, request, WebSession};
use rigfleet_tests::server::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

async fn add_user(ts: &TestServer, name: &str, role: Role) -> String {
    let password = format!("{name}-password-123");
    let hash = rigfleet_server::startup::hash_password(&password).unwrap();
    ts.server
        .hub
        .store
        .create_user(name, &hash, role)
        .await
        .unwrap();
    password
}

/// One raw HTTP/1.1 exchange from `from` (a local address to bind, so tests can be several
/// clients) with exactly the headers given: no Content-Type unless the test names one.
async fn raw_from(
    from: Option<std::net::IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    let mut s = socket.connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .expect("answer within 30 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    raw_from(None, addr, method, path, headers, body).await
}

/// `{code, message}` (and `fields` only as an object), or a panic naming the answer.
fn error_json(status: u16, text: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text:?}"));
    assert!(v["code"].is_string(), "{status}: {text}");
    assert!(v["message"].is_string(), "{status}: {text}");
    assert!(
        v.get("fields").is_none() || v["fields"].is_object(),
        "{status}: {text}"
    );
    v
}

/// A cookie-authenticated API request done right (CSRF token, same origin).
async fn cookie_api(
    addr: SocketAddr,
    s: &WebSession,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let origin = format!("http://{addr}");
    let a = request(
        addr,
        method,
        path,
        Some(&s.cookie),
        Some(&origin),
        JSON,
        &[("X-CSRF-Token", s.csrf.as_str())],
        body,
    )
    .await;
    (a.status, a.body)
}

async fn form_post(addr: SocketAddr, s: &WebSession, path: &str, form: &str) -> (u16, String) {
    let origin = format!("http://{addr}");
    let a = request(
        addr,
        "POST",
        path,
        Some(&s.cookie),
        Some(&origin),
        FORM,
        &[],
        &format!("csrf={}&{form}", enc(&s.csrf)),
    )
    .await;
    (a.status, a.body)
}

async fn command_kinds(ts: &TestServer, rig: &str) -> Vec<(String, String)> {
    let (status, list) = ts.get(&format!("/api/v1/rigs/{rig}/commands")).await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["command"]["kind"].as_str().unwrap_or("?").to_string(),
                c["created_by"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Item 9: a shell command or a reboot through the REST API needs an API token, as a pool
/// change does (a stolen session cookie must not run commands on rigs); in the dashboard a
/// reboot takes the user's password again, on the rig page and in bulk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_and_reboot_need_an_api_token_or_the_password_again() {
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let addr = ts.addr();
    let token = ts.enroll_token(r#"{}"#).await;
    let agent = FakeAgent::enroll(addr, &token, 1).await;
    let rig = agent.rig_ids[0].0.clone();
    let pw = add_user(&ts, "olga", Role::Operator).await;
    let s = login(addr, "olga", &pw).await.expect("operator logs in");
    let api = format!("/api/v1/rigs/{rig}/commands");

    for body in [
        r#"{"command":{"kind":"shell","command":"id"},"wait_secs":0}"#,
        r#"{"command":{"kind":"reboot"},"wait_secs":0}"#,
    ] {
        let (status, text) = cookie_api(addr, &s, "POST", &api, body).await;
        assert_eq!(status, 403, "{body}: {text}");
        let e = error_json(status, &text);
        assert!(
            e["message"].as_str().unwrap().contains("API token"),
            "{text}"
        );
    }
    // A harmless command still works with the cookie.
    let (status, text) = cookie_api(
        addr,
        &s,
        "POST",
        &api,
        r#"{"command":{"kind":"identify","seconds":5},"wait_secs":0}"#,
    )
    .await;
    assert_eq!(status, 200, "{text}");

    // The rig page: a reboot without the password, or with a wrong one, sends nothing.
    let page = format!("/rigs/{rig}/command");
    let (status, text) = form_post(addr, &s, &page, "cmd=reboot").await;
    assert_eq!(status, 401, "{text}");
    let (status, text) = form_post(addr, &s, &page, "cmd=reboot&confirm_password=guess").await;
    assert_eq!(status, 401, "{text}");
    let (status, text) = form_post(addr, &s, "/bulk", "action=reboot&all=1").await;
    assert_eq!(status, 401, "bulk reboot without the password: {text}");
    let (status, text) = form_post(
        addr,
        &s,
        &page,
        &format!("cmd=reboot&confirm_password={}", enc(&pw)),
    )
    .await;
    assert_eq!(status, 303, "{text}");
    // Restart and identify need no password.
    let (status, text) = form_post(addr, &s, &page, "cmd=restart_mining").await;
    assert_eq!(status, 303, "{text}");

    // An API token may.
    let (status, body) = ts
        .send(
            "POST",
            &api,
            r#"{"command":{"kind":"shell","command":"id"},"wait_secs":0}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        command_kinds(&ts, &rig).await,
        [
            ("shell".to_string(), "token:tests".to_string()),
            ("restart_mining".into(), "user:olga".into()),
            ("reboot".into(), "user:olga".into()),
            ("identify".into(), "user:olga".into()),
        ]
    );
    ts.finish().await;
}

/// Item 18: the wallet in a rig's newest sample (`latest_sample.pool.user`) is shown to the
/// write scope and up (operators, admins, write/admin tokens), never to read tokens or viewers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_scope_and_viewers_do_not_see_wallets() {
    const WALLET: &str = "bc1qsecretwallet7";
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let addr = ts.addr();
    let token = ts.enroll_token(r#"{}"#).await;
    let agent = FakeAgent::enroll(addr, &token, 1).await;
    let rig = agent.rig_ids[0].clone();
    let mut ws = agent.connect(addr).await.unwrap();
    let mut s = sample(1, rigfleet_server::now_ms(), 1);
    if let Some(p) = s.pool.as_mut() {
        p.user = format!("{WALLET}.rig1");
    }
    send(&mut ws, &telemetry(&rig, vec![s])).await;
    assert!(
        recv_until(&mut ws, |m| match m {
            rigfleet_proto::ServerMessage::Ack(_) => Some(()),
            _ => None,
        })
        .await
        .is_some(),
        "acked"
    );
    let path = format!("/api/v1/rigs/{rig}");
    let write = ts
        .server
        .create_api_token("writer", Scope::Write)
        .await
        .unwrap();
    let read = ts
        .server
        .create_api_token("reader", Scope::Read)
        .await
        .unwrap();
    let (status, text) = http(addr, "GET", &path, Some(&write), None).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(WALLET), "write scope sees the wallet: {text}");
    let (status, text) = http(addr, "GET", &path, Some(&read), None).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["latest_sample"]["pool"]["url"], "stratum+tcp://127.0.0.1:3333",
        "the rest of the sample stays: {text}"
    );
    assert!(!text.contains(WALLET), "read scope: {text}");

    let vpw = add_user(&ts, "vera", Role::Viewer).await;
    let opw = add_user(&ts, "omar", Role::Operator).await;
    let viewer = login(addr, "vera", &vpw).await.unwrap();
    let operator = login(addr, "omar", &opw).await.unwrap();
    for (who, session, sees) in [("viewer", &viewer, false), ("operator", &operator, true)] {
        let a = request(addr, "GET", &path, Some(&session.cookie), None, "", &[], "").await;
        assert_eq!(a.status, 200, "{who}: {}", a.body);
        assert_eq!(a.body.contains(WALLET), sees, "{who} API: {}", a.body);
        let page = format!("/rigs/{rig}");
        let a = request(addr, "GET", &page, Some(&session.cookie), None, "", &[], "").await;
        assert_eq!(a.status, 200, "{who}");
        if !sees {
            assert!(!a.body.contains(WALLET), "{who} page: {}", a.body);
        }
    }
    ts.finish().await;
}

const POOL: &str =
    r#"{"url":"stratum+tcp://127.0.0.1:3333","user":"wallet.one","password":"poolsecret"}"#;

/// Item 19: numbers of a desired config are range-checked before anything is stored or
/// signed, each problem under its field's path; profiles alike (under `config.`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_numbers_are_range_checked_with_field_errors() {
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let token = ts.enroll_token(r#"{}"#).await;
    let agent = FakeAgent::enroll(ts.addr(), &token, 1).await;
    let rig = agent.rig_ids[0].0.clone();
    let path = format!("/api/v1/rigs/{rig}/config");
    let bad = format!(
        r#"{{"algorithm":"sha256d","pools":[{POOL}],"devices":[{{"device_id":"cpu","threads":0,"power_limit_watts":4294967295}},{{"device_id":"gpu0","core_clock_mhz":0,"memory_clock_mhz":4294967295,"fan_percent":101}}],"telemetry_interval_secs":0}}"#
    );
    let (status, body) = ts.send("PUT", &path, &bad).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_config", "{body}");
    let mut fields: Vec<&str> = body["fields"]
        .as_object()
        .expect("fields")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "devices[0].power_limit_watts",
            "devices[0].threads",
            "devices[1].core_clock_mhz",
            "devices[1].fan_percent",
            "devices[1].memory_clock_mhz",
            "telemetry_interval_secs",
        ],
        "{body}"
    );
    let row = ts.server.hub.store.rig_by_uid(&rig).await.unwrap().unwrap();
    assert_eq!(row.desired_version, 0, "nothing stored");
    // In range: stored.
    let good = format!(
        r#"{{"algorithm":"sha256d","pools":[{POOL}],"devices":[{{"device_id":"cpu","threads":4,"power_limit_watts":65}}],"telemetry_interval_secs":10}}"#
    );
    let (status, body) = ts.send("PUT", &path, &good).await;
    assert_eq!(status, 200, "{body}");
    // A wrong type is a 422 with the field's path.
    let (status, body) = ts
        .send(
            "PUT",
            &path,
            &good.replace(r#""threads":4"#, r#""threads":-4"#),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["fields"]["devices[0].threads"].is_string(), "{body}");
    let (status, body) = ts
        .send(
            "PUT",
            "/api/v1/profiles/p",
            &format!(r#"{{"config":{bad}}}"#),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["fields"]["config.devices[0].threads"].is_string(),
        "{body}"
    );
    ts.finish().await;
}

/// Item 22: a config change is audited the same way from the REST API and from the rig page:
/// version and hash, then each changed part before → after (pool URLs and wallets, algorithm,
/// device settings), never the pool passwords.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_are_audited_alike_with_before_and_after() {
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let addr = ts.addr();
    let token = ts.enroll_token(r#"{}"#).await;
    let agent = FakeAgent::enroll(addr, &token, 1).await;
    let rig = agent.rig_ids[0].0.clone();
    let path = format!("/api/v1/rigs/{rig}/config");
    let first = format!(
        r#"{{"algorithm":"sha256d","pools":[{POOL}],"devices":[{{"device_id":"cpu","threads":2}}]}}"#
    );
    let (status, body) = ts.send("PUT", &path, &first).await;
    assert_eq!(status, 200, "{body}");
    let second = first
        .replace("wallet.one", "wallet.two")
        .replace(r#""threads":2"#, r#""threads":6"#);
    let (status, body) = ts.send("PUT", &path, &second).await;
    assert_eq!(status, 200, "{body}");
    let pw = add_user(&ts, "olga", Role::Operator).await;
    let s = login(addr, "olga", &pw).await.unwrap();
    let (status, text) = form_post(
        addr,
        &s,
        &format!("/rigs/{rig}/config"),
        &format!(
            "algorithm=scrypt&pool_url={}&pool_user=wallet.three&pool_password=formsecret&confirm_password={}",
            enc("stratum+tcp://127.0.0.1:3334"),
            enc(&pw)
        ),
    )
    .await;
    assert_eq!(status, 303, "{text}");

    let audit = ts.server.hub.store.list_audit(10, None).await.unwrap();
    let entries: Vec<(&str, &str)> = audit
        .iter()
        .filter(|e| e.action == "rig.config" && e.target == rig)
        .map(|e| (e.actor.as_str(), e.detail.as_str()))
        .collect();
    assert_eq!(entries.len(), 3, "{entries:?}");
    let (form_actor, form) = entries[0];
    let (api_actor, api) = entries[1];
    assert_eq!((form_actor, api_actor), ("user:olga", "token:tests"));
    assert!(
        api.starts_with("version 2 hash ")
            && api.contains(
                "pools [stratum+tcp://127.0.0.1:3333 wallet.one] → [stratum+tcp://127.0.0.1:3333 wallet.two]"
            )
            && api.contains("devices [cpu on threads 2] → [cpu on threads 6]"),
        "API: {api}"
    );
    assert!(
        form.starts_with("version 3 hash ")
            && form.contains("algorithm \"sha256d\" → \"scrypt\"")
            && form.contains(
                "pools [stratum+tcp://127.0.0.1:3333 wallet.two] → [stratum+tcp://127.0.0.1:3334 wallet.three]"
            ),
        "form: {form}"
    );
    assert!(
        entries[2]
            .1
            .contains("pools none → [stratum+tcp://127.0.0.1:3333 wallet.one]"),
        "{entries:?}"
    );
    for (_, d) in &entries {
        assert!(
            !d.contains("poolsecret") && !d.contains("formsecret"),
            "{d}"
        );
    }
    // A profile's change is described the same way.
    let profile = format!(r#"{{"config":{first}}}"#);
    let (status, body) = ts.send("PUT", "/api/v1/profiles/main", &profile).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = ts
        .send(
            "PUT",
            "/api/v1/profiles/main",
            &profile.replace("wallet.one", "wallet.four"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let audit = ts.server.hub.store.list_audit(1, None).await.unwrap();
    assert_eq!(audit[0].action, "profile.put");
    assert!(
        audit[0].detail.contains(
            "pools [stratum+tcp://127.0.0.1:3333 wallet.one] → [stratum+tcp://127.0.0.1:3333 wallet.four]"
        ) && !audit[0].detail.contains("poolsecret"),
        "{}",
        audit[0].detail
    );
    ts.finish().await;
}

/// Item 23: every REST error is JSON `{code, message, fields?}`, whoever produced it (axum's
/// extractors, the router's 404 and 405, the body limit), and every JSON endpoint follows one
/// Content-Type rule: a missing one is JSON on API-token requests (the README's curl), refused
/// with 415 on cookie requests; the OpenAPI document describes the error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_error_is_json_and_one_body_rule_holds() {
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let addr = ts.addr();
    let token = ts.enroll_token(r#"{}"#).await;
    let agent = FakeAgent::enroll(addr, &token, 1).await;
    let rig = agent.rig_ids[0].0.clone();
    let bearer = format!("Bearer {}", ts.admin);
    let auth = ("Authorization", bearer.as_str());
    let json = ("Content-Type", JSON);

    let big = format!(r#"{{"note":"{}"}}"#, "x".repeat(2 << 20));
    // (method, path, headers, body, status, code)
    type Case<'a> = (
        &'a str,
        String,
        Vec<(&'a str, &'a str)>,
        String,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/api/v1/nope".into(),
            vec![auth],
            String::new(),
            404,
            "not_found",
        ),
        (
            "GET",
            "/api/v1".into(),
            vec![auth],
            String::new(),
            404,
            "not_found",
        ),
        (
            "DELETE",
            "/api/v1/rigs".into(),
            vec![auth],
            String::new(),
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/api/v1/enrollment-tokens".into(),
            vec![auth, ("Content-Type", "text/plain")],
            "{}".into(),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/api/v1/enrollment-tokens".into(),
            vec![auth, json],
            "{nope".into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/enrollment-tokens".into(),
            vec![auth, json],
            r#"{"max_uses":"many"}"#.into(),
            422,
            "invalid_body",
        ),
        (
            "POST",
            "/api/v1/enrollment-tokens".into(),
            vec![auth, json],
            big,
            413,
            "payload_too_large",
        ),
        (
            "GET",
            "/api/v1/events?limit=lots".into(),
            vec![auth],
            String::new(),
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/api/v1/rigs?limit=-1".into(),
            vec![auth],
            String::new(),
            400,
            "invalid_query",
        ),
        (
            "PATCH",
            format!("/api/v1/rigs/{rig}"),
            vec![auth, json],
            r#"{"name":1}"#.into(),
            422,
            "invalid_body",
        ),
        // Bounds whose arithmetic overflowed (found by schemathesis): a clear refusal.
        (
            "GET",
            format!("/api/v1/rigs/{rig}/history?to_ms=-9223372036854775808"),
            vec![auth],
            String::new(),
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("/api/v1/rigs/{rig}/history?from_ms=-9223372036854775808&to_ms=1"),
            vec![auth],
            String::new(),
            400,
            "bad_request",
        ),
    ];
    for (method, path, headers, body, status, code) in cases {
        let (got, text) = raw(addr, method, &path, &headers, &body).await;
        assert_eq!(got, status, "{method} {path}: {text}");
        let e = error_json(got, &text);
        assert_eq!(e["code"], code, "{method} {path}: {text}");
    }
    let (_, text) = raw(
        addr,
        "POST",
        "/api/v1/enrollment-tokens",
        &[auth, json],
        r#"{"max_uses":"many"}"#,
    )
    .await;
    assert!(
        error_json(422, &text)["fields"]["max_uses"].is_string(),
        "{text}"
    );

    // The README's curl: a bearer token and a JSON body without Content-Type, on every
    // endpoint that takes a body.
    for (method, path, body) in [
        (
            "POST",
            format!("/api/v1/rigs/{rig}/commands"),
            r#"{"command":{"kind":"identify","seconds":5},"wait_secs":0}"#.to_string(),
        ),
        (
            "PUT",
            "/api/v1/coins/sha256d".into(),
            r#"{"coin":"BTC","network_difficulty":1e14,"block_reward":3.2,"price":90000,"currency":"USD","pool_fee_percent":2}"#.into(),
        ),
        (
            "PUT",
            format!("/api/v1/rigs/{rig}/config"),
            format!(r#"{{"algorithm":"sha256d","pools":[{POOL}]}}"#),
        ),
        ("POST", "/api/v1/enrollment-tokens".into(), "{}".into()),
        ("PATCH", format!("/api/v1/rigs/{rig}"), r#"{"name":"r1"}"#.into()),
        (
            "PUT",
            "/api/v1/profiles/p".into(),
            format!(r#"{{"config":{{"algorithm":"sha256d","pools":[{POOL}]}}}}"#),
        ),
    ] {
        let (status, text) = raw(addr, method, &path, &[auth], &body).await;
        assert_eq!(status, 200, "{method} {path} without Content-Type: {text}");
        // `curl -d` without `-H 'Content-Type: …'` sends the form type.
        let curl = [auth, ("Content-Type", FORM)];
        let (status, text) = raw(addr, method, &path, &curl, &body).await;
        assert_eq!(status, 200, "{method} {path} as curl -d sends it: {text}");
    }

    // A cookie request must name its JSON (its CSRF/Origin checks stay as they were).
    let pw = add_user(&ts, "olga", Role::Operator).await;
    let s = login(addr, "olga", &pw).await.unwrap();
    let origin = format!("http://{addr}");
    let (status, text) = raw(
        addr,
        "PATCH",
        &format!("/api/v1/rigs/{rig}"),
        &[
            ("Cookie", s.cookie.as_str()),
            ("Origin", origin.as_str()),
            ("X-CSRF-Token", s.csrf.as_str()),
        ],
        r#"{"name":"r2"}"#,
    )
    .await;
    assert_eq!(status, 415, "{text}");
    error_json(status, &text);
    let (status, text) = raw(
        addr,
        "PATCH",
        &format!("/api/v1/rigs/{rig}"),
        &[
            ("Cookie", s.cookie.as_str()),
            ("Origin", origin.as_str()),
            ("X-CSRF-Token", s.csrf.as_str()),
            ("Content-Type", FORM),
        ],
        r#"{"name":"r2"}"#,
    )
    .await;
    assert_eq!(status, 415, "a cookie request with a form type: {text}");
    let (status, text) = cookie_api(
        addr,
        &s,
        "PATCH",
        &format!("/api/v1/rigs/{rig}"),
        r#"{"name":"r2"}"#,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = raw(
        addr,
        "PATCH",
        &format!("/api/v1/rigs/{rig}"),
        &[
            ("Cookie", s.cookie.as_str()),
            ("Origin", origin.as_str()),
            json,
        ],
        r#"{"name":"r3"}"#,
    )
    .await;
    assert_eq!(status, 403, "no CSRF token: {text}");
    error_json(status, &text);

    let (status, doc) = ts.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    let schema = &doc["components"]["schemas"]["ErrorBody"];
    assert!(
        schema["properties"]["code"].is_object() && schema["properties"]["fields"].is_object(),
        "{schema}"
    );
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for status in ["default", "400", "401", "403", "404", "415", "422"] {
                let r = &op["responses"][status]["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    r, "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
    ts.finish().await;
}

/// Item 16: on a non-loopback address the server starts only with a metrics token or an
/// explicit `--public-metrics`, and says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_off_loopback_need_a_token_or_public_metrics() {
    let db = TestDb::sqlite().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), db.url.clone());
    config.listen = "0.0.0.0:0".parse().unwrap();
    let err = match rigfleet_server::start(config.clone()).await {
        Ok(server) => {
            server.stop().await;
            panic!("a non-loopback server started with open /metrics and no explicit choice");
        }
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("metrics_token") && err.contains("--public-metrics"),
        "{err}"
    );
    config.public_metrics = true;
    let server = rigfleet_server::start(config.clone()).await.unwrap();
    let local = SocketAddr::new([127, 0, 0, 1].into(), server.addr.port());
    let (status, _) = http(local, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200, "public by choice");
    server.stop().await;
    config.public_metrics = false;
    config.metrics_token = Some("s3cret".into());
    let server = rigfleet_server::start(config).await.unwrap();
    let local = SocketAddr::new([127, 0, 0, 1].into(), server.addr.port());
    let (status, _) = http(local, "GET", "/metrics", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = http(local, "GET", "/metrics", Some("s3cret"), None).await;
    assert_eq!(status, 200);
    server.stop().await;

    // The binary refuses with the reason and starts nothing.
    let out = std::process::Command::new(rigfleet_tests::agent_proc::workspace_binary(
        "rigfleet-server",
    ))
    .args(["--listen", "0.0.0.0:0", "--plain-http", "--data-dir"])
    .arg(dir.path().join("bin"))
    .env_remove("RIGFLEET_METRICS_TOKEN")
    .env_remove("RIGFLEET_PUBLIC_METRICS")
    .output()
    .expect("run rigfleet-server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--metrics-token") && stderr.contains("--public-metrics"),
        "{stderr}"
    );
    db.cleanup().await;
}

fn enroll_body(token: &str, key: &str, rigs: usize) -> String {
    let rigs: Vec<String> = (0..rigs).map(|i| format!(r#"{{"name":"r{i}"}}"#)).collect();
    format!(
        r#"{{"token":"{token}","agent_public_key":"{key}","hostname":"h","agent_version":"v","rigs":[{}]}}"#,
        rigs.join(",")
    )
}

fn fresh_key() -> String {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).unwrap();
    hex(ed25519_dalek::SigningKey::from_bytes(&secret)
        .verifying_key()
        .as_bytes())
}

/// Item 17: a token's uses count rigs (one request cannot enroll 1,024 rigs on a single-use
/// token), weak Ed25519 keys are refused, and one address that keeps failing is slowed down
/// while another still enrolls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_counts_rigs_refuses_weak_keys_and_limits_each_address() {
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let addr = ts.addr();
    let path = rigfleet_proto::enroll::ENROLL_PATH;
    let json = [("Content-Type", JSON)];
    let single = ts.enroll_token(r#"{"max_uses": 1}"#).await;
    let (status, text) = raw(
        addr,
        "POST",
        path,
        &json,
        &enroll_body(&single, &fresh_key(), 64),
    )
    .await;
    assert_eq!(status, 401, "{text}");
    assert_eq!(error_json(status, &text)["code"], "token_exhausted");
    assert!(
        ts.server.hub.live.with_all(|r| r.is_empty()),
        "no rig enrolled"
    );
    let three = ts.enroll_token(r#"{"max_uses": 3}"#).await;
    let (status, text) = raw(
        addr,
        "POST",
        path,
        &json,
        &enroll_body(&three, &fresh_key(), 2),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = raw(
        addr,
        "POST",
        path,
        &json,
        &enroll_body(&three, &fresh_key(), 2),
    )
    .await;
    assert_eq!(status, 401, "one use left, two rigs: {text}");
    let (status, text) = raw(
        addr,
        "POST",
        path,
        &json,
        &enroll_body(&three, &fresh_key(), 1),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, list) = ts.get("/api/v1/enrollment-tokens").await;
    assert_eq!(status, 200);
    let uses: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["uses"].as_i64().unwrap())
        .collect();
    assert_eq!(uses, [3, 0], "{list}");

    let multi = ts.enroll_token(r#"{}"#).await;
    // A refused registration (a key already known) takes no use.
    let last = ts.enroll_token(r#"{"max_uses": 1}"#).await;
    let known = fresh_key();
    let (status, text) = raw(addr, "POST", path, &json, &enroll_body(&multi, &known, 1)).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = raw(addr, "POST", path, &json, &enroll_body(&last, &known, 1)).await;
    assert_eq!(status, 409, "{text}");
    let (status, text) = raw(
        addr,
        "POST",
        path,
        &json,
        &enroll_body(&last, &fresh_key(), 1),
    )
    .await;
    assert_eq!(status, 200, "the refused attempt gave its use back: {text}");

    // Weak keys: all zeros and the identity point are small-order.
    let mut identity = "00".repeat(32);
    identity.replace_range(0..2, "01");
    for weak in ["00".repeat(32), identity] {
        let (status, text) = raw(addr, "POST", path, &json, &enroll_body(&multi, &weak, 1)).await;
        assert_eq!(status, 400, "{text}");
        assert_eq!(error_json(status, &text)["code"], "weak_key", "{text}");
    }

    // One address that keeps failing is told to wait; another address is not.
    let bad_secret = {
        let p: Vec<&str> = multi.split('.').collect();
        format!("{}.{}.{}.{}", p[0], p[1], "00".repeat(16), p[3])
    };
    let mut limited = None;
    for i in 0..40 {
        let (status, text) = raw(
            addr,
            "POST",
            path,
            &json,
            &enroll_body(&bad_secret, &fresh_key(), 1),
        )
        .await;
        if status == 429 {
            limited = Some((i, text));
            break;
        }
        assert_eq!(status, 401, "{text}");
    }
    let (after, text) = limited.expect("repeated failures from one address are rate-limited");
    assert!(after <= 12, "limited only after {after} failures");
    assert_eq!(error_json(429, &text)["code"], "rate_limited");
    let other = Some([127, 0, 0, 2].into());
    let (status, text) = raw_from(
        other,
        addr,
        "POST",
        path,
        &json,
        &enroll_body(&multi, &fresh_key(), 1),
    )
    .await;
    assert_eq!(status, 200, "another address enrolls: {text}");
    ts.finish().await;
}

/// The real agent waits out the enrollment limit instead of failing: after an address has used
/// up its refusals, `rigfleet-agent enroll` from it gets `429` and retries with backoff until
/// the server lets it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_waits_out_the_enrollment_limit() {
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let addr = ts.addr();
    let path = rigfleet_proto::enroll::ENROLL_PATH;
    let json = [("Content-Type", JSON)];
    let mut limited = false;
    for _ in 0..40 {
        let (status, _) = raw(addr, "POST", path, &json, "{garbage").await;
        if status == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "the address is limited");
    let token = ts.enroll_token(r#"{"max_uses": 1}"#).await;
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().join("agent").to_str().unwrap().to_string();
    let url = ts.server.url.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        rigfleet_tests::agent_proc::run_agent(&[
            "enroll",
            "--server",
            &url,
            "--token",
            &token,
            "--state-dir",
            &state_arg,
        ])
    })
    .await
    .unwrap();
    assert!(ok, "enroll failed:\n{out}");
    assert!(out.contains("waiting"), "it was limited first:\n{out}");
    assert_eq!(ts.server.hub.live.with_all(|r| r.len()), 1);
    ts.finish().await;
}
