use std::time::Duration;

use fantoccini::Locator;
use rigfleet_server::db::test_db::TestDb;
use rigfleet_server::db::Scope;
use rigfleet_tests::browser::*;
use rigfleet_tests::server::{test_config, TestServer};

pub async fn browser_login(b: &Browser, base: &str, user: &str, password: &str) {
    b.client.goto(&format!("{base}/login")).await.unwrap();
    b.client
        .find(Locator::Id("username"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    b.client
        .find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    b.client
        .find(Locator::Id("login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn count(b: &Browser, css: &str) -> usize {
    b.client.find_all(Locator::Css(css)).await.unwrap().len()
}

/// The element's text, waiting up to 10 s for it: a click that submits a form may return
/// before the answer (argon2 in a debug build, a token being made) is loaded.
async fn text(b: &Browser, css: &str) -> String {
    b.client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .unwrap()
}

fn fleet() -> (Vec<(String, String)>, Vec<RigFigures>) {
    let rigs = [
        ("alpha-01", "RTX 3080", 1.9e9, 62.0, "sha256d"),
        ("alpha-02", "RTX 3070", 1.4e9, 58.0, "sha256d"),
        ("alpha-03", "RTX 3060", 1.1e9, 64.0, "sha256d"),
        ("beta-01", "Antminer S19", 95e12, 71.0, "sha256d"),
        ("beta-02", "Antminer S19j", 104e12, 74.0, "sha256d"),
        ("gamma-01", "RX 6800", 1.2e9, 91.0, "sha256d"),
        ("gamma-02", "RX 6700", 0.9e9, 60.0, "sha256d"),
        ("ltc-01", "L7", 9.1e9, 66.0, "scrypt"),
    ];
    let names = rigs
        .iter()
        .map(|r| (r.0.to_string(), r.1.to_string()))
        .collect();
    let figures = rigs
        .iter()
        .map(|r| RigFigures {
            hashrate_hps: r.2,
            temperature: r.3,
            algorithm: r.4.into(),
            // gamma-02 sends its history, then nothing: offline from the start.
            reporting: r.0 != "gamma-02",
            ..Default::default()
        })
        .collect();
    (names, figures)
}

async fn start_with_interval(secs: u32) -> TestServer {
    let db = TestDb::sqlite().await.unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = test_config(data_dir.path(), db.url.clone());
    config.telemetry_interval_secs = secs;
    let server = rigfleet_server::start(config).await.unwrap();
    let admin = server
        .create_api_token("tests", Scope::Admin)
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
async fn operator_flow_in_a_browser() {
    if !browser_present() {
        return;
    }
    // Telemetry every 2 s (offline after 6 s): a debug-build server beside a browser on two
    // cores keeps up with that.
    let ts = start_with_interval(2).await;
    let addr = ts.addr();
    let base = format!("http://{addr}");
    let (admin, password) = ts.server.first_admin.clone().unwrap();
    let token = ts.enroll_token(r#"{"max_uses": 20}"#).await;
    let (names, figures) = fleet();
    let agent = enroll_named(addr, &token, &names).await;
    let live = LiveAgent::start(addr, agent, 50, Duration::from_secs(2), figures).await;
    let beta = live.rig_ids[3].clone();
    let (status, _) = ts
        .send(
            "PATCH",
            &format!("/api/v1/rigs/{beta}"),
            r#"{"group": "hall-b", "tags": ["s19", "row-3"]}"#,
        )
        .await;
    assert_eq!(status, 200);

    let b = Browser::start(1366, 900).await;

    // A wrong password is refused with a message; the right one opens the fleet.
    browser_login(&b, &base, &admin, "not-the-password").await;
    assert!(text(&b, "#login-error")
        .await
        .contains("Wrong user name or password"));
    browser_login(&b, &base, &admin, &password).await;
    assert!(
        b.wait_js(
            "document.querySelectorAll('tr.rig').length === 8",
            Duration::from_secs(10)
        )
        .await,
        "the overview lists the 8 rigs"
    );
    assert_eq!(b.client.current_url().await.unwrap().path(), "/");
    assert!(text(&b, "#totals").await.contains("scrypt"));
    // The monitored cards that mine nothing make no algorithm card of their own.
    assert_eq!(count(&b, ".total.algo").await, 2);
    // The live feed confirms statuses: the silent rig turns red, the hot one is yellow, and
    // the fleet counts follow.
    assert!(
        b.wait_js(
            "document.querySelectorAll('tr.rig.st-offline').length === 1 && \
             document.querySelectorAll('tr.rig.st-warning').length === 1 && \
             document.getElementById('fleet-offline').textContent === '1'",
            Duration::from_secs(12)
        )
        .await
    );
    b.screenshot("overview-desktop").await;

    // Filter by text, then by status.
    b.client
        .find(Locator::Id("filter-q"))
        .await
        .unwrap()
        .send_keys("beta")
        .await
        .unwrap();
    b.client
        .find(Locator::Id("filter-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        b.wait_js(
            "document.querySelectorAll('tr.rig').length === 2",
            Duration::from_secs(5)
        )
        .await
    );
    assert!(text(&b, "#rig-table").await.contains("hall-b"));
    b.client
        .goto(&format!("{base}/?status=offline"))
        .await
        .unwrap();
    assert_eq!(count(&b, "tr.rig").await, 1);
    assert!(text(&b, "#rig-table").await.contains("gamma-02"));
    // Sorting by hash rate, descending: the S19j first.
    b.client
        .goto(&format!("{base}/?sort=hashrate&dir=desc"))
        .await
        .unwrap();
    assert!(text(&b, "tr.rig .rig-link").await.contains("beta-02"));

    // Open a rig: its charts have points.
    b.client.goto(&format!("{base}/?q=beta-01")).await.unwrap();
    b.client
        .find(Locator::Css("a.rig-link"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        b.wait_js(
            "document.getElementById('rig-name')",
            Duration::from_secs(5)
        )
        .await
    );
    assert_eq!(text(&b, "#rig-name").await, "beta-01");
    assert_eq!(count(&b, "svg.chart").await, 5);
    let points = b
        .js("return Number(document.querySelector('svg.chart').dataset.points);")
        .await;
    assert!(points.as_f64().unwrap_or(0.0) >= 40.0, "points: {points}");
    assert!(count(&b, "svg.chart polyline").await >= 5);
    assert!(text(&b, "#charts").await.contains("TH/s"));

    // A command and its result.
    let shot = b.client.find(Locator::Id("cmd-identify")).await;
    assert!(shot.is_ok(), "command buttons for an admin");
    b.client
        .find(Locator::Id("cmd-identify"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The page waits a few seconds for the answer; a slow one shows after a reload.
    let rig_url = b.client.current_url().await.unwrap();
    let mut shown = false;
    for _ in 0..20 {
        shown = b
            .wait_js(
                "document.querySelector('#command-list tr.cmd-ok .output') && \
                 document.querySelector('#command-list tr.cmd-ok .output').textContent === 'done: identify'",
                Duration::from_secs(1),
            )
            .await;
        if shown {
            break;
        }
        b.client.goto(rig_url.as_str()).await.unwrap();
    }
    assert!(shown, "the identify command's result shows");

    // A live value change, without reload.
    b.js("window.__same_page = 1; return 1;").await;
    live.set(3, |f| f.hashrate_hps = 7.5e12);
    assert!(
        b.wait_js(
            "document.getElementById('rig-hashrate').textContent === '7.50 TH/s' && window.__same_page === 1",
            Duration::from_secs(8)
        )
        .await,
        "the hash rate updates live: {} / {}",
        text(&b, "#rig-hashrate").await,
        text(&b, "#live-state").await
    );
    b.js("window.scrollTo(0, 0); return 1;").await;
    b.screenshot("rig-desktop").await;

    // The rig falls silent: red within the offline threshold (3 × 2 s) plus a feed tick.
    live.set(3, |f| f.reporting = false);
    let silent = std::time::Instant::now();
    assert!(
        b.wait_js(
            "document.getElementById('rig-head').classList.contains('st-offline')",
            Duration::from_secs(12)
        )
        .await,
        "the rig turns offline"
    );
    println!("offline shown {:?} after the last sample", silent.elapsed());
    live.set(3, |f| f.reporting = true);

    // Point the rig at another pool from its page: the form asks for the password again.
    b.client.goto(rig_url.as_str()).await.unwrap();
    b.js("document.getElementById('config-editor').open = true; return 1;")
        .await;
    let fill = |css: &'static str, value: String| {
        let client = b.client.clone();
        async move {
            let field = client.find(Locator::Css(css)).await.unwrap();
            field.clear().await.unwrap();
            field.send_keys(&value).await.unwrap();
        }
    };
    fill("#config-algorithm", "sha256d".into()).await;
    fill(".pool-url", "stratum+tcp://pool.example.com:3333".into()).await;
    fill(".pool-user", "bc1qflow.beta01".into()).await;
    fill("#config-confirm", password.clone()).await;
    b.client
        .find(Locator::Id("config-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        b.wait_js(
            "document.getElementById('rig-name') && \
             document.querySelector('#config-editor') && \
             [...document.querySelectorAll('pre')].some(p => p.textContent.includes('bc1qflow.beta01'))",
            Duration::from_secs(10)
        )
        .await,
        "the new pool is the rig's desired config"
    );

    // Add rigs: a token, the command and the fingerprint.
    b.client.goto(&format!("{base}/add-rigs")).await.unwrap();
    b.client
        .find(Locator::Id("create-token"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let cmd = text(&b, "#enroll-command").await;
    assert!(
        cmd.starts_with(&format!(
            "rigfleet-agent enroll --server {base} --token rf1."
        )),
        "{cmd}"
    );
    assert!(text(&b, "#server-fingerprint").await.starts_with("sha256:"));
    b.screenshot("add-rigs-desktop").await;

    // Theme switch.
    b.client
        .find(Locator::Id("theme-toggle"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        b.js("return document.documentElement.dataset.theme;").await,
        "light"
    );
    b.client.goto(&format!("{base}/add-rigs")).await.unwrap();
    b.screenshot("add-rigs-desktop-light").await;
    b.client
        .find(Locator::Id("theme-toggle"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Phone width: nothing wider than the screen except inside scrolling tables.
    b.client.set_window_size(360, 780).await.unwrap();
    let rig_path = format!("/rigs/{beta}");
    for (path, name) in [
        ("/", "overview-phone"),
        (rig_path.as_str(), "rig-phone"),
        ("/add-rigs", "add-rigs-phone"),
        ("/coins", "coins-phone"),
    ] {
        b.client.goto(&format!("{base}{path}")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let width = b
            .js("return [document.documentElement.scrollWidth, window.innerWidth];")
            .await;
        let (scroll, inner) = (width[0].as_f64().unwrap(), width[1].as_f64().unwrap());
        assert!(
            scroll <= inner + 1.0,
            "{path} overflows at phone width: {width}"
        );
        b.screenshot(name).await;
    }
    b.client.set_window_size(1366, 900).await.unwrap();

    // Coin data: a refused value is explained and kept in the form; a good one shows an
    // estimated revenue per day on the coins page and on the overview.
    b.client.goto(&format!("{base}/coins")).await.unwrap();
    assert!(text(&b, "#coins-missing").await.contains("scrypt"));
    for (id, value) in [
        ("coin-algorithm", "scrypt"),
        ("coin-coin", "ltc"),
        ("coin-difficulty", "lots"),
        ("coin-reward", "6.25"),
        ("coin-price", "80"),
        ("coin-currency", "usd"),
        ("coin-fee", "1"),
    ] {
        b.client
            .find(Locator::Id(id))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    b.client
        .find(Locator::Id("coin-save"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(text(&b, "#coin-error")
        .await
        .contains("network difficulty must be a number"));
    let difficulty = b.client.find(Locator::Id("coin-difficulty")).await.unwrap();
    difficulty.clear().await.unwrap();
    difficulty.send_keys("40000000").await.unwrap();
    b.client
        .find(Locator::Id("coin-save"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        b.wait_js(
            "document.querySelector('#coins-table tr[data-algorithm=scrypt] .revenue') !== null",
            Duration::from_secs(5)
        )
        .await,
        "the saved row"
    );
    b.screenshot("coins-desktop").await;
    // The change is in the audit log, with who made it.
    b.client.goto(&format!("{base}/audit")).await.unwrap();
    let first = text(&b, "#audit-table tr.audit-row").await;
    assert!(
        first.contains("coin.put") && first.contains("scrypt") && first.contains(&admin),
        "{first}"
    );
    b.client.goto(&format!("{base}/")).await.unwrap();
    let shown = text(&b, ".revenue[data-algorithm=scrypt]").await;
    // ltc-01 mines 9.1 GH/s: 9.1e9 × 86400 / (4e7 × 2^32) blocks × 6.25 LTC × 0.99 × 80 USD.
    let expected = 9.1e9 * 86_400.0 / (4.0e7 * 4_294_967_296.0) * 6.25 * 0.99 * 80.0;
    let money: f64 = shown
        .trim_start_matches('≈')
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no amount in {shown:?}"));
    assert!(
        (money - expected).abs() <= expected * 0.1
            && shown.contains("USD/day")
            && shown.contains("LTC"),
        "overview shows {shown:?}, expected about {expected:.2} USD/day"
    );

    // Bulk: every rig matching a filter (all pages), in one action.
    b.client
        .goto(&format!("{base}/?q=alpha&per=1"))
        .await
        .unwrap();
    assert_eq!(count(&b, "tr.rig").await, 1);
    b.client
        .find(Locator::Id("select-all-matching"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.client
        .find(Locator::Id("bulk-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        b.wait_js(
            "document.getElementById('bulk-result') && \
             document.getElementById('bulk-result').textContent.includes('sent to 3 rigs')",
            Duration::from_secs(10)
        )
        .await,
        "the bulk action reaches the 3 alpha rigs"
    );

    // Log out: the session is gone.
    b.client.goto(&format!("{base}/")).await.unwrap();
    b.client
        .find(Locator::Id("logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        b.wait_js("location.pathname === '/login'", Duration::from_secs(5))
            .await
    );
    b.client.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(b.client.current_url().await.unwrap().path(), "/login");

    b.stop().await;
    live.stop();
    ts.finish().await;
}
