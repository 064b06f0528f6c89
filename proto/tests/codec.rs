//! Golden frames (one per message type, in `fixtures/`) and malformed input. The fixtures are the
//! examples of PROTOCOL.md and are read by agent and server tests too.

use std::path::Path;

use rigfleet_proto::command::{Command, CommandOrder};
use rigfleet_proto::config::DesiredConfig;
use rigfleet_proto::limits::MAX_FRAME_BYTES;
use rigfleet_proto::{
    decode_agent, decode_server, encode_agent, encode_server, ProtoError, ServerMessage,
};
use serde_json::Value;

fn fixtures() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_golden_frame_decodes_and_re_encodes_to_the_same_json() {
    let all = fixtures();
    assert!(all.len() >= 12, "one fixture per message type");
    for (name, text) in all {
        let original: Value = serde_json::from_str(&text).unwrap();
        let reencoded = if name.starts_with("agent_") {
            encode_agent(&decode_agent(&text).unwrap_or_else(|e| panic!("{name}: {e}"))).unwrap()
        } else {
            encode_server(&decode_server(&text).unwrap_or_else(|e| panic!("{name}: {e}"))).unwrap()
        };
        let back: Value = serde_json::from_str(&reencoded).unwrap();
        assert_eq!(back, original, "{name}");
    }
}

#[test]
fn order_payloads_in_the_fixtures_parse_as_their_types() {
    let Ok(ServerMessage::SetConfig(order)) = decode_server(&fixture("server_set_config.json"))
    else {
        panic!("set_config fixture");
    };
    let config: DesiredConfig = serde_json::from_str(&order.payload).unwrap();
    config.validate().unwrap();
    assert_eq!(config.version, 5);
    let Ok(ServerMessage::Command(order)) = decode_server(&fixture("server_command.json")) else {
        panic!("command fixture");
    };
    let cmd: CommandOrder = serde_json::from_str(&order.payload).unwrap();
    assert_eq!(cmd.command, Command::RestartMining);
}

fn fixture(name: &str) -> String {
    fixtures().into_iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn frames_for_the_other_direction_are_unknown_types() {
    assert!(
        matches!(decode_agent(&fixture("server_ack.json")), Err(ProtoError::UnknownType(t)) if t == "ack")
    );
    assert!(matches!(
        decode_server(&fixture("agent_hello.json")),
        Err(ProtoError::UnknownType(_))
    ));
}

#[test]
fn oversized_frames_are_refused_before_parsing() {
    let big = format!(
        "{{\"v\":1,\"type\":\"event\",\"pad\":\"{}\"}}",
        "x".repeat(MAX_FRAME_BYTES)
    );
    assert!(matches!(
        decode_agent(&big),
        Err(ProtoError::FrameTooLarge { .. })
    ));
}

#[test]
fn malformed_frames_are_error_values() {
    let cases = [
        "",
        "null",
        "[]",
        "{",
        r#"{"type":"hello"}"#,
        r#"{"v":"1","type":"hello"}"#,
        r#"{"v":2,"type":"hello"}"#,
        r#"{"v":1}"#,
        r#"{"v":1,"type":7}"#,
        r#"{"v":1,"type":"telemetry","rig_id":"r","samples":[]}"#,
        r#"{"v":1,"type":"auth","signature":"00"}"#,
        r#"{"v":1,"type":"auth","signature":"zz","extra":1}"#,
        r#"{"v":1,"type":"event","rig_id":"<b>","time_unix_ms":0,"severity":"info","kind":"k","message":"m"}"#,
        r#"{"v":1,"type":"event","rig_id":"r","time_unix_ms":0,"severity":"loud","kind":"k","message":"m"}"#,
    ];
    for case in cases {
        assert!(decode_agent(case).is_err(), "{case}");
    }
    assert!(matches!(
        decode_agent(r#"{"v":2,"type":"hello"}"#),
        Err(ProtoError::UnsupportedVersion { found: 2, .. })
    ));
}

#[test]
fn telemetry_with_bad_numbers_or_unordered_seqs_is_refused() {
    let good = fixture("agent_telemetry.json");
    assert!(decode_agent(&good).is_ok());
    let nan_like = good.replace("61.5", "-61.5");
    assert!(decode_agent(&nan_like).is_err());
    let mut v: Value = serde_json::from_str(&good).unwrap();
    let sample = v["samples"][0].clone();
    v["samples"] = Value::Array(vec![sample.clone(), sample]);
    assert!(
        decode_agent(&v.to_string()).is_err(),
        "repeated seq in one batch"
    );
}

#[test]
fn negotiation_picks_the_highest_common_version() {
    // Agents of protocol 1 (before telemetry streams and the signed welcome time) keep
    // working; new agents get 2.
    assert_eq!(rigfleet_proto::negotiate(1, 1), Some(1));
    assert_eq!(rigfleet_proto::negotiate(1, 2), Some(2));
    assert_eq!(rigfleet_proto::negotiate(1, 5), Some(2));
    assert_eq!(rigfleet_proto::negotiate(3, 4), None);
}

#[test]
fn protocol_2_fields_are_optional_and_validated() {
    let hello = r#"{"v":1,"type":"hello","agent_id":"a","protocol_min":1,"protocol_max":2,"agent_version":"x","hostname":"h","clock_unix_ms":0,"rigs":[{"rig_id":"r","stream_id":"0123abcd"}],"nonce":"0000000000000000000000000000000000000000000000000000000000000000"}"#;
    assert!(decode_agent(hello).is_ok());
    assert!(decode_agent(&hello.replace("0123abcd", "bad stream!")).is_err());
    assert!(decode_agent(&hello.replace(r#""nonce":"00"#, r#""nonce":"zz"#)).is_err());
    let t = r#"{"v":1,"type":"telemetry","rig_id":"r","stream_id":"s1","dropped_through":4,"samples":[{"seq":5,"time_unix_ms":1,"rig":{"uptime_secs":1}}]}"#;
    assert!(decode_agent(t).is_ok());
    // Seq 0 means "nothing yet" in acks, and seqs must fit the databases' BIGINT.
    assert!(decode_agent(&t.replace(r#""seq":5"#, r#""seq":0"#)).is_err());
    assert!(decode_agent(&t.replace(r#""seq":5"#, r#""seq":9223372036854775808"#)).is_err());
    // A protocol 1 ack has no stream, so protocol 1 agents (which deny unknown fields) read it.
    let ack = rigfleet_proto::encode_server(&rigfleet_proto::ServerMessage::Ack(
        rigfleet_proto::server_to_agent::Ack {
            rig_id: "r".into(),
            seq: 3,
            stream_id: None,
        },
    ))
    .unwrap();
    assert!(!ack.contains("stream_id"), "{ack}");
}

/// Replays the fuzz corpus (`fuzz/corpus/decode_frames`) on stable Rust: every input must give a
/// value or an error, never a panic, and anything that decodes must re-encode and decode again.
#[test]
fn fuzz_corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode_frames");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        count += 1;
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if let Ok(msg) = decode_agent(text) {
            assert_eq!(decode_agent(&encode_agent(&msg).unwrap()).unwrap(), msg);
        }
        if let Ok(msg) = decode_server(text) {
            assert_eq!(decode_server(&encode_server(&msg).unwrap()).unwrap(), msg);
        }
    }
    assert!(count >= 12, "corpus present");
}
