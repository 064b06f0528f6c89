//! `rigfleet-agent enroll`: register this rig with a server once.
//!
//! The token carries the SHA-256 of the server's Ed25519 key; the agent generates its own key
//! pair, posts its public key with the token, and accepts the answer only when the server key in
//! it matches the token's fingerprint. Only then is anything written: the identity (key 0600,
//! `identity.json` 0600 with the server URL, the pinned key and the TLS trust given here, so
//! `run` needs no further step).

pub mod http;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use rigfleet_proto::agent_to_server::DeviceDescriptor;
use rigfleet_proto::enroll::{
    ApiError, EnrollRequest, EnrollResponse, EnrollRig, EnrollToken, ENROLL_PATH,
};
use rigfleet_proto::signing::decode_hex_array;

use crate::daemon::config::{self, Overrides};
use crate::daemon::identity::{
    check_server_key, create_private_dir, generate_key, Identity, IDENTITY_FILE, KEY_FILE,
};
use crate::daemon::link::target::{LinkTls, ServerUrl};
use crate::daemon::mining::CPU_DEVICE_ID;
use crate::daemon::telemetry::host::HostSample;
use crate::daemon::telemetry::SysRoot;

/// Time for the whole enrollment request.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long enrollment waits out the server's per-address rate limit (`429`) before it gives up.
pub const RATE_LIMIT_PATIENCE: Duration = Duration::from_secs(300);

/// Options of `enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The server's URL (`https://host:port`).
    #[arg(long, value_name = "URL")]
    server: String,
    /// The enrollment token from the server (`rf1.…`).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "RIGFLEET_ENROLL_TOKEN",
        hide_env_values = true
    )]
    token: String,
    /// The local config file (for the state folder and TLS trust); default
    /// /etc/rigfleet/agent.toml, which may be absent.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Folder the identity is written to.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// A PEM CA bundle to trust for the server's certificate.
    #[arg(long, value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// Pin the server's certificate: `sha256:<64 hex>` of its DER bytes.
    #[arg(long, value_name = "sha256:HEX")]
    tls_fingerprint: Option<String>,
    /// The rig name proposed to the server (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Replace an existing identity (the rig then enrolls as a new agent).
    #[arg(long)]
    force: bool,
}

/// What [`enroll`] needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// Server URL.
    pub server: String,
    /// Token text.
    pub token: String,
    /// Where the identity goes.
    pub state_dir: PathBuf,
    /// TLS trust.
    pub tls: LinkTls,
    /// Host name sent.
    pub hostname: String,
    /// Rig name proposed.
    pub rig_name: String,
    /// Devices reported.
    pub devices: Vec<DeviceDescriptor>,
    /// Overwrite an existing identity.
    pub force: bool,
}

/// A completed enrollment.
#[derive(Debug)]
pub struct Enrolled {
    /// The saved identity.
    pub identity: Identity,
    /// Whether an operator must approve the rig first.
    pub pending_approval: bool,
}

