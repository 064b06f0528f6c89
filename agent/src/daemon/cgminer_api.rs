//! The agent's local API in the cgminer RPC format (issue 4, "Local API on 127.0.0.1:4028"), so
//! existing cgminer-API clients (monitoring scripts, farm tools) can read a rigfleet agent.
//!
//! The wire format follows cgminer's API-README: one request per TCP connection, either plain
//! text `command|parameter` or JSON `{"command":"…","parameter":"…"}`; the reply takes the
//! request's form, starts with a `STATUS` section, and ends with a NUL byte before the server
//! closes the connection. Commands can be joined with `+` in JSON requests (`summary+pools`);
//! each joined reply then sits under its command name, as cgminer does.
//!
//! The server does not know the mining runtime: it asks a [`ViewSource`] for an [`ApiView`] (the
//! plain figures the API shows) on every request, so tests feed fixed figures and the daemon
//! feeds [`ApiView::from_snapshot`] of [`MiningSnapshot`].
//!
//! Bounds (issue 11, item 21): a join names at most [`MAX_JOINED`] commands, each once, so one
//! small request cannot ask for the same large reply dozens of times; at most
//! `max_connections` sockets are served at once, and when all are taken the oldest one that
//! has sent nothing after `idle_gap` (or only part of a request after [`PARTIAL_GRACE_GAPS`]
//! gaps) is closed to make room, so silent or dripping sockets cannot hold the API from the
//! clients that ask something; every read and write has a deadline.
//!
//! Privileged commands (`switchpool`, `restart`, `addpool`…) are refused with Code 45 unless
//! named in the config's `privileged_allow`. Even an allowed one is answered "not supported yet"
//! (Code 14): carrying it out needs the daemon's command path (restart mining, switch pool),
//! which this module does not reach on purpose.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rigfleet_engine::device::DeviceKind;
use rigfleet_stratum::client::PoolState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::config::{ApiConfig, ApiListen};
// The fuzz crate (`fuzz/`) compiles this file with `config.rs` alone, without the runtime.
#[cfg(not(fuzzing))]
use super::mining::MiningSnapshot;

/// The API version reported by `version`: the cgminer API level whose format this follows.
pub const API_VERSION: &str = "3.7";
/// The agent version reported in every `Description` and by `version`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Largest request read; cgminer's own buffer is 8 KiB and no valid request comes near it.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Most commands one JSON request may join with `+` (monitoring tools join three or four:
/// `summary+pools+devs+stats`); a join over it, or one naming a command twice, is refused whole.
pub const MAX_JOINED: usize = 8;
/// A connection that sent part of a request may be closed to make room once it is this many
/// `idle_gap`s old (a whole request takes one gap after its last byte).
pub const PARTIAL_GRACE_GAPS: u32 = 10;

/// Where a connection is: nothing received yet, part of a request, or answering.
const PHASE_SILENT: u8 = 0;
const PHASE_PARTIAL: u8 = 1;
const PHASE_ANSWERING: u8 = 2;

/// Every privileged cgminer command: those that change the miner rather than read it.
pub const PRIVILEGED_COMMANDS: &[&str] = &[
    "switchpool",
    "enablepool",
    "disablepool",
    "addpool",
    "removepool",
    "poolpriority",
    "poolquota",
    "save",
    "quit",
    "restart",
    "setconfig",
    "debug",
    "zero",
    "hotplug",
    "failover-only",
    "pgaenable",
    "pgadisable",
    "pgaidentify",
    "pgaset",
    "ascenable",
    "ascdisable",
    "ascidentify",
    "ascset",
    "gpuenable",
    "gpudisable",
    "gpurestart",
    "gpuintensity",
    "gpumem",
    "gpuengine",
    "gpufan",
    "gpuvddc",
];

// cgminer's status codes (api.c), the ones this server answers.
const MSG_POOL: u32 = 7;
const MSG_NOPOOL: u32 = 8;
const MSG_DEVS: u32 = 9;
const MSG_NODEVS: u32 = 10;
const MSG_SUMM: u32 = 11;
const MSG_INVCMD: u32 = 14;
const MSG_VERSION: u32 = 22;
const MSG_INVJSON: u32 = 23;
const MSG_MISCMD: u32 = 24;
const MSG_MINECONFIG: u32 = 33;
const MSG_ACCDENY: u32 = 45;
const MSG_ACCOK: u32 = 46;
const MSG_MINESTATS: u32 = 70;

