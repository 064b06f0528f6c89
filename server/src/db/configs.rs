//! Desired configs (versioned per rig), profiles, config-applied reports and order counters.

use rigfleet_proto::config::DesiredConfig;

use super::row::RowExt;
use super::{dispatch, to_i64, to_u64, DesiredRow, ProfileRow, Store, StoreError, WriteBegin};

/// Desired configs kept per rig (the current one and some history for the rollout page).
const HISTORY_KEPT: i64 = 20;

fn parse_config(json: &str) -> Result<DesiredConfig, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("config json: {e}")))
}

fn to_json(config: &DesiredConfig) -> Result<String, StoreError> {
    serde_json::to_string(config).map_err(|e| StoreError::Invalid(format!("config json: {e}")))
}

/// What pool passwords are sealed for (secrets at rest, `crate::secrets`).
const POOL_PASSWORD: &str = "pool-password";

impl Store {
    /// The config as stored: JSON with every pool password sealed by the secrets key.
    pub(super) fn sealed_json(&self, config: &DesiredConfig) -> Result<String, StoreError> {
        let mut sealed = config.clone();
        for pool in &mut sealed.pools {
            if !pool.password.is_empty() {
                pool.password = self.seal_secret(POOL_PASSWORD, &pool.password)?;
            }
        }
        to_json(&sealed)
    }

    /// A stored config with its pool passwords opened (plain ones from before sealing as
    /// they are).
    pub(super) fn open_config_json(&self, json: &str) -> Result<DesiredConfig, StoreError> {
        self.open_config(json)
    }

    fn open_config(&self, json: &str) -> Result<DesiredConfig, StoreError> {
        let mut config = parse_config(json)?;
        for pool in &mut config.pools {
            pool.password = self.open_secret(POOL_PASSWORD, &pool.password)?;
        }
        Ok(config)
    }
}

impl Store {
    /// Rewrites profiles and desired configs whose pool passwords are still plain text (rows
    /// from before sealing) with them sealed; returns how many rows changed. A row changed
    /// meanwhile by someone else is left to its new writer (compare and set).
    pub(crate) async fn seal_plaintext_configs(&self) -> Result<u64, StoreError> {
        let plain = |c: &DesiredConfig| {
            c.pools
                .iter()
                .any(|p| !p.password.is_empty() && !crate::secrets::is_sealed(&p.password))
        };
        let mut changed = 0;
        let profiles: Vec<(i64, String)> = dispatch!(self, p => sqlx::query_as(
            "SELECT id, config_json FROM profiles").fetch_all(p).await?);
        for (id, json) in profiles {
            if !plain(&parse_config(&json)?) {
                continue;
            }
            let sealed = self.sealed_json(&self.open_config(&json)?)?;
            changed += dispatch!(self, p => sqlx::query(
                "UPDATE profiles SET config_json = $2 WHERE id = $1 AND config_json = $3")
                .bind(id).bind(&sealed).bind(&json).execute(p).await?.rows_affected());
        }
        let desired: Vec<(i64, i64, String)> = dispatch!(self, p => sqlx::query_as(
            "SELECT rig_id, version, config_json FROM desired_configs").fetch_all(p).await?);
        for (rig_id, version, json) in desired {
            if !plain(&parse_config(&json)?) {
                continue;
            }
            let sealed = self.sealed_json(&self.open_config(&json)?)?;
            changed += dispatch!(self, p => sqlx::query(
                "UPDATE desired_configs SET config_json = $3
                 WHERE rig_id = $1 AND version = $2 AND config_json = $4")
                .bind(rig_id).bind(version).bind(&sealed).bind(&json).execute(p).await?.rows_affected());
        }
        Ok(changed)
    }
}

fn profile_from(s: &Store, r: &impl RowExt) -> Result<ProfileRow, StoreError> {
    Ok(ProfileRow {
        id: r.i64("id")?,
        name: r.text("name")?,
        config: s.open_config(&r.text("config_json")?)?,
        is_default: r.flag("is_default")?,
    })
}

fn desired_from(s: &Store, r: &impl RowExt) -> Result<DesiredRow, StoreError> {
    let version = to_u64(r.i64("version")?, "version")?;
    let mut config = s.open_config(&r.text("config_json")?)?;
    config.version = version;
    Ok(DesiredRow {
        version,
        content_hash: r.text("content_hash")?,
        config,
        created_at_ms: r.i64("created_at_ms")?,
        created_by: r.opt_text("created_by")?,
    })
}

impl Store {
    /// The rig's current desired config, if one was ever set.
    pub async fn desired_config(&self, rig_id: i64) -> Result<Option<DesiredRow>, StoreError> {
        dispatch!(self, p => {
            let row = sqlx::query(
                "SELECT version, content_hash, config_json, created_at_ms, created_by FROM desired_configs
                 WHERE rig_id = $1 ORDER BY version DESC LIMIT 1",
            )
            .bind(rig_id).fetch_optional(p).await?;
            row.as_ref().map(|r| desired_from(self, r)).transpose()
        })
    }

