//! Passwords: argon2id hashes in PHC format, checked off the async threads (argon2 is slow on
//! purpose), the rule for new ones, and re-entering one's own password before a change that a
//! stolen cookie must not be enough for.

use std::sync::atomic::{AtomicU64, Ordering};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::PasswordVerifier;

use super::limits::{login_failed, login_succeeded, login_wait};
use crate::app::AppState;
use crate::fleet::FleetError;

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 10;
/// Longest password accepted (argon2 reads it all; nobody types more).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// argon2 verifications done (tests read it: an unknown name must cost one too).
pub(crate) static PASSWORD_CHECKS: AtomicU64 = AtomicU64::new(0);

/// Why a password could not be hashed: the system gave no randomness for the salt, or argon2
/// refused (neither depends on the password).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// argon2id hash in PHC format, with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| HashError(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| HashError(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// [`hash_password`] off the async threads.
pub async fn hash_password_async(password: &str) -> Result<String, FleetError> {
    let p = password.to_string();
    tokio::task::spawn_blocking(move || hash_password(&p))
        .await
        .map_err(|_| FleetError::Internal("hashing failed".into()))?
        .map_err(|e| {
            tracing::error!(error = %e, "Could not hash a password");
            FleetError::Internal("hashing failed".into())
        })
}

/// An argon2id hash with the parameters of real ones ([`hash_password`]) that no password
/// matches in practice: unknown names are checked against it, so they cost what known ones do
/// and the answer's time does not tell which names exist.
pub(crate) fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        // A fixed salt: no randomness is needed for a hash nobody logs in with.
        SaltString::from_b64("cmlnZmxlZXQtZHVtbXktc2FsdA")
            .ok()
            .and_then(|salt| {
                argon2::Argon2::default()
                    .hash_password(b"rigfleet: no such user", &salt)
                    .ok()
                    .map(|h| h.to_string())
            })
            .unwrap_or_default()
    })
}

/// Checks a password against an argon2 PHC string off the async threads.
pub async fn verify(hash: String, password: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PASSWORD_CHECKS.fetch_add(1, Ordering::Relaxed);
        PasswordHash::new(&hash).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// The rule for a new password (`confirm` is the second typing of it); the message is for
/// people.
pub fn check_new(new: &str, confirm: &str) -> Result<(), String> {
    if new.chars().count() < MIN_PASSWORD_LEN || new.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "The new password needs at least {MIN_PASSWORD_LEN} characters."
        ));
    }
    if new != confirm {
        return Err("The two new passwords differ.".into());
    }
    Ok(())
}

/// What re-entering one's own password gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconfirm {
    /// Right: the actor may be marked reauthenticated for this request.
    Confirmed,
    /// Wrong (counted).
    Wrong,
    /// Too many wrong ones from this session: wait that many seconds (nothing was checked).
    Wait(u64),
}

/// Checks a signed-in user's own password again (before a money move, a password change,
/// turning the second factor off). Wrong ones slow this session's next tries, so a stolen
/// cookie cannot guess the password at speed; the user's other sessions and logins from
/// elsewhere are not slowed.
pub async fn reconfirm(
    state: &AppState,
    user_id: i64,
    username: &str,
    session_hash: &str,
    password: &str,
) -> Result<Reconfirm, FleetError> {
    let store = &state.hub.store;
    let key = format!("reauth:{username}");
    let address = format!("session:{}", session_hash.get(..16).unwrap_or(""));
    let now = crate::now_ms();
    if let Some(wait) = login_wait(store, &key, &address, now).await? {
        return Ok(Reconfirm::Wait(wait));
    }
    let row = store
        .user_by_id(user_id)
        .await?
        .ok_or_else(|| FleetError::Forbidden("user gone".into()))?;
    let ok = !password.is_empty()
        && password.len() <= MAX_PASSWORD_BYTES
        && verify(row.password_hash, password.to_string()).await;
    if ok {
        login_succeeded(store, &key, &address).await?;
        Ok(Reconfirm::Confirmed)
    } else {
        login_failed(store, &key, &address, now).await?;
        state.hub.metrics.error("web_reauth_failed");
        Ok(Reconfirm::Wrong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_passwords_need_length_and_a_matching_second_typing() {
        assert!(check_new("long-enough-1", "long-enough-1").is_ok());
        assert!(check_new("short", "short").is_err());
        assert!(check_new("long-enough-1", "long-enough-2").is_err());
        assert!(check_new(&"x".repeat(MAX_PASSWORD_BYTES + 1), "").is_err());
    }

    #[tokio::test]
    async fn hashes_verify_and_are_salted() {
        let a = hash_password("right-password-1").unwrap();
        let b = hash_password("right-password-1").unwrap();
        assert_ne!(a, b);
        assert!(verify(a.clone(), "right-password-1".into()).await);
        assert!(!verify(a, "wrong".into()).await);
    }
}
