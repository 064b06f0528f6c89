//! The agent binary as a user runs it: `pool` and `mine` as separate processes on 127.0.0.1,
//! stopped with SIGTERM, and bad arguments.

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

#[test]
fn mine_gets_shares_accepted_by_the_pool_process_and_both_stop_on_sigterm() {
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
