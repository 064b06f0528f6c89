//! `rigfleet-server demo` run as a newcomer runs it, from a clean folder: within about a minute
//! three rigs are online with accepted shares (read through the REST API with the login the
//! demo prints), /metrics shows their hash rates, and SIGTERM stops every process it started.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rigfleet_tests::agent_proc::workspace_binary;
use rigfleet_tests::browser::{login, request};

/// What the demo prints once its fleet is started.
struct Banner {
    addr: SocketAddr,
    password: String,
}

fn parse_banner(lines: &[String]) -> Option<Banner> {
    let url = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("dashboard"))?
        .trim();
    let addr = url.strip_prefix("http://")?.parse().ok()?;
    let password = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("login"))?
        .trim()
        .strip_prefix("admin / ")?
        .to_string();
    Some(Banner { addr, password })
}

/// Pids of the live processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, …
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && state != "Z" {
            out.push(pid);
        }
    }
    out
}

/// The per-rig sum of `rigfleet_device_hashrate_hashes_per_second` in a /metrics text.
fn hashrates_by_rig(metrics: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("rigfleet_device_hashrate_hashes_per_second{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let rig = labels
            .split(',')
            .find_map(|l| l.strip_prefix("rig=\""))
            .map(|r| r.trim_end_matches('"').to_string());
        if let (Some(rig), Ok(v)) = (rig, value.trim().parse::<f64>()) {
            *out.entry(rig).or_insert(0.0) += v;
        }
    }
    out
}

/// What the API and /metrics say about the fleet.
#[derive(Default)]
struct Fleet {
    rigs: Vec<serde_json::Value>,
    /// Rig ids that are online and connected with accepted shares and a hash rate in /metrics.
    mining: Vec<String>,
    accepted: BTreeMap<String, u64>,
    rates: BTreeMap<String, f64>,
}

async fn fleet(addr: SocketAddr, cookie: &str) -> Fleet {
    let rigs = request(addr, "GET", "/api/v1/rigs", Some(cookie), None, "", &[], "").await;
    assert_eq!(rigs.status, 200, "{}", rigs.body);
    let rigs: serde_json::Value = serde_json::from_str(&rigs.body).expect("rig list is JSON");
    let metrics = request(addr, "GET", "/metrics", None, None, "", &[], "").await;
    assert_eq!(metrics.status, 200);
    let rates = hashrates_by_rig(&metrics.body);
    let rigs = rigs["items"].as_array().cloned().unwrap_or_default();
    let mut out = Fleet {
        rates,
        ..Default::default()
    };
    for r in &rigs {
        let id = r["id"].as_str().unwrap_or_default().to_string();
        let accepted = r["accepted"].as_u64().unwrap_or(0);
        out.accepted.insert(id.clone(), accepted);
        if r["status"] != "offline"
            && r["connected"] == true
            && accepted > 0
            && out.rates.get(&id).is_some_and(|h| *h > 0.0)
        {
            out.mining.push(id);
        }
    }
    out.rigs = rigs;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_three_mining_rigs_within_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let mut child = Command::new(workspace_binary("rigfleet-server"))
        .args(["demo", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&demo_dir)
        .env_remove("RIGFLEET_DATABASE_URL")
        .env_remove("RIGFLEET_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rigfleet-server demo");
    let started = Instant::now();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let banner = loop {
        if let Some(b) = parse_banner(&printed) {
            break b;
        }
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => printed.push(line),
            Err(e) => {
                let _ = child.kill();
                panic!("the demo printed no login within 60 s ({e}):\n{printed:#?}");
            }
        }
    };
    println!("demo up after {:?}: {}", started.elapsed(), banner.addr);

    let session = login(banner.addr, "admin", &banner.password)
        .await
        .expect("the printed admin login works");
    let addr = banner.addr;
    let mut last = Fleet::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        last = fleet(addr, &session.cookie).await;
        if last.rigs.len() == 3 && last.mining.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        last.rigs.len() == 3 && last.mining.len() == 3,
        "three rigs online with accepted shares and hash rates in /metrics; last seen:\n{:#?}\n{:?}",
        last.rigs,
        last.rates
    );
    println!(
        "three rigs mining {:?} after the demo started",
        started.elapsed()
    );

    // Keep it running to about a minute: the rigs stay online and keep finding shares.
    let first = last.accepted.clone();
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(started.elapsed())).await;
    let later = fleet(addr, &session.cookie).await;
    assert_eq!(later.mining.len(), 3, "{:#?}", later.rigs);
    for (rig, before) in &first {
        let now = later.accepted.get(rig).copied().unwrap_or(0);
        assert!(
            now > *before,
            "{rig}: accepted shares {before} → {now} over the minute"
        );
    }
    println!(
        "after {:?}: accepted shares {:?}, hash rates {:?}",
        started.elapsed(),
        later.accepted,
        later.rates
    );
    let rigs = serde_json::json!({ "items": later.rigs });

    let mut algorithms: Vec<String> = rigs["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["algorithms"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    algorithms.sort();
    assert_eq!(algorithms, ["scrypt", "sha256d", "sha256d"]);

    let helpers = children_of(child.id());
    assert_eq!(helpers.len(), 5, "two pools and three agents: {helpers:?}");
    // SAFETY: kill(2) on the child this test started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let mut status = None;
    for _ in 0..200 {
        if let Ok(Some(s)) = child.try_wait() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the demo did not stop within 20 s of SIGTERM");
    };
    assert!(status.success(), "the demo exits cleanly: {status}");
    let left: Vec<u32> = helpers
        .into_iter()
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false)
        })
        .collect();
    assert!(
        left.is_empty(),
        "processes left after the demo stopped: {left:?}"
    );
}
