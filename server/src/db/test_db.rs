//! Throwaway databases for tests (this crate's and the end-to-end crate's): a SQLite file in a
//! fresh temporary folder, and a fresh PostgreSQL database when a server is reachable. Storage
//! tests loop over [`test_backends`] so each runs on both.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::Executor;

use super::{Store, StoreError};

/// Where tests find PostgreSQL unless `RIGFLEET_TEST_PG_URL` names an admin URL.
const DEFAULT_PG_URLS: &[&str] = &[
    "postgres://postgres@127.0.0.1:5432/test",
    "postgres://root@127.0.0.1:5432/test",
    "postgres://postgres@127.0.0.1:5432/postgres",
];

/// A database that lives as long as the test.
pub struct TestDb {
    pub store: Store,
    /// The URL the store was opened with (to open it again).
    pub url: String,
    dir: Option<PathBuf>,
    pg: Option<(String, String)>,
    cleaned: bool,
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // Test databases only, but no clock-derived fallback anywhere in the server (issue 11,
    // item 12): a test cannot run without randomness anyway.
    if let Err(error) = getrandom::getrandom(&mut buf) {
        panic!("the operating system's random source failed: {error}");
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Replaces the database name in a PostgreSQL URL.
fn with_database(admin_url: &str, db: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

async fn drop_pg_database(admin_url: &str, name: &str) -> Result<(), StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(admin_url)
        .await?;
    // Names are generated here (hex), never user input.
    pool.execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
        .await?;
    pool.close().await;
    Ok(())
}

impl TestDb {
    /// A SQLite file in a new temporary folder.
    pub async fn sqlite() -> Result<TestDb, StoreError> {
        let dir = std::env::temp_dir().join(format!("rigfleet-test-{}", random_hex(8)));
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Invalid(format!("temp dir: {e}")))?;
        let path = dir.join("rigfleet.db");
        let store = Store::open_sqlite_file(&path).await?;
        Ok(TestDb {
            store,
            url: format!("sqlite://{}", path.display()),
            dir: Some(dir),
            pg: None,
            cleaned: false,
        })
    }

    /// A fresh database `rigfleet_t_<random>` created through `admin_url`.
    pub async fn postgres(admin_url: &str) -> Result<TestDb, StoreError> {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect(admin_url)
            .await?;
        let name = format!("rigfleet_t_{}", random_hex(8));
        admin
            .execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await?;
        admin.close().await;
        let url = with_database(admin_url, &name);
        match Store::open(&url).await {
            Ok(store) => Ok(TestDb {
                store,
                url,
                dir: None,
                pg: Some((admin_url.to_string(), name)),
                cleaned: false,
            }),
            Err(e) => {
                let _ = drop_pg_database(admin_url, &name).await;
                Err(e)
            }
        }
    }

    /// The SQLite file's path (None for PostgreSQL).
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join("rigfleet.db"))
    }

    /// Closes the store and deletes the database (folder or PostgreSQL database).
    pub async fn cleanup(mut self) {
        self.store.close().await;
        if let Some((admin, name)) = self.pg.take() {
            if let Err(e) = drop_pg_database(&admin, &name).await {
                eprintln!("test database {name} not dropped: {e}");
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        self.cleaned = true;
    }
}

impl Drop for TestDb {
    /// A test that panicked before `cleanup` still leaves nothing behind.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some((admin, name)) = self.pg.take() {
            // Own thread and runtime: Drop may run inside (or outside) an async runtime.
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = rt.block_on(drop_pg_database(&admin, &name));
                }
            })
            .join();
        }
    }
}

/// SQLite always; PostgreSQL when reachable (`RIGFLEET_TEST_PG_URL` overrides the admin URL),
/// otherwise a loud line on stderr says it was skipped (a panic when `RIGFLEET_REQUIRE_PG` is set).
pub async fn test_backends() -> Vec<TestDb> {
    let mut out = Vec::new();
    match TestDb::sqlite().await {
        Ok(db) => out.push(db),
        Err(e) => panic!("cannot create a SQLite test database: {e}"),
    }
    let urls: Vec<String> = match std::env::var("RIGFLEET_TEST_PG_URL") {
        Ok(u) if !u.is_empty() => vec![u],
        _ => DEFAULT_PG_URLS.iter().map(|s| s.to_string()).collect(),
    };
    let mut errors = Vec::new();
    for url in &urls {
        match TestDb::postgres(url).await {
            Ok(db) => {
                out.push(db);
                return out;
            }
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    // CI sets this after making sure PostgreSQL runs: there the PostgreSQL half must not vanish.
    if std::env::var_os("RIGFLEET_REQUIRE_PG").is_some() {
        panic!(
            "RIGFLEET_REQUIRE_PG is set but no PostgreSQL is reachable: {}",
            errors.join("; ")
        );
    }
    eprintln!(
        "\n!!!!!!!! SKIPPING PostgreSQL: no server reachable ({}) !!!!!!!!\n",
        errors.join("; ")
    );
    out
}

/// Runs SQL that only tests need (fault injection); panics on failure.
#[cfg(test)]
pub(crate) async fn exec(store: &Store, sql: &str) {
    super::dispatch!(store, p => {
        p.execute(sql).await.unwrap();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_swapped_in_urls() {
        assert_eq!(
            with_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }

    #[tokio::test]
    async fn postgres_databases_are_created_and_dropped() {
        for db in test_backends().await {
            if let Some((admin, name)) = db.pg.clone() {
                db.cleanup().await;
                let pool = PgPoolOptions::new().connect(&admin).await.unwrap();
                let n: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
                        .bind(&name)
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                assert_eq!(n, 0);
            } else {
                let path = db.sqlite_path().unwrap();
                assert!(path.exists());
                db.cleanup().await;
                assert!(!path.exists());
            }
        }
    }
}
