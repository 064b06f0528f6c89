//! Storage: one [`Store`] over SQLite (the embedded default) or PostgreSQL. SQL is written once
//! where the dialects agree (sqlx's SQLite driver maps `$N` to the N-th bind, as PostgreSQL
//! does) and per backend where they do not. The schema lives in `migrations/{sqlite,postgres}`.

#[cfg(test)]
mod bench;
mod commands;
mod configs;
mod events;
mod layers;
mod locks;
pub mod packed;
pub(crate) mod rigs;
mod rollouts;
pub mod rollup;
pub(crate) mod row;
pub mod telemetry;
pub mod test_db;
mod tokens;
mod types;
mod users;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use layers::{GroupRow, LayerSnapshot, ProfileLayer, RigLayers, RigPlace};
pub use rollouts::{LayerEdits, NewRollout, RolloutRigRow, RolloutRow};
pub use rollup::{prune, run_rollups, PruneStats, Retention, RollupStats};
pub use tokens::TokenUseError;
pub use types::*;
pub use users::{TotpAttempt, UserSummary};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The migrations up to `max` (all when `None`).
fn migrator(all: &sqlx::migrate::Migrator, max: Option<i64>) -> sqlx::migrate::Migrator {
    let Some(max) = max else {
        return sqlx::migrate::Migrator {
            migrations: all.migrations.clone(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
    };
    sqlx::migrate::Migrator {
        migrations: all
            .migrations
            .iter()
            .filter(|m| m.version <= max)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..sqlx::migrate::Migrator::DEFAULT
    }
}

tokio::task_local! {
    /// Upgrade tests open a database as an older version of the server left it: migrations
    /// above this number are not run.
    pub static MAX_MIGRATION: i64;
}

fn max_migration() -> Option<i64> {
    MAX_MIGRATION.try_with(|v| *v).ok()
}

impl Store {
    /// Runs every migration not run yet (after a store opened under [`MAX_MIGRATION`]).
    pub async fn migrate_fully(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(p) => migrator(&SQLITE_MIGRATIONS, None).run(p).await?,
            Backend::Postgres(p) => migrator(&POSTGRES_MIGRATIONS, None).run(p).await?,
        }
        Ok(())
    }
}

/// Which database a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbKind {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The server's storage. Cheap to clone (pools are shared handles).
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) backend: Backend,
    /// Seals TOTP secrets and pool passwords at rest (`None`: stored as given, as tests that
    /// open a bare store do).
    pub(crate) secrets: Option<std::sync::Arc<crate::secrets::SecretBox>>,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database driver failed (connection, SQL, constraint…).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrating the schema failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The row asked for does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule refused the change.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The caller passed a value the store refuses (unknown sort column, out-of-range number…).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The telemetry transaction holding these samples failed; the agent resends them.
    #[error("telemetry batch not written: {0}")]
    BatchFailed(String),
    /// The database URL is not one this server understands.
    #[error("unsupported database url (expected sqlite:… or postgres://…)")]
    UnsupportedUrl,
}

impl StoreError {
    /// Maps a unique-constraint violation to [`StoreError::Conflict`], keeping other errors.
    pub(crate) fn conflict_on_unique(e: sqlx::Error, what: &str) -> StoreError {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(what.to_string())
            }
            _ => StoreError::Database(e),
        }
    }
}

/// Runs `$body` with `$pool` bound to the backend's pool. The body is compiled once per backend,
/// so the same SQL text and binds serve both.
macro_rules! dispatch {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::db::Backend::Sqlite($pool) => $body,
            $crate::db::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use dispatch;

/// How a write transaction starts. SQLite's default deferred `BEGIN` takes the write lock only
/// at the first write, and a transaction that read first then fails with SQLITE_BUSY instead
/// of waiting; `BEGIN IMMEDIATE` waits (busy_timeout) for the lock up front.
pub(crate) trait WriteBegin {
    fn write_begin(&self) -> &'static str;
}

impl WriteBegin for SqlitePool {
    fn write_begin(&self) -> &'static str {
        "BEGIN IMMEDIATE"
    }
}

impl WriteBegin for PgPool {
    fn write_begin(&self) -> &'static str {
        "BEGIN"
    }
}

/// Converts a u64 from the protocol to the signed 64-bit integer both databases store.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("{what} above 2^63-1")))
}

/// Converts a stored integer back to u64; a negative value means the row was damaged.
pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}")))
}