    /// Assigns version = current + 1 (strictly increasing per rig) in one transaction and
    /// stores config (with that version) and its content hash.
    pub async fn set_desired_config(
        &self,
        rig_id: i64,
        config: &DesiredConfig,
        created_by: Option<&str>,
        now_ms: i64,
    ) -> Result<DesiredRow, StoreError> {
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            let version: Option<i64> = sqlx::query_scalar(
                "UPDATE rigs SET desired_version = desired_version + 1 WHERE id = $1 RETURNING desired_version",
            )
            .bind(rig_id).fetch_optional(&mut *tx).await?;
            let Some(version) = version else { return Err(StoreError::NotFound) };
            let mut config = config.clone();
            config.version = to_u64(version, "version")?;
            let content_hash = config.content_hash();
            sqlx::query(
                "INSERT INTO desired_configs (rig_id, version, content_hash, config_json, created_at_ms, created_by)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(rig_id).bind(version).bind(&content_hash).bind(self.sealed_json(&config)?).bind(now_ms).bind(created_by)
            .execute(&mut *tx).await?;
            sqlx::query("DELETE FROM desired_configs WHERE rig_id = $1 AND version <= $2")
                .bind(rig_id).bind(version - HISTORY_KEPT).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(DesiredRow {
                version: config.version,
                content_hash,
                config,
                created_at_ms: now_ms,
                created_by: created_by.map(str::to_string),
            })
        })
    }