/// Settings of the API server.
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    /// Privileged commands the local config allows (`api.privileged_allow`).
    pub privileged_allow: Vec<String>,
    /// Connections served at once; when all are taken, the oldest one still waiting for its
    /// request after `idle_gap` is closed to make room, else the newcomer waits in the backlog.
    pub max_connections: usize,
    /// Longest wait for a whole request; a client that stalls longer is dropped. Also the
    /// longest time writing a reply may take.
    pub read_timeout: Duration,
    /// Quiet time after which a partial request counts as complete: cgminer answers what one
    /// `recv` gave, and many clients send without a terminator and without closing their side.
    pub idle_gap: Duration,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        Self {
            privileged_allow: Vec::new(),
            max_connections: 16,
            read_timeout: Duration::from_secs(5),
            idle_gap: Duration::from_millis(100),
        }
    }
}

/// Produces the figures for one request.
pub type ViewSource = Arc<dyn Fn() -> ApiView + Send + Sync>;

/// The figures the API shows: plain data, independent of the runtime.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiView {
    /// Seconds since mining (the agent) started.
    pub elapsed_secs: u64,
    /// Algorithm mined; `None` when idle.
    pub algorithm: Option<String>,
    /// Rig totals in MH/s.
    pub rates: Rates,
    /// Every hash counted since start, in MH.
    pub total_mh: f64,
    /// Blocks found (shares meeting the network target); 0 when unknown.
    pub found_blocks: u64,
    /// Shares accepted by pools.
    pub accepted: u64,
    /// Shares rejected by pools.
    pub rejected: u64,
    /// Stale shares.
    pub stale: u64,
    /// Nonces that did not confirm on the host.
    pub hardware_errors: u64,
    /// Sum of the pool difficulty of accepted shares.
    pub difficulty_accepted: f64,
    /// Highest accepted share difficulty.
    pub best_share: f64,
    /// The devices.
    pub devices: Vec<DeviceView>,
    /// The pools, in priority order.
    pub pools: Vec<PoolView>,
}

/// Hash rates in MH/s.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// Average since start.
    pub av: f64,
    /// Last 5 seconds.
    pub s5: f64,
    /// Last minute.
    pub m1: f64,
    /// Last 15 minutes.
    pub m15: f64,
}

/// How cgminer names a kind of device in `devs` (its entry label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceClass {
    /// CPU mining (`CPU=n`, as older cgminer).
    Cpu,
    /// GPU (`GPU=n`).
    Gpu,
    /// ASIC (`ASC=n`).
    Asc,
    /// FPGA (`PGA=n`).
    Pga,
}

impl DeviceClass {
    fn label(self) -> &'static str {
        match self {
            DeviceClass::Cpu => "CPU",
            DeviceClass::Gpu => "GPU",
            DeviceClass::Asc => "ASC",
            DeviceClass::Pga => "PGA",
        }
    }
}

/// One device as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceView {
    /// cgminer device class.
    pub class: DeviceClass,
    /// Short name (cgminer's driver name).
    pub name: String,
    /// The stable device id (rigfleet's, reported as `Device ID`).
    pub id: String,
    /// Mining or not.
    pub enabled: bool,
    /// Hash rates in MH/s.
    pub rates: Rates,
    /// Confirmed shares.
    pub accepted: u64,
    /// Hardware errors.
    pub hardware_errors: u64,
    /// Hottest sensor, when the device has one.
    pub temperature: Option<f32>,
    /// Fan speed, when known.
    pub fan_rpm: Option<u32>,
    /// Total hashes in MH.
    pub total_mh: f64,
}

/// One pool as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolView {
    /// Pool URL.
    pub url: String,
    /// Worker name.
    pub user: String,
    /// cgminer status: `Alive`, `Dead` or `Unknown`.
    pub status: &'static str,
    /// Priority (0 = first).
    pub priority: u32,
    /// This is the pool mined on now.
    pub active: bool,
    /// Jobs received.
    pub getworks: u64,
    /// Accepted shares.
    pub accepted: u64,
    /// Rejected shares.
    pub rejected: u64,
    /// Stale shares.
    pub stale: u64,
    /// Failed connections in a row.
    pub failures: u32,
    /// Unix time of the last share; 0 when unknown (cgminer's "never").
    pub last_share_time: u64,
    /// Current pool difficulty.
    pub difficulty: f64,
    /// Sum of accepted share difficulty.
    pub difficulty_accepted: f64,
    /// Highest accepted share difficulty.
    pub best_share: f64,
}

/// cgminer's pool status from the Stratum client's state: connected means alive, failing means
/// dead; standby and connecting are not known yet.
fn pool_status(state: PoolState) -> &'static str {
    match state {
        PoolState::Mining | PoolState::Authorized | PoolState::Subscribed => "Alive",
        PoolState::Backoff => "Dead",
        PoolState::Standby | PoolState::Connecting => "Unknown",
    }
}

