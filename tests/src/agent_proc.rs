//! The real `rigfleet-agent` binary as a child process: found beside the test binary (cargo
//! builds every workspace binary for `cargo test --workspace`), its output kept in a file that
//! a failing test prints, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Path of a workspace binary next to the running test executable.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // A test runs from target/<profile>/deps/, a binary (loadtest) from target/<profile>/.
    let mut profile_dir = exe.parent().expect("executable has a folder");
    if profile_dir.ends_with("deps") {
        profile_dir = profile_dir.parent().expect("deps has a parent");
    }
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p {name}); `cargo test --workspace` does",
        path.display()
    );
    path
}

/// A running agent process.
pub struct AgentProc {
    child: Child,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl AgentProc {
    /// Starts `rigfleet-agent <args>` with its output in `log`.
    pub fn spawn(args: &[&str], log: &Path) -> AgentProc {
        Self::spawn_with_env(args, &[], log)
    }

    /// Starts `rigfleet-agent <args>` with extra environment variables.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)], log: &Path) -> AgentProc {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(workspace_binary("rigfleet-agent"))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start rigfleet-agent");
        AgentProc {
            child,
            log: log.to_path_buf(),
        }
    }

    /// The output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process has not exited yet.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits up to 10 s; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        // SAFETY: kill(2) with a pid this process spawned; no memory is touched.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..100 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        false
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `rigfleet-agent <args>` to completion; returns success and its output.
pub fn run_agent(args: &[&str]) -> (bool, String) {
    let out = Command::new(workspace_binary("rigfleet-agent"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rigfleet-agent");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
