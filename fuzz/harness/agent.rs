//! Fuzz harnesses for the agent's local inputs: requests to the cgminer-format API
//! (`cgminer_api`) and the agent's TOML config file (`agent_config`). Shared by the fuzz targets
//! (which compile `agent/src/daemon/{config,cgminer_api}.rs` into the fuzz crate under the same
//! `crate::daemon` path) and the agent's unit test `daemon::fuzz_corpus`.

use std::path::Path;

use crate::daemon::cgminer_api::{
    complete, respond, ApiView, DeviceClass, DeviceView, PoolView, Rates,
};
use crate::daemon::config;

/// Figures with every character class a reply must escape (`|`, `,`, `=`, quotes, backslash,
/// control characters, non-ASCII) in the strings the API echoes.
fn view() -> ApiView {
    let rates = Rates {
        av: 1.5,
        s5: 2.0,
        m1: f64::NAN,
        m15: f64::INFINITY,
    };
    ApiView {
        elapsed_secs: 42,
        algorithm: Some("sha256d|x=\"y\"".into()),
        rates,
        total_mh: 1e300,
        found_blocks: 1,
        accepted: 3,
        rejected: 1,
        stale: 0,
        hardware_errors: u64::MAX,
        difficulty_accepted: -0.0,
        best_share: f64::NEG_INFINITY,
        devices: vec![
            DeviceView {
                class: DeviceClass::Cpu,
                name: "cpu,0|\\\"\n\u{7}é".into(),
                id: "pci:0000:01:00.0".into(),
                enabled: true,
                rates,
                accepted: 1,
                hardware_errors: 0,
                temperature: Some(f32::NAN),
                fan_rpm: Some(u32::MAX),
                total_mh: 0.0,
            },
            DeviceView {
                class: DeviceClass::Asc,
                name: String::new(),
                id: "usb:1-1".into(),
                enabled: false,
                rates: Rates::default(),
                accepted: 0,
                hardware_errors: 2,
                temperature: None,
                fan_rpm: None,
                total_mh: 5.0,
            },
        ],
        pools: vec![PoolView {
            url: "stratum+tcp://pool.example:3333/?a=1,b=2|c".into(),
            user: "wallet.worker\"\u{0}".into(),
            status: "Alive",
            priority: 0,
            active: true,
            getworks: 9,
            accepted: 3,
            rejected: 1,
            stale: 0,
            failures: 0,
            last_share_time: 0,
            difficulty: 65536.0,
            difficulty_accepted: 1e-12,
            best_share: 7.0,
        }],
    }
}

/// `cgminer_api`: one request as a client sends it. The reply ends with exactly one NUL, and a
/// JSON request gets a reply that is JSON.
pub fn cgminer_api(data: &[u8]) {
    let _ = complete(data);
    // Half the inputs run with privileged commands allowed, so both paths are explored.
    let allow: Vec<String> = if data.last().is_some_and(|b| b & 1 == 1) {
        vec!["switchpool".into(), "restart".into(), "addpool".into()]
    } else {
        Vec::new()
    };
    let reply = respond(data, &view, &allow);
    let (last, body) = reply.split_last().expect("a reply is never empty");
    assert_eq!(*last, 0, "the reply ends with NUL");
    assert!(!body.contains(&0), "one NUL, at the end");
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let request = String::from_utf8_lossy(&data[..end]);
    let text = std::str::from_utf8(body).expect("the reply is UTF-8");
    if request.trim().starts_with('{') {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
            panic!("a JSON request got a reply that is not JSON ({e}): {text}");
        }
    }
}

/// `agent_config`: the TOML file as `rigfleet-agent run` reads it, and the `--api-listen` value.
pub fn agent_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = config::from_toml(Path::new("agent.toml"), text) {
        // The bounds read from the file clamp what the server sends.
        for value in [0, 1, 100, 2500, u32::MAX] {
            let settings = rigfleet_proto::config::DeviceSettings {
                device_id: "0000:01:00.0".into(),
                enabled: true,
                power_limit_watts: Some(value),
                core_clock_mhz: Some(value),
                memory_clock_mhz: Some(value),
                fan_percent: Some(value.min(255) as u8),
                threads: Some(value),
            };
            if let Ok(clamped) = cfg.safety.clamp(&settings) {
                let _ = format!("{clamped:?}");
            }
        }
    }
    let _ = config::parse_api_listen(text);
}
