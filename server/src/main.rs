//! `rigfleet-server`: serve the fleet (default), or make enrollment and API tokens.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use rigfleet_server::api::tokens::{create_token, enroll_command, TokenRequest};
use rigfleet_server::config::{self, Overrides};
use rigfleet_server::db::{Scope, Store};

/// The rigfleet server.
#[derive(Debug, Parser)]
#[command(name = "rigfleet-server", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Args)]
struct CommonArgs {
    /// TOML config file.
    #[arg(long, env = "RIGFLEET_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Listen address (default 127.0.0.1:8080).
    #[arg(long, env = "RIGFLEET_LISTEN", global = true)]
    listen: Option<String>,
    /// Data folder: SQLite file, server key, generated certificate (default ./rigfleet-data).
    #[arg(long, env = "RIGFLEET_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// `postgres://…` to use PostgreSQL instead of the embedded SQLite file.
    #[arg(
        long,
        env = "RIGFLEET_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "RIGFLEET_TLS_CERT", global = true)]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "RIGFLEET_TLS_KEY", global = true)]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (a reverse proxy terminates TLS).
    #[arg(long, env = "RIGFLEET_PLAIN_HTTP", global = true)]
    plain_http: bool,
    /// Serve TLS with a generated certificate even on loopback.
    #[arg(long, env = "RIGFLEET_SELF_SIGNED", global = true)]
    self_signed: bool,
    /// URL agents and people use to reach this server (shown in enroll commands).
    #[arg(long, env = "RIGFLEET_PUBLIC_URL", global = true)]
    public_url: Option<String>,
    /// Bearer token Prometheus must send for /metrics.
    #[arg(
        long,
        env = "RIGFLEET_METRICS_TOKEN",
        global = true,
        hide_env_values = true
    )]
    metrics_token: Option<String>,
    /// Leave /metrics open to anyone on a non-loopback address (without it, such an address
    /// needs --metrics-token and the server refuses to start).
    #[arg(long, env = "RIGFLEET_PUBLIC_METRICS", global = true)]
    public_metrics: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the fleet (the default).
    Serve,
    /// A whole fleet on this machine: the server, two test pools and three mining agents.
    Demo(rigfleet_server::demo::DemoArgs),
    /// Enrollment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// API tokens for scripts.
    #[command(subcommand)]
    ApiToken(ApiTokenCommand),
    /// The server's order-signing key.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Shows the signing key, a previous key kept for rollover, and which key the rigs pin.
    Status,
    /// Makes a new signing key; rigs are rolled over to it by a signed order when they next
    /// connect (restart the server to start using it).
    Rotate {
        /// Drop a previous key that rigs may still pin (they must then enroll again).
        #[arg(long)]
        force: bool,
    },
    /// Forgets the previous key once every rig has rolled over.
    RetirePrevious,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make an enrollment token and print the command to run on rigs.
    Create {
        /// Rigs that may enroll with it (default: unlimited until it expires).
        #[arg(long)]
        max_uses: Option<i64>,
        /// Hours until it expires (0: never).
        #[arg(long, default_value_t = 24)]
        expires_in_hours: u64,
        /// Group the rigs join.
        #[arg(long)]
        group: Option<String>,
        /// Rigs wait for an admin's approval.
        #[arg(long)]
        requires_approval: bool,
        /// A note for the token list.
        #[arg(long, default_value = "")]
        note: String,
    },
}

#[derive(Debug, Subcommand)]
enum ApiTokenCommand {
    /// Make an API token (printed once).
    Create {
        /// Its name in lists and the audit log.
        #[arg(long)]
        name: String,
        /// read, write or admin.
        #[arg(long, default_value = "read")]
        scope: String,
    },
}

