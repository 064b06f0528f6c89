//! Starting and stopping a server: data folder, database (created and migrated), signing key,
//! TLS, first admin account, telemetry writer, maintenance jobs, the live state rebuilt from the
//! database, then the listener. [`RunningServer::stop`] stops in the order that loses nothing:
//! no new connections, agent links closed, the writer flushed, the database closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::AppState;
use crate::config::ServerConfig;
use crate::db::{Role, Scope, Store, StoreError};
use crate::fleet::StatusJudge;
use crate::hub::live::LiveState;
use crate::hub::Hub;
use crate::ingest::{WriterMetrics, WriterOptions};
use crate::keys::ServerKey;
use crate::metrics::ServerMetrics;

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Data folder.
    #[error("data folder {path}: {source}")]
    DataDir {
        /// The folder.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Database.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// Signing key.
    #[error("server key: {0}")]
    Key(#[from] crate::keys::KeyError),
    /// TLS.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Listener.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// A started server.
pub struct RunningServer {
    /// The bound address (port 0 in the config becomes the real port).
    pub addr: SocketAddr,
    /// URL to reach it (`http://` or `https://`).
    pub url: String,
    /// The hub (tests and the CLI reach the store and key through it).
    pub hub: Arc<Hub>,
    /// `sha256:…` of the TLS certificate, when serving TLS.
    pub tls_fingerprint: Option<String>,
    /// Printed once on the first start: the admin login.
    pub first_admin: Option<(String, String)>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    maintenance: tokio::task::JoinHandle<()>,
    rollout_driver: tokio::task::JoinHandle<()>,
}

/// Starts a server with `config`.
pub async fn start(config: ServerConfig) -> Result<RunningServer, StartError> {
    let metrics_access = config
        .metrics_access()
        .map_err(|e| StartError::Other(e.to_string()))?;
    crate::files::create_private_dir(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    warn_if_exposed(&config.data_dir);
    let secrets = crate::secrets::SecretBox::load_or_create(&config.data_dir)
        .map_err(|e| StartError::Other(format!("secrets key: {e}")))?;
    let store = Store::open(&config.database_url())
        .await?
        .with_secrets(Arc::new(secrets));
    let sealed = store.seal_plaintext_secrets().await?;
    if sealed > 0 {
        tracing::info!(
            rows = sealed,
            "Secrets stored in plain text by an older version are sealed now"
        );
    }
    let key = ServerKey::load_or_create(&config.data_dir)?;
    let previous_key = ServerKey::load_previous(&config.data_dir)?;
    if let Some(previous) = &previous_key {
        tracing::info!(
            previous = %previous.fingerprint(),
            current = %key.fingerprint(),
            "Rigs that pin the previous server key are rolled over when they connect"
        );
    }
    let tls = crate::tls::setup(&config.tls, &config.data_dir)?;
    let first_admin = ensure_admin(&store).await?;

    let live = Arc::new(LiveState::default());
    let status = Arc::new(StatusJudge::default());
    status.load_settings(&store).await;
    status.follow(&live);
    let metrics = Arc::new(
        ServerMetrics::new(live.clone(), status.clone())
            .map_err(|e| StartError::Other(e.to_string()))?,
    );
    let writer = crate::ingest::spawn_writer(
        store.clone(),
        WriterOptions::default(),
        WriterMetrics {
            commit_seconds: metrics.write_batch_seconds.clone(),
            samples_written: metrics.samples_written.clone(),
            samples_duplicate: metrics.samples_duplicate.clone(),
            batches: metrics.write_batches.clone(),
            errors: metrics.errors.with_label_values(&["telemetry_write_batch"]),
            samples_time_flagged: metrics.samples_time_flagged.clone(),
            samples_dropped_by_agents: metrics.samples_dropped_by_agents.clone(),
        },
    );
    let hub = Arc::new(Hub::new(
        store.clone(),
        writer,
        key,
        previous_key,
        live,
        metrics,
        config.telemetry_interval_secs,
    ));
    let rigs = hub.rebuild_live_state().await?;
    let holder = format!("{}-{}", hostname(), crate::hub::random_hex(4));
    let retention = crate::db::Retention {
        raw_ms: config.retention.raw.as_millis() as i64,
        minute_ms: config.retention.minute.as_millis() as i64,
        hour_ms: config.retention.hour.as_millis() as i64,
    };
    let maintenance =
        crate::ingest::spawn_maintenance(store.clone(), Duration::from_secs(30), retention, holder);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = match &config.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => format!("{scheme}://{addr}"),
    };
    let tls_fingerprint = tls.as_ref().map(|t| t.cert_fingerprint.clone());
    let state = AppState {
        hub: hub.clone(),
        status,
        metrics_token: config.metrics_token.as_deref().map(Arc::from),
        public_url: url.clone(),
        tls_fingerprint: tls_fingerprint.clone(),
        enroll_limiter: Arc::default(),
    };
    let rollout_driver = crate::fleet::rollouts::spawn_driver(state.clone());
    let app = crate::app::router(state);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let server = tokio::spawn(crate::serve::serve(
        listener,
        app,
        tls.map(|t| t.config),
        shutdown_rx,
    ));
    tracing::info!(%url, rigs, database = ?store.kind(), "rigfleet server listening");
    tracing::info!(metrics = metrics_access.describe(), "Metrics access");
    Ok(RunningServer {
        addr,
        url,
        hub,
        tls_fingerprint,
        first_admin,
        shutdown,
        server,
        maintenance,
        rollout_driver,
    })
}

impl RunningServer {
    /// Stops accepting, closes agent links, flushes telemetry, closes the database.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        self.hub.disconnect_all("server shutting down");
        self.maintenance.abort();
        self.rollout_driver.abort();
        // Links finish their in-flight batches against the writer before it closes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.hub.writer.clone().shutdown().await;
        self.hub.store.close().await;
    }

    /// Makes an API token with `scope` for user `admin` (tests, scripts, the CLI).
    pub async fn create_api_token(&self, name: &str, scope: Scope) -> Result<String, StoreError> {
        create_api_token(&self.hub.store, name, scope).await
    }
}

/// Makes an API token owned by the first admin.
pub async fn create_api_token(
    store: &Store,
    name: &str,
    scope: Scope,
) -> Result<String, StoreError> {
    let admin = store
        .user_by_name("admin")
        .await?
        .ok_or(StoreError::NotFound)?;
    let (text, hash) = crate::auth::token::new_api_token();
    store
        .create_api_token(admin.id, name, &hash, &[scope])
        .await?;
    Ok(text)
}

/// On an empty database, makes the `admin` account with a random password (returned once).
async fn ensure_admin(store: &Store) -> Result<Option<(String, String)>, StartError> {
    if store.user_count().await? > 0 {
        return Ok(None);
    }
    let password = crate::hub::random_hex(12);
    let hash = hash_password(&password)?;
    store.create_user("admin", &hash, Role::Admin).await?;
    Ok(Some(("admin".to_string(), password)))
}

/// argon2id hash in PHC format ([`crate::auth::password::hash_password`], for the CLI, the demo
/// and tests).
pub fn hash_password(password: &str) -> Result<String, StartError> {
    crate::auth::password::hash_password(password).map_err(|e| StartError::Other(e.to_string()))
}

/// Why a folder holding keys and the database is open to others, if it is: it is readable,
/// writable or searchable by its group or by everyone.
pub fn exposure(dir: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| format!("mode {mode:o}"))
}

/// Warns at start when the data folder is open to its group or everyone (the keys and the
/// database are private files, but a folder others may list or enter is a mistake to fix).
fn warn_if_exposed(dir: &std::path::Path) {
    if let Some(why) = exposure(dir) {
        tracing::warn!(
            folder = %dir.display(),
            %why,
            "The data folder is open to its group or to everyone: chmod 700 it"
        );
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().chars().take(64).collect())
        .unwrap_or_else(|_| "server".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_open_data_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        crate::files::create_private_dir(&data).unwrap();
        assert_eq!(exposure(&data), None);
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(exposure(&data).as_deref(), Some("mode 755"));
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert!(exposure(&data).is_some());
    }
}
