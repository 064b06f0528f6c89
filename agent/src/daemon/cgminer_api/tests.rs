//! Loopback tests of the cgminer API: real TCP connections against a server fed fixed figures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

fn fixed_view() -> ApiView {
    ApiView {
        elapsed_secs: 120,
        algorithm: Some("sha256d".into()),
        rates: Rates {
            av: 12.5,
            s5: 13.0,
            m1: 12.75,
            m15: 12.0,
        },
        total_mh: 1500.0,
        found_blocks: 0,
        accepted: 10,
        rejected: 1,
        stale: 2,
        hardware_errors: 3,
        difficulty_accepted: 640.0,
        best_share: 9000.0,
        devices: vec![
            DeviceView {
                class: DeviceClass::Cpu,
                name: "CPU".into(),
                id: "cpu".into(),
                enabled: true,
                rates: Rates {
                    av: 12.5,
                    s5: 13.0,
                    m1: 12.75,
                    m15: 12.0,
                },
                accepted: 10,
                hardware_errors: 3,
                temperature: Some(61.5),
                fan_rpm: None,
                total_mh: 1500.0,
            },
            DeviceView {
                class: DeviceClass::Asc,
                name: "BM1387".into(),
                id: "usb:1-2".into(),
                enabled: true,
                rates: Rates::default(),
                accepted: 0,
                hardware_errors: 0,
                temperature: None,
                fan_rpm: None,
                total_mh: 0.0,
            },
        ],
        pools: vec![
            PoolView {
                url: "stratum+tcp://pool.example:3333".into(),
                // Every text separator in one worker name.
                user: "wal|let,w=1\\x".into(),
                status: "Alive",
                priority: 0,
                active: true,
                getworks: 40,
                accepted: 10,
                rejected: 1,
                stale: 2,
                failures: 0,
                last_share_time: 0,
                difficulty: 64.0,
                difficulty_accepted: 640.0,
                best_share: 9000.0,
            },
            PoolView {
                url: "stratum+tcp://backup.example:3333".into(),
                user: "backup".into(),
                status: "Unknown",
                priority: 1,
                active: false,
                getworks: 0,
                accepted: 0,
                rejected: 0,
                stale: 0,
                failures: 0,
                last_share_time: 0,
                difficulty: 0.0,
                difficulty_accepted: 0.0,
                best_share: 0.0,
            },
        ],
    }
}

async fn server_with(allow: &[&str]) -> ApiServer {
    let cfg = ApiServerConfig {
        privileged_allow: allow.iter().map(|s| s.to_string()).collect(),
        ..ApiServerConfig::default()
    };
    ApiServer::start(
        "127.0.0.1:0".parse().expect("BUG: literal address"),
        Arc::new(fixed_view),
        cfg,
    )
    .await
    .expect("bind loopback")
}

/// Sends `req` (without closing the write side, as many clients do) and reads to EOF.
async fn ask(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(req).await.expect("send");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("reply in time")
        .expect("read reply");
    out
}

/// The reply without its NUL terminator, which must be present and last.
fn body(reply: &[u8]) -> String {
    assert_eq!(reply.last(), Some(&0), "reply ends with NUL: {reply:?}");
    assert_eq!(reply.iter().filter(|&&b| b == 0).count(), 1, "one NUL only");
    String::from_utf8(reply[..reply.len() - 1].to_vec()).expect("utf-8 reply")
}

fn json(reply: &[u8]) -> serde_json::Value {
    serde_json::from_str(&body(reply)).expect("valid JSON reply")
}

