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
        dispatch!(self, p => {
            let row = sqlx::query(&sql).bind(username).fetch_optional(p).await?;
            row.as_ref().map(user_from).transpose()
        })
    }

    /// Looks an operator up by id.
    pub async fn user_by_id(&self, user_id: i64) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
        dispatch!(self, p => {
            let row = sqlx::query(&sql).bind(user_id).fetch_optional(p).await?;
            row.as_ref().map(user_from).transpose()
        })
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

    /// Sets or clears an operator's TOTP secret.
    pub async fn set_user_totp(
        &self,
        user_id: i64,
        secret: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let enabled_at = secret.map(|_| now_ms);
        let n = dispatch!(self, p => sqlx::query(
            "UPDATE users SET totp_secret = $2, totp_enabled_at_ms = $3 WHERE id = $1")
            .bind(user_id).bind(secret).bind(enabled_at).execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
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
}
