//! Operators, their sessions and API tokens, and key/value settings.

use super::row::RowExt;
use super::types::{join_scopes, parse_scopes};
use super::{dispatch, ApiToken, Role, Scope, SessionRow, Store, StoreError, User};

const USER_COLS: &str = "id, username, password_hash, role, totp_secret, created_at_ms";

fn user_from(row: &impl RowExt) -> Result<User, StoreError> {
    let role = row.text("role")?;
    Ok(User {
        id: row.i64("id")?,
        username: row.text("username")?,
        password_hash: row.text("password_hash")?,
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?,
        totp_secret: row.opt_text("totp_secret")?,
        created_at_ms: row.i64("created_at_ms")?,
    })
}

/// What a second-factor attempt may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TotpAttempt {
    /// Go on; `failures` counts this attempt as a failure until it proves right.
    Open {
        /// Failures in a row, this attempt included.
        failures: i64,
    },
    /// The second factor is locked until then (Unix ms).
    Locked {
        /// When the lock ends.
        until_ms: i64,
    },
}

/// A user as a list shows it (no password hash, no secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    /// Id.
    pub id: i64,
    /// Name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// Has a second factor.
    pub totp: bool,
}

/// The setting that holds a user's recovery codes (salted hashes, comma-separated).
fn recovery_key(user_id: i64) -> String {
    format!("web.totp_recovery.{user_id}")
}