fn mhs(hps: f64) -> f64 {
    hps / 1e6
}

#[cfg(not(fuzzing))]
impl ApiView {
    /// The figures of a runtime snapshot; `elapsed` is the time since the agent started mining,
    /// which the snapshot does not carry.
    pub fn from_snapshot(snap: &MiningSnapshot, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64();
        let devices: Vec<DeviceView> = snap
            .miner
            .as_ref()
            .map(|m| {
                m.devices
                    .iter()
                    .map(|d| {
                        let total_mh = d.hashes_total as f64 / 1e6;
                        DeviceView {
                            class: match d.info.kind {
                                DeviceKind::Cpu => DeviceClass::Cpu,
                                DeviceKind::Gpu => DeviceClass::Gpu,
                                DeviceKind::UsbAsic | DeviceKind::LanAsic => DeviceClass::Asc,
                            },
                            name: d.info.name.clone(),
                            id: d.info.id.0.clone(),
                            enabled: true,
                            rates: Rates {
                                av: if secs > 0.0 { total_mh / secs } else { 0.0 },
                                s5: mhs(d.rates.avg_5s_hps),
                                m1: mhs(d.rates.avg_1m_hps),
                                m15: mhs(d.rates.avg_15m_hps),
                            },
                            accepted: d.shares,
                            hardware_errors: d.hardware_errors,
                            temperature: d.sensors.temperature_celsius,
                            fan_rpm: d.sensors.fan_rpm,
                            total_mh,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let current = snap.client.as_ref().and_then(|c| c.current);
        let pools: Vec<PoolView> = snap
            .client
            .as_ref()
            .map(|c| {
                c.pools
                    .iter()
                    .enumerate()
                    .map(|(i, p)| PoolView {
                        url: p.url.clone(),
                        user: p.user.clone(),
                        status: pool_status(p.state),
                        priority: p.priority,
                        active: current == Some(i),
                        getworks: p.jobs,
                        accepted: p.shares.accepted,
                        rejected: p.shares.rejected_total(),
                        stale: p.shares.stale,
                        failures: p.failures,
                        last_share_time: 0,
                        difficulty: p.difficulty.unwrap_or(0.0),
                        difficulty_accepted: p.shares.accepted_difficulty,
                        best_share: p.shares.best_difficulty,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let total_mh: f64 = devices.iter().map(|d| d.total_mh).sum();
        let rates = snap.miner.as_ref().map(|m| m.rates).unwrap_or_default();
        Self {
            elapsed_secs: elapsed.as_secs(),
            algorithm: snap.algorithm.map(|a| a.id().to_string()),
            rates: Rates {
                av: if secs > 0.0 { total_mh / secs } else { 0.0 },
                s5: mhs(rates.avg_5s_hps),
                m1: mhs(rates.avg_1m_hps),
                m15: mhs(rates.avg_15m_hps),
            },
            total_mh,
            found_blocks: 0,
            accepted: snap.shares.accepted,
            rejected: snap.shares.rejected,
            stale: snap.shares.stale,
            hardware_errors: devices.iter().map(|d| d.hardware_errors).sum(),
            difficulty_accepted: pools.iter().map(|p| p.difficulty_accepted).sum(),
            best_share: pools.iter().map(|p| p.best_share).fold(0.0, f64::max),
            devices,
            pools,
        }
    }
}

/// A field value; reals carry their decimals as cgminer prints them.
#[derive(Debug, Clone)]
enum Val {
    Str(String),
    Int(u64),
    Real(f64, usize),
    Bool(bool),
}

/// One entry of a section: `LABEL` or `LABEL=index`, then fields.
struct Entry {
    label: &'static str,
    index: Option<usize>,
    fields: Vec<(&'static str, Val)>,
}

/// A reply: its status and, on success, one section of entries.
struct Reply {
    success: bool,
    code: u32,
    msg: String,
    /// JSON key of the section (`SUMMARY`, `POOLS`…) and its entries.
    section: Option<(&'static str, Vec<Entry>)>,
}

impl Reply {
    fn error(code: u32, msg: impl Into<String>) -> Self {
        Self {
            success: false,
            code,
            msg: msg.into(),
            section: None,
        }
    }

    fn ok(code: u32, msg: impl Into<String>, key: &'static str, entries: Vec<Entry>) -> Self {
        Self {
            success: true,
            code,
            msg: msg.into(),
            section: Some((key, entries)),
        }
    }
}

/// Backslash-escapes cgminer's text separators so a value cannot break the framing, and drops
/// NUL, which ends a reply on the wire (a pool user from the server's config may hold one; the
/// `cgminer_api` fuzz target found a text `pools` reply cut short by it).
fn escape_text(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\0' => {}
            ',' | '|' | '=' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
}

fn real(v: f64, decimals: usize) -> String {
    // NaN/inf are not JSON numbers; a broken meter must not break the reply.
    let v = if v.is_finite() { v } else { 0.0 };
    format!("{v:.decimals$}")
}

fn json_str(s: &str, out: &mut String) {
    // serde_json's string escaping cannot fail for a &str.
    out.push_str(&serde_json::to_string(s).expect("BUG: a str always serializes"));
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn description() -> String {
    format!("rigfleet {AGENT_VERSION}")
}

fn render_text(reply: &Reply, when: u64, out: &mut String) {
    let _ = write!(
        out,
        "STATUS={},When={when},Code={},Msg=",
        if reply.success { 'S' } else { 'E' },
        reply.code
    );
    escape_text(&reply.msg, out);
    out.push_str(",Description=");
    escape_text(&description(), out);
    out.push('|');
    if let Some((_, entries)) = &reply.section {
        for e in entries {
            out.push_str(e.label);
            if let Some(i) = e.index {
                let _ = write!(out, "={i}");
            }
            for (k, v) in &e.fields {
                out.push(',');
                out.push_str(k);
                out.push('=');
                match v {
                    Val::Str(s) => escape_text(s, out),
                    Val::Int(n) => {
                        let _ = write!(out, "{n}");
                    }
                    Val::Real(r, d) => out.push_str(&real(*r, *d)),
                    Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                }
            }
            out.push('|');
        }
    }
}

/// The reply as a JSON object without the closing brace, so a caller adds `"id":1}`.
fn render_json_body(reply: &Reply, when: u64, out: &mut String) {
    let _ = write!(
        out,
        "{{\"STATUS\":[{{\"STATUS\":\"{}\",\"When\":{when},\"Code\":{},\"Msg\":",
        if reply.success { 'S' } else { 'E' },
        reply.code
    );
    json_str(&reply.msg, out);
    out.push_str(",\"Description\":");
    json_str(&description(), out);
    out.push_str("}],");
    if let Some((key, entries)) = &reply.section {
        let _ = write!(out, "\"{key}\":[");
        for (n, e) in entries.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push('{');
            let mut first = true;
            if let Some(i) = e.index {
                let _ = write!(out, "\"{}\":{i}", e.label);
                first = false;
            }
            for (k, v) in &e.fields {
                if !first {
                    out.push(',');
                }
                first = false;
                json_str(k, out);
                out.push(':');
                match v {
                    Val::Str(s) => json_str(s, out),
                    Val::Int(n) => {
                        let _ = write!(out, "{n}");
                    }
                    Val::Real(r, d) => out.push_str(&real(*r, *d)),
                    Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                }
            }
            out.push('}');
        }
        out.push_str("],");
    }
}

fn render_json(reply: &Reply, when: u64) -> String {
    let mut out = String::new();
    render_json_body(reply, when, &mut out);
    out.push_str("\"id\":1}");
    out
}

fn s(v: &str) -> Val {
    Val::Str(v.to_string())
}

fn yn(b: bool) -> Val {
    s(if b { "Y" } else { "N" })
}

fn summary(v: &ApiView) -> Reply {
    let fields = vec![
        ("Elapsed", Val::Int(v.elapsed_secs)),
        ("MHS av", Val::Real(v.rates.av, 2)),
        ("MHS 5s", Val::Real(v.rates.s5, 2)),
        ("MHS 1m", Val::Real(v.rates.m1, 2)),
        ("MHS 15m", Val::Real(v.rates.m15, 2)),
        ("Found Blocks", Val::Int(v.found_blocks)),
        (
            "Getworks",
            Val::Int(v.pools.iter().map(|p| p.getworks).sum()),
        ),
        ("Accepted", Val::Int(v.accepted)),
        ("Rejected", Val::Int(v.rejected)),
        ("Hardware Errors", Val::Int(v.hardware_errors)),
        (
            "Utility",
            Val::Real(per_minute(v.accepted, v.elapsed_secs), 2),
        ),
        ("Stale", Val::Int(v.stale)),
        ("Total MH", Val::Real(v.total_mh, 4)),
        ("Difficulty Accepted", Val::Real(v.difficulty_accepted, 8)),
        ("Best Share", Val::Real(v.best_share, 0)),
        (
            "Pool Rejected%",
            Val::Real(percent(v.rejected, v.accepted + v.rejected + v.stale), 4),
        ),
        (
            "Pool Stale%",
            Val::Real(percent(v.stale, v.accepted + v.rejected + v.stale), 4),
        ),
    ];
    Reply::ok(
        MSG_SUMM,
        "Summary",
        "SUMMARY",
        vec![Entry {
            label: "SUMMARY",
            index: None,
            fields,
        }],
    )
}

fn per_minute(n: u64, secs: u64) -> f64 {
    if secs == 0 {
        0.0
    } else {
        n as f64 * 60.0 / secs as f64
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn devs(v: &ApiView) -> Reply {
    if v.devices.is_empty() {
        return Reply::error(MSG_NODEVS, "No GPUs/ASCs/PGAs");
    }
    // cgminer numbers each class separately (ASC=0, GPU=0…).
    let mut counters = [0usize; 4];
    let entries = v
        .devices
        .iter()
        .map(|d| {
            let n = &mut counters[d.class as usize];
            let index = *n;
            *n += 1;
            let mut fields = vec![
                ("Name", s(&d.name)),
                ("ID", Val::Int(index as u64)),
                ("Enabled", yn(d.enabled)),
                ("Status", s(if d.enabled { "Alive" } else { "Dead" })),
            ];
            if let Some(t) = d.temperature {
                fields.push(("Temperature", Val::Real(f64::from(t), 2)));
            }
            if let Some(rpm) = d.fan_rpm {
                fields.push(("Fan Speed", Val::Int(u64::from(rpm))));
            }
            fields.extend([
                ("MHS av", Val::Real(d.rates.av, 2)),
                ("MHS 5s", Val::Real(d.rates.s5, 2)),
                ("MHS 1m", Val::Real(d.rates.m1, 2)),
                ("MHS 15m", Val::Real(d.rates.m15, 2)),
                ("Accepted", Val::Int(d.accepted)),
                ("Hardware Errors", Val::Int(d.hardware_errors)),
                (
                    "Utility",
                    Val::Real(per_minute(d.accepted, v.elapsed_secs), 2),
                ),
                ("Total MH", Val::Real(d.total_mh, 4)),
                ("Device Elapsed", Val::Int(v.elapsed_secs)),
                ("Device ID", s(&d.id)),
            ]);
            Entry {
                label: d.class.label(),
                index: Some(index),
                fields,
            }
        })
        .collect::<Vec<_>>();
    let msg = format!(
        "{} ASC(s) - {} GPU(s) - {} CPU(s)",
        counters[2], counters[1], counters[0]
    );
    Reply::ok(MSG_DEVS, msg, "DEVS", entries)
}

fn pools(v: &ApiView) -> Reply {
    if v.pools.is_empty() {
        return Reply::error(MSG_NOPOOL, "No pools");
    }
    let entries = v
        .pools
        .iter()
        .enumerate()
        .map(|(i, p)| Entry {
            label: "POOL",
            index: Some(i),
            fields: vec![
                ("URL", s(&p.url)),
                ("Status", s(p.status)),
                ("Priority", Val::Int(u64::from(p.priority))),
                ("Quota", Val::Int(1)),
                ("Long Poll", s("N")),
                ("Getworks", Val::Int(p.getworks)),
                ("Accepted", Val::Int(p.accepted)),
                ("Rejected", Val::Int(p.rejected)),
                ("Stale", Val::Int(p.stale)),
                ("Get Failures", Val::Int(u64::from(p.failures))),
                ("User", s(&p.user)),
                ("Last Share Time", Val::Int(p.last_share_time)),
                ("Diff", Val::Real(p.difficulty, 8)),
                ("Difficulty Accepted", Val::Real(p.difficulty_accepted, 8)),
                ("Has Stratum", Val::Bool(true)),
                ("Stratum Active", Val::Bool(p.active)),
                ("Stratum URL", s(if p.active { &p.url } else { "" })),
                ("Stratum Difficulty", Val::Real(p.difficulty, 8)),
                ("Best Share", Val::Real(p.best_share, 0)),
                (
                    "Pool Rejected%",
                    Val::Real(percent(p.rejected, p.accepted + p.rejected + p.stale), 4),
                ),
                (
                    "Pool Stale%",
                    Val::Real(percent(p.stale, p.accepted + p.rejected + p.stale), 4),
                ),
            ],
        })
        .collect::<Vec<_>>();
    Reply::ok(
        MSG_POOL,
        format!("{} Pool(s)", v.pools.len()),
        "POOLS",
        entries,
    )
}

fn version() -> Reply {
    let fields = vec![
        ("CGMiner", s(AGENT_VERSION)),
        ("API", s(API_VERSION)),
        ("Miner", s(&description())),
    ];
    Reply::ok(
        MSG_VERSION,
        "CGMiner versions",
        "VERSION",
        vec![Entry {
            label: "VERSION",
            index: None,
            fields,
        }],
    )
}

fn config(v: &ApiView) -> Reply {
    let count = |c: DeviceClass| v.devices.iter().filter(|d| d.class == c).count() as u64;
    let fields = vec![
        ("ASC Count", Val::Int(count(DeviceClass::Asc))),
        ("GPU Count", Val::Int(count(DeviceClass::Gpu))),
        ("PGA Count", Val::Int(count(DeviceClass::Pga))),
        ("CPU Count", Val::Int(count(DeviceClass::Cpu))),
        ("Pool Count", Val::Int(v.pools.len() as u64)),
        // The Stratum client mines on the first live pool in priority order.
        ("Strategy", s("Failover")),
        ("Algorithm", s(v.algorithm.as_deref().unwrap_or(""))),
        ("OS", s(std::env::consts::OS)),
        ("Hotplug", s("None")),
    ];
    Reply::ok(
        MSG_MINECONFIG,
        "CGMiner config",
        "CONFIG",
        vec![Entry {
            label: "CONFIG",
            index: None,
            fields,
        }],
    )
}

fn stats(v: &ApiView) -> Reply {
    // cgminer's stats IDs name the device class and its per-class index (`ASC0`, `POOL1`).
    let mut counters = [0usize; 4];
    let devices = v.devices.iter().map(|d| {
        let n = &mut counters[d.class as usize];
        let id = format!("{}{}", d.class.label(), *n);
        *n += 1;
        (id, d.name.as_str(), d.id.as_str())
    });
    let pools = (v.pools.iter().enumerate()).map(|(i, p)| (format!("POOL{i}"), p.url.as_str(), ""));
    let mut entries: Vec<Entry> = devices
        .chain(pools)
        .enumerate()
        .map(|(i, (stats_id, name, id))| Entry {
            label: "STATS",
            index: Some(i),
            fields: vec![
                ("ID", Val::Str(stats_id)),
                ("Elapsed", Val::Int(v.elapsed_secs)),
                ("Calls", Val::Int(0)),
                ("Wait", Val::Real(0.0, 6)),
                ("Max", Val::Real(0.0, 6)),
                ("Min", Val::Real(99_999_999.0, 6)),
                ("Name", s(name)),
                ("Device ID", s(id)),
            ],
        })
        .collect();
    if entries.is_empty() {
        entries.push(Entry {
            label: "STATS",
            index: Some(0),
            fields: vec![("ID", s("rigfleet")), ("Elapsed", Val::Int(v.elapsed_secs))],
        });
    }
    Reply::ok(MSG_MINESTATS, "CGMiner stats", "STATS", entries)
}

/// How the request came, which is how the reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Text,
    Json,
}

/// Answers one command (no `+`).
fn answer_one(command: &str, view: &dyn Fn() -> ApiView, allow: &[String]) -> Reply {
    match command {
        "version" => version(),
        "summary" => summary(&view()),
        "devs" => devs(&view()),
        "pools" => pools(&view()),
        "stats" => stats(&view()),
        "config" => config(&view()),
        "privileged" if !allow.is_empty() => Reply {
            success: true,
            code: MSG_ACCOK,
            msg: "Privileged access OK".into(),
            section: None,
        },
        "privileged" => Reply::error(MSG_ACCDENY, "Access denied to 'privileged' command"),
        c if PRIVILEGED_COMMANDS.contains(&c) => {
            if allow.iter().any(|a| a == c) {
                // Allowed, but carrying it out needs the daemon's command path (see module docs).
                Reply::error(
                    MSG_INVCMD,
                    format!("Command '{c}' is allowed but not supported yet by rigfleet"),
                )
            } else {
                Reply::error(MSG_ACCDENY, format!("Access denied to '{c}' command"))
            }
        }
        _ => Reply::error(MSG_INVCMD, "Invalid command"),
    }
}

/// Parses a request and builds the whole reply, NUL terminator included. `pub(crate)` for the
/// fuzz target `cgminer_api` (`fuzz/`), which compiles this file into its own crate.
pub(crate) fn respond(request: &[u8], view: &dyn Fn() -> ApiView, allow: &[String]) -> Vec<u8> {
    let when = unix_now();
    // A terminator the client added (NUL, newline) is not part of the command.
    let end = request
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(request.len());
    let text = String::from_utf8_lossy(&request[..end]);
    let text = text.trim();
    let form = if text.starts_with('{') {
        Form::Json
    } else {
        Form::Text
    };
    let mut out = String::new();
    match form {
        Form::Text => {
            let command = text.split('|').next().unwrap_or("").trim();
            // cgminer joins commands in JSON only; in text a `+` makes an unknown command.
            render_text(&answer_one(command, view, allow), when, &mut out);
        }
        Form::Json => match parse_json(text) {
            Err(reply) => out = render_json(&reply, when),
            Ok(command) if command.contains('+') => match check_join(&command) {
                Err(reply) => out = render_json(&reply, when),
                Ok(()) => {
                    out.push('{');
                    for (n, part) in command.split('+').enumerate() {
                        if n > 0 {
                            out.push(',');
                        }
                        json_str(part, &mut out);
                        out.push_str(":[");
                        out.push_str(&render_json(&answer_one(part, view, allow), when));
                        out.push(']');
                    }
                    out.push_str(",\"id\":1}");
                }
            },
            Ok(command) => out = render_json(&answer_one(&command, view, allow), when),
        },
    }
    let mut bytes = out.into_bytes();
    bytes.push(0);
    bytes
}

/// Refuses a join of more than [`MAX_JOINED`] commands or one that names a command twice: each
/// part is a whole reply, so a short request must not multiply the work and the bytes.
fn check_join(command: &str) -> Result<(), Reply> {
    let mut seen: Vec<&str> = Vec::new();
    for part in command.split('+') {
        if seen.len() == MAX_JOINED {
            return Err(Reply::error(
                MSG_INVCMD,
                format!("Too many joined commands (at most {MAX_JOINED})"),
            ));
        }
        if seen.contains(&part) {
            let mut name: String = part.chars().take(32).collect();
            if name.len() < part.len() {
                name.push('…');
            }
            return Err(Reply::error(
                MSG_INVCMD,
                format!("Joined command '{name}' repeated"),
            ));
        }
        seen.push(part);
    }
    Ok(())
}

/// The command of a JSON request; the parameter is not used by any supported command.
fn parse_json(text: &str) -> Result<String, Reply> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| Reply::error(MSG_INVJSON, "Invalid JSON"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| Reply::error(MSG_INVJSON, "Invalid JSON"))?;
    match obj.get("command") {
        Some(serde_json::Value::String(c)) => Ok(c.trim().to_string()),
        _ => Err(Reply::error(MSG_MISCMD, "Missing JSON 'command'")),
    }
}

/// Whether the bytes so far make a whole request: a terminator, or a complete JSON document.
pub(crate) fn complete(buf: &[u8]) -> bool {
    buf.iter().any(|&b| b == 0 || b == b'\n')
        || (buf.first() == Some(&b'{') && serde_json::from_slice::<serde_json::Value>(buf).is_ok())
}

/// What reading a request gave.
enum Request {
    /// A whole request (possibly empty if the client sent nothing and closed).
    Whole(Vec<u8>),
    /// More than [`MAX_REQUEST`] bytes without an end; the rest is left unread.
    TooLarge(Vec<u8>),
    /// Nothing came in time.
    Silent,
}

async fn read_request(
    stream: &mut TcpStream,
    cfg: &ApiServerConfig,
    phase: &AtomicU8,
) -> std::io::Result<Request> {
    let deadline = tokio::time::Instant::now() + cfg.read_timeout;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        // Before the first byte wait up to the deadline; after it, a quiet gap ends the request.
        let wait_until = if buf.is_empty() {
            deadline
        } else {
            deadline.min(tokio::time::Instant::now() + cfg.idle_gap)
        };
        match tokio::time::timeout_at(wait_until, stream.read(&mut chunk)).await {
            Err(_) if buf.is_empty() => return Ok(Request::Silent),
            Err(_) => return Ok(Request::Whole(buf)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => return Ok(Request::Whole(buf)),
            Ok(Ok(n)) => {
                phase.store(PHASE_PARTIAL, Ordering::Release);
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_REQUEST {
                    return Ok(Request::TooLarge(buf));
                }
                if complete(&buf) {
                    return Ok(Request::Whole(buf));
                }
            }
        }
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    view: ViewSource,
    cfg: Arc<ApiServerConfig>,
    phase: Arc<AtomicU8>,
) {
    let request = read_request(&mut stream, &cfg, &phase).await;
    // From here on the accept loop does not close this connection to make room.
    phase.store(PHASE_ANSWERING, Ordering::Release);
    let reply = match request {
        Ok(Request::Whole(req)) => respond(&req, &*view, &cfg.privileged_allow),
        Ok(Request::TooLarge(head)) => {
            let msg = format!("Request too large (over {MAX_REQUEST} bytes)");
            let reply = Reply::error(MSG_INVCMD, msg);
            let mut out = if head.first() == Some(&b'{') {
                render_json(&reply, unix_now())
            } else {
                let mut s = String::new();
                render_text(&reply, unix_now(), &mut s);
                s
            }
            .into_bytes();
            out.push(0);
            out
        }
        Ok(Request::Silent) | Err(_) => return,
    };
    // A client that vanished mid-reply, or does not read it in time, is its own problem.
    let written = tokio::time::timeout(cfg.read_timeout, stream.write_all(&reply)).await;
    if matches!(written, Ok(Ok(()))) {
        let _ = stream.shutdown().await;
        // Closing with unread input makes the kernel send RST, which can destroy the reply in
        // flight; drain a little (bounded) so a slightly oversized request still gets its answer.
        let mut sink = [0u8; 4096];
        let mut drained = 0usize;
        let until = tokio::time::Instant::now() + Duration::from_millis(200);
        while drained < 64 * 1024 {
            match tokio::time::timeout_at(until, stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }
}

/// A running API server.
pub struct ApiServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Binds `addr` and serves until [`ApiServer::stop`] or drop of the runtime.
    pub async fn start(
        addr: SocketAddr,
        view: ViewSource,
        cfg: ApiServerConfig,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, view, Arc::new(cfg)));
        Ok(Self { addr, task })
    }

    /// Starts the server the local config asks for; `Ok(None)` when the API is off.
    pub async fn from_config(api: &ApiConfig, view: ViewSource) -> std::io::Result<Option<Self>> {
        match api.listen {
            ApiListen::Off => Ok(None),
            ApiListen::Addr(addr) => {
                let cfg = ApiServerConfig {
                    privileged_allow: api.privileged_allow.clone(),
                    ..ApiServerConfig::default()
                };
                Self::start(addr, view, cfg).await.map(Some)
            }
        }
    }

    /// The bound address (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting; connections being served finish on their own (bounded by the timeouts).
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connection being served, as the accept loop tracks it.
struct Slot {
    /// When it was accepted.
    since: tokio::time::Instant,
    /// `PHASE_*`: what it is doing.
    phase: Arc<AtomicU8>,
    /// Its task; aborting it closes the socket and frees its permit.
    task: tokio::task::AbortHandle,
}

/// When a slot may be closed to make room: never while answering.
fn evictable_at(slot: &Slot, idle_gap: Duration) -> Option<tokio::time::Instant> {
    match slot.phase.load(Ordering::Acquire) {
        PHASE_SILENT => Some(slot.since + idle_gap),
        PHASE_PARTIAL => Some(slot.since + idle_gap * PARTIAL_GRACE_GAPS),
        _ => None,
    }
}

/// Takes a connection permit. When none is free, the connection that may be closed soonest
/// (sent nothing for `idle_gap`, or only part of a request for [`PARTIAL_GRACE_GAPS`] gaps) is
/// closed to make room: a client that connects and says nothing must not hold a slot from one
/// that asks (40 silent sockets held `summary` for 10 s before). Connections already answering
/// are never cut; they end within the write deadline. `None` when the semaphore is closed.
async fn take_permit(
    limit: &Arc<Semaphore>,
    slots: &mut VecDeque<Slot>,
    idle_gap: Duration,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    loop {
        if let Ok(permit) = limit.clone().try_acquire_owned() {
            return Some(permit);
        }
        slots.retain(|s| !s.task.is_finished());
        let soonest = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| evictable_at(s, idle_gap).map(|at| (at, i)))
            .min();
        let Some((evict_at, i)) = soonest else {
            // Every slot is answering: one frees soon.
            return limit.clone().acquire_owned().await.ok();
        };
        if tokio::time::Instant::now() >= evict_at {
            if let Some(slot) = slots.remove(i) {
                tracing::debug!("local API: closing a connection that sent no request");
                slot.task.abort();
            }
            // The aborted task gives its permit back as soon as the runtime drops it.
            return limit.clone().acquire_owned().await.ok();
        }
        tokio::select! {
            permit = limit.clone().acquire_owned() => return permit.ok(),
            () = tokio::time::sleep_until(evict_at) => {}
        }
    }
}

async fn accept_loop(listener: TcpListener, view: ViewSource, cfg: Arc<ApiServerConfig>) {
    let limit = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let mut slots: VecDeque<Slot> = VecDeque::new();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // One accepted connection at most waits for its permit here; the others wait
                // in the listen backlog instead of becoming unbounded tasks.
                let Some(permit) = take_permit(&limit, &mut slots, cfg.idle_gap).await else {
                    return;
                };
                let view = view.clone();
                let cfg = cfg.clone();
                let phase = Arc::new(AtomicU8::new(PHASE_SILENT));
                let task_phase = phase.clone();
                let task = tokio::spawn(async move {
                    serve_connection(stream, view, cfg, task_phase).await;
                    drop(permit);
                });
                slots.retain(|s| !s.task.is_finished());
                slots.push_back(Slot {
                    since: tokio::time::Instant::now(),
                    phase,
                    task: task.abort_handle(),
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "local API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