/// Splits a text reply into sections, each into `(key, value)` pairs, undoing the escapes.
fn text_sections(reply: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = body(reply);
    let mut sections = Vec::new();
    let mut fields = Vec::new();
    let (mut key, mut val, mut in_val, mut esc) = (String::new(), String::new(), false, false);
    for c in text.chars() {
        if esc {
            if in_val {
                val.push(c)
            } else {
                key.push(c)
            }
            esc = false;
            continue;
        }
        match c {
            '\\' => esc = true,
            '=' if !in_val => in_val = true,
            ',' | '|' => {
                fields.push((std::mem::take(&mut key), std::mem::take(&mut val)));
                in_val = false;
                if c == '|' {
                    sections.push(std::mem::take(&mut fields));
                }
            }
            _ if in_val => val.push(c),
            _ => key.push(c),
        }
    }
    assert!(
        key.is_empty() && fields.is_empty(),
        "text reply ends with '|': {text}"
    );
    sections
}

fn get<'a>(fields: &'a [(String, String)], k: &str) -> &'a str {
    fields
        .iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {k} in {fields:?}"))
}

#[tokio::test]
async fn text_summary() {
    let srv = server_with(&[]).await;
    let secs = text_sections(&ask(srv.local_addr(), b"summary").await);
    assert_eq!(get(&secs[0], "STATUS"), "S");
    assert_eq!(get(&secs[0], "Code"), "11");
    assert_eq!(get(&secs[0], "Msg"), "Summary");
    assert_eq!(
        get(&secs[0], "Description"),
        format!("rigfleet {AGENT_VERSION}")
    );
    assert_eq!(secs[1][0], ("SUMMARY".to_string(), String::new()));
    assert_eq!(get(&secs[1], "Elapsed"), "120");
    assert_eq!(get(&secs[1], "MHS av"), "12.50");
    assert_eq!(get(&secs[1], "MHS 5s"), "13.00");
    assert_eq!(get(&secs[1], "Accepted"), "10");
    assert_eq!(get(&secs[1], "Hardware Errors"), "3");
    assert_eq!(get(&secs[1], "Best Share"), "9000");
}

