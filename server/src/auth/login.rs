//! Logging in: the password (unknown names cost what known ones do), then the second factor
//! when the user has one, counted in the database so that wrong codes lock it on every replica.

use std::time::Duration;

use super::limits::{client_address, login_failed, login_name_key, login_succeeded, login_wait};
use super::password::{dummy_hash, verify, MAX_PASSWORD_BYTES};
use super::totp;
use crate::app::AppState;
use crate::db::{Store, StoreError, TotpAttempt, User};
use crate::fleet::FleetError;

/// How long a login may wait for its second-factor code.
pub const MFA_TIMEOUT: Duration = Duration::from_secs(300);
/// Codes tried per pending login before it starts over with the password.
pub const MFA_ATTEMPTS: u32 = 5;

/// Wrong second-factor codes in a row (over any number of logins, on any replica) before the
/// second factor locks; a correct password does not reset the count, a right code does.
pub const TOTP_MAX_FAILURES: i64 = 5;
/// The first second-factor lock; each further wrong code doubles it, up to [`TOTP_MAX_LOCK_MS`].
pub const TOTP_FIRST_LOCK_MS: i64 = 15 * 60_000;
/// The longest second-factor lock.
pub const TOTP_MAX_LOCK_MS: i64 = 24 * 3_600_000;

/// How long the second factor locks after `failures` wrong codes in a row (0: not yet).
pub fn totp_lock_ms(failures: i64) -> i64 {
    if failures < TOTP_MAX_FAILURES {
        return 0;
    }
    let doublings = u32::try_from((failures - TOTP_MAX_FAILURES).min(16)).unwrap_or(16);
    TOTP_FIRST_LOCK_MS
        .saturating_mul(1_i64 << doublings)
        .min(TOTP_MAX_LOCK_MS)
}

/// What the password step of a login gave.
#[derive(Debug)]
pub enum PasswordStep {
    /// Too many failures from this address (for this name, or for all): wait that many
    /// seconds; nothing was checked.
    Wait(u64),
    /// Unknown name or wrong password (counted; the answer does not say which).
    Wrong,
    /// Right: the user, who may still need their second factor.
    Passed(User),
}

/// The password step of a login from `peer`: refused while the (name, address) pair or the
/// address waits, then checked, and the failure counted or the pair's count cleared.
pub async fn password_step(
    state: &AppState,
    username: &str,
    password: &str,
    peer: std::net::IpAddr,
) -> Result<PasswordStep, FleetError> {
    let store = &state.hub.store;
    let name_key = login_name_key(username);
    let address = client_address(peer);
    let now = crate::now_ms();
    if let Some(wait) = login_wait(store, &name_key, &address, now).await? {
        return Ok(PasswordStep::Wait(wait));
    }
    let Some(user) = check_login(store, username, password).await? else {
        login_failed(store, &name_key, &address, now).await?;
        state.hub.metrics.error("web_login_failed");
        return Ok(PasswordStep::Wrong);
    };
    login_succeeded(store, &name_key, &address).await?;
    Ok(PasswordStep::Passed(user))
}

/// Looks a user up by name and checks the password. An unknown name is checked against a
/// dummy hash, so it costs one argon2 verification as a known one does.
pub async fn check_login(
    store: &Store,
    username: &str,
    password: &str,
) -> Result<Option<User>, StoreError> {
    let user = if username.is_empty() || username.len() > 64 || password.len() > MAX_PASSWORD_BYTES
    {
        None
    } else {
        store.user_by_name(username).await?
    };
    let hash = match &user {
        Some(u) => u.password_hash.clone(),
        None => dummy_hash().to_string(),
    };
    let ok = verify(hash, password.to_string()).await;
    Ok(user.filter(|_| ok))
}

/// What a second-factor code did.
#[derive(Debug)]
pub enum SecondFactor {
    /// Right: the login may finish.
    Passed(User),
    /// Wrong (or a TOTP code whose step was used already).
    Wrong { replay: bool },
    /// The second factor is locked for about that many minutes.
    Locked { minutes: i64 },
    /// The user is gone, or has no second factor any more.
    NoUser,
}

