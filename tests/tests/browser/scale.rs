use std::time::{Duration, Instant};

use rigfleet_server::db::test_db::TestDb;
use rigfleet_tests::browser::*;
use rigfleet_tests::server::{send, start_on, telemetry};

/// 1,000 rigs: prints how long the server takes to answer an overview page (filtering,
/// sorting and rendering included) and how heavy the page is. A measurement, not a timed
/// assertion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_with_1000_rigs() {
    let ts = start_on(TestDb::sqlite().await.unwrap()).await;
    let addr = ts.addr();
    let token = ts.enroll_token(r#"{"max_uses": 1000}"#).await;
    // Ten agents of 100 rigs: the hub throttles frames per connection (one frame per rig).
    let mut links = Vec::new();
    let now = rigfleet_server::now_ms();
    for a in 0..10 {
        let rigs: Vec<(String, String)> = (0..100)
            .map(|i| (format!("rig-{:04}", a * 100 + i), "RTX 3080".to_string()))
            .collect();
        let agent = enroll_named(addr, &token, &rigs).await;
        let mut ws = agent.connect(addr).await.unwrap();
        for (i, rig) in agent.rig_ids.iter().enumerate() {
            let f = RigFigures {
                hashrate_hps: 1e9 + (a * 100 + i) as f64 * 1e6,
                temperature: 50.0 + (i % 40) as f32,
                ..Default::default()
            };
            send(&mut ws, &telemetry(rig, vec![figures_sample(1, now, &f)])).await;
        }
        links.push(ws);
    }
    let live = ts.server.hub.live.clone();
    let all_in = rigfleet_tests::wait_for(Duration::from_secs(60), || {
        let n = live.with_all(|m| m.values().filter(|r| r.sample.is_some()).count());
        (n == 1000).then_some(())
    })
    .await;
    assert!(all_in.is_some(), "telemetry of 1,000 rigs arrived");

    let (admin, password) = ts.server.first_admin.clone().unwrap();
    let s = login(addr, &admin, &password).await.unwrap();
    for (what, path) in [
        ("default page (50 rows)", "/"),
        (
            "100 rows sorted by hash rate",
            "/?per=100&sort=hashrate&dir=desc",
        ),
        ("text filter", "/?q=rig-09"),
        ("500 rows", "/?per=500"),
    ] {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let a = request(addr, "GET", path, Some(&s.cookie), None, "", &[], "").await;
            times.push(t.elapsed());
            assert_eq!(a.status, 200);
            size = a.body.len();
        }
        times.sort();
        println!(
            "overview, 1000 rigs, {what}: median {:?}, best {:?}, {} KB of HTML (+ {} KB CSS/JS)",
            times[2],
            times[0],
            size / 1024,
            (include_str!("../../../web/static/app.css").len()
                + include_str!("../../../web/static/app.js").len())
                / 1024
        );
    }
    drop(links);
    ts.finish().await;
}
