//! The agent binary as a user runs it: `pool`, `mine` and `run` as separate processes on
//! 127.0.0.1, stopped with SIGTERM, and bad arguments or config files.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_rigfleet-agent");

/// A child process whose stdout lines arrive on a channel.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(AGENT)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent binary starts");
        let stdout: ChildStdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line matching `pred`, keeping every line read.
    fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Sends SIGTERM and returns whether the process exited successfully within 15 s.
    fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Keep what it printed on the way out (the reader thread ends at EOF).
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    self.seen.push(line);
                }
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A SHA-256d test pool process on a free port (jobs only on demand, stats every second) and
/// the URL it printed.
fn spawn_pool() -> (Proc, String) {
    let mut pool = Proc::spawn(&[
        "pool",
        "--listen",
        "127.0.0.1:0",
        "--algo",
        "sha256d",
        "--job-interval-secs",
        "0",
        "--stats-interval-secs",
        "1",
    ]);
    let banner = pool
        .wait_line(Duration::from_secs(30), |l| l.contains("stratum+tcp://"))
        .expect("pool prints its URL");
    let url = banner
        .split_whitespace()
        .find(|w| w.starts_with("stratum+tcp://"))
        .expect("URL in the banner")
        .to_string();
    (pool, url)
}

#[test]
fn mine_gets_shares_accepted_by_the_pool_process_and_both_stop_on_sigterm() {
    let (mut pool, url) = spawn_pool();

    let mut miner = Proc::spawn(&[
        "mine",
        "--pool",
        &url,
        "--user",
        "wallet.cli",
        "--threads",
        "1",
        "--status-every",
        "1",
    ]);
    for n in 0..3 {
        let line = miner.wait_line(Duration::from_secs(60), |l| l.starts_with("share "));
        let line = line.unwrap_or_else(|| panic!("share {n} never came: {:?}", miner.seen));
        assert!(line.starts_with("share accepted"), "{line}");
    }
    assert!(
        miner.terminate(),
        "miner exits 0 on SIGTERM: {:?}",
        miner.seen
    );
    assert!(
        miner.seen.iter().any(|l| l.starts_with("stopped:")),
        "final status line: {:?}",
        miner.seen
    );
    assert!(pool.terminate(), "pool exits 0 on SIGTERM: {:?}", pool.seen);
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["mine", "--pool", "http://pool:3333", "--user", "w"],
            "scheme",
        ),
        (
            &["mine", "--pool", "stratum+tcp://pool", "--user", "w"],
            "port",
        ),
        (
            &[
                "mine",
                "--pool",
                "stratum+tcp://pool:3333",
                "--user",
                "w",
                "--algo",
                "x11",
            ],
            "x11",
        ),
        (
            &[
                "bench",
                "--algo",
                "sha256d",
                "--path",
                "warp-drive",
                "--seconds",
                "1",
            ],
            "warp-drive",
        ),
    ];
    for (args, needle) in cases {
        let out = Command::new(AGENT).args(args).output().expect("agent runs");
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// A port free a moment ago on 127.0.0.1 (bound, read, released); a rare race with another
/// process taking it in between only fails the test, never hides a bug.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// One JSON `summary` request to the cgminer-format API; `None` while it is not answering.
fn api_summary(port: u16) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(br#"{"command":"summary"}"#).ok()?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).ok()?;
    // cgminer ends every reply with a NUL byte.
    while reply.last() == Some(&0) {
        reply.pop();
    }
    serde_json::from_slice(&reply).ok()
}

#[test]
fn run_mines_on_the_saved_desired_config_serves_the_api_and_stops_on_sigterm() {
    let (mut pool, url) = spawn_pool();

    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    // What the server's set_config left behind: one CPU thread on the test pool.
    let desired = serde_json::json!({
        "version": 7,
        "algorithm": "sha256d",
        "pools": [{ "url": url, "user": "wallet.run", "password": "x" }],
        "devices": [{ "device_id": "cpu", "threads": 1 }],
    });
    std::fs::write(
        state.join("desired_config.json"),
        serde_json::to_vec(&desired).expect("json"),
    )
    .expect("write desired config");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[safety]\nmax_cpu_threads = 1\n").expect("write config");

    let port = free_port();
    let mut agent = Proc::spawn(&[
        "run",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--state-dir",
        state.to_str().expect("utf-8 path"),
        "--api-listen",
        &format!("127.0.0.1:{port}"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = None;
    let accepted = loop {
        if let Some(reply) = api_summary(port) {
            let accepted = reply["SUMMARY"][0]["Accepted"].as_u64().unwrap_or(0);
            if accepted >= 2 {
                break accepted;
            }
            last = Some(reply);
        }
        assert!(
            Instant::now() < deadline,
            "no 2 accepted shares through the API; last summary: {last:?}"
        );
        if let Ok(Some(status)) = agent.child.try_wait() {
            panic!("agent exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(accepted >= 2);
    assert!(agent.terminate(), "agent exits 0 on SIGTERM");
    assert!(pool.terminate(), "pool exits 0 on SIGTERM: {:?}", pool.seen);
}

#[test]
fn run_refuses_a_config_with_an_unknown_key_naming_line_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[api]\nlisten = \"off\"\nlisen_port = 4028\n").expect("write");
    let out = Command::new(AGENT)
        .args([
            "run",
            "--config",
            config.to_str().expect("utf-8 path"),
            "--state-dir",
            dir.path().join("state").to_str().expect("utf-8 path"),
        ])
        .output()
        .expect("agent runs");
    assert!(!out.status.success(), "a bad config must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lisen_port"), "names the key: {stderr}");
    assert!(stderr.contains("line 3"), "names the line: {stderr}");
    assert!(
        !dir.path().join("state").exists(),
        "nothing starts (not even the state folder) on a bad config"
    );
}
