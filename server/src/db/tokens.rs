//! Enrollment tokens: created by operators, consumed by agents enrolling.

use super::row::RowExt;
use super::{dispatch, EnrollTokenRow, NewEnrollToken, Store, StoreError};

/// Why a token could not be used. Each case is distinct so the enrollment endpoint can answer
/// with a precise code.
#[derive(Debug, thiserror::Error)]
pub enum TokenUseError {
    #[error("unknown enrollment token")]
    Unknown,
    #[error("wrong enrollment token secret")]
    BadSecret,
    #[error("enrollment token revoked")]
    Revoked,
    #[error("enrollment token expired")]
    Expired,
    #[error("enrollment token used up")]
    Exhausted,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for TokenUseError {
    fn from(e: sqlx::Error) -> Self {
        TokenUseError::Store(StoreError::Database(e))
    }
}

const COLS: &str = "id, token_id, secret_sha256, max_uses, uses, expires_at_ms, group_name, \
                    requires_approval, note, revoked, created_at_ms";

fn token_from(row: &impl RowExt) -> Result<(EnrollTokenRow, String), StoreError> {
    Ok((
        EnrollTokenRow {
            id: row.i64("id")?,
            token_id: row.text("token_id")?,
            max_uses: row.opt_i64("max_uses")?,
            uses: row.i64("uses")?,
            expires_at_ms: row.opt_i64("expires_at_ms")?,
            group: row.opt_text("group_name")?,
            requires_approval: row.flag("requires_approval")?,
            note: row.text("note")?,
            revoked: row.flag("revoked")?,
            created_at_ms: row.i64("created_at_ms")?,
        },
        row.text("secret_sha256")?,
    ))
}

/// Compares two hex digests without an early exit, so timing does not reveal how many leading
/// characters of a guess were right.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a token that matched its secret cannot enroll `rigs` more rigs now.
fn refusal(t: &EnrollTokenRow, now_ms: i64, rigs: i64) -> Option<TokenUseError> {
    if t.revoked {
        Some(TokenUseError::Revoked)
    } else if t.expires_at_ms.is_some_and(|e| e <= now_ms) {
        Some(TokenUseError::Expired)
    } else if t.max_uses.is_some_and(|m| t.uses.saturating_add(rigs) > m) {
        Some(TokenUseError::Exhausted)
    } else {
        None
    }
}

impl Store {
    /// Stores a new token; `Conflict` when the token id exists.
    pub async fn create_enroll_token(
        &self,
        t: &NewEnrollToken,
    ) -> Result<EnrollTokenRow, StoreError> {
        let sql = format!(
            "INSERT INTO enrollment_tokens (token_id, secret_sha256, max_uses, expires_at_ms,
               group_name, requires_approval, note, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLS}"
        );
        dispatch!(self, p => {
            let row = sqlx::query(&sql)
                .bind(&t.token_id).bind(&t.secret_sha256_hex).bind(t.max_uses).bind(t.expires_at_ms)
                .bind(&t.group).bind(t.requires_approval).bind(&t.note).bind(t.now_ms)
                .fetch_one(p).await
                .map_err(|e| StoreError::conflict_on_unique(e, "token id exists"))?;
            Ok(token_from(&row)?.0)
        })
    }

    /// Every token, newest first.
    pub async fn list_enroll_tokens(&self) -> Result<Vec<EnrollTokenRow>, StoreError> {
        let sql = format!("SELECT {COLS} FROM enrollment_tokens ORDER BY id DESC");
        dispatch!(self, p => {
            let rows = sqlx::query(&sql).fetch_all(p).await?;
            rows.iter().map(|r| Ok(token_from(r)?.0)).collect()
        })
    }

    /// Revokes a token; false when unknown.
    pub async fn revoke_enroll_token(&self, token_id: &str) -> Result<bool, StoreError> {
        dispatch!(self, p => Ok(sqlx::query("UPDATE enrollment_tokens SET revoked = TRUE WHERE token_id = $1")
            .bind(token_id).execute(p).await?.rows_affected() == 1))
    }

    /// Atomically checks and consumes one use per rig (`rigs`, at least 1: a token's
    /// `max_uses` counts rigs, not requests): unknown / bad secret (compare the hashes in
    /// constant time) / revoked / expired / exhausted (fewer uses left than rigs) are distinct
    /// errors; nothing is consumed when the request is refused.
    pub async fn use_enroll_token(
        &self,
        token_id: &str,
        secret_sha256_hex: &str,
        now_ms: i64,
        rigs: i64,
    ) -> Result<EnrollTokenRow, TokenUseError> {
        let rigs = rigs.max(1);
        let select = format!("SELECT {COLS} FROM enrollment_tokens WHERE token_id = $1");
        // The conditional update is the atomic step: of two racing enrollments on the last use,
        // the database lets exactly one increment through.
        let consume = format!(
            "UPDATE enrollment_tokens SET uses = uses + $3
             WHERE token_id = $1 AND revoked = FALSE
               AND (expires_at_ms IS NULL OR expires_at_ms > $2)
               AND (max_uses IS NULL OR uses + $3 <= max_uses)
             RETURNING {COLS}"
        );
        dispatch!(self, p => {
            let row = sqlx::query(&select).bind(token_id).fetch_optional(p).await?;
            let Some(row) = row else { return Err(TokenUseError::Unknown) };
            let (current, secret) = token_from(&row)?;
            if !constant_time_eq(&secret, secret_sha256_hex) {
                return Err(TokenUseError::BadSecret);
            }
            if let Some(e) = refusal(&current, now_ms, rigs) {
                return Err(e);
            }
            match sqlx::query(&consume).bind(token_id).bind(now_ms).bind(rigs).fetch_optional(p).await? {
                Some(row) => Ok(token_from(&row)?.0),
                None => {
                    // Lost a race (or the token changed meanwhile): say why from a fresh read.
                    let row = sqlx::query(&select).bind(token_id).fetch_optional(p).await?;
                    let Some(row) = row else { return Err(TokenUseError::Unknown) };
                    Err(refusal(&token_from(&row)?.0, now_ms, rigs).unwrap_or(TokenUseError::Exhausted))
                }
            }
        })
    }
}