impl CommonArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            config_path: self.config.clone(),
            listen: self.listen.clone(),
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            plain_http: self.plain_http,
            self_signed: self.self_signed,
            public_url: self.public_url.clone(),
            metrics_token: self.metrics_token.clone(),
            public_metrics: self.public_metrics,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = config::load(&cli.common.overrides())?;
    let _trimmer = rigfleet_server::heap::spawn_trimmer(std::time::Duration::from_secs(30));
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Demo(args) => rigfleet_server::demo::run(args).await,
        Command::Token(TokenCommand::Create {
            max_uses,
            expires_in_hours,
            group,
            requires_approval,
            note,
        }) => {
            let store = Store::open(&config.database_url()).await?;
            let key = rigfleet_server::keys::ServerKey::load_or_create(&config.data_dir)?;
            let tls = rigfleet_server::tls::setup(&config.tls, &config.data_dir)?;
            let req = TokenRequest {
                max_uses,
                expires_in_hours: Some(expires_in_hours),
                group,
                requires_approval,
                note,
            };
            let (row, text) = create_token(&store, &key, &req, rigfleet_server::now_ms()).await?;
            store.close().await;
            let fp = tls.map(|t| t.cert_fingerprint);
            println!(
                "token {} (uses: {}, expires: {})",
                row.token_id,
                row.max_uses
                    .map_or("unlimited".to_string(), |n| n.to_string()),
                row.expires_at_ms
                    .map_or("never".to_string(), |t| format!("{t} (Unix ms)"))
            );
            println!("{text}");
            println!();
            println!("On each rig:");
            println!(
                "  {}",
                enroll_command(&config.public_url(), &text, fp.as_deref())
            );
            Ok(())
        }
        Command::Key(cmd) => key_command(&config, cmd).await,
        Command::ApiToken(ApiTokenCommand::Create { name, scope }) => {
            let scope = Scope::parse(&scope)
                .ok_or_else(|| anyhow::anyhow!("--scope must be read, write or admin"))?;
            let store = Store::open(&config.database_url()).await?;
            let text = rigfleet_server::startup::create_api_token(&store, &name, scope).await?;
            store.close().await;
            println!("{text}");
            Ok(())
        }
    }
}

async fn key_command(config: &config::ServerConfig, cmd: KeyCommand) -> anyhow::Result<()> {
    use rigfleet_server::keys::{retire_previous, rotate, ServerKey};
    match cmd {
        KeyCommand::Rotate { force } => {
            let r = rotate(&config.data_dir, force)?;
            println!("new signing key   {}", r.current);
            println!("previous key kept {}", r.previous);
            println!("Restart the server: connected rigs reconnect and are rolled over to the new");
            println!("key. Run `rigfleet-server key status` to follow them, then");
            println!("`rigfleet-server key retire-previous` once none pins the previous key.");
            Ok(())
        }
        KeyCommand::RetirePrevious => {
            match retire_previous(&config.data_dir)? {
                Some(fp) => println!(
                    "previous key {fp} removed; rigs that still pin it are refused (restart the server)"
                ),
                None => println!("no previous key is kept"),
            }
            Ok(())
        }
        KeyCommand::Status => {
            let current = ServerKey::load_or_create(&config.data_dir)?.fingerprint();
            let previous = ServerKey::load_previous(&config.data_dir)?.map(|k| k.fingerprint());
            let store = Store::open(&config.database_url()).await?;
            let counts = store.agents_by_pinned_key().await;
            store.close().await;
            println!("signing key  {current}");
            if let Some(p) = &previous {
                println!("previous key {p}");
            }
            let counts = counts?;
            println!("agents by the key they last proved themselves against:");
            if counts.is_empty() {
                println!("  (no agents enrolled)");
            }
            for (fp, n) in counts {
                let label = match fp.as_deref() {
                    Some(f) if f == current => format!("{f} (current)"),
                    Some(f) if Some(f) == previous.as_deref() => format!("{f} (previous)"),
                    Some(f) => format!("{f} (retired: these rigs must enroll again)"),
                    None => "not connected since the server recorded it".to_string(),
                };
                println!("  {n:>6}  {label}");
            }
            Ok(())
        }
    }
}

async fn serve(config: config::ServerConfig) -> anyhow::Result<()> {
    let server = rigfleet_server::start(config).await?;
    println!("rigfleet server: {}", server.url);
    println!("  signing key {}", server.hub.key.fingerprint());
    if let Some(fp) = &server.tls_fingerprint {
        println!("  TLS certificate {fp}");
    }
    if let Some((user, password)) = &server.first_admin {
        println!(
            "  first start: log in as {user} with password {password} (shown once; change it)"
        );
    }
    shutdown_signal().await;
    tracing::info!("Shutting down");
    server.stop().await;
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