#[tokio::test]
async fn json_summary() {
    let srv = server_with(&[]).await;
    let v = json(&ask(srv.local_addr(), br#"{"command":"summary","parameter":""}"#).await);
    assert_eq!(v["STATUS"][0]["STATUS"], "S");
    assert_eq!(v["STATUS"][0]["Code"], 11);
    assert!(v["STATUS"][0]["When"].as_u64().is_some());
    assert_eq!(v["id"], 1);
    let s = &v["SUMMARY"][0];
    assert_eq!(s["Elapsed"], 120);
    assert_eq!(s["MHS av"].as_f64(), Some(12.5));
    assert_eq!(s["Rejected"], 1);
    assert_eq!(s["Stale"], 2);
    assert_eq!(s["Difficulty Accepted"].as_f64(), Some(640.0));
}

#[tokio::test]
async fn pools_text_and_json_with_escaping() {
    let srv = server_with(&[]).await;
    let raw = ask(srv.local_addr(), b"pools|\0").await;
    let text = body(&raw);
    assert!(text.contains(r"User=wal\|let\,w\=1\\x,"), "{text}");
    let secs = text_sections(&raw);
    assert_eq!(get(&secs[0], "Code"), "7");
    assert_eq!(get(&secs[0], "Msg"), "2 Pool(s)");
    assert_eq!(secs.len(), 3, "status + 2 pools");
    assert_eq!(secs[1][0], ("POOL".to_string(), "0".to_string()));
    assert_eq!(get(&secs[1], "User"), "wal|let,w=1\\x");
    assert_eq!(get(&secs[1], "URL"), "stratum+tcp://pool.example:3333");
    assert_eq!(get(&secs[1], "Status"), "Alive");
    assert_eq!(get(&secs[2], "Priority"), "1");

    let v = json(&ask(srv.local_addr(), br#"{"command":"pools"}"#).await);
    assert_eq!(v["STATUS"][0]["Code"], 7);
    assert_eq!(v["POOLS"][0]["POOL"], 0);
    assert_eq!(v["POOLS"][0]["User"], "wal|let,w=1\\x");
    assert_eq!(v["POOLS"][1]["URL"], "stratum+tcp://backup.example:3333");
    assert_eq!(v["POOLS"][0]["Stratum Active"], true);
}

#[tokio::test]
async fn devs_text_and_json() {
    let srv = server_with(&[]).await;
    let secs = text_sections(&ask(srv.local_addr(), b"devs").await);
    assert_eq!(get(&secs[0], "Code"), "9");
    assert_eq!(secs[1][0], ("CPU".to_string(), "0".to_string()));
    assert_eq!(get(&secs[1], "Temperature"), "61.50");
    assert_eq!(secs[2][0], ("ASC".to_string(), "0".to_string()));
    assert!(
        secs[2].iter().all(|(k, _)| k != "Temperature"),
        "no sensor, no field"
    );

    let v = json(&ask(srv.local_addr(), br#"{"command":"devs","parameter":""}"#).await);
    assert_eq!(v["DEVS"][0]["CPU"], 0);
    assert_eq!(v["DEVS"][0]["MHS 5s"].as_f64(), Some(13.0));
    assert_eq!(v["DEVS"][1]["ASC"], 0);
    assert_eq!(v["DEVS"][1]["Device ID"], "usb:1-2");
}

#[tokio::test]
async fn version_config_stats() {
    let srv = server_with(&[]).await;
    let secs = text_sections(&ask(srv.local_addr(), b"version").await);
    assert_eq!(get(&secs[0], "Code"), "22");
    assert_eq!(get(&secs[1], "API"), API_VERSION);
    assert_eq!(get(&secs[1], "CGMiner"), AGENT_VERSION);
    let v = json(&ask(srv.local_addr(), br#"{"command":"version"}"#).await);
    assert_eq!(v["VERSION"][0]["API"], "3.7");
    assert_eq!(
        v["VERSION"][0]["Miner"],
        format!("rigfleet {AGENT_VERSION}")
    );

    let v = json(&ask(srv.local_addr(), br#"{"command":"config"}"#).await);
    assert_eq!(v["STATUS"][0]["Code"], 33);
    assert_eq!(v["CONFIG"][0]["Pool Count"], 2);
    assert_eq!(v["CONFIG"][0]["ASC Count"], 1);
    assert_eq!(v["CONFIG"][0]["Strategy"], "Failover");

    let v = json(&ask(srv.local_addr(), br#"{"command":"stats"}"#).await);
    assert_eq!(v["STATUS"][0]["Code"], 70);
    assert_eq!(
        v["STATS"].as_array().map(Vec::len),
        Some(4),
        "2 devices + 2 pools"
    );
}

#[tokio::test]
async fn joined_commands_in_json() {
    let srv = server_with(&[]).await;
    let v = json(
        &ask(
            srv.local_addr(),
            br#"{"command":"summary+pools","parameter":""}"#,
        )
        .await,
    );
    assert_eq!(v["summary"][0]["STATUS"][0]["Code"], 11);
    assert_eq!(v["summary"][0]["SUMMARY"][0]["Accepted"], 10);
    assert_eq!(v["pools"][0]["STATUS"][0]["Code"], 7);
    assert_eq!(v["pools"][0]["POOLS"][1]["POOL"], 1);
    assert_eq!(v["id"], 1);
}

#[tokio::test]
async fn unknown_and_privileged_commands() {
    let srv = server_with(&["switchpool"]).await;
    let addr = srv.local_addr();
    let secs = text_sections(&ask(addr, b"frobnicate").await);
    assert_eq!(get(&secs[0], "STATUS"), "E");
    assert_eq!(get(&secs[0], "Code"), "14");
    assert_eq!(get(&secs[0], "Msg"), "Invalid command");

    let v = json(&ask(addr, br#"{"command":"restart"}"#).await);
    assert_eq!(v["STATUS"][0]["STATUS"], "E");
    assert_eq!(v["STATUS"][0]["Code"], 45);
    assert_eq!(v["STATUS"][0]["Msg"], "Access denied to 'restart' command");

    let v = json(&ask(addr, br#"{"command":"switchpool","parameter":"1"}"#).await);
    assert_eq!(v["STATUS"][0]["STATUS"], "E");
    assert_eq!(v["STATUS"][0]["Code"], 14);
    let msg = v["STATUS"][0]["Msg"].as_str().unwrap_or_default();
    assert!(msg.contains("allowed but not supported yet"), "{msg}");

    // Text mode with a parameter: denied the same way.
    let secs = text_sections(&ask(addr, b"addpool|url,user,pass").await);
    assert_eq!(get(&secs[0], "Code"), "45");

    // A denied command inside a join is denied alone.
    let v = json(&ask(addr, br#"{"command":"quit+version"}"#).await);
    assert_eq!(v["quit"][0]["STATUS"][0]["Code"], 45);
    assert_eq!(v["version"][0]["STATUS"][0]["Code"], 22);
}

#[tokio::test]
async fn malformed_json_is_an_error_not_a_panic() {
    let srv = server_with(&[]).await;
    let addr = srv.local_addr();
    let raw = ask(addr, b"{\"command\":\"summ").await;
    let v = json(&raw);
    assert_eq!(v["STATUS"][0]["STATUS"], "E");
    assert_eq!(v["STATUS"][0]["Code"], 23);

    let v = json(&ask(addr, br#"{"parameter":"x"}"#).await);
    assert_eq!(v["STATUS"][0]["Code"], 24);
    let v = json(&ask(addr, br#"{"command":42}"#).await);
    assert_eq!(v["STATUS"][0]["Code"], 24);
    let v = json(&ask(addr, b"{\xff\xfe}").await);
    assert_eq!(v["STATUS"][0]["Code"], 23);

    // Still serving.
    let v = json(&ask(addr, br#"{"command":"summary"}"#).await);
    assert_eq!(v["STATUS"][0]["Code"], 11);
}

#[tokio::test]
async fn oversized_request_is_refused_unread() {
    let srv = server_with(&[]).await;
    let addr = srv.local_addr();

    // Slightly too big: refused with an error reply.
    let mut big = b"summary|".to_vec();
    big.resize(MAX_REQUEST + 100, b'a');
    let secs = text_sections(&ask(addr, &big).await);
    assert_eq!(get(&secs[0], "STATUS"), "E");
    assert!(get(&secs[0], "Msg").contains("too large"));

    // Far too big: the server stops reading, so the client cannot push it all through.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let huge = vec![b'x'; 64 * 1024 * 1024];
    let sent = tokio::time::timeout(Duration::from_secs(10), s.write_all(&huge)).await;
    assert!(
        matches!(sent, Ok(Err(_))),
        "64 MiB must not be read whole: {sent:?}"
    );

    // Still serving.
    let secs = text_sections(&ask(addr, b"version").await);
    assert_eq!(get(&secs[0], "Code"), "22");
}

#[tokio::test]
async fn silent_and_empty_clients_do_not_block_others() {
    let cfg = ApiServerConfig {
        max_connections: 2,
        read_timeout: Duration::from_millis(300),
        ..ApiServerConfig::default()
    };
    let srv = ApiServer::start(
        "127.0.0.1:0".parse().expect("BUG: literal address"),
        Arc::new(fixed_view),
        cfg,
    )
    .await
    .expect("bind loopback");
    let addr = srv.local_addr();
    // Two silent clients take every slot until the read timeout drops them.
    let _a = TcpStream::connect(addr).await.expect("connect");
    let _b = TcpStream::connect(addr).await.expect("connect");
    let secs = text_sections(&ask(addr, b"summary").await);
    assert_eq!(get(&secs[0], "Code"), "11");
    // An empty request (connect, close) is an invalid command, answered.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.shutdown().await.expect("shutdown");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    assert_eq!(get(&text_sections(&out)[0], "Code"), "14");
}

#[test]
fn from_snapshot_of_an_idle_runtime() {
    let snap = crate::daemon::mining::MiningSnapshot {
        version: None,
        algorithm: None,
        threads: 0,
        pool: None,
        client: None,
        miner: None,
        shares: Default::default(),
    };
    let v = ApiView::from_snapshot(&snap, Duration::from_secs(7));
    assert_eq!(v.elapsed_secs, 7);
    assert!(v.devices.is_empty() && v.pools.is_empty());
    let reply = respond(b"devs", &|| v.clone(), &[]);
    assert!(
        body(&reply).starts_with("STATUS=E,"),
        "no devices is code 10"
    );
    assert!(body(&reply).contains("Code=10,"));
}

#[test]
fn from_snapshot_maps_devices_pools_and_rates() {
    use rigfleet_engine::device::{DeviceId, DeviceInfo, Sensors};
    use rigfleet_engine::{Algorithm, MinerStats};
    use rigfleet_stratum::client::{ClientSnapshot, PoolSnapshot};

    let rates = rigfleet_engine::HashRates {
        avg_5s_hps: 5e6,
        avg_1m_hps: 4e6,
        avg_15m_hps: 3e6,
    };
    let device = rigfleet_engine::miner::DeviceStats {
        info: DeviceInfo {
            id: DeviceId("cpu".into()),
            kind: DeviceKind::Cpu,
            name: "CPU".into(),
            algorithm: Algorithm::Sha256d,
            path: "shani".into(),
            workers: 2,
        },
        rates,
        hashes_total: 100_000_000,
        shares: 4,
        hardware_errors: 1,
        sensors: Sensors {
            temperature_celsius: Some(55.0),
            fan_rpm: None,
            power_watts: None,
        },
        last_error: None,
    };
    let pool = |url: &str, state| PoolSnapshot {
        url: url.into(),
        user: "w".into(),
        priority: 0,
        state,
        probing: false,
        difficulty: Some(8.0),
        version_mask: None,
        last_job_secs_ago: None,
        jobs: 3,
        failures: 0,
        retry_in_secs: None,
        last_error: None,
        shares: Default::default(),
        malformed_lines: 0,
        unexpected_messages: 0,
    };
    let client = ClientSnapshot {
        current: Some(1),
        pools: vec![pool("a", PoolState::Backoff), pool("b", PoolState::Mining)],
        job_latency: Default::default(),
        clean_job_latency: Default::default(),
        switches: 1,
        shares_unknown_job: 0,
    };
    let snap = crate::daemon::mining::MiningSnapshot {
        version: Some(3),
        algorithm: Some(Algorithm::Sha256d),
        threads: 2,
        pool: client.current_pool().cloned(),
        client: Some(client),
        miner: Some(MinerStats {
            devices: vec![device],
            rates,
        }),
        shares: crate::daemon::mining::ShareTotals {
            accepted: 4,
            rejected: 1,
            stale: 0,
        },
    };
    let v = ApiView::from_snapshot(&snap, Duration::from_secs(10));
    assert_eq!(v.algorithm.as_deref(), Some("sha256d"));
    assert_eq!(v.rates.s5, 5.0);
    assert_eq!(v.rates.av, 10.0, "100 MH over 10 s");
    assert_eq!(v.hardware_errors, 1);
    assert_eq!(v.devices[0].class, DeviceClass::Cpu);
    assert_eq!(v.devices[0].temperature, Some(55.0));
    assert_eq!(v.pools[0].status, "Dead");
    assert_eq!(v.pools[1].status, "Alive");
    assert!(v.pools[1].active && !v.pools[0].active);
}

#[tokio::test]
async fn from_config_off_starts_nothing() {
    let api = crate::daemon::config::ApiConfig {
        listen: ApiListen::Off,
        privileged_allow: vec![],
    };
    let srv = ApiServer::from_config(&api, Arc::new(fixed_view))
        .await
        .expect("no bind");
    assert!(srv.is_none());
    let api = crate::daemon::config::ApiConfig {
        listen: ApiListen::Addr("127.0.0.1:0".parse().expect("BUG: literal address")),
        privileged_allow: vec!["quit".into()],
    };
    let srv = ApiServer::from_config(&api, Arc::new(fixed_view))
        .await
        .expect("bind")
        .expect("on");
    let v = json(&ask(srv.local_addr(), br#"{"command":"quit"}"#).await);
    assert_eq!(v["STATUS"][0]["Code"], 14, "allowed, not supported yet");
}

/// Issue 11, item 21: a join names each command once and at most [`MAX_JOINED`] of them, so a
/// 40-byte request cannot ask for the largest reply dozens of times; a sane join still works.
#[tokio::test]
async fn joined_commands_are_bounded_and_never_repeated() {
    let srv = server_with(&[]).await;
    let addr = srv.local_addr();
    let single = ask(addr, br#"{"command":"stats"}"#).await.len();

    let repeated = format!(r#"{{"command":"{}"}}"#, vec!["stats"; 75].join("+"));
    let raw = ask(addr, repeated.as_bytes()).await;
    let v = json(&raw);
    assert_eq!(v["STATUS"][0]["STATUS"], "E", "{v}");
    assert_eq!(v["STATUS"][0]["Code"], 14, "{v}");
    let msg = v["STATUS"][0]["Msg"].as_str().unwrap_or_default();
    assert!(msg.contains("'stats' repeated"), "{msg}");
    assert!(v.get("stats").is_none(), "nothing answered: {v}");
    assert!(
        raw.len() < 2 * single,
        "{} bytes for one request",
        raw.len()
    );

    // Two of the same is already refused.
    let v = json(&ask(addr, br#"{"command":"summary+pools+summary"}"#).await);
    assert_eq!(v["STATUS"][0]["Code"], 14, "{v}");

    // Distinct but too many (every name once, more than the bound).
    let names: Vec<String> = (0..=MAX_JOINED).map(|i| format!("c{i}")).collect();
    let many = format!(r#"{{"command":"{}"}}"#, names.join("+"));
    let v = json(&ask(addr, many.as_bytes()).await);
    assert_eq!(v["STATUS"][0]["Code"], 14, "{v}");
    let msg = v["STATUS"][0]["Msg"].as_str().unwrap_or_default();
    assert!(msg.contains("Too many joined commands"), "{msg}");

    // What monitoring tools join is answered as before.
    let v = json(
        &ask(
            addr,
            br#"{"command":"summary+pools+devs+stats+version+config"}"#,
        )
        .await,
    );
    assert_eq!(v["summary"][0]["STATUS"][0]["Code"], 11, "{v}");
    assert_eq!(v["stats"][0]["STATUS"][0]["Code"], 70, "{v}");
    assert_eq!(v["config"][0]["STATUS"][0]["Code"], 33, "{v}");
}

/// Issue 11, item 21: sockets that connect and say nothing must not hold the API from clients
/// that ask: with every slot taken by 40 silent sockets (and a read deadline of an hour), other
/// clients are still answered, one after another and several at once.
#[tokio::test]
async fn silent_sockets_cannot_starve_the_api() {
    let cfg = ApiServerConfig {
        max_connections: 4,
        read_timeout: Duration::from_secs(3600),
        ..ApiServerConfig::default()
    };
    let srv = ApiServer::start(
        "127.0.0.1:0".parse().expect("BUG: literal address"),
        Arc::new(fixed_view),
        cfg,
    )
    .await
    .expect("bind loopback");
    let addr = srv.local_addr();
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // `ask` allows 5 s for each reply: before this fix the first one waited for an hour.
    for _ in 0..5 {
        let secs = text_sections(&ask(addr, b"summary").await);
        assert_eq!(get(&secs[0], "Code"), "11");
    }
    let askers: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { ask(addr, br#"{"command":"summary"}"#).await }))
        .collect();
    for asker in askers {
        let v = json(&asker.await.expect("asker ran"));
        assert_eq!(v["STATUS"][0]["Code"], 11, "{v}");
    }
    // Silent sockets opened later are closed in turn; the API keeps answering.
    for _ in 0..10 {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let secs = text_sections(&ask(addr, b"version").await);
    assert_eq!(get(&secs[0], "Code"), "22");
    drop(silent);
}