/// The second-factor step of a login whose password passed ([`check_second_factor`]).
pub async fn second_factor(
    state: &AppState,
    user_id: i64,
    code: &str,
) -> Result<SecondFactor, FleetError> {
    Ok(check_second_factor(&state.hub.store, user_id, code).await?)
}

/// Checks a TOTP or recovery code of `user_id`, counting the attempt in the database first.
pub async fn check_second_factor(
    store: &Store,
    user_id: i64,
    code: &str,
) -> Result<SecondFactor, StoreError> {
    let Some(user) = store.user_by_id(user_id).await? else {
        return Ok(SecondFactor::NoUser);
    };
    let Some(secret) = user.totp_secret.clone() else {
        return Ok(SecondFactor::NoUser);
    };
    let now = crate::now_ms();
    let failures = match store
        .totp_begin_attempt(user.id, now, TOTP_MAX_FAILURES, now + TOTP_FIRST_LOCK_MS)
        .await?
    {
        TotpAttempt::Open { failures } => failures,
        TotpAttempt::Locked { until_ms } => {
            let minutes = ((until_ms - now).max(1) + 59_999) / 60_000;
            return Ok(SecondFactor::Locked { minutes });
        }
    };
    let now_secs = u64::try_from(now / 1000).unwrap_or(0);
    let mut replay = false;
    let ok = match totp::verify_step(&secret, code, now_secs) {
        Some(step) => {
            let fresh = store.totp_use_step(user.id, step).await?;
            replay = !fresh;
            fresh
        }
        None if totp::looks_like_recovery(code) => {
            store
                .use_recovery_code(user.id, |stored| totp::recovery_matches(stored, code))
                .await?
        }
        None => false,
    };
    if ok {
        store.totp_attempt_succeeded(user.id).await?;
        return Ok(SecondFactor::Passed(user));
    }
    let lock = totp_lock_ms(failures);
    if lock > 0 {
        store.totp_lock_until(user.id, now + lock).await?;
        tracing::warn!(
            user = %user.username,
            failures,
            "Second factor locked after wrong codes"
        );
    }
    Ok(SecondFactor::Wrong { replay })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::password::PASSWORD_CHECKS;
    use crate::db::Role;
    use argon2::password_hash::PasswordHash;
    use std::sync::atomic::Ordering;

    /// Item 15 (timing): an unknown name is checked against a dummy hash with the parameters of
    /// real ones, so it costs one argon2 verification as a known name does (counted, not
    /// timed).
    #[tokio::test]
    async fn unknown_names_cost_one_argon2_check_like_known_ones() {
        let db = crate::db::test_db::TestDb::sqlite().await.unwrap();
        let s = &db.store;
        let hash = crate::startup::hash_password("right-password-1").unwrap();
        s.create_user("kim", &hash, Role::Viewer).await.unwrap();
        // The dummy has the cost of a real hash: same algorithm, version and parameters.
        let real = PasswordHash::new(&hash).unwrap();
        let dummy = PasswordHash::new(dummy_hash()).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
        for (name, password, ok) in [
            ("kim", "right-password-1", true),
            ("kim", "wrong-password", false),
            ("nobody", "wrong-password", false),
            ("", "wrong-password", false),
            (&"x".repeat(65)[..], "wrong-password", false),
        ] {
            let before = PASSWORD_CHECKS.load(Ordering::SeqCst);
            let user = check_login(s, name, password).await.unwrap();
            assert_eq!(user.is_some(), ok, "{name}");
            assert!(
                PASSWORD_CHECKS.load(Ordering::SeqCst) > before,
                "{name:?} got an argon2 check"
            );
        }
        db.cleanup().await;
    }

    #[test]
    fn second_factor_locks_grow_and_are_capped() {
        assert_eq!(totp_lock_ms(TOTP_MAX_FAILURES - 1), 0);
        assert_eq!(totp_lock_ms(TOTP_MAX_FAILURES), TOTP_FIRST_LOCK_MS);
        assert_eq!(totp_lock_ms(TOTP_MAX_FAILURES + 1), 2 * TOTP_FIRST_LOCK_MS);
        assert_eq!(totp_lock_ms(TOTP_MAX_FAILURES + 40), TOTP_MAX_LOCK_MS);
        assert_eq!(totp_lock_ms(i64::MAX), TOTP_MAX_LOCK_MS);
    }
}
