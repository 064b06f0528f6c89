//! PostgreSQL goes away under a running server: the server stays up, says so on /readyz,
//! acknowledges no telemetry it could not commit, and once the database is back the real
//! agent's samples of the outage arrive, each exactly once. The server reaches PostgreSQL
//! through a TCP relay the test can cut, so the shared database server itself is never touched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rigfleet_server::db::test_db::test_backends;
use rigfleet_tests::agent_proc::{run_agent, AgentProc};
use rigfleet_tests::server::{test_config, try_http, TestServer};
use rigfleet_tests::wait_until;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A TCP relay to `upstream` that can drop every connection and refuse new ones.
struct Relay {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (d, l) = (down.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                l.lock().unwrap().push(task.abort_handle());
            }
        })
        .abort_handle();
        Relay {
            addr,
            down,
            links,
            accept,
        }
    }

    /// The database "disappears": open connections are cut, new ones closed at once.
    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// `postgres://user@HOST:PORT/db?…` → (`HOST:PORT`, the URL with `relay` in its place).
fn through(url: &str, relay: SocketAddr) -> (String, String) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let start = url[start..].find('@').map_or(start, |i| start + i + 1);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let host = url[start..end].to_string();
    let host = if host.contains(':') {
        host
    } else {
        format!("{host}:5432")
    };
    (host, format!("{}{relay}{}", &url[..start], &url[end..]))
}

async fn status(addr: SocketAddr, path: &str) -> Option<u16> {
    try_http(addr, "GET", path, None, None)
        .await
        .ok()
        .map(|(s, _)| s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_database_loses_no_sample() {
    let mut backends = test_backends().await;
    let pg = match backends.pop() {
        Some(db) if db.url.starts_with("postgres") => db,
        other => {
            if let Some(db) = other {
                db.cleanup().await;
            }
            eprintln!("PostgreSQL is not reachable: the database-outage test did not run");
            return;
        }
    };
    for db in backends {
        db.cleanup().await;
    }
    let (upstream, _) = through(&pg.url, "127.0.0.1:1".parse().unwrap());
    let relay = Relay::start(upstream).await;
    let (_, relayed_url) = through(&pg.url, relay.addr);
    let data_dir = tempfile::tempdir().unwrap();
    let server = rigfleet_server::start(test_config(data_dir.path(), relayed_url))
        .await
        .unwrap();
    let admin = server
        .create_api_token("tests", rigfleet_server::db::Scope::Admin)
        .await
        .unwrap();
    let ts = TestServer {
        server,
        admin,
        data_dir,
        db: pg,
    };
    let addr = ts.addr();
    // What the test reads, it reads past the relay.
    let store = ts.db.store.clone();

    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().join("agent").to_str().unwrap().to_string();
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
    let mut agent = AgentProc::spawn(
        &["run", "--state-dir", &state_arg, "--api-listen", "off"],
        &state.path().join("agent.log"),
    );
    let (_, list) = ts.get("/api/v1/rigs").await;
    let rig = list["items"][0]["id"].as_str().unwrap().to_string();
    let rig_id = store.rig_by_uid(&rig).await.unwrap().unwrap().id;
    wait_until("telemetry stored", Duration::from_secs(60), async || {
        let (count, _, _) = store.raw_seq_stats(rig_id).await.ok()?;
        (count >= 3).then_some(())
    })
    .await;
    assert_eq!(status(addr, "/readyz").await, Some(200));

    relay.cut();
    let (_, _, max_before) = store.raw_seq_stats(rig_id).await.unwrap();
    wait_until(
        "/readyz reports the database",
        Duration::from_secs(30),
        async || (status(addr, "/readyz").await == Some(503)).then_some(()),
    )
    .await;
    // 20 s without a database, telemetry every second: the server stays up and stores nothing.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        status(addr, "/healthz").await,
        Some(200),
        "the server is up"
    );
    let (_, _, max_during) = store.raw_seq_stats(rig_id).await.unwrap();
    assert!(
        max_during <= max_before.map(|m| m + 2),
        "nothing is committed without the database ({max_before:?} → {max_during:?})"
    );

    relay.restore();
    let restored = std::time::Instant::now();
    let outage_end = max_before.unwrap_or(0) + 20;
    wait_until(
        "the outage's samples stored after the database returns",
        Duration::from_secs(120),
        async || {
            let (_, _, max) = store.raw_seq_stats(rig_id).await.ok()?;
            (max? > outage_end).then_some(())
        },
    )
    .await;
    assert_eq!(status(addr, "/readyz").await, Some(200));
    let (count, min, max) = store.raw_seq_stats(rig_id).await.unwrap();
    println!(
        "stored up to seq {max_before:?} before the cut, {max_during:?} during it; {count} samples (up to {max:?}) {:?} after the database returned",
        restored.elapsed()
    );
    let (min, max) = (min.unwrap(), max.unwrap());
    assert_eq!(min, 1, "from the first sample");
    assert_eq!(
        count as u64,
        max - min + 1,
        "every sample once, no gap and no duplicate (seq {min}..={max}, {count} rows)"
    );
    let log = agent.output();
    assert!(agent.stop(), "the agent stops cleanly:\n{log}");
    ts.finish().await;
    drop(relay);
}
