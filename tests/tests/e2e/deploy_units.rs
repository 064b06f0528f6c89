//! The systemd units in `deploy/systemd/`: systemd itself accepts them (`systemd-analyze
//! verify`, with no unknown key or other complaint), and the agent started with the unit's own
//! command line speaks the notify protocol the unit expects (`Type=notify`, `WatchdogSec=`).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rigfleet_tests::agent_proc::{workspace_binary, AgentProc};

fn unit_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/systemd")
        .join(name)
}

fn unit_text(name: &str) -> String {
    std::fs::read_to_string(unit_path(name)).expect("unit file")
}

/// The value of `key=` in the unit (first occurrence).
fn setting<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn systemd_accepts_the_units() {
    for (unit, binary) in [
        ("rigfleet-agent.service", "rigfleet-agent"),
        ("rigfleet-server.service", "rigfleet-server"),
    ] {
        // verify checks that ExecStart is executable: point it at the binary just built.
        let text = unit_text(unit).replace(
            &format!("/usr/local/bin/{binary}"),
            workspace_binary(binary).to_str().unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(unit);
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .expect("systemd-analyze (Debian package systemd) is installed");
        let complaints = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && complaints.trim().is_empty(),
            "{unit}: {complaints}"
        );
    }
}

#[test]
fn the_agent_started_as_the_unit_says_notifies_systemd() {
    let unit = unit_text("rigfleet-agent.service");
    assert_eq!(setting(&unit, "Type"), Some("notify"));
    let watchdog_secs: u64 = setting(&unit, "WatchdogSec").unwrap().parse().unwrap();
    assert!(watchdog_secs >= 10, "a watchdog shorter than a slow start");
    let exec = setting(&unit, "ExecStart").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "").unwrap();
    let state = dir.path().join("state");
    let mut args: Vec<String> = exec
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect();
    for a in &mut args {
        if a == "/etc/rigfleet/agent.toml" {
            *a = config.to_str().unwrap().to_string();
        } else if a == "/var/lib/rigfleet" {
            *a = state.to_str().unwrap().to_string();
        }
    }
    // The default local API port may be taken on a shared machine.
    args.extend(["--api-listen".into(), "off".into()]);
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // A 2 s watchdog for the test: the agent pings every second.
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = AgentProc::spawn_with_env(
        &args,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
        &dir.path().join("agent.log"),
    );
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline
        && seen.iter().filter(|m| m.as_str() == "WATCHDOG=1").count() < 3
    {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert_eq!(
        seen.first().map(String::as_str),
        Some("READY=1"),
        "{seen:?}\n{}",
        agent.output()
    );
    assert!(
        seen.iter().filter(|m| m.as_str() == "WATCHDOG=1").count() >= 3,
        "{seen:?}\n{}",
        agent.output()
    );
    assert!(agent.stop(), "clean exit on SIGTERM:\n{}", agent.output());
    let mut last = Vec::new();
    while let Ok(n) = socket.recv(&mut buf) {
        last.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(last.iter().any(|m| m == "STOPPING=1"), "{last:?}");
}
