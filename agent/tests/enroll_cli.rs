//! `rigfleet-agent enroll` and `run` as a user runs them, against a one-shot HTTP responder
//! standing in for the server's enrollment endpoint.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rigfleet_proto::enroll::{EnrollRequest, EnrollResponse, EnrollToken};
use rigfleet_proto::signing::{decode_hex_array, key_fingerprint};

const AGENT: &str = env!("CARGO_BIN_EXE_rigfleet-agent");

/// Answers one enrollment with `server_key` and returns the URL; the thread gives back the
/// request it received.
fn one_shot_server(
    server_key: [u8; 32],
) -> (String, std::thread::JoinHandle<Option<EnrollRequest>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let body = loop {
            let n = stream.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).into_owned();
            let end = text.find("\r\n\r\n")?;
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if raw.len() >= end + 4 + len {
                break raw[end + 4..end + 4 + len].to_vec();
            }
        };
        let request: EnrollRequest = serde_json::from_slice(&body).ok()?;
        let answer = EnrollResponse {
            agent_id: "agt-cli".into(),
            rig_ids: vec!["rig-cli".into()],
            server_public_key: server_key.iter().map(|b| format!("{b:02x}")).collect(),
            pending_approval: false,
        };
        let json = serde_json::to_string(&answer).ok()?;
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        stream.write_all(reply.as_bytes()).ok()?;
        Some(request)
    });
    (url, handle)
}

fn token_for(key: &[u8; 32]) -> String {
    let fp = key_fingerprint(key);
    EnrollToken {
        id: [7; 8],
        secret: [8; 16],
        server_key_sha256: decode_hex_array(fp.trim_start_matches("sha256:")).expect("hex"),
    }
    .to_text()
}

#[test]
fn enroll_prints_the_ids_and_run_picks_the_identity_up() {
    let server = SigningKey::from_bytes(&[3u8; 32])
        .verifying_key()
        .to_bytes();
    let (url, handle) = one_shot_server(server);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let out = Command::new(AGENT)
        .args(["enroll", "--server", &url, "--token", &token_for(&server)])
        .arg("--state-dir")
        .arg(&state)
        .args(["--name", "rack-7", "--config", "/nonexistent/none.toml"])
        .env_remove("RIGFLEET_CONFIG")
        .output()
        .expect("runs");
    // An explicitly named config file must exist: the same rule as `run`.
    assert!(!out.status.success());
    let out = Command::new(AGENT)
        .args(["enroll", "--server", &url, "--token", &token_for(&server)])
        .arg("--state-dir")
        .arg(&state)
        .args(["--name", "rack-7"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("agt-cli") && stdout.contains("rig-cli"),
        "{stdout}"
    );
    assert!(stdout.contains(&key_fingerprint(&server)), "{stdout}");
    let request = handle.join().expect("thread").expect("a request");
    assert_eq!(request.rigs[0].name, "rack-7");
    assert_eq!(request.rigs[0].devices[0].device_id.as_str(), "cpu");
    assert!(state.join("identity.json").exists());

    // `run` needs nothing more: it finds the identity and heads for the enrolled server.
    let mut run = Command::new(AGENT)
        .args(["run", "--api-listen", "off"])
        .arg("--state-dir")
        .arg(&state)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let stderr = run.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut found = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                found |= line.contains("connecting to the server") && line.contains("agt-cli");
                seen.push(line);
                if found {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status();
    let status = run.wait().expect("exits");
    assert!(found, "{seen:#?}");
    assert!(status.success());
}

#[test]
fn enroll_against_the_wrong_server_saves_nothing() {
    let real = SigningKey::from_bytes(&[3u8; 32])
        .verifying_key()
        .to_bytes();
    let impostor = SigningKey::from_bytes(&[4u8; 32])
        .verifying_key()
        .to_bytes();
    let (url, handle) = one_shot_server(impostor);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(AGENT)
        .args(["enroll", "--server", &url, "--token", &token_for(&real)])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("nothing was saved"), "{stderr}");
    let _ = handle.join();
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}