impl Store {
    /// Gives back `rigs` uses of a token whose enrollment failed after the uses were taken
    /// (the key was already registered, the database failed): uses count rigs enrolled.
    pub async fn refund_enroll_token(&self, token_id: &str, rigs: i64) -> Result<(), StoreError> {
        dispatch!(self, p => {
            sqlx::query("UPDATE enrollment_tokens SET uses = uses - $2 WHERE token_id = $1 AND uses >= $2")
                .bind(token_id).bind(rigs.max(1)).execute(p).await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_db::test_backends;
    use super::*;

    fn token(id: &str, max_uses: Option<i64>, expires: Option<i64>) -> NewEnrollToken {
        NewEnrollToken {
            token_id: id.into(),
            secret_sha256_hex: "aa".repeat(32),
            max_uses,
            expires_at_ms: expires,
            group: Some("farm-a".into()),
            requires_approval: true,
            note: "rack 3".into(),
            now_ms: 10,
        }
    }

    #[tokio::test]
    async fn token_lifecycle_and_distinct_refusals() {
        for db in test_backends().await {
            let s = &db.store;
            let row = s
                .create_enroll_token(&token("t1", Some(2), Some(1000)))
                .await
                .unwrap();
            assert_eq!(
                (row.uses, row.group.as_deref(), row.requires_approval),
                (0, Some("farm-a"), true)
            );
            assert!(matches!(
                s.create_enroll_token(&token("t1", None, None)).await,
                Err(StoreError::Conflict(_))
            ));
            let good = "aa".repeat(32);
            assert!(matches!(
                s.use_enroll_token("nope", &good, 20, 1).await,
                Err(TokenUseError::Unknown)
            ));
            assert!(matches!(
                s.use_enroll_token("t1", &"ab".repeat(32), 20, 1).await,
                Err(TokenUseError::BadSecret)
            ));
            assert!(matches!(
                s.use_enroll_token("t1", "aa", 20, 1).await,
                Err(TokenUseError::BadSecret)
            ));
            assert_eq!(
                s.use_enroll_token("t1", &good, 20, 1).await.unwrap().uses,
                1
            );
            assert!(matches!(
                s.use_enroll_token("t1", &good, 1000, 1).await,
                Err(TokenUseError::Expired)
            ));
            assert_eq!(
                s.use_enroll_token("t1", &good, 20, 1).await.unwrap().uses,
                2
            );
            assert!(matches!(
                s.use_enroll_token("t1", &good, 20, 1).await,
                Err(TokenUseError::Exhausted)
            ));

            s.create_enroll_token(&token("t2", None, None))
                .await
                .unwrap();
            for _ in 0..3 {
                s.use_enroll_token("t2", &good, 20, 1).await.unwrap();
            }
            assert!(s.revoke_enroll_token("t2").await.unwrap());
            assert!(!s.revoke_enroll_token("zz").await.unwrap());
            assert!(matches!(
                s.use_enroll_token("t2", &good, 20, 1).await,
                Err(TokenUseError::Revoked)
            ));
            // Uses count rigs: a request for more rigs than are left is refused whole.
            s.create_enroll_token(&token("t3", Some(3), None))
                .await
                .unwrap();
            assert!(matches!(
                s.use_enroll_token("t3", &good, 20, 4).await,
                Err(TokenUseError::Exhausted)
            ));
            assert_eq!(
                s.use_enroll_token("t3", &good, 20, 2).await.unwrap().uses,
                2
            );
            assert!(matches!(
                s.use_enroll_token("t3", &good, 20, 2).await,
                Err(TokenUseError::Exhausted)
            ));
            assert_eq!(
                s.use_enroll_token("t3", &good, 20, 1).await.unwrap().uses,
                3
            );
            s.refund_enroll_token("t3", 2).await.unwrap();
            assert_eq!(
                s.use_enroll_token("t3", &good, 20, 2).await.unwrap().uses,
                3
            );
            let list = s.list_enroll_tokens().await.unwrap();
            assert_eq!(
                list.iter().map(|t| t.token_id.as_str()).collect::<Vec<_>>(),
                ["t3", "t2", "t1"]
            );
            assert_eq!(list[1].uses, 3);
            db.cleanup().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn single_use_token_is_consumed_once_under_concurrency() {
        for db in test_backends().await {
            let s = &db.store;
            let good = "aa".repeat(32);
            for round in 0..5 {
                let id = format!("race{round}");
                s.create_enroll_token(&token(&id, Some(1), None))
                    .await
                    .unwrap();
                let tasks: Vec<_> = (0..4)
                    .map(|_| {
                        let (s, id, good) = (s.clone(), id.clone(), good.clone());
                        tokio::spawn(async move { s.use_enroll_token(&id, &good, 20, 1).await })
                    })
                    .collect();
                let mut wins = 0;
                for t in tasks {
                    match t.await.unwrap() {
                        Ok(_) => wins += 1,
                        Err(TokenUseError::Exhausted) => {}
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
                assert_eq!(wins, 1, "round {round}");
            }
            db.cleanup().await;
        }
    }
}