    /// Stores what the agent reported after applying (or failing to apply) a config.
    pub async fn record_config_applied(
        &self,
        rig_id: i64,
        version: u64,
        content_hash: &str,
        ok: bool,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let version = to_i64(version, "version")?;
        let n = dispatch!(self, p => sqlx::query(
            "UPDATE rigs SET applied_version = $2, applied_hash = $3, applied_ok = $4,
               applied_error = $5, applied_at_ms = $6 WHERE id = $1",
        )
        .bind(rig_id).bind(version).bind(content_hash).bind(ok).bind(error).bind(now_ms)
        .execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        // The rollouts that gave the rig this version learn how it went (matched by version
        // and content, so a stale report for an older version settles nothing).
        dispatch!(self, p => {
            sqlx::query(
                "UPDATE rollout_rigs SET state = CASE WHEN $4 THEN 'applied' ELSE 'failed' END,
                   error = $5, updated_at_ms = $6
                 WHERE rig_id = $1 AND target_version = $2 AND target_hash = $3
                   AND state IN ('pending', 'sent', 'failed')",
            )
            .bind(rig_id).bind(version).bind(content_hash).bind(ok).bind(error).bind(now_ms)
            .execute(p).await?;
        });
        Ok(())
    }

    /// The profile new rigs start on, if one is marked default.
    pub async fn default_profile(&self) -> Result<Option<ProfileRow>, StoreError> {
        dispatch!(self, p => {
            let row = sqlx::query("SELECT id, name, config_json, is_default FROM profiles WHERE is_default")
                .fetch_optional(p).await?;
            row.as_ref().map(|r| profile_from(self, r)).transpose()
        })
    }

    /// A profile by name.
    pub async fn profile_by_name(&self, name: &str) -> Result<Option<ProfileRow>, StoreError> {
        dispatch!(self, p => {
            let row = sqlx::query("SELECT id, name, config_json, is_default FROM profiles WHERE name = $1")
                .bind(name).fetch_optional(p).await?;
            row.as_ref().map(|r| profile_from(self, r)).transpose()
        })
    }

    /// Every profile by name.
    pub async fn list_profiles(&self) -> Result<Vec<ProfileRow>, StoreError> {
        dispatch!(self, p => {
            let rows = sqlx::query("SELECT id, name, config_json, is_default FROM profiles ORDER BY name")
                .fetch_all(p).await?;
            rows.iter().map(|r| profile_from(self, r)).collect()
        })
    }

    /// Deletes a profile; false when unknown.
    pub async fn delete_profile(&self, name: &str) -> Result<bool, StoreError> {
        dispatch!(self, p => Ok(sqlx::query("DELETE FROM profiles WHERE name = $1").bind(name)
            .execute(p).await?.rows_affected() == 1))
    }

    /// Creates or replaces a profile; making it the default unmarks the previous default.
    pub async fn upsert_profile(
        &self,
        name: &str,
        config: &DesiredConfig,
        is_default: bool,
    ) -> Result<ProfileRow, StoreError> {
        let json = self.sealed_json(config)?;
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            if is_default {
                sqlx::query("UPDATE profiles SET is_default = FALSE WHERE is_default AND name <> $1")
                    .bind(name).execute(&mut *tx).await?;
            }
            let row = sqlx::query(
                "INSERT INTO profiles (name, config_json, is_default) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET config_json = excluded.config_json, is_default = excluded.is_default
                 RETURNING id, name, config_json, is_default",
            )
            .bind(name).bind(&json).bind(is_default).fetch_one(&mut *tx).await?;
            let profile = profile_from(self, &row)?;
            tx.commit().await?;
            Ok(profile)
        })
    }

    /// Atomic increment of the rig's order counter (UPDATE … RETURNING), so replicas agree.
    pub async fn next_order_counter(&self, rig_id: i64) -> Result<u64, StoreError> {
        let v: Option<i64> = dispatch!(self, p => sqlx::query_scalar(
            "UPDATE rigs SET order_counter = order_counter + 1 WHERE id = $1 RETURNING order_counter")
            .bind(rig_id).fetch_optional(p).await?);
        to_u64(v.ok_or(StoreError::NotFound)?, "order_counter")
    }

    /// Raises the counter to at least `seen` (an agent reported a higher counter than a restored
    /// database holds); never lowers it.
    pub async fn raise_order_counter(&self, rig_id: i64, seen: u64) -> Result<(), StoreError> {
        let seen = to_i64(seen, "order counter")?;
        dispatch!(self, p => {
            sqlx::query("UPDATE rigs SET order_counter = $2 WHERE id = $1 AND order_counter < $2")
                .bind(rig_id).bind(seen).execute(p).await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::rigs::tests::one_rig;
    use super::super::test_db::test_backends;
    use super::*;
    use rigfleet_proto::config::PoolSpec;

    fn config(user: &str) -> DesiredConfig {
        DesiredConfig {
            version: 0,
            algorithm: "sha256d".into(),
            pools: vec![PoolSpec {
                url: "stratum+tcp://127.0.0.1:3333".into(),
                user: user.into(),
                password: "x".into(),
            }],
            devices: vec![],
            telemetry_interval_secs: Some(10),
        }
    }

    #[tokio::test]
    async fn desired_config_versions_strictly_increase() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "r1", 1).await;
            assert!(s.desired_config(rig).await.unwrap().is_none());
            let a = s
                .set_desired_config(rig, &config("w.1"), Some("alice"), 10)
                .await
                .unwrap();
            let b = s
                .set_desired_config(rig, &config("w.1"), None, 20)
                .await
                .unwrap();
            let c = s
                .set_desired_config(rig, &config("w.2"), None, 30)
                .await
                .unwrap();
            assert_eq!((a.version, b.version, c.version), (1, 2, 3));
            assert_eq!(a.content_hash, b.content_hash);
            assert_ne!(b.content_hash, c.content_hash);
            let cur = s.desired_config(rig).await.unwrap().unwrap();
            assert_eq!(cur, c);
            assert_eq!(cur.config.version, 3);
            assert_eq!(s.rig_by_id(rig).await.unwrap().unwrap().desired_version, 3);
            // Concurrent pushes still get distinct, increasing versions.
            let tasks: Vec<_> = (0..6)
                .map(|i| {
                    let s = s.clone();
                    tokio::spawn(async move {
                        s.set_desired_config(rig, &config(&format!("w.{i}")), None, 40)
                            .await
                            .unwrap()
                            .version
                    })
                })
                .collect();
            let mut versions = Vec::new();
            for t in tasks {
                versions.push(t.await.unwrap());
            }
            versions.sort();
            assert_eq!(versions, [4, 5, 6, 7, 8, 9]);
            assert!(matches!(
                s.set_desired_config(9999, &config("x"), None, 1).await,
                Err(StoreError::NotFound)
            ));

            s.record_config_applied(rig, 3, &c.content_hash, false, Some("bad pool"), 50)
                .await
                .unwrap();
            let r = s.rig_by_id(rig).await.unwrap().unwrap();
            assert_eq!(
                (
                    r.applied_version,
                    r.applied_ok,
                    r.applied_error.as_deref(),
                    r.applied_at_ms
                ),
                (Some(3), Some(false), Some("bad pool"), Some(50))
            );
            assert_eq!(r.applied_hash.as_deref(), Some(c.content_hash.as_str()));
            assert!(matches!(
                s.record_config_applied(9999, 1, "h", true, None, 1).await,
                Err(StoreError::NotFound)
            ));
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn profiles_keep_one_default() {
        for db in test_backends().await {
            let s = &db.store;
            assert!(s.default_profile().await.unwrap().is_none());
            let a = s.upsert_profile("a", &config("w.a"), true).await.unwrap();
            assert!(a.is_default);
            s.upsert_profile("b", &config("w.b"), true).await.unwrap();
            let d = s.default_profile().await.unwrap().unwrap();
            assert_eq!(
                (d.name.as_str(), d.config.pools[0].user.as_str()),
                ("b", "w.b")
            );
            let a2 = s.upsert_profile("a", &config("w.a2"), false).await.unwrap();
            assert_eq!((a2.id, a2.is_default), (a.id, false));
            assert_eq!(
                s.profile_by_name("a").await.unwrap().unwrap().config.pools[0].user,
                "w.a2"
            );
            assert_eq!(s.list_profiles().await.unwrap().len(), 2);
            assert!(s.delete_profile("b").await.unwrap());
            assert!(s.default_profile().await.unwrap().is_none());
            db.cleanup().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn order_counter_is_atomic_under_concurrency() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "r1", 0).await;
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let s = s.clone();
                    tokio::spawn(async move {
                        let mut got = Vec::new();
                        for _ in 0..10 {
                            got.push(s.next_order_counter(rig).await.unwrap());
                        }
                        got
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all.sort();
            assert_eq!(all, (1..=80).collect::<Vec<u64>>());
            s.raise_order_counter(rig, 50).await.unwrap();
            assert_eq!(s.next_order_counter(rig).await.unwrap(), 81);
            s.raise_order_counter(rig, 500).await.unwrap();
            assert_eq!(s.next_order_counter(rig).await.unwrap(), 501);
            assert!(matches!(
                s.next_order_counter(9999).await,
                Err(StoreError::NotFound)
            ));
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn pool_passwords_are_sealed_at_rest_and_plain_ones_still_read() {
        for db in test_backends().await {
            let plain = db.store.clone();
            let s = &db.store.clone().with_secrets(std::sync::Arc::new(
                crate::secrets::SecretBox::generate().unwrap(),
            ));
            let rig = one_rig(s, "r1", 1).await;
            let mut c = config("w.1");
            c.pools[0].password = "pool-secret-pw".into();
            // Written before sealing existed: still read, and the config hash is unchanged.
            let old = plain.set_desired_config(rig, &c, None, 1).await.unwrap();
            plain.upsert_profile("old", &c, false).await.unwrap();
            assert_eq!(
                s.desired_config(rig).await.unwrap().unwrap().config.pools[0].password,
                "pool-secret-pw"
            );
            assert_eq!(
                s.profile_by_name("old")
                    .await
                    .unwrap()
                    .unwrap()
                    .config
                    .pools[0]
                    .password,
                "pool-secret-pw"
            );
            // Sealing the rows from before at start: both are rewritten once, and read the same.
            let raw = |table: &'static str| {
                let s = s.clone();
                async move {
                    let sql = format!("SELECT config_json FROM {table}");
                    dispatch!(s, p => sqlx::query_scalar::<_, String>(&sql).fetch_all(p).await.unwrap())
                }
            };
            assert!(raw("profiles").await[0].contains("pool-secret-pw"));
            assert_eq!(s.seal_plaintext_configs().await.unwrap(), 2);
            assert_eq!(s.seal_plaintext_configs().await.unwrap(), 0);
            for table in ["profiles", "desired_configs"] {
                let json = &raw(table).await[0];
                assert!(!json.contains("pool-secret-pw"), "{json}");
            }
            assert_eq!(
                s.desired_config(rig).await.unwrap().unwrap(),
                old,
                "the same config, version and hash"
            );
            let new = s.set_desired_config(rig, &c, None, 2).await.unwrap();
            assert_eq!(new.content_hash, old.content_hash);
            s.upsert_profile("new", &c, true).await.unwrap();
            let stored: Vec<String> = dispatch!(s, p => {
                let mut v: Vec<String> = sqlx::query_scalar(
                    "SELECT config_json FROM desired_configs WHERE version = 2")
                    .fetch_all(p).await.unwrap();
                v.extend(sqlx::query_scalar::<_, String>(
                    "SELECT config_json FROM profiles WHERE name = 'new'")
                    .fetch_all(p).await.unwrap());
                v
            });
            assert_eq!(stored.len(), 2);
            for json in &stored {
                assert!(!json.contains("pool-secret-pw"), "{json}");
                assert!(json.contains(crate::secrets::PREFIX), "{json}");
                assert!(json.contains("w.1"), "wallets stay readable: {json}");
            }
            let cur = s.desired_config(rig).await.unwrap().unwrap();
            assert_eq!(cur.config.pools[0].password, "pool-secret-pw");
            assert_eq!(cur.config.content_hash(), cur.content_hash);
            assert_eq!(
                s.default_profile().await.unwrap().unwrap().config.pools[0].password,
                "pool-secret-pw"
            );
            assert_eq!(
                s.list_profiles()
                    .await
                    .unwrap()
                    .iter()
                    .map(|p| p.config.pools[0].password.as_str())
                    .collect::<Vec<_>>(),
                ["pool-secret-pw", "pool-secret-pw"]
            );
            db.cleanup().await;
        }
    }
}
