//! Operators' accounts over raw HTTP (issue 11, items 13, 14, 15 and 20): the second factor's
//! failures survive a correct password and are shared by replicas, a TOTP code is good once,
//! one's own password or second-factor change ends one's other sessions, failed logins slow
//! only the address they came from, and secrets are sealed at rest.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use rigfleet_server::db::test_db::{test_backends, TestDb};
use rigfleet_server::db::Role;
use rigfleet_tests::browser::{enc, Answer};
use rigfleet_tests::server::{start_on, test_config, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FORM: &str = "application/x-www-form-urlencoded";

/// One HTTP/1.1 request from `src` (a loopback address other than 127.0.0.1 stands for another
/// client), with the server's own Origin on every POST.
async fn http_from(
    src: IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: &str,
) -> Answer {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(src, 0)).expect("bind source");
    let mut s = socket.connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    if method != "GET" {
        req.push_str(&format!(
            "Origin: http://{addr}\r\nContent-Type: {FORM}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut buf))
        .await
        .expect("answer within 60 s")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn local() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

fn cookie_named(a: &Answer, name: &str) -> Option<String> {
    a.cookies()
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")) && c.len() > name.len() + 1)
}

/// The password step of a login from `src`.
async fn password_step(src: IpAddr, addr: SocketAddr, user: &str, pw: &str) -> Answer {
    let page = http_from(src, addr, "GET", "/login", None, "").await;
    let pre = cookie_named(&page, "rf_login_csrf").expect("login csrf cookie");
    let csrf = page.csrf().expect("login csrf");
    http_from(
        src,
        addr,
        "POST",
        "/login",
        Some(&pre),
        &format!(
            "csrf={}&username={}&password={}",
            enc(&csrf),
            enc(user),
            enc(pw)
        ),
    )
    .await
}

/// The second-factor step of a login waiting with cookie `mfa`.
async fn code_step(src: IpAddr, addr: SocketAddr, mfa: &str, code: &str) -> Answer {
    let page = http_from(src, addr, "GET", "/login/totp", Some(mfa), "").await;
    assert_eq!(page.status, 200, "the code form: {}", page.head);
    let pre = cookie_named(&page, "rf_login_csrf").expect("csrf cookie");
    let csrf = page.csrf().expect("csrf");
    http_from(
        src,
        addr,
        "POST",
        "/login/totp",
        Some(&format!("{mfa}; {pre}")),
        &format!("csrf={}&code={}", enc(&csrf), enc(code)),
    )
    .await
}

/// A logged-in session: its cookie and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

async fn session_of(addr: SocketAddr, answer: &Answer) -> Option<Session> {
    let cookie = cookie_named(answer, "rf_session")?;
    let page = http_from(local(), addr, "GET", "/account", Some(&cookie), "").await;
    Some(Session {
        csrf: page.csrf()?,
        cookie,
    })
}

/// Logs in without a second factor.
async fn login(addr: SocketAddr, user: &str, pw: &str) -> Option<Session> {
    let a = password_step(local(), addr, user, pw).await;
    session_of(addr, &a).await
}

/// Logs in with password and TOTP code.
async fn login_totp(addr: SocketAddr, user: &str, pw: &str, code: &str) -> Option<Session> {
    let a = password_step(local(), addr, user, pw).await;
    let mfa = cookie_named(&a, "rf_mfa")?;
    let a = code_step(local(), addr, &mfa, code).await;
    session_of(addr, &a).await
}

/// Whether the session still opens pages.
async fn alive(addr: SocketAddr, s: &Session) -> bool {
    let a = http_from(local(), addr, "GET", "/account", Some(&s.cookie), "").await;
    a.status == 200
}

async fn post(addr: SocketAddr, s: &Session, path: &str, form: &str) -> Answer {
    let body = if form.is_empty() {
        format!("csrf={}", enc(&s.csrf))
    } else {
        format!("csrf={}&{form}", enc(&s.csrf))
    };
    http_from(local(), addr, "POST", path, Some(&s.cookie), &body).await
}

fn step_now() -> u64 {
    (rigfleet_server::now_ms() / 1000) as u64 / 30
}

fn code_at(secret: &str, step: u64) -> String {
    let key = rigfleet_server::web::totp::base32_decode(secret).unwrap();
    format!(
        "{:06}",
        rigfleet_server::web::totp::hotp(&key, step, 6).unwrap()
    )
}

/// A code that is none of the ones accepted now (steps now-1 ..= now+2).
fn wrong_code(secret: &str) -> String {
    let s = step_now();
    let good: Vec<String> = (s.saturating_sub(1)..=s + 2)
        .map(|t| code_at(secret, t))
        .collect();
    (0..10)
        .map(|i| format!("{:06}", i * 111_111))
        .find(|c| !good.contains(c))
        .unwrap()
}

/// Turns the second factor on from `s`; returns the secret. The confirming code uses the
/// current step, so later logins use the next one.
async fn enable_totp(addr: SocketAddr, s: &Session) -> String {
    enable_totp_with_code(addr, s).await.0
}

/// As [`enable_totp`], also returning the code that confirmed it.
async fn enable_totp_with_code(addr: SocketAddr, s: &Session) -> (String, String) {
    let a = post(addr, s, "/account/totp/start", "").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let secret = a
        .body
        .split("id=\"totp-secret\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap()
        .to_string();
    let code = code_at(&secret, step_now());
    let a = post(addr, s, "/account/totp/confirm", &format!("code={code}")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("recovery-codes"), "{}", a.body);
    (secret, code)
}

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

/// Item 13: wrong second-factor codes count per user in the database. A correct password
/// (which opens a fresh pending login) does not reset the count; after five wrong codes in a
/// row, spread over logins and over two replicas on one database, even the right code is
/// refused. A TOTP code is accepted once: the same code again is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_failures_survive_passwords_and_replicas_and_codes_work_once() {
    for db in test_backends().await {
        let url = db.url.clone();
        let a = start_on(db).await;
        // A second replica on the same database, with the first one's keys.
        let b_dir = tempfile::tempdir().unwrap();
        for f in ["secrets.key", "server.key"] {
            let from = a.data_dir.path().join(f);
            if from.exists() {
                std::fs::copy(&from, b_dir.path().join(f)).unwrap();
            }
        }
        let b = rigfleet_server::start(test_config(b_dir.path(), url))
            .await
            .unwrap();
        let (addr_a, addr_b) = (a.addr(), b.addr);

        let pw = add_user(&a, "tess", Role::Operator).await;
        let s = login(addr_a, "tess", &pw).await.expect("tess logs in");
        let secret = enable_totp(addr_a, &s).await;

        // Five wrong codes in three logins, each opened by the right password, on both
        // replicas.
        for (addr, wrong) in [(addr_a, 2), (addr_b, 2), (addr_a, 1)] {
            let p = password_step(local(), addr, "tess", &pw).await;
            assert_eq!(p.header("location").as_deref(), Some("/login/totp"));
            let mfa = cookie_named(&p, "rf_mfa").unwrap();
            for _ in 0..wrong {
                let c = code_step(local(), addr, &mfa, &wrong_code(&secret)).await;
                assert_eq!(c.status, 401, "{}", c.body);
            }
        }
        // The right password still gets to the code form, but the right code is refused on
        // either replica: the second factor is locked.
        for addr in [addr_a, addr_b] {
            let p = password_step(local(), addr, "tess", &pw).await;
            let mfa = cookie_named(&p, "rf_mfa").expect("password accepted");
            let c = code_step(local(), addr, &mfa, &code_at(&secret, step_now() + 1)).await;
            assert!(
                cookie_named(&c, "rf_session").is_none(),
                "locked: {} {}",
                c.status,
                c.body
            );
            assert_eq!(c.status, 429, "{}", c.body);
            assert!(c.body.contains("locked"), "{}", c.body);
        }

        // A code is good once, on either replica.
        let pw = add_user(&a, "rita", Role::Viewer).await;
        let s = login(addr_a, "rita", &pw).await.expect("rita logs in");
        let (secret, confirmed) = enable_totp_with_code(addr_a, &s).await;
        // The code that turned the second factor on does not log in again (refused as used,
        // or as too old should its step have passed meanwhile).
        let p = password_step(local(), addr_a, "rita", &pw).await;
        let mfa = cookie_named(&p, "rf_mfa").unwrap();
        let c = code_step(local(), addr_a, &mfa, &confirmed).await;
        assert!(cookie_named(&c, "rf_session").is_none(), "{}", c.body);
        let code = code_at(&secret, step_now() + 1);
        assert!(login_totp(addr_a, "rita", &pw, &code).await.is_some());
        let p = password_step(local(), addr_b, "rita", &pw).await;
        let mfa = cookie_named(&p, "rf_mfa").unwrap();
        let c = code_step(local(), addr_b, &mfa, &code).await;
        assert!(
            cookie_named(&c, "rf_session").is_none(),
            "replayed code refused: {} {}",
            c.status,
            c.body
        );
        assert!(c.body.contains("used already"), "{}", c.body);

        b.stop().await;
        a.finish().await;
    }
}

/// Item 14: changing one's own password, and turning the second factor on or off, ends one's
/// other sessions; the session that did it stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_password_and_second_factor_changes_end_other_sessions() {
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let addr = ts.addr();
    let pw = add_user(&ts, "olaf", Role::Operator).await;
    let me = login(addr, "olaf", &pw).await.unwrap();
    let other = login(addr, "olaf", &pw).await.unwrap();
    assert!(alive(addr, &other).await);

    let new_pw = "olaf-new-password-456";
    let a = post(
        addr,
        &me,
        "/account/password",
        &format!(
            "current_password={}&new_password={}&confirm_password={}",
            enc(&pw),
            enc(new_pw),
            enc(new_pw)
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        !alive(addr, &other).await,
        "password change ends the others"
    );
    assert!(alive(addr, &me).await, "and keeps this one");

    let other = login(addr, "olaf", new_pw).await.unwrap();
    let secret = enable_totp(addr, &me).await;
    assert!(!alive(addr, &other).await, "TOTP on ends the others");
    assert!(alive(addr, &me).await);

    let other = login_totp(addr, "olaf", new_pw, &code_at(&secret, step_now() + 1))
        .await
        .expect("login with the second factor");
    let a = post(
        addr,
        &me,
        "/account/totp/disable",
        &format!("password={}", enc(new_pw)),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(!alive(addr, &other).await, "TOTP off ends the others");
    assert!(alive(addr, &me).await);
    ts.finish().await;
}

/// Items 14 and 15: a session (a stolen cookie) guessing its user's password on the account
/// page, where a password change or turning the second factor off asks for it, is slowed
/// after a few wrong ones; the user's own logins are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cannot_guess_its_password_at_speed() {
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let addr = ts.addr();
    let pw = add_user(&ts, "vic", Role::Operator).await;
    let thief = login(addr, "vic", &pw).await.unwrap();
    let change = |current: &str| {
        format!(
            "current_password={}&new_password=thief-password-1&confirm_password=thief-password-1",
            enc(current)
        )
    };
    for i in 0..5 {
        let a = post(
            addr,
            &thief,
            "/account/password",
            &change(&format!("guess-{i}")),
        )
        .await;
        assert_eq!(a.status, 400, "{}", a.body);
    }
    let a = post(addr, &thief, "/account/password", &change(&pw)).await;
    assert_eq!(a.status, 429, "even the right one waits now: {}", a.body);
    let a = post(
        addr,
        &thief,
        "/account/totp/disable",
        &format!("password={}", enc(&pw)),
    )
    .await;
    assert_eq!(a.status, 429, "{}", a.body);
    // Nothing changed, and the user logs in as before.
    assert!(login(addr, "vic", &pw).await.is_some());
    ts.finish().await;
}

/// Item 15: failed logins slow the (name, address) they came from, not the name: the user logs
/// in from another address while the guessing address waits. Unknown names are answered as
/// known ones are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_slow_only_the_address_they_came_from() {
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let addr = ts.addr();
    let pw = add_user(&ts, "carl", Role::Admin).await;
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    for _ in 0..5 {
        let a = password_step(attacker, addr, "carl", "guess-guess").await;
        assert_eq!(a.status, 401, "{}", a.body);
        let u = password_step(attacker, addr, "nobody-here", "guess-guess").await;
        assert_eq!(u.status, 401, "{}", u.body);
        assert!(u.body.contains("Wrong user name or password."));
    }
    let a = password_step(attacker, addr, "carl", &pw).await;
    assert_eq!(a.status, 429, "the guessing address waits: {}", a.body);
    assert!(
        a.body.contains("Too many failed logins. Wait"),
        "{}",
        a.body
    );
    // The same name from elsewhere is not slowed: nobody can lock the admin out.
    let a = password_step(local(), addr, "carl", &pw).await;
    assert_eq!(a.status, 303, "{}", a.body);
    assert!(cookie_named(&a, "rf_session").is_some());
    ts.finish().await;
}

/// Item 20: the secrets key and the SQLite files are private (0600), and neither a TOTP secret
/// nor a pool password appears in the database files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_and_files_are_private() {
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let addr = ts.addr();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ts.data_dir.path().join("secrets.key")), 0o600);
    let pw = add_user(&ts, "sara", Role::Admin).await;
    let s = login(addr, "sara", &pw).await.unwrap();
    let secret = enable_totp(addr, &s).await;
    let (status, body) = ts
        .send(
            "PUT",
            "/api/v1/profiles/sealed",
            r#"{"config":{"algorithm":"sha256d","pools":[{"url":"stratum+tcp://127.0.0.1:3333","user":"wallet.sealed","password":"pool-pw-Zq81x"}],"devices":[]},"is_default":false}"#,
        )
        .await;
    assert!(status < 300, "{status} {body}");
    let db = ts.db.sqlite_path().expect("sqlite");
    let mut bytes = Vec::new();
    for suffix in ["", "-wal"] {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        let p = std::path::PathBuf::from(p);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            bytes.extend(std::fs::read(&p).unwrap());
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("wallet.sealed"), "the profile was stored");
    assert!(!text.contains("pool-pw-Zq81x"), "pool password sealed");
    assert!(!text.contains(&secret), "TOTP secret sealed");
    // The profile still reads back with its password for those allowed to see it.
    let profile = ts
        .server
        .hub
        .store
        .profile_by_name("sealed")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(profile.config.pools[0].password, "pool-pw-Zq81x");
    ts.finish().await;
}
