use std::time::Duration;

use fantoccini::Locator;
use rigfleet_server::db::test_db::TestDb;
use rigfleet_tests::browser::*;
use rigfleet_tests::server::start_on;

/// Each would set `window.__xss` (or navigate away) if the page ran it.
pub const PAYLOADS: [&str; 50] = [
    r#"<script>window.__xss=1</script>"#,
    r#"<img src=x onerror="window.__xss=1">"#,
    r#"<img src=x onerror=window.__xss=1>"#,
    r#"<svg onload="window.__xss=1">"#,
    r#"<svg><script>window.__xss=1</script></svg>"#,
    r#""><script>window.__xss=1</script>"#,
    r#"'><script>window.__xss=1</script>"#,
    r#"" onmouseover="window.__xss=1" x=""#,
    r#"' onfocus='window.__xss=1' autofocus '"#,
    r#"" autofocus onfocus="window.__xss=1"#,
    r#"javascript:window.__xss=1"#,
    r#"JaVaScRiPt:window.__xss=1//"#,
    r#"<a href="javascript:window.__xss=1">x</a>"#,
    r#"<iframe src="javascript:window.__xss=1"></iframe>"#,
    r#"<iframe srcdoc="<script>parent.__xss=1</script>"></iframe>"#,
    r#"<body onload="window.__xss=1">"#,
    r#"<details open ontoggle="window.__xss=1">"#,
    r#"<input autofocus onfocus="window.__xss=1">"#,
    r#"<video><source onerror="window.__xss=1"></video>"#,
    r#"<audio src=x onerror="window.__xss=1">"#,
    r#"<object data="javascript:window.__xss=1"></object>"#,
    r#"<embed src="javascript:window.__xss=1">"#,
    r#"<math><mtext><table><mglyph><style><img src=x onerror="window.__xss=1">"#,
    r#"</title><script>window.__xss=1</script>"#,
    r#"</textarea><script>window.__xss=1</script>"#,
    r#"</pre><script>window.__xss=1</script>"#,
    r#"</td></tr></table><script>window.__xss=1</script>"#,
    r#"<!--<img src=x onerror="window.__xss=1">-->"#,
    r#"<scr<script>ipt>window.__xss=1</scr</script>ipt>"#,
    r#"<SCRIPT SRC=data:text/javascript,window.__xss=1></SCRIPT>"#,
    r#"<script src="data:,window.__xss=1"></script>"#,
    r#"<img src="x" onerror="&#119;indow.__xss=1">"#,
    r#"<img src=x onerror=eval(atob('d2luZG93Ll9feHNzPTE='))>"#,
    r#"<svg><animate onbegin="window.__xss=1" attributeName=x dur=1s>"#,
    r#"<svg><a xlink:href="javascript:window.__xss=1"><text x=20 y=20>x</text></a></svg>"#,
    r#"<svg><foreignObject><img src=x onerror="window.__xss=1"></foreignObject></svg>"#,
    r#"<marquee onstart="window.__xss=1">x</marquee>"#,
    r#"<form><button formaction="javascript:window.__xss=1">x</button></form>"#,
    r#"<meta http-equiv="refresh" content="0;url=javascript:window.__xss=1">"#,
    r#"<base href="javascript:window.__xss=1//">"#,
    r#"<link rel=stylesheet href="data:text/css,*{x:expression(window.__xss=1)}">"#,
    r#"<style>@import 'javascript:window.__xss=1';</style>"#,
    r#"<div style="background:url(javascript:window.__xss=1)">x</div>"#,
    r#"{{7*7}}<img src=x onerror="window.__xss=1">"#,
    r#"${window.__xss=1}<img src=x onerror="window.__xss=1">"#,
    r#"\u003cimg src=x onerror=window.__xss=1\u003e"#,
    r#"%3Cscript%3Ewindow.__xss=1%3C/script%3E"#,
    r#"<img src=x onerror="window.__xss=1"//"#,
    r#"<x onclick="window.__xss=1" id="rig-name">click</x>"#,
    r#"<isindex type=image src=1 onerror="window.__xss=1">"#,
];