/// The CLI command.
pub fn run(args: EnrollArgs) -> Result<()> {
    let config = config::load(&Overrides {
        config_path: args.config.clone(),
        server_url: Some(args.server.clone()),
        state_dir: args.state_dir.clone(),
        api_listen: None,
    })?;
    crate::mine::init_tracing();
    let host = HostSample::read(&SysRoot::system());
    let hostname = host.hostname.clone().unwrap_or_else(|| "rig".to_string());
    let options = EnrollOptions {
        server: args.server,
        token: args.token,
        state_dir: config.state_dir.clone(),
        tls: LinkTls {
            ca_file: args.ca_file.or(config.link.ca_file),
            cert_fingerprint: args.tls_fingerprint.or(config.link.cert_fingerprint),
        },
        rig_name: args.name.unwrap_or_else(|| hostname.clone()),
        hostname,
        devices: vec![cpu_device(host.cpu_model.as_deref())],
        force: args.force,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let enrolled = runtime.block_on(enroll(&options))?;
    let id = &enrolled.identity;
    println!("enrolled as agent {}", id.agent_id);
    for rig in &id.rig_ids {
        println!("rig id: {rig}");
    }
    println!("server key pinned: {}", id.server_key_fingerprint());
    println!("identity saved in {}", options.state_dir.display());
    if enrolled.pending_approval {
        println!("an operator must approve this rig on the server before it can connect");
    }
    println!("start the agent with: rigfleet-agent run");
    Ok(())
}

/// The engine's CPU device as the server sees it.
pub fn cpu_device(model: Option<&str>) -> DeviceDescriptor {
    let model: String = model.unwrap_or("CPU").chars().take(200).collect();
    DeviceDescriptor {
        device_id: CPU_DEVICE_ID.into(),
        kind: "cpu".into(),
        model,
        algorithms: vec!["sha256d".into(), "scrypt".into()],
    }
}

/// Whether `dir` already holds (part of) an identity.
pub fn has_identity(dir: &Path) -> bool {
    dir.join(KEY_FILE).exists() || dir.join(IDENTITY_FILE).exists()
}

/// Enrolls and saves the identity; nothing is written unless the server proved it holds the
/// key the token names.
pub async fn enroll(options: &EnrollOptions) -> Result<Enrolled> {
    if has_identity(&options.state_dir) && !options.force {
        bail!(
            "{} already holds an identity; pass --force to enroll again as a new agent",
            options.state_dir.display()
        );
    }
    let token = EnrollToken::parse(&options.token).context("enrollment token")?;
    let url = ServerUrl::parse(&options.server).map_err(anyhow::Error::msg)?;
    if !url.tls && !url.is_loopback() {
        tracing::warn!(server = %options.server, "Enrolling over plain http: use https outside a test bench");
    }
    let tls = options
        .tls
        .client_config(&url)
        .context("TLS settings for the server")?;
    let key = generate_key()?;
    let public_key = rigfleet_engine::hex::encode(key.verifying_key().as_bytes());
    let request = EnrollRequest {
        token: token.to_text(),
        agent_public_key: public_key,
        hostname: options.hostname.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        rigs: vec![EnrollRig {
            name: options.rig_name.clone(),
            devices: options.devices.clone(),
        }],
    };
    request.validate().context("enrollment request")?;
    let body = serde_json::to_vec(&request).context("encoding the request")?;
    // The server limits enrollment attempts per address (a farm behind one NAT shares one):
    // a `429` is waited out, with backoff, for up to `RATE_LIMIT_PATIENCE`.
    let started = std::time::Instant::now();
    let mut pause = Duration::from_secs(1);
    let response = loop {
        let response = http::post_json(&url, tls.clone(), ENROLL_PATH, &body, ENROLL_TIMEOUT)
            .await
            .with_context(|| format!("enrollment request to {}", options.server))?;
        if response.status != 429 || started.elapsed() + pause > RATE_LIMIT_PATIENCE {
            break response;
        }
        tracing::info!(
            wait_secs = pause.as_secs(),
            "The server limits enrollments from this address; waiting"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    };
    if !(200..300).contains(&response.status) {
        match serde_json::from_slice::<ApiError>(&response.body) {
            Ok(e) => bail!(
                "the server refused enrollment ({}): {}: {}",
                response.status,
                clip(&e.code),
                clip(&e.message)
            ),
            Err(_) => bail!("the server answered HTTP {}", response.status),
        }
    }
    let answer: EnrollResponse = serde_json::from_slice(&response.body)
        .map_err(|e| anyhow::anyhow!("the server's answer is not an enrollment response: {e}"))?;
    answer.agent_id.validate("agent_id")?;
    if answer.rig_ids.len() != request.rigs.len() {
        bail!(
            "the server returned {} rig ids for {} rigs",
            answer.rig_ids.len(),
            request.rigs.len()
        );
    }
    for rig in &answer.rig_ids {
        rig.validate("rig_ids")?;
    }
    let server_bytes = decode_hex_array::<32>(&answer.server_public_key)
        .context("the server's public key is not 32 hex bytes")?;
    // The check that makes the token worth having: before anything is saved.
    let server_key = check_server_key(&token.server_key_fingerprint(), &server_bytes)
        .context("the server is not the one the token names; nothing was saved")?;
    let mut identity = Identity::new(
        answer.agent_id,
        answer.rig_ids,
        options.server.trim().to_string(),
        server_key,
        key,
    );
    identity.tls_ca_file = options.tls.ca_file.clone();
    identity.tls_cert_fingerprint = options.tls.cert_fingerprint.clone();
    create_private_dir(&options.state_dir)?;
    identity.save(&options.state_dir)?;
    // A config applied as another rig is not this rig's, and its version would make the new
    // server's versions look old: the agent would refuse them (issue 11, item 8).
    crate::daemon::desired::forget(&options.state_dir)?;
    Ok(Enrolled {
        identity,
        pending_approval: answer.pending_approval,
    })
}

fn clip(s: &str) -> String {
    s.chars().take(512).filter(|c| !c.is_control()).collect()
}