/// What a TOTP secret is sealed for: its own user, so a sealed value copied to another user's
/// row does not open.
fn totp_purpose(user_id: i64) -> String {
    format!("totp:{user_id}")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Store {
    /// Creates an operator; `Conflict` when the name is taken.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
    ) -> Result<i64, StoreError> {
        dispatch!(self, p => {
            sqlx::query_scalar(
                "INSERT INTO users (username, password_hash, role, created_at_ms)
                 VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(username)
            .bind(password_hash)
            .bind(role.as_str())
            .bind(now_ms())
            .fetch_one(p)
            .await
            .map_err(|e| StoreError::conflict_on_unique(e, "username taken"))
        })
    }

    /// Looks an operator up by name.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE username = $1");
        let user = dispatch!(self, p => {
            let row = sqlx::query(&sql).bind(username).fetch_optional(p).await?;
            row.as_ref().map(user_from).transpose()?
        });
        user.map(|u| self.open_user(u)).transpose()
    }

    /// Looks an operator up by id.
    pub async fn user_by_id(&self, user_id: i64) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
        let user = dispatch!(self, p => {
            let row = sqlx::query(&sql).bind(user_id).fetch_optional(p).await?;
            row.as_ref().map(user_from).transpose()?
        });
        user.map(|u| self.open_user(u)).transpose()
    }

    fn open_user(&self, mut user: User) -> Result<User, StoreError> {
        if let Some(stored) = user.totp_secret.take() {
            user.totp_secret = Some(self.open_secret(&totp_purpose(user.id), &stored)?);
        }
        Ok(user)
    }

    /// Seals the secrets still stored in plain text by versions before sealing (TOTP secrets,
    /// pool passwords in profiles and desired configs), once: a setting records that it was
    /// done. Returns how many rows were rewritten. Without a secrets key, nothing happens.
    pub async fn seal_plaintext_secrets(&self) -> Result<u64, StoreError> {
        const DONE: &str = "secrets.sealed_v1";
        if self.secrets.is_none() || self.get_setting(DONE).await?.is_some() {
            return Ok(0);
        }
        let mut changed = 0;
        let rows: Vec<(i64, String)> = dispatch!(self, p => sqlx::query_as(
            "SELECT id, totp_secret FROM users WHERE totp_secret IS NOT NULL")
            .fetch_all(p).await?);
        for (id, stored) in rows {
            if crate::secrets::is_sealed(&stored) {
                continue;
            }
            let sealed = self.seal_secret(&totp_purpose(id), &stored)?;
            changed += dispatch!(self, p => sqlx::query(
                "UPDATE users SET totp_secret = $2 WHERE id = $1 AND totp_secret = $3")
                .bind(id).bind(&sealed).bind(&stored).execute(p).await?.rows_affected());
        }
        changed += self.seal_plaintext_configs().await?;
        self.set_setting(DONE, &now_ms().to_string()).await?;
        Ok(changed)
    }

    /// Seals a secret for storage with the server's secrets key (as given without one).
    pub(crate) fn seal_secret(&self, purpose: &str, plain: &str) -> Result<String, StoreError> {
        match &self.secrets {
            Some(b) => b
                .seal(purpose, plain)
                .map_err(|e| StoreError::Invalid(e.to_string())),
            None => Ok(plain.to_string()),
        }
    }

    /// Opens a stored secret: sealed ones with the secrets key, plain ones (stored before
    /// sealing) as they are.
    pub(crate) fn open_secret(&self, purpose: &str, stored: &str) -> Result<String, StoreError> {
        match &self.secrets {
            Some(b) => b
                .open(purpose, stored)
                .map_err(|e| StoreError::Corrupt(e.to_string())),
            None if crate::secrets::is_sealed(stored) => Err(StoreError::Corrupt(
                "a sealed secret, and this store has no secrets key".into(),
            )),
            None => Ok(stored.to_string()),
        }
    }

    /// How many operators exist (0 means the first-run setup is open).
    pub async fn user_count(&self) -> Result<i64, StoreError> {
        dispatch!(self, p => Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(p).await?))
    }

    /// Replaces an operator's password hash.
    pub async fn set_user_password(
        &self,
        user_id: i64,
        password_hash: &str,
    ) -> Result<(), StoreError> {
        let n = dispatch!(self, p => sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
            .bind(user_id).bind(password_hash).execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Sets or clears an operator's TOTP secret (sealed with the secrets key); the second
    /// factor's failure count, lock and last used step start over.
    pub async fn set_user_totp(
        &self,
        user_id: i64,
        secret: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let enabled_at = secret.map(|_| now_ms);
        let sealed = secret
            .map(|s| self.seal_secret(&totp_purpose(user_id), s))
            .transpose()?;
        let n = dispatch!(self, p => sqlx::query(
            "UPDATE users SET totp_secret = $2, totp_enabled_at_ms = $3, totp_failures = 0,
               totp_locked_until_ms = 0, totp_last_step = -1 WHERE id = $1")
            .bind(user_id).bind(sealed).bind(enabled_at).execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Starts a second-factor attempt: counts it as a failure up front (so attempts running
    /// at the same time, on any replica, cannot get past the limit) and, when the count reaches
    /// `max_failures`, locks the second factor until `hold_until_ms` at once. A right code
    /// then calls [`Store::totp_attempt_succeeded`]. A correct password does not touch this
    /// count. Refused (with the time the lock ends) while locked.
    pub async fn totp_begin_attempt(
        &self,
        user_id: i64,
        now_ms: i64,
        max_failures: i64,
        hold_until_ms: i64,
    ) -> Result<TotpAttempt, StoreError> {
        let failures: Option<i64> = dispatch!(self, p => sqlx::query_scalar(
            "UPDATE users SET totp_failures = totp_failures + 1,
               totp_locked_until_ms = CASE WHEN totp_failures + 1 >= $3 THEN $4
                                           ELSE totp_locked_until_ms END
             WHERE id = $1 AND totp_locked_until_ms <= $2 RETURNING totp_failures")
            .bind(user_id).bind(now_ms).bind(max_failures).bind(hold_until_ms)
            .fetch_optional(p).await?);
        if let Some(failures) = failures {
            return Ok(TotpAttempt::Open { failures });
        }
        let until: Option<i64> = dispatch!(self, p => sqlx::query_scalar(
            "SELECT totp_locked_until_ms FROM users WHERE id = $1")
            .bind(user_id).fetch_optional(p).await?);
        match until {
            Some(until_ms) => Ok(TotpAttempt::Locked { until_ms }),
            None => Err(StoreError::NotFound),
        }
    }

    /// A wrong code: locks the second factor until `until_ms` (never shortening a lock).
    pub async fn totp_lock_until(&self, user_id: i64, until_ms: i64) -> Result<(), StoreError> {
        dispatch!(self, p => { sqlx::query(
            "UPDATE users SET totp_locked_until_ms = $2 WHERE id = $1 AND totp_locked_until_ms < $2")
            .bind(user_id).bind(until_ms).execute(p).await?; });
        Ok(())
    }

    /// A right code: the failure count and the lock start over.
    pub async fn totp_attempt_succeeded(&self, user_id: i64) -> Result<(), StoreError> {
        dispatch!(self, p => { sqlx::query(
            "UPDATE users SET totp_failures = 0, totp_locked_until_ms = 0 WHERE id = $1")
            .bind(user_id).execute(p).await?; });
        Ok(())
    }

    /// Records that a TOTP code of 30-second `step` was accepted; false when a code of this
    /// step or a later one already was (a replay). Atomic, so two replicas cannot both accept
    /// one code.
    pub async fn totp_use_step(&self, user_id: i64, step: i64) -> Result<bool, StoreError> {
        dispatch!(self, p => Ok(sqlx::query(
            "UPDATE users SET totp_last_step = $2 WHERE id = $1 AND totp_last_step < $2")
            .bind(user_id).bind(step).execute(p).await?.rows_affected() == 1))
    }

    /// Failed logins recorded for `name` from `address`: (count, time of the last).
    pub async fn login_failures(
        &self,
        name: &str,
        address: &str,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        dispatch!(self, p => Ok(sqlx::query_as::<_, (i64, i64)>(
            "SELECT failures, last_failure_ms FROM login_failures WHERE name = $1 AND address = $2")
            .bind(name).bind(address).fetch_optional(p).await?))
    }

    /// Counts a failed login of `name` from `address`; a count whose last failure is older
    /// than `forget_before_ms` starts over, and such rows of every name are removed.
    pub async fn record_login_failure(
        &self,
        name: &str,
        address: &str,
        now_ms: i64,
        forget_before_ms: i64,
    ) -> Result<i64, StoreError> {
        dispatch!(self, p => {
            let n: i64 = sqlx::query_scalar(
                "INSERT INTO login_failures (name, address, failures, last_failure_ms)
                 VALUES ($1, $2, 1, $3)
                 ON CONFLICT (name, address) DO UPDATE SET
                   failures = CASE WHEN login_failures.last_failure_ms < $4 THEN 1
                                   ELSE login_failures.failures + 1 END,
                   last_failure_ms = $3
                 RETURNING failures",
            )
            .bind(name).bind(address).bind(now_ms).bind(forget_before_ms)
            .fetch_one(p).await?;
            sqlx::query("DELETE FROM login_failures WHERE last_failure_ms < $1")
                .bind(forget_before_ms).execute(p).await?;
            Ok(n)
        })
    }

    /// Forgets the failed logins of `name` from `address` (after a good login).
    pub async fn clear_login_failures(&self, name: &str, address: &str) -> Result<(), StoreError> {
        dispatch!(self, p => { sqlx::query("DELETE FROM login_failures WHERE name = $1 AND address = $2")
            .bind(name).bind(address).execute(p).await?; });
        Ok(())
    }

    /// Every user, by name.
    pub async fn list_users(&self) -> Result<Vec<UserSummary>, StoreError> {
        dispatch!(self, p => {
            let rows = sqlx::query(
                "SELECT id, username, role, totp_secret FROM users ORDER BY username",
            )
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    let role = r.text("role")?;
                    Ok(UserSummary {
                        id: r.i64("id")?,
                        username: r.text("username")?,
                        role: Role::parse(&role)
                            .ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?,
                        totp: r.opt_text("totp_secret")?.is_some(),
                    })
                })
                .collect()
        })
    }

    /// Changes a user's role.
    pub async fn set_user_role(&self, user_id: i64, role: Role) -> Result<(), StoreError> {
        let n = dispatch!(self, p => sqlx::query("UPDATE users SET role = $2 WHERE id = $1")
            .bind(user_id).bind(role.as_str()).execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Removes a user, their sessions and API tokens.
    pub async fn delete_user(&self, user_id: i64) -> Result<(), StoreError> {
        dispatch!(self, p => {
            sqlx::query("DELETE FROM sessions WHERE user_id = $1").bind(user_id).execute(p).await?;
            sqlx::query("DELETE FROM api_tokens WHERE user_id = $1").bind(user_id).execute(p).await?;
            let n = sqlx::query("DELETE FROM users WHERE id = $1").bind(user_id).execute(p).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
        });
        self.delete_setting(&recovery_key(user_id)).await?;
        Ok(())
    }

    /// Ends every session of a user (after an admin changed their password or role); returns
    /// how many ended.
    pub async fn delete_sessions_of(&self, user_id: i64) -> Result<u64, StoreError> {
        dispatch!(self, p => Ok(sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id).execute(p).await?.rows_affected()))
    }

    /// How many admins exist.
    pub async fn admin_count(&self) -> Result<i64, StoreError> {
        dispatch!(self, p => Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin'")
            .fetch_one(p).await?))
    }

    /// Stores the hashes of a user's recovery codes, replacing older ones (none: removes them).
    pub async fn set_recovery_codes(
        &self,
        user_id: i64,
        hashes: &[String],
    ) -> Result<(), StoreError> {
        self.set_setting(&recovery_key(user_id), &hashes.join(","))
            .await
    }

    /// Uses one of a user's recovery codes: the first stored hash `matches` accepts is removed,
    /// and true returned. Removed by compare and set, so two logins racing with one code (on
    /// one server or two) cannot both use it.
    pub async fn use_recovery_code(
        &self,
        user_id: i64,
        matches: impl Fn(&str) -> bool,
    ) -> Result<bool, StoreError> {
        let key = recovery_key(user_id);
        for _ in 0..5 {
            let Some(stored) = self.get_setting(&key).await? else {
                return Ok(false);
            };
            let hashes: Vec<&str> = stored.split(',').filter(|h| !h.is_empty()).collect();
            let Some(used) = hashes.iter().position(|h| matches(h)) else {
                return Ok(false);
            };
            let left: Vec<&str> = hashes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != used)
                .map(|(_, h)| *h)
                .collect();
            if self.replace_setting(&key, &stored, &left.join(",")).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Ends every session of a user but `keep_id_sha256_hex` (after they changed their own
    /// password or second factor); returns how many ended.
    pub async fn delete_other_sessions(
        &self,
        user_id: i64,
        keep_id_sha256_hex: &str,
    ) -> Result<u64, StoreError> {
        dispatch!(self, p => Ok(sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id_hash <> $2")
            .bind(user_id).bind(keep_id_sha256_hex).execute(p).await?.rows_affected()))
    }

    /// Stores a session under the SHA-256 (hex) of its cookie value.
    pub async fn create_session(
        &self,
        id_sha256_hex: &str,
        user_id: i64,
        csrf_token: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, p => {
            sqlx::query(
                "INSERT INTO sessions (id_hash, user_id, csrf_token, created_at_ms, expires_at_ms)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id_sha256_hex).bind(user_id).bind(csrf_token).bind(now_ms).bind(expires_at_ms)
            .execute(p).await?;
        });
        Ok(())
    }

    /// A live (unexpired) session.
    pub async fn session(
        &self,
        id_sha256_hex: &str,
        now_ms: i64,
    ) -> Result<Option<SessionRow>, StoreError> {
        dispatch!(self, p => {
            let row = sqlx::query(
                "SELECT user_id, csrf_token, created_at_ms, expires_at_ms FROM sessions
                 WHERE id_hash = $1 AND expires_at_ms > $2",
            )
            .bind(id_sha256_hex).bind(now_ms).fetch_optional(p).await?;
            row.map(|r| Ok(SessionRow {
                user_id: r.i64("user_id")?,
                csrf_token: r.text("csrf_token")?,
                created_at_ms: r.i64("created_at_ms")?,
                expires_at_ms: r.i64("expires_at_ms")?,
            })).transpose()
        })
    }

    /// Logs a session out.
    pub async fn delete_session(&self, id_sha256_hex: &str) -> Result<(), StoreError> {
        dispatch!(self, p => { sqlx::query("DELETE FROM sessions WHERE id_hash = $1").bind(id_sha256_hex).execute(p).await?; });
        Ok(())
    }

    /// Removes expired sessions; returns how many.
    pub async fn delete_expired_sessions(&self, now_ms: i64) -> Result<u64, StoreError> {
        dispatch!(self, p => Ok(sqlx::query("DELETE FROM sessions WHERE expires_at_ms <= $1")
            .bind(now_ms).execute(p).await?.rows_affected()))
    }

    /// Stores a new API token (its SHA-256, never the token).
    pub async fn create_api_token(
        &self,
        user_id: i64,
        name: &str,
        token_sha256_hex: &str,
        scopes: &[Scope],
    ) -> Result<i64, StoreError> {
        dispatch!(self, p => {
            sqlx::query_scalar(
                "INSERT INTO api_tokens (user_id, name, token_hash, scopes, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(user_id).bind(name).bind(token_sha256_hex).bind(join_scopes(scopes)).bind(now_ms())
            .fetch_one(p).await
            .map_err(|e| StoreError::conflict_on_unique(e, "token exists"))
        })
    }

    /// Looks a token up by its hash (revoked ones too: the caller refuses them).
    pub async fn api_token_by_hash(
        &self,
        token_sha256_hex: &str,
    ) -> Result<Option<ApiToken>, StoreError> {
        dispatch!(self, p => {
            let row = sqlx::query(
                "SELECT id, user_id, name, scopes, revoked FROM api_tokens WHERE token_hash = $1",
            )
            .bind(token_sha256_hex).fetch_optional(p).await?;
            row.map(|r| Ok(ApiToken {
                id: r.i64("id")?,
                user_id: r.i64("user_id")?,
                name: r.text("name")?,
                scopes: parse_scopes(&r.text("scopes")?)?,
                revoked: r.flag("revoked")?,
            })).transpose()
        })
    }

    /// Records a token's use.
    pub async fn touch_api_token(&self, token_id: i64, now_ms: i64) -> Result<(), StoreError> {
        dispatch!(self, p => { sqlx::query("UPDATE api_tokens SET last_used_ms = $2 WHERE id = $1")
            .bind(token_id).bind(now_ms).execute(p).await?; });
        Ok(())
    }

    /// Revokes a token; false when there is no such token.
    pub async fn revoke_api_token(&self, token_id: i64) -> Result<bool, StoreError> {
        dispatch!(self, p => Ok(sqlx::query("UPDATE api_tokens SET revoked = TRUE WHERE id = $1")
            .bind(token_id).execute(p).await?.rows_affected() == 1))
    }

    /// Reads a setting.
    pub async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self, p => Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key).fetch_optional(p).await?))
    }

    /// Settings whose key starts with `prefix`, by key.
    pub async fn settings_with_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        // Compared with substr rather than LIKE: a prefix may hold `_` or `%`.
        dispatch!(self, p => Ok(sqlx::query_as::<_, (String, String)>(
            "SELECT key, value FROM settings WHERE substr(key, 1, length($1)) = $1 ORDER BY key")
            .bind(prefix).fetch_all(p).await?))
    }

    /// Removes a setting; false when there was none.
    pub async fn delete_setting(&self, key: &str) -> Result<bool, StoreError> {
        dispatch!(self, p => Ok(sqlx::query("DELETE FROM settings WHERE key = $1")
            .bind(key).execute(p).await?.rows_affected() == 1))
    }

    /// Replaces a setting's value only if it is still `expected` (compare and set); false when
    /// someone changed or removed it meanwhile.
    pub async fn replace_setting(
        &self,
        key: &str,
        expected: &str,
        value: &str,
    ) -> Result<bool, StoreError> {
        dispatch!(self, p => Ok(sqlx::query(
            "UPDATE settings SET value = $3 WHERE key = $1 AND value = $2")
            .bind(key).bind(expected).bind(value).execute(p).await?.rows_affected() == 1))
    }

    /// Writes a setting (insert or replace).
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        dispatch!(self, p => {
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key).bind(value).execute(p).await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_db::test_backends;
    use super::*;

    #[tokio::test]
    async fn users_sessions_tokens_and_settings() {
        for db in test_backends().await {
            let s = &db.store;
            let id = s
                .create_user("alice", "$argon2id$x", Role::Operator)
                .await
                .unwrap();
            assert!(matches!(
                s.create_user("alice", "h", Role::Admin).await,
                Err(StoreError::Conflict(_))
            ));
            let u = s.user_by_name("alice").await.unwrap().unwrap();
            assert_eq!(
                (u.id, u.role, u.password_hash.as_str()),
                (id, Role::Operator, "$argon2id$x")
            );
            assert!(s.user_by_name("bob").await.unwrap().is_none());
            assert_eq!(s.user_count().await.unwrap(), 1);
            s.set_user_password(id, "new").await.unwrap();
            s.set_user_totp(id, Some("JBSWY3DP"), 5).await.unwrap();
            let u = s.user_by_id(id).await.unwrap().unwrap();
            assert_eq!(
                (u.password_hash.as_str(), u.totp_secret.as_deref()),
                ("new", Some("JBSWY3DP"))
            );

            s.create_session("sess", id, "csrf", 100, 200)
                .await
                .unwrap();
            assert_eq!(
                s.session("sess", 150).await.unwrap().unwrap().csrf_token,
                "csrf"
            );
            assert!(s.session("sess", 200).await.unwrap().is_none());
            assert_eq!(s.delete_expired_sessions(300).await.unwrap(), 1);

            let t = s
                .create_api_token(id, "ci", "abc", &[Scope::Read, Scope::Write])
                .await
                .unwrap();
            let tok = s.api_token_by_hash("abc").await.unwrap().unwrap();
            assert_eq!(
                tok,
                ApiToken {
                    id: t,
                    user_id: id,
                    name: "ci".into(),
                    scopes: vec![Scope::Read, Scope::Write],
                    revoked: false
                }
            );
            s.touch_api_token(t, 9).await.unwrap();
            assert!(s.revoke_api_token(t).await.unwrap());
            assert!(s.api_token_by_hash("abc").await.unwrap().unwrap().revoked);
            assert!(s.api_token_by_hash("nope").await.unwrap().is_none());

            assert_eq!(s.get_setting("k").await.unwrap(), None);
            s.set_setting("k", "1").await.unwrap();
            s.set_setting("k", "2").await.unwrap();
            assert_eq!(s.get_setting("k").await.unwrap().as_deref(), Some("2"));
            assert!(!s.replace_setting("k", "1", "3").await.unwrap());
            assert!(s.replace_setting("k", "2", "3").await.unwrap());
            assert_eq!(s.get_setting("k").await.unwrap().as_deref(), Some("3"));
            assert!(!s.replace_setting("absent", "", "x").await.unwrap());
            s.set_setting("coin.b_x", "3").await.unwrap();
            s.set_setting("coin.a", "4").await.unwrap();
            s.set_setting("coinage", "5").await.unwrap();
            assert_eq!(
                s.settings_with_prefix("coin.").await.unwrap(),
                [
                    ("coin.a".into(), "4".into()),
                    ("coin.b_x".into(), "3".into())
                ]
            );
            // `_` is not a wildcard.
            assert!(s.settings_with_prefix("coin_").await.unwrap().is_empty());
            assert!(s.delete_setting("coin.a").await.unwrap());
            assert!(!s.delete_setting("coin.a").await.unwrap());
            assert_eq!(s.settings_with_prefix("coin.").await.unwrap().len(), 1);
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn totp_failures_lock_and_steps_are_used_once() {
        for db in test_backends().await {
            let s = &db.store;
            let id = s.create_user("tom", "h", Role::Operator).await.unwrap();
            s.set_user_totp(id, Some("JBSWY3DP"), 1).await.unwrap();
            // Three tries allowed: every attempt counts until it proves right.
            for n in 1..=2 {
                assert_eq!(
                    s.totp_begin_attempt(id, 100, 3, 10_000).await.unwrap(),
                    TotpAttempt::Open { failures: n }
                );
            }
            // The third reaches the limit and locks at once (an attempt running beside it is
            // refused), until it proves right or its wrong code sets the real lock.
            assert_eq!(
                s.totp_begin_attempt(id, 100, 3, 10_000).await.unwrap(),
                TotpAttempt::Open { failures: 3 }
            );
            assert_eq!(
                s.totp_begin_attempt(id, 101, 3, 10_000).await.unwrap(),
                TotpAttempt::Locked { until_ms: 10_000 }
            );
            s.totp_lock_until(id, 50_000).await.unwrap();
            s.totp_lock_until(id, 20_000).await.unwrap();
            assert_eq!(
                s.totp_begin_attempt(id, 49_999, 3, 60_000).await.unwrap(),
                TotpAttempt::Locked { until_ms: 50_000 }
            );
            // After the lock, one more try (the count goes on: it is not reset by time).
            assert_eq!(
                s.totp_begin_attempt(id, 50_000, 3, 90_000).await.unwrap(),
                TotpAttempt::Open { failures: 4 }
            );
            s.totp_attempt_succeeded(id).await.unwrap();
            assert_eq!(
                s.totp_begin_attempt(id, 50_001, 3, 90_000).await.unwrap(),
                TotpAttempt::Open { failures: 1 }
            );
            assert!(matches!(
                s.totp_begin_attempt(9999, 1, 3, 2).await,
                Err(StoreError::NotFound)
            ));

            // A step is good once; an older one never again.
            assert!(s.totp_use_step(id, 1000).await.unwrap());
            assert!(!s.totp_use_step(id, 1000).await.unwrap());
            assert!(!s.totp_use_step(id, 999).await.unwrap());
            assert!(s.totp_use_step(id, 1001).await.unwrap());
            // Turning the second factor off and on starts over.
            s.set_user_totp(id, Some("JBSWY3DQ"), 2).await.unwrap();
            assert!(s.totp_use_step(id, 5).await.unwrap());
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn login_failures_count_per_name_and_address() {
        for db in test_backends().await {
            let s = &db.store;
            assert_eq!(s.login_failures("user:a", "10.0.0.1").await.unwrap(), None);
            for n in 1..=3 {
                assert_eq!(
                    s.record_login_failure("user:a", "10.0.0.1", 100 + n, 0)
                        .await
                        .unwrap(),
                    n
                );
            }
            s.record_login_failure("user:a", "10.0.0.2", 200, 0)
                .await
                .unwrap();
            assert_eq!(
                s.login_failures("user:a", "10.0.0.1").await.unwrap(),
                Some((3, 103))
            );
            assert_eq!(
                s.login_failures("user:a", "10.0.0.2").await.unwrap(),
                Some((1, 200))
            );
            // Old counts start over, and old rows go.
            assert_eq!(
                s.record_login_failure("user:a", "10.0.0.1", 1000, 500)
                    .await
                    .unwrap(),
                1
            );
            assert_eq!(s.login_failures("user:a", "10.0.0.2").await.unwrap(), None);
            s.clear_login_failures("user:a", "10.0.0.1").await.unwrap();
            assert_eq!(s.login_failures("user:a", "10.0.0.1").await.unwrap(), None);
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn totp_secrets_are_sealed_at_rest_and_plain_ones_still_read() {
        for db in test_backends().await {
            let s = db.store.clone().with_secrets(std::sync::Arc::new(
                crate::secrets::SecretBox::generate().unwrap(),
            ));
            let id = s.create_user("sam", "h", Role::Admin).await.unwrap();
            let other = s.create_user("sue", "h", Role::Admin).await.unwrap();
            // A row from before sealing (plain text) still reads.
            db.store
                .set_user_totp(id, Some("JBSWY3DPEHPK3PXP"), 1)
                .await
                .unwrap();
            let u = s.user_by_id(id).await.unwrap().unwrap();
            assert_eq!(u.totp_secret.as_deref(), Some("JBSWY3DPEHPK3PXP"));
            s.set_user_totp(id, Some("JBSWY3DPEHPK3PXP"), 1)
                .await
                .unwrap();
            let stored: Option<String> = dispatch!(s, p => sqlx::query_scalar(
                "SELECT totp_secret FROM users WHERE id = $1").bind(id).fetch_one(p).await.unwrap());
            let stored = stored.unwrap();
            assert!(crate::secrets::is_sealed(&stored), "{stored}");
            assert!(!stored.contains("JBSWY3DPEHPK3PXP"));
            assert_eq!(
                s.user_by_name("sam")
                    .await
                    .unwrap()
                    .unwrap()
                    .totp_secret
                    .as_deref(),
                Some("JBSWY3DPEHPK3PXP")
            );
            // A sealed value copied to another user's row does not open there.
            dispatch!(s, p => { sqlx::query("UPDATE users SET totp_secret = $2 WHERE id = $1")
                .bind(other).bind(&stored).execute(p).await.unwrap(); });
            assert!(matches!(
                s.user_by_id(other).await,
                Err(StoreError::Corrupt(_))
            ));
            // Without the key, a sealed secret is an error, never used as a secret.
            assert!(db.store.user_by_id(id).await.is_err());
            // Rows from before sealing are sealed once at start.
            let third = s.create_user("sid", "h", Role::Admin).await.unwrap();
            db.store
                .set_user_totp(third, Some("GEZDGNBV"), 1)
                .await
                .unwrap();
            assert_eq!(s.seal_plaintext_secrets().await.unwrap(), 1);
            assert_eq!(s.seal_plaintext_secrets().await.unwrap(), 0);
            assert!(db.store.user_by_id(third).await.is_err(), "sealed now");
            assert_eq!(
                s.user_by_id(third)
                    .await
                    .unwrap()
                    .unwrap()
                    .totp_secret
                    .as_deref(),
                Some("GEZDGNBV")
            );
            db.cleanup().await;
        }
    }

    /// A recovery code works once, even when several logins race with it; the others stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_recovery_code_works_once_under_a_race() {
        for db in test_backends().await {
            let s = &db.store;
            let id = s.create_user("rex", "h", Role::Viewer).await.unwrap();
            let codes = ["c0", "c1", "c2"];
            let hashes: Vec<String> = codes.iter().map(|c| format!("h-{c}")).collect();
            s.set_recovery_codes(id, &hashes).await.unwrap();
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let s = s.clone();
                    tokio::spawn(
                        async move { s.use_recovery_code(id, |h| h == "h-c1").await.unwrap() },
                    )
                })
                .collect();
            let mut used = 0;
            for t in tasks {
                used += usize::from(t.await.unwrap());
            }
            assert_eq!(used, 1);
            assert!(!s.use_recovery_code(id, |h| h == "h-c1").await.unwrap());
            assert!(s.use_recovery_code(id, |h| h == "h-c0").await.unwrap());
            assert!(s.use_recovery_code(id, |h| h == "h-c2").await.unwrap());
            assert!(!s.use_recovery_code(id, |_| true).await.unwrap());
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn users_list_change_role_and_go() {
        for db in test_backends().await {
            let s = &db.store;
            let a = s.create_user("ann", "h", Role::Admin).await.unwrap();
            let b = s.create_user("bob", "h", Role::Viewer).await.unwrap();
            s.create_session("sess-b", b, "csrf", 1, i64::MAX)
                .await
                .unwrap();
            assert_eq!(s.admin_count().await.unwrap(), 1);
            s.set_user_role(b, Role::Admin).await.unwrap();
            assert_eq!(s.admin_count().await.unwrap(), 2);
            let list = s.list_users().await.unwrap();
            assert_eq!(
                list.iter().map(|u| (u.id, u.role)).collect::<Vec<_>>(),
                vec![(a, Role::Admin), (b, Role::Admin)]
            );
            assert_eq!(s.delete_sessions_of(b).await.unwrap(), 1);
            s.set_recovery_codes(b, &["x".into()]).await.unwrap();
            s.delete_user(b).await.unwrap();
            assert!(s.user_by_id(b).await.unwrap().is_none());
            assert!(!s.use_recovery_code(b, |_| true).await.unwrap());
            assert!(matches!(s.delete_user(b).await, Err(StoreError::NotFound)));
            assert!(matches!(
                s.set_user_role(b, Role::Viewer).await,
                Err(StoreError::NotFound)
            ));
            db.cleanup().await;
        }
    }
}
