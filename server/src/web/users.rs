//! The few user-management queries the store does not offer yet (listing, role changes,
//! removal), and TOTP recovery codes kept as hashes in the settings table.
// These belong in `db/users.rs`; they live here until its owner takes them over.

use crate::db::row::RowExt;
use crate::db::{dispatch, Role, Store, StoreError};

/// A user as the admin page lists it.
#[derive(Clone, Debug)]
pub struct UserEntry {
    /// Id.
    pub id: i64,
    /// Name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// Has a second factor.
    pub totp: bool,
}

/// Every user, by name.
pub async fn list_users(store: &Store) -> Result<Vec<UserEntry>, StoreError> {
    dispatch!(store, p => {
        let rows = sqlx::query(
            "SELECT id, username, role, totp_secret FROM users ORDER BY username",
        )
        .fetch_all(p)
        .await?;
        rows.iter()
            .map(|r| {
                let role = r.text("role")?;
                Ok(UserEntry {
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
pub async fn set_role(store: &Store, user_id: i64, role: Role) -> Result<(), StoreError> {
    let n = dispatch!(store, p => sqlx::query("UPDATE users SET role = $2 WHERE id = $1")
        .bind(user_id).bind(role.as_str()).execute(p).await?.rows_affected());
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Removes a user (their sessions and API tokens go with them).
pub async fn delete_user(store: &Store, user_id: i64) -> Result<(), StoreError> {
    dispatch!(store, p => {
        sqlx::query("DELETE FROM sessions WHERE user_id = $1").bind(user_id).execute(p).await?;
        sqlx::query("DELETE FROM api_tokens WHERE user_id = $1").bind(user_id).execute(p).await?;
        let n = sqlx::query("DELETE FROM users WHERE id = $1").bind(user_id).execute(p).await?.rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
    });
    Ok(())
}

/// Ends every session of a user (after a password change or role change).
pub async fn delete_sessions_of(store: &Store, user_id: i64) -> Result<(), StoreError> {
    dispatch!(store, p => {
        sqlx::query("DELETE FROM sessions WHERE user_id = $1").bind(user_id).execute(p).await?;
    });
    Ok(())
}

/// How many admins exist.
pub async fn admin_count(store: &Store) -> Result<i64, StoreError> {
    dispatch!(store, p => Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin'")
        .fetch_one(p).await?))
}

fn recovery_key(user_id: i64) -> String {
    format!("web.totp_recovery.{user_id}")
}

/// Stores the hashes of a user's recovery codes (replacing older ones).
pub async fn set_recovery(
    store: &Store,
    user_id: i64,
    hashes: &[String],
) -> Result<(), StoreError> {
    store
        .set_setting(&recovery_key(user_id), &hashes.join(","))
        .await
}

/// Uses a recovery code once: true when it matched (it is then gone). Stored codes are salted
/// hashes ([`super::totp::hash_recovery`]); the unsalted ones of older versions still match.
/// The code is removed by compare and set, so two logins racing with one code (on one server
/// or two) cannot both use it.
pub async fn use_recovery(store: &Store, user_id: i64, code: &str) -> Result<bool, StoreError> {
    let key = recovery_key(user_id);
    for _ in 0..5 {
        let Some(stored) = store.get_setting(&key).await? else {
            return Ok(false);
        };
        let hashes: Vec<&str> = stored.split(',').filter(|h| !h.is_empty()).collect();
        let Some(used) = hashes
            .iter()
            .position(|h| super::totp::recovery_matches(h, code))
        else {
            return Ok(false);
        };
        let left: Vec<&str> = hashes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != used)
            .map(|(_, h)| *h)
            .collect();
        if store
            .replace_setting(&key, &stored, &left.join(","))
            .await?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recovery code works once, even when several logins race with it; the others stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_recovery_code_works_once_under_a_race() {
        for db in crate::db::test_db::test_backends().await {
            let s = &db.store;
            let id = s.create_user("rex", "h", Role::Viewer).await.unwrap();
            let (codes, hashes) = super::super::totp::recovery_codes(3).unwrap();
            set_recovery(s, id, &hashes).await.unwrap();
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let (s, code) = (s.clone(), codes[1].clone());
                    tokio::spawn(async move { use_recovery(&s, id, &code).await.unwrap() })
                })
                .collect();
            let mut used = 0;
            for t in tasks {
                used += usize::from(t.await.unwrap());
            }
            assert_eq!(used, 1);
            assert!(!use_recovery(s, id, &codes[1]).await.unwrap());
            assert!(use_recovery(s, id, &codes[0]).await.unwrap());
            assert!(use_recovery(s, id, &codes[2]).await.unwrap());
            assert!(!use_recovery(s, id, "aaaa-bbbb-cccc-dddd").await.unwrap());
            db.cleanup().await;
        }
    }
}