impl Store {
    /// Opens (creating a SQLite file when missing) and migrates the database at `url`:
    /// `sqlite:///abs/path.db`, `sqlite:relative.db?mode=rwc`, or `postgres://…`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            migrator(&POSTGRES_MIGRATIONS, max_migration())
                .run(&pool)
                .await?;
            Ok(Store {
                backend: Backend::Postgres(pool),
                secrets: None,
            })
        } else if url.starts_with("sqlite:") {
            Self::open_sqlite(SqliteConnectOptions::from_str(url)?).await
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    /// Opens (creating when missing) and migrates the SQLite file at `path`.
    pub async fn open_sqlite_file(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Invalid(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        Self::open_sqlite(SqliteConnectOptions::new().filename(path)).await
    }

    async fn open_sqlite(opts: SqliteConnectOptions) -> Result<Store, StoreError> {
        private_sqlite_files(opts.get_filename())?;
        // synchronous=FULL: in WAL mode NORMAL skips the fsync at commit, so a power cut could
        // lose a transaction whose samples were already acked to the agent (which then drops
        // them). Telemetry commits once per batch (about once a second), so FULL costs one
        // fsync per second, not one per sample.
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(15))
            .connect_with(opts)
            .await?;
        migrator(&SQLITE_MIGRATIONS, max_migration())
            .run(&pool)
            .await?;
        Ok(Store {
            backend: Backend::Sqlite(pool),
            secrets: None,
        })
    }

    /// This store with `secrets` sealing TOTP secrets and pool passwords from now on.
    pub fn with_secrets(mut self, secrets: std::sync::Arc<crate::secrets::SecretBox>) -> Store {
        self.secrets = Some(secrets);
        self
    }

    /// Which database this is.
    pub fn kind(&self) -> DbKind {
        match self.backend {
            Backend::Sqlite(_) => DbKind::Sqlite,
            Backend::Postgres(_) => DbKind::Postgres,
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, p => {
            sqlx::query("SELECT 1").execute(p).await?;
        });
        Ok(())
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        dispatch!(self, p => p.close().await)
    }

    /// Bytes the database occupies: SQLite pages in use (the WAL is checkpointed first, so
    /// the figure is the main file's), PostgreSQL `pg_database_size`.
    pub async fn db_size_bytes(&self) -> Result<u64, StoreError> {
        let bytes: i64 = match &self.backend {
            Backend::Sqlite(p) => {
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(p)
                    .await?;
                let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(p).await?;
                let size: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(p).await?;
                pages.saturating_mul(size)
            }
            Backend::Postgres(p) => {
                sqlx::query_scalar("SELECT pg_database_size(current_database())")
                    .fetch_one(p)
                    .await?
            }
        };
        to_u64(bytes, "database size")
    }
}

/// Makes the SQLite file mode 0600 before SQLite opens it (SQLite gives its -wal and -shm files
/// the mode of the database file), and takes group and other access away from files an older
/// version created 0644.
fn private_sqlite_files(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = path.as_os_str();
    // In-memory databases (sqlx names them `file:sqlx-in-memory-N`) have no file.
    if name.is_empty() || name == ":memory:" || name.to_string_lossy().starts_with("file:") {
        return Ok(());
    }
    let err = |e: std::io::Error| StoreError::Invalid(format!("{}: {e}", path.display()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        // A folder that does not exist yet: SQLite reports it in its own words.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = name.to_os_string();
        p.push(suffix);
        let p = std::path::PathBuf::from(p);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o077 != 0 => {
                let mode = m.permissions().mode() & 0o700;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(err)?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::test_db::test_backends;
    use super::*;

    #[tokio::test]
    async fn migrations_apply_and_reopening_is_idempotent() {
        for db in test_backends().await {
            db.store.ping().await.unwrap();
            let again = Store::open(&db.url).await.unwrap();
            again.ping().await.unwrap();
            assert_eq!(again.kind(), db.store.kind());
            assert_eq!(again.user_count().await.unwrap(), 0);
            assert!(again.db_size_bytes().await.unwrap() > 0);
            again.close().await;
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn sqlite_numbered_params_bind_by_number_and_may_repeat() {
        let db = test_db::TestDb::sqlite().await.unwrap();
        let Backend::Sqlite(p) = &db.store.backend else {
            panic!("not sqlite")
        };
        let (a, b, c): (i64, i64, String) = sqlx::query_as("SELECT $2, $1 + $1, $3")
            .bind(5_i64)
            .bind(7_i64)
            .bind("x")
            .fetch_one(p)
            .await
            .unwrap();
        assert_eq!((a, b, c.as_str()), (7, 10, "x"));
        db.cleanup().await;
    }

    #[tokio::test]
    async fn sqlite_opens_by_url_or_path_and_creates_the_file() {
        let db = test_db::TestDb::sqlite().await.unwrap();
        let dir = db.sqlite_path().unwrap().parent().unwrap().to_path_buf();
        let by_url = Store::open(&format!("sqlite:{}?mode=rwc", dir.join("u.db").display()))
            .await
            .unwrap();
        by_url.set_setting("k", "v").await.unwrap();
        by_url.close().await;
        let nested = dir.join("data").join("x.db");
        let by_path = Store::open_sqlite_file(&nested).await.unwrap();
        assert_eq!(by_path.kind(), DbKind::Sqlite);
        assert!(nested.exists());
        by_path.close().await;
        let again = Store::open(&format!("sqlite://{}", dir.join("u.db").display()))
            .await
            .unwrap();
        assert_eq!(again.get_setting("k").await.unwrap().as_deref(), Some("v"));
        again.close().await;
        db.cleanup().await;
    }

    #[tokio::test]
    async fn sqlite_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let store = Store::open_sqlite_file(&path).await.unwrap();
        store.set_setting("k", "v").await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        for suffix in ["-wal", "-shm"] {
            let p = dir.path().join(format!("p.db{suffix}"));
            assert!(p.exists(), "{suffix}");
            assert_eq!(mode(&p), 0o600, "{suffix}");
        }
        store.close().await;
        // A file an older version left 0644 is made private when opened again.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        assert_eq!(mode(&path), 0o600);
        store.close().await;
    }

    #[tokio::test]
    async fn in_memory_databases_leave_no_file() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        store.ping().await.unwrap();
        let stray = std::fs::read_dir(".")
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("file:"));
        assert!(!stray, "no file made for an in-memory database");
        store.close().await;
    }

    #[tokio::test]
    async fn unknown_urls_are_refused() {
        assert!(matches!(
            Store::open("mysql://x").await,
            Err(StoreError::UnsupportedUrl)
        ));
    }
}
