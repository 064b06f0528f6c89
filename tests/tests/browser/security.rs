use std::time::Duration;

use fantoccini::Locator;
use rigfleet_server::db::test_db::TestDb;
use rigfleet_server::db::Role;
use rigfleet_tests::browser::*;
use rigfleet_tests::server::{start_on, FakeAgent, TestServer};

const FORM: &str = "application/x-www-form-urlencoded";
const EVIL: &str = "http://evil.example";

async fn server_with_rigs(rigs: usize) -> (TestServer, Vec<String>) {
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let token = ts.enroll_token(r#"{"max_uses": 5}"#).await;
    let agent = FakeAgent::enroll(ts.addr(), &token, rigs).await;
    let ids = agent.rig_ids.iter().map(|r| r.0.clone()).collect();
    (ts, ids)
}

async fn add_user(ts: &TestServer, name: &str, role: Role) -> (i64, String) {
    let password = format!("{name}-password-123");
    let hash = rigfleet_server::startup::hash_password(&password).unwrap();
    let id = ts
        .server
        .hub
        .store
        .create_user(name, &hash, role)
        .await
        .unwrap();
    (id, password)
}

/// Every state-changing dashboard route, from the router's own table: a request without the
/// CSRF token, with a wrong one, from a foreign Origin, or naming no origin at all is refused
/// with 403; the same request done right reaches the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_changing_route_needs_csrf_and_same_origin() {
    let (ts, rigs) = server_with_rigs(2).await;
    let addr = ts.addr();
    let origin = format!("http://{addr}");
    let (admin, password) = ts.server.first_admin.clone().unwrap();
    let s = login(addr, &admin, &password).await.expect("admin logs in");
    let (victim, _) = add_user(&ts, "victim", Role::Viewer).await;
    let coin = rigfleet_server::coins::CoinData {
        coin: "BTC".into(),
        network_difficulty: 1e14,
        block_reward: 3.2,
        price: 1.0,
        currency: "USD".into(),
        pool_fee_percent: 0.0,
    };
    rigfleet_server::coins::save(&ts.server.hub.store, "sha256d", &coin)
        .await
        .unwrap();

    let mut routes = rigfleet_server::web::state_changing_routes();
    assert!(routes.len() >= 15, "{routes:?}");
    // Removals make later requests about the same rig or user 404, and logging out ends the
    // session the other checks use: those go last, logout at the very end.
    routes.sort_by_key(|(_, p)| match *p {
        "/logout" => 2,
        p if p.ends_with("/remove") || p.ends_with("/delete") => 1,
        _ => 0,
    });
    for (method, path) in &routes {
        let method = method.as_str();
        assert_eq!(method, "POST", "{path}");
        let target = path
            .replace("{rig}", &rigs[1])
            .replace("{id}", &victim.to_string())
            .replace("{algorithm}", "sha256d");
        // The login forms have no session yet: their token rides in a cookie of their own.
        let (cookie, csrf) = if path.starts_with("/login") {
            let page = request(addr, "GET", "/login", None, None, "", &[], "").await;
            (page.cookies()[0].clone(), page.csrf().unwrap())
        } else {
            (s.cookie.clone(), s.csrf.clone())
        };
        let body = |token: &str| format!("csrf={}&x=1", enc(token));
        for (why, token, from, referer) in [
            ("no CSRF token", None, Some(origin.as_str()), None),
            (
                "a wrong CSRF token",
                Some("0123456789abcdef"),
                Some(origin.as_str()),
                None,
            ),
            ("a foreign Origin", Some(csrf.as_str()), Some(EVIL), None),
            ("no Origin or Referer", Some(csrf.as_str()), None, None),
            (
                "a foreign Referer",
                Some(csrf.as_str()),
                None,
                Some(format!("{EVIL}/page")),
            ),
        ] {
            let extra: Vec<(&str, &str)> = referer
                .as_deref()
                .map(|r| vec![("Referer", r)])
                .unwrap_or_default();
            let form = token.map(body).unwrap_or_else(|| "x=1".into());
            let a = request(
                addr,
                method,
                &target,
                Some(&cookie),
                from,
                FORM,
                &extra,
                &form,
            )
            .await;
            assert_eq!(a.status, 403, "{method} {path} with {why}: {}", a.body);
        }
        // Done right, the request gets past the guard to a handler that exists.
        let a = request(
            addr,
            method,
            &target,
            Some(&cookie),
            Some(&origin),
            FORM,
            &[],
            &body(&csrf),
        )
        .await;
        assert!(
            ![403, 404, 405].contains(&a.status),
            "{method} {path} done right: {} {}",
            a.status,
            a.body
        );
    }

    // The REST API with the session cookie: same rules; with a bearer token: neither needed.
    let s = login(addr, &admin, &password).await.unwrap();
    let api = "/api/v1/enrollment-tokens";
    let json = "application/json";
    let a = request(
        addr,
        "POST",
        api,
        Some(&s.cookie),
        Some(&origin),
        json,
        &[],
        "{}",
    )
    .await;
    assert_eq!(a.status, 403, "cookie without X-CSRF-Token");
    let hdr = [("X-CSRF-Token", s.csrf.as_str())];
    let a = request(
        addr,
        "POST",
        api,
        Some(&s.cookie),
        Some(EVIL),
        json,
        &hdr,
        "{}",
    )
    .await;
    assert_eq!(a.status, 403, "cookie from a foreign origin");
    let a = request(
        addr,
        "POST",
        api,
        Some(&s.cookie),
        Some(&origin),
        json,
        &hdr,
        "{}",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = request(
        addr,
        "GET",
        "/api/v1/rigs",
        Some(&s.cookie),
        None,
        "",
        &[],
        "",
    )
    .await;
    assert_eq!(a.status, 200);
    let bearer = format!("Bearer {}", ts.admin);
    let a = request(
        addr,
        "POST",
        api,
        None,
        None,
        json,
        &[("Authorization", &bearer)],
        "{}",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);

    // The live feed refuses foreign pages; pages carry a CSP without inline script or style.
    let a = request(
        addr,
        "GET",
        "/live",
        Some(&s.cookie),
        Some(EVIL),
        "",
        &[],
        "",
    )
    .await;
    assert_eq!(a.status, 403);
    let a = request(addr, "GET", "/", Some(&s.cookie), None, "", &[], "").await;
    let csp = a.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(a.header("x-frame-options").as_deref(), Some("DENY"));
    assert!(!a.body.contains("style=\""), "no inline styles");
    assert!(!a.body.contains("<script>"), "no inline scripts");
    // Not logged in: pages send to the login form.
    let a = request(addr, "GET", "/", None, None, "", &[], "").await;
    assert_eq!(
        (a.status, a.header("location").as_deref()),
        (303, Some("/login"))
    );
    ts.finish().await;
}

/// Wrong passwords are refused, repeated failures lock the name with a clear message, and the
/// second factor (set up through the account page) is asked for and checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refusals_rate_limit_and_totp() {
    let (ts, _) = server_with_rigs(1).await;
    let addr = ts.addr();
    let origin = format!("http://{addr}");
    let (_, carol_pw) = add_user(&ts, "carol", Role::Operator).await;
    assert!(login(addr, "carol", "wrong-password").await.is_none());
    assert!(login(addr, "nobody", "wrong-password").await.is_none());
    let page = request(addr, "GET", "/login", None, None, "", &[], "").await;
    let (pre, csrf) = (page.cookies()[0].clone(), page.csrf().unwrap());
    let post = |user: &str, pw: &str| {
        format!(
            "csrf={}&username={}&password={}",
            enc(&csrf),
            enc(user),
            enc(pw)
        )
    };
    let a = request(
        addr,
        "POST",
        "/login",
        Some(&pre),
        Some(&origin),
        FORM,
        &[],
        &post("carol", "nope"),
    )
    .await;
    assert_eq!(a.status, 401);
    assert!(a.body.contains("Wrong user name or password."));
    for _ in 0..3 {
        request(
            addr,
            "POST",
            "/login",
            Some(&pre),
            Some(&origin),
            FORM,
            &[],
            &post("carol", "nope"),
        )
        .await;
    }
    // Five failures: even the right password waits now.
    let a = request(
        addr,
        "POST",
        "/login",
        Some(&pre),
        Some(&origin),
        FORM,
        &[],
        &post("carol", &carol_pw),
    )
    .await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(
        a.body.contains("Too many failed logins. Wait"),
        "{}",
        a.body
    );

    // TOTP: set up on the account page, then asked for at login.
    let (_, tina_pw) = add_user(&ts, "tina", Role::Viewer).await;
    let s = login(addr, "tina", &tina_pw).await.unwrap();
    let form = format!("csrf={}", enc(&s.csrf));
    let a = request(
        addr,
        "POST",
        "/account/totp/start",
        Some(&s.cookie),
        Some(&origin),
        FORM,
        &[],
        &form,
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains("<svg"), "QR code drawn");
    let secret = a
        .body
        .split("id=\"totp-secret\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap()
        .to_string();
    // Logins use the code of the next step (accepted for clock drift): a step is good once,
    // and the confirmation used the current one.
    let code_at = |secret: &str, ahead: u64| {
        let key = rigfleet_server::web::totp::base32_decode(secret).unwrap();
        let step = (rigfleet_server::now_ms() / 1000) as u64 / 30 + ahead;
        format!(
            "{:06}",
            rigfleet_server::web::totp::hotp(&key, step, 6).unwrap()
        )
    };
    let a = request(
        addr,
        "POST",
        "/account/totp/confirm",
        Some(&s.cookie),
        Some(&origin),
        FORM,
        &[],
        &format!("{form}&code={}", code_at(&secret, 0)),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("recovery-codes"));
    let recovery = a
        .body
        .split("<li><code>")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap()
        .to_string();

    // The password alone no longer opens a session.
    assert!(login(addr, "tina", &tina_pw).await.is_none());
    for (attempt, good) in [
        ("000000", false),
        (code_at(&secret, 1).as_str(), true),
        (recovery.as_str(), true),
        (recovery.as_str(), false),
    ] {
        let page = request(addr, "GET", "/login", None, None, "", &[], "").await;
        let (pre, csrf) = (page.cookies()[0].clone(), page.csrf().unwrap());
        let a = request(
            addr,
            "POST",
            "/login",
            Some(&pre),
            Some(&origin),
            FORM,
            &[],
            &format!(
                "csrf={}&username=tina&password={}",
                enc(&csrf),
                enc(&tina_pw)
            ),
        )
        .await;
        assert_eq!(a.header("location").as_deref(), Some("/login/totp"));
        let mfa = a
            .cookies()
            .into_iter()
            .find(|c| c.starts_with("rf_mfa="))
            .unwrap();
        let page = request(addr, "GET", "/login/totp", Some(&mfa), None, "", &[], "").await;
        assert_eq!(page.status, 200);
        let pre = page.cookies()[0].clone();
        let csrf = page.csrf().unwrap();
        let a = request(
            addr,
            "POST",
            "/login/totp",
            Some(&format!("{mfa}; {pre}")),
            Some(&origin),
            FORM,
            &[],
            &format!("csrf={}&code={}", enc(&csrf), enc(attempt)),
        )
        .await;
        let session = a
            .cookies()
            .into_iter()
            .any(|c| c.starts_with("rf_session=") && c.len() > 12);
        assert_eq!(session, good, "code {attempt}: {} {}", a.status, a.body);
    }
    ts.finish().await;
}

/// A viewer sees the fleet but gets no command buttons, and the server refuses its commands
/// (form and API alike).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_cannot_send_commands() {
    if !browser_present() {
        return;
    }
    let (ts, rigs) = server_with_rigs(1).await;
    let addr = ts.addr();
    let base = format!("http://{addr}");
    let (_, pw) = add_user(&ts, "vic", Role::Viewer).await;
    let b = Browser::start(1280, 900).await;
    super::flow::browser_login(&b, &base, "vic", &pw).await;
    b.client
        .goto(&format!("{base}/rigs/{}", rigs[0]))
        .await
        .unwrap();
    assert!(b.client.find(Locator::Id("rig-name")).await.is_ok());
    assert!(b.client.find(Locator::Id("cmd-identify")).await.is_err());
    assert!(b.client.find(Locator::Id("edit-form")).await.is_err());
    assert!(b.client.find(Locator::Id("bulk-submit")).await.is_err());
    b.client.goto(&format!("{base}/add-rigs")).await.unwrap();
    assert!(
        b.wait_js(
            "document.getElementById('error-message')",
            Duration::from_secs(3)
        )
        .await
    );
    b.stop().await;

    let s = login(addr, "vic", &pw).await.unwrap();
    let origin = format!("http://{addr}");
    let form = format!("csrf={}&cmd=identify", enc(&s.csrf));
    let path = format!("/rigs/{}/command", rigs[0]);
    let a = request(
        addr,
        "POST",
        &path,
        Some(&s.cookie),
        Some(&origin),
        FORM,
        &[],
        &form,
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let form = format!("csrf={}&action=identify&all=1", enc(&s.csrf));
    let a = request(
        addr,
        "POST",
        "/bulk",
        Some(&s.cookie),
        Some(&origin),
        FORM,
        &[],
        &form,
    )
    .await;
    assert_eq!(a.status, 403);
    let api = format!("/api/v1/rigs/{}/commands", rigs[0]);
    let hdr = [("X-CSRF-Token", s.csrf.as_str())];
    let a = request(
        addr,
        "POST",
        &api,
        Some(&s.cookie),
        Some(&origin),
        "application/json",
        &hdr,
        r#"{"command":{"kind":"identify","seconds":5}}"#,
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let (_, list) = ts.get(&format!("/api/v1/rigs/{}/commands", rigs[0])).await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    // Nor read the audit log, which names people and what they did.
    let a = request(addr, "GET", "/audit", Some(&s.cookie), None, "", &[], "").await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = request(
        addr,
        "GET",
        "/api/v1/audit",
        Some(&s.cookie),
        None,
        "",
        &[],
        "",
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    ts.finish().await;
}

/// Pointing a rig at other pools (other wallets) from its page takes the user's password again:
/// a wrong or missing one changes nothing and slows that session's next tries; a bad pool URL is
/// refused with its reason; done right, the rig gets a signed `set_config` with the new pools
/// and the audit log names who changed which wallet, without the pool password. A viewer gets
/// no form and is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_pools_takes_the_password_again() {
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let addr = ts.addr();
    let token = ts.enroll_token(r#"{"max_uses": 1}"#).await;
    let agent = FakeAgent::enroll(addr, &token, 1).await;
    let rig = agent.rig_ids[0].0.clone();
    let mut ws = agent.connect(addr).await.expect("agent connects");
    let store = ts.server.hub.store.clone();
    let rig_row = store.rig_by_uid(&rig).await.unwrap().unwrap();
    let before = store.desired_config(rig_row.id).await.unwrap();

    let (_, pw) = add_user(&ts, "olga", Role::Operator).await;
    let s = login(addr, "olga", &pw).await.unwrap();
    let origin = format!("http://{addr}");
    let page_path = format!("/rigs/{rig}");
    let page = request(addr, "GET", &page_path, Some(&s.cookie), None, "", &[], "").await;
    assert!(
        page.body.contains(r#"id="config-form""#),
        "operator sees the form"
    );

    let path = format!("/rigs/{rig}/config");
    let post = |form: String| {
        let (cookie, origin, path) = (s.cookie.clone(), origin.clone(), path.clone());
        async move {
            request(
                addr,
                "POST",
                &path,
                Some(&cookie),
                Some(&origin),
                FORM,
                &[],
                &form,
            )
            .await
        }
    };
    let form = |url: &str, password: &str| {
        format!(
            "csrf={}&algorithm=sha256d&pool_url={}&pool_user=bc1qnewwallet.rig1&pool_password=poolsecret&pool_url=&pool_user=&pool_password=&confirm_password={}",
            enc(&s.csrf),
            enc(url),
            enc(password)
        )
    };
    let good_url = "stratum+tcp://pool.example.com:3333";
    for (why, body, status, needle) in [
        (
            "a wrong password",
            form(good_url, "not-the-password"),
            401,
            "password is wrong",
        ),
        ("no password", form(good_url, ""), 401, "password is wrong"),
        (
            "a URL without a scheme",
            form("pool.example.com:3333", &pw),
            400,
            "no scheme",
        ),
        (
            "a URL without a port",
            form("stratum+tcp://pool.example.com", &pw),
            400,
            "no port",
        ),
    ] {
        let a = post(body).await;
        assert_eq!(a.status, status, "{why}: {}", a.body);
        assert!(a.body.contains(needle), "{why}: {}", a.body);
        let now = store.desired_config(rig_row.id).await.unwrap();
        assert_eq!(
            now.map(|d| d.version),
            before.as_ref().map(|d| d.version),
            "{why} changes nothing"
        );
    }

    let a = post(form(good_url, &pw)).await;
    assert_eq!(a.status, 303, "{}", a.body);
    let d = store
        .desired_config(rig_row.id)
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(d.config.pools.len(), 1);
    assert_eq!(d.config.pools[0].url, good_url);
    assert_eq!(d.config.pools[0].user, "bc1qnewwallet.rig1");
    assert_eq!(d.version, before.map_or(0, |b| b.version) + 1);
    let order = rigfleet_tests::server::recv_until(&mut ws, |m| match m {
        rigfleet_proto::ServerMessage::SetConfig(o) if o.payload.contains("bc1qnewwallet") => {
            Some(o)
        }
        _ => None,
    })
    .await
    .expect("the rig is sent the new config");
    assert!(!order.sig.is_empty());
    let audit = store.list_audit(10, None).await.unwrap();
    let entry = audit
        .iter()
        .find(|e| e.action == "rig.config")
        .expect("audited");
    assert_eq!(entry.actor, "user:olga");
    assert!(
        entry.detail.contains("bc1qnewwallet.rig1"),
        "{}",
        entry.detail
    );
    assert!(!entry.detail.contains("poolsecret"), "{}", entry.detail);

    // The REST API does not let the session cookie around the password: tokens only.
    let api_body = format!(
        r#"{{"algorithm":"sha256d","pools":[{{"url":"{good_url}","user":"thief.1","password":"x"}}],"devices":[]}}"#
    );
    let a = request(
        addr,
        "PUT",
        &format!("/api/v1/rigs/{rig}/config"),
        Some(&s.cookie),
        Some(&origin),
        "application/json",
        &[("X-CSRF-Token", s.csrf.as_str())],
        &api_body,
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("API token"), "{}", a.body);
    assert_eq!(
        store
            .desired_config(rig_row.id)
            .await
            .unwrap()
            .unwrap()
            .version,
        d.version
    );

    // Wrong passwords slow this session's next tries; the user's logins are not locked out by
    // them (a stolen cookie cannot lock its owner out).
    for _ in 0..5 {
        post(form(good_url, "guess")).await;
    }
    let a = post(form(good_url, &pw)).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(
        login(addr, "olga", &pw).await.is_some(),
        "logins are not locked by a session's wrong passwords"
    );

    let (_, vpw) = add_user(&ts, "vera", Role::Viewer).await;
    let v = login(addr, "vera", &vpw).await.unwrap();
    let page = request(addr, "GET", &page_path, Some(&v.cookie), None, "", &[], "").await;
    assert!(!page.body.contains("config-form"));
    let body = format!(
        "csrf={}&algorithm=sha256d&pool_url={}&pool_user=thief.1&pool_password=x&confirm_password={}",
        enc(&v.csrf),
        enc(good_url),
        enc(&vpw)
    );
    let a = request(
        addr,
        "POST",
        &path,
        Some(&v.cookie),
        Some(&origin),
        FORM,
        &[],
        &body,
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    drop(ws);
    ts.finish().await;
}