/// 50 payloads arrive as rig names, device models, pool URLs and algorithm names from a
/// simulated agent. None runs on the overview or any rig page (live feed included), the raw
/// HTML never contains them unescaped, and the names read back as the exact text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rig_sent_payloads_never_execute() {
    if !browser_present() {
        return;
    }
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let addr = ts.addr();
    let base = format!("http://{addr}");
    let (admin, password) = ts.server.first_admin.clone().unwrap();
    let token = ts.enroll_token(r#"{"max_uses": 50}"#).await;
    let n = PAYLOADS.len();
    let rigs: Vec<(String, String)> = (0..n)
        .map(|i| (PAYLOADS[i].to_string(), PAYLOADS[(i + 1) % n].to_string()))
        .collect();
    let agent = enroll_named(addr, &token, &rigs).await;
    let figures = (0..n)
        .map(|i| RigFigures {
            pool_url: PAYLOADS[(i + 2) % n].to_string(),
            algorithm: PAYLOADS[(i + 3) % n].to_string(),
            ..Default::default()
        })
        .collect();
    // 50 rigs in one link: 2.8 s keeps under the hub's 20 frames per second.
    let live = LiveAgent::start(addr, agent, 5, Duration::from_millis(2800), figures).await;

    // The raw HTML: markup-bearing payloads never appear as they were sent.
    let s = login(addr, &admin, &password).await.unwrap();
    let overview = request(addr, "GET", "/?per=100", Some(&s.cookie), None, "", &[], "").await;
    assert_eq!(overview.status, 200);
    for p in PAYLOADS
        .iter()
        .filter(|p| p.contains(['<', '>', '"', '\'']))
    {
        assert!(!overview.body.contains(p), "unescaped on the overview: {p}");
    }
    let rig0 = live.rig_ids[0].clone();
    let page = request(
        addr,
        "GET",
        &format!("/rigs/{rig0}"),
        Some(&s.cookie),
        None,
        "",
        &[],
        "",
    )
    .await;
    for p in PAYLOADS
        .iter()
        .filter(|p| p.contains(['<', '>', '"', '\'']))
    {
        assert!(!page.body.contains(p), "unescaped on a rig page: {p}");
    }

    let b = Browser::start(1366, 900).await;
    super::flow::browser_login(&b, &base, &admin, &password).await;
    b.client.goto(&format!("{base}/?per=100")).await.unwrap();
    assert!(
        b.wait_js(
            "document.querySelectorAll('tr.rig').length === 50",
            Duration::from_secs(10)
        )
        .await
    );
    // Let images fail, events fire and a few live batches arrive.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        b.js("return typeof window.__xss;").await,
        "undefined",
        "a payload ran on the overview"
    );
    let names = b
        .js("return Array.from(document.querySelectorAll('a.rig-link')).map(a => a.textContent);")
        .await;
    let mut names: Vec<String> = names
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    names.sort();
    let mut want: Vec<String> = PAYLOADS.iter().map(|p| p.to_string()).collect();
    want.sort();
    assert_eq!(names, want, "rig names render as their exact text");
    let pools = b
        .js("return Array.from(document.querySelectorAll('td.pool')).map(a => a.textContent);")
        .await;
    assert!(
        pools.to_string().contains("onerror"),
        "pool URLs shown as text"
    );

    for rig in &live.rig_ids {
        b.client.goto(&format!("{base}/rigs/{rig}")).await.unwrap();
        assert!(b.client.find(Locator::Id("rig-name")).await.is_ok());
        assert_eq!(
            b.js("return typeof window.__xss;").await,
            "undefined",
            "{rig}"
        );
        assert_eq!(
            b.client.current_url().await.unwrap().path(),
            format!("/rigs/{rig}")
        );
    }
    // The script-tag name, read back on its own page, is plain text.
    b.client.goto(&format!("{base}/rigs/{rig0}")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let shown = b
        .client
        .find(Locator::Id("rig-name"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(shown, PAYLOADS[0]);
    assert_eq!(b.js("return typeof window.__xss;").await, "undefined");
    b.stop().await;
    live.stop();
    ts.finish().await;
}
