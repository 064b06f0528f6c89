//! Server commands (`command` orders) after the order gate admitted them: what each one needs
//! (the mining runtime, a child process, nothing) and the local opt-ins that allow the risky
//! ones. Child processes run on blocking threads with a time limit and bounded output, and their
//! results come back to the daemon loop as messages, so a slow command never stalls it.

use std::io::Read;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use rigfleet_proto::command::Command;
use rigfleet_proto::limits::MAX_TEXT_LEN;

use super::config::OptIns;

/// Longest `shell` command run.
pub const SHELL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest benchmark run on a command.
pub const MAX_BENCHMARK_SECS: u32 = 30;
/// Longest `identify`.
pub const MAX_IDENTIFY_SECS: u32 = 600;

/// What a command needs done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Restart the miner (daemon loop, mining runtime).
    RestartMining,
    /// Move to a pool of the applied config (daemon loop, mining runtime).
    SwitchPool(usize),
    /// Log a banner for this long.
    Identify(u32),
    /// Run a child process on a blocking thread.
    Spawn(Job),
    /// Not allowed here; the reason goes back to the server.
    Refuse(String),
}

/// A child process to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// The configured reboot command; answered as soon as it started.
    Reboot(Vec<String>),
    /// `sh -c <line>` with [`SHELL_TIMEOUT`].
    Shell(String),
    /// This binary's `bench` for a bounded time.
    Benchmark {
        /// Algorithm id.
        algorithm: String,
        /// Seconds (already bounded).
        seconds: u32,
    },
}

/// Decides what `command` needs, honouring the opt-ins.
pub fn plan(command: &Command, opt_in: &OptIns) -> Plan {
    match command {
        Command::RestartMining => Plan::RestartMining,
        Command::SwitchPool { index } => Plan::SwitchPool(*index as usize),
        Command::Identify { seconds } => Plan::Identify((*seconds).clamp(1, MAX_IDENTIFY_SECS)),
        Command::Reboot => match &opt_in.reboot_command {
            Some(argv) if !argv.is_empty() => Plan::Spawn(Job::Reboot(argv.clone())),
            _ => Plan::Refuse(
                "reboot refused: this rig's local config sets no opt_in.reboot_command".into(),
            ),
        },
        Command::Shell { command } => {
            if opt_in.allow_shell_commands {
                Plan::Spawn(Job::Shell(command.clone()))
            } else {
                Plan::Refuse(
                    "shell refused: this rig's local config does not set opt_in.allow_shell_commands"
                        .into(),
                )
            }
        }
        Command::RunBenchmark { algorithm, seconds } => {
            if !matches!(algorithm.as_str(), "sha256d" | "scrypt") {
                return Plan::Refuse(format!(
                    "unknown algorithm {:?}",
                    algorithm.chars().take(64).collect::<String>()
                ));
            }
            Plan::Spawn(Job::Benchmark {
                algorithm: algorithm.clone(),
                seconds: (*seconds).clamp(1, MAX_BENCHMARK_SECS),
            })
        }
    }
}

/// Runs a job to completion (blocking): `(ok, output)`, output bounded to the protocol's limit.
pub fn run_job(job: &Job) -> (bool, String) {
    match job {
        Job::Reboot(argv) => {
            let mut cmd = Process::new(&argv[0]);
            cmd.args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            match cmd.spawn() {
                Ok(_child) => (true, format!("reboot started: {}", argv.join(" "))),
                Err(e) => (false, format!("cannot start {}: {e}", argv[0])),
            }
        }
        Job::Shell(line) => {
            let mut cmd = Process::new("/bin/sh");
            cmd.arg("-c").arg(line);
            run_bounded(cmd, SHELL_TIMEOUT)
        }
        Job::Benchmark { algorithm, seconds } => {
            let exe = match std::env::current_exe() {
                Ok(p) => p,
                Err(e) => return (false, format!("cannot find the agent binary: {e}")),
            };
            let mut cmd = Process::new(exe);
            cmd.args(["bench", "--json", "--threads", "1", "--algo", algorithm])
                .arg("--seconds")
                .arg(seconds.to_string());
            run_bounded(cmd, Duration::from_secs(u64::from(*seconds) * 3 + 10))
        }
    }
}

