//! The `rigfleet-server` binary's offline commands, run as a user runs them: key rotation and
//! its status, and enrollment tokens. (Cargo builds the binary for this test, which is also how
//! the workspace's end-to-end tests find it.)

use std::path::Path;
use std::process::Command;

fn server(data_dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rigfleet-server"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("RIGFLEET_DATABASE_URL")
        .env_remove("RIGFLEET_CONFIG")
        .output()
        .expect("run rigfleet-server");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The `sha256:…` fingerprint on the line starting with `label`.
fn fingerprint_after(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{text}"))
        .to_string()
}

#[test]
fn keys_rotate_report_and_retire() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, status) = server(&data, &["key", "status"]);
    assert!(ok, "{status}");
    let first = fingerprint_after(&status, "signing key");
    assert!(first.starts_with("sha256:"), "{status}");
    assert!(status.contains("(no agents enrolled)"), "{status}");

    let (ok, rotated) = server(&data, &["key", "rotate"]);
    assert!(ok, "{rotated}");
    let new = fingerprint_after(&rotated, "new signing key");
    assert_eq!(fingerprint_after(&rotated, "previous key kept"), first);
    assert_ne!(new, first);

    // A second rotation would strand rigs that still pin the first key.
    let (ok, refused) = server(&data, &["key", "rotate"]);
    assert!(!ok, "{refused}");
    assert!(refused.contains("retire-previous"), "{refused}");

    let (ok, status) = server(&data, &["key", "status"]);
    assert!(ok, "{status}");
    assert_eq!(fingerprint_after(&status, "signing key"), new);
    assert_eq!(fingerprint_after(&status, "previous key"), first);

    let (ok, retired) = server(&data, &["key", "retire-previous"]);
    assert!(ok && retired.contains(&first), "{retired}");
    let (ok, status) = server(&data, &["key", "status"]);
    assert!(ok && !status.contains("previous key"), "{status}");
}

#[test]
fn enrollment_tokens_name_the_current_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, status) = server(&data, &["key", "status"]);
    assert!(ok, "{status}");
    let fp = fingerprint_after(&status, "signing key");
    let (ok, out) = server(&data, &["token", "create", "--max-uses", "3"]);
    assert!(ok, "{out}");
    let token = out
        .lines()
        .find(|l| l.starts_with("rf1."))
        .unwrap_or_else(|| panic!("no token in:\n{out}"));
    // rf1.<id>.<secret>.<sha256 of the server key>
    let key_hash = token.rsplit('.').next().unwrap();
    assert_eq!(format!("sha256:{key_hash}"), fp);
    assert!(out.contains("rigfleet-agent enroll --server"), "{out}");
    let (ok, out) = server(&data, &["token", "create", "--max-uses", "lots"]);
    assert!(!ok && out.contains("--max-uses"), "{out}");
}