/// Runs `cmd` with no stdin, killing it (and its process group) after `limit`; the exit status
/// decides `ok`, and stdout then stderr (each cut to [`MAX_TEXT_LEN`]) make the output.
pub fn run_bounded(mut cmd: Process, limit: Duration) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    // Its own group, so a timeout also ends what a shell started in the background.
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot start: {e}")),
    };
    let readers: Vec<Reader> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(Reader::spawn)
    .collect();
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("killed after {} s", limit.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("cannot wait for it: {e}")),
        }
    };
    // A grandchild may still hold the pipes open: take what arrived within a short grace.
    let grace = Instant::now() + Duration::from_millis(500);
    while readers.iter().any(|r| !r.done()) && Instant::now() < grace {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut output = String::new();
    for r in &readers {
        output.push_str(&r.text());
    }
    let tail = match &status {
        Ok(s) if s.success() => String::new(),
        Ok(s) => format!("\n[{s}]"),
        Err(e) => format!("\n[{e}]"),
    };
    output.push_str(&tail);
    let ok = matches!(&status, Ok(s) if s.success());
    (ok, super::link::orders::bound_text(output))
}

/// SIGKILL to a process group, through `kill(1)` (this crate has no libc binding).
fn kill_group(pgid: u32) {
    let _ = Process::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A pipe read on its own thread into a bounded buffer (the rest is drained so the child never
/// blocks on a full pipe).
struct Reader {
    buf: std::sync::Arc<std::sync::Mutex<(Vec<u8>, bool)>>,
}

impl Reader {
    fn spawn(mut pipe: Box<dyn Read + Send>) -> Reader {
        let buf = std::sync::Arc::new(std::sync::Mutex::new((Vec::new(), false)));
        let shared = std::sync::Arc::clone(&buf);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut g = lock(&shared);
                        let room = MAX_TEXT_LEN.saturating_sub(g.0.len());
                        g.0.extend_from_slice(&chunk[..n.min(room)]);
                    }
                }
            }
            lock(&shared).1 = true;
        });
        Reader { buf }
    }

    fn done(&self) -> bool {
        lock(&self.buf).1
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.buf).0).into_owned()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risky_commands_need_their_opt_in() {
        let none = OptIns::default();
        assert!(matches!(plan(&Command::Reboot, &none), Plan::Refuse(_)));
        let shell = Command::Shell {
            command: "id".into(),
        };
        assert!(matches!(plan(&shell, &none), Plan::Refuse(_)));
        let allowed = OptIns {
            allow_shell_commands: true,
            reboot_command: Some(vec!["/bin/true".into()]),
            watchdog_reboot: false,
        };
        assert_eq!(plan(&shell, &allowed), Plan::Spawn(Job::Shell("id".into())));
        assert!(matches!(
            plan(&Command::Reboot, &allowed),
            Plan::Spawn(Job::Reboot(_))
        ));
        assert_eq!(
            plan(
                &Command::RunBenchmark {
                    algorithm: "sha256d".into(),
                    seconds: 10_000
                },
                &none
            ),
            Plan::Spawn(Job::Benchmark {
                algorithm: "sha256d".into(),
                seconds: MAX_BENCHMARK_SECS
            })
        );
    }

    #[test]
    fn shell_output_is_bounded_and_timeouts_kill() {
        let (ok, out) = run_job(&Job::Shell("echo hi; echo err >&2".into()));
        assert!(ok, "{out}");
        assert!(out.contains("hi") && out.contains("err"), "{out}");
        let (ok, out) = run_job(&Job::Shell("head -c 100000 /dev/zero | tr '\\0' x".into()));
        assert!(ok && out.len() <= MAX_TEXT_LEN, "{}", out.len());
        let (ok, _) = run_job(&Job::Shell("exit 3".into()));
        assert!(!ok);
        let mut cmd = Process::new("/bin/sh");
        cmd.arg("-c").arg("sleep 5; echo late");
        let started = Instant::now();
        let (ok, out) = run_bounded(cmd, Duration::from_millis(200));
        assert!(!ok && out.contains("killed"), "{out}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
