//! Limits that slow guessing. Failed logins and wrong re-entered passwords are counted in the
//! database so replicas share them, per (name, address) and per address; enrollment attempts
//! are counted per address in memory ([`EnrollLimiter`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Failed logins allowed per (user name, address) before that pair waits.
pub const FREE_FAILURES_PER_NAME: i64 = 4;
/// Failed logins allowed per address, every name together (several people may share one).
pub const FREE_FAILURES_PER_ADDRESS: i64 = 30;
/// The first wait after the free failures; each further failure doubles it.
pub const FIRST_WAIT_MS: i64 = 30_000;
/// The longest wait.
pub const MAX_WAIT_MS: i64 = 15 * 60_000;
/// Failures older than this are forgotten.
pub const FORGET_AFTER_MS: i64 = 3_600_000;
/// The name under which failures of every name from one address are counted.
const ANY_NAME: &str = "any";

/// How long after its last failure a key with `failures` failures waits (0: not at all).
pub fn backoff_ms(failures: i64, free: i64) -> i64 {
    if failures <= free {
        return 0;
    }
    let doublings = u32::try_from((failures - free - 1).min(16)).unwrap_or(16);
    FIRST_WAIT_MS
        .saturating_mul(1_i64 << doublings)
        .min(MAX_WAIT_MS)
}

/// The address failed logins are counted under: an IPv4 address, or the /64 of an IPv6 one
/// (one host usually holds a whole /64).
pub fn client_address(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The key a login name's failures are counted under (names as typed, known or not, so the
/// answer never tells which names exist).
pub fn login_name_key(username: &str) -> String {
    let name: String = username.chars().take(64).collect();
    format!("user:{name}")
}

/// Failed logins, kept in the database so replicas share them. Failures slow only the
/// (name, address) pair they came from, and an address that fails with many names: nobody
/// can lock a user out from elsewhere. Returns the seconds to wait, if any.
pub async fn login_wait(
    store: &crate::db::Store,
    name_key: &str,
    address: &str,
    now_ms: i64,
) -> Result<Option<u64>, crate::db::StoreError> {
    let mut wait_ms = 0;
    for (key, free) in [
        (name_key, FREE_FAILURES_PER_NAME),
        (ANY_NAME, FREE_FAILURES_PER_ADDRESS),
    ] {
        if let Some((failures, last_ms)) = store.login_failures(key, address).await? {
            if last_ms >= now_ms - FORGET_AFTER_MS {
                let until = last_ms.saturating_add(backoff_ms(failures, free));
                wait_ms = wait_ms.max(until - now_ms);
            }
        }
    }
    Ok((wait_ms > 0).then(|| u64::try_from((wait_ms + 999) / 1000).unwrap_or(1).max(1)))
}

/// Counts a failed login of `name_key` from `address`.
pub async fn login_failed(
    store: &crate::db::Store,
    name_key: &str,
    address: &str,
    now_ms: i64,
) -> Result<(), crate::db::StoreError> {
    let forget = now_ms - FORGET_AFTER_MS;
    store
        .record_login_failure(name_key, address, now_ms, forget)
        .await?;
    store
        .record_login_failure(ANY_NAME, address, now_ms, forget)
        .await?;
    Ok(())
}

/// Forgets the failures of `name_key` from `address` after a good password.
pub async fn login_succeeded(
    store: &crate::db::Store,
    name_key: &str,
    address: &str,
) -> Result<(), crate::db::StoreError> {
    store.clear_login_failures(name_key, address).await
}

// Enrollment attempts: per address, in memory.

/// Attempts an address may make at once.
pub const LIMIT_BURST: f64 = 60.0;
/// Attempts per second an address gets back.
pub const LIMIT_PER_SEC: f64 = 10.0;
/// Refused attempts (bad token, wrong secret, bad request…) an address may make at once.
pub const FAILURE_BURST: f64 = 10.0;
/// Refused attempts per second an address gets back (one per 5 s).
pub const FAILURES_PER_SEC: f64 = 0.2;
/// Addresses tracked before idle ones are forgotten.
const MAX_TRACKED: usize = 10_000;

#[derive(Clone, Copy)]
struct Bucket {
    attempts: f64,
    failures: f64,
    at: Instant,
}

/// Per-address limits for `/api/agent/enroll` (IPv6 addresses by their /64, which one host
/// usually holds whole): a bucket of attempts, so a farm behind one NAT rolls out quickly, and
/// a much smaller one of refusals, so guessing tokens or flooding with garbage is slow.
pub struct EnrollLimiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    limits: [(f64, f64); 2],
}

impl Default for EnrollLimiter {
    fn default() -> Self {
        Self::new(
            (LIMIT_BURST, LIMIT_PER_SEC),
            (FAILURE_BURST, FAILURES_PER_SEC),
        )
    }
}

impl EnrollLimiter {
    /// A limiter with `(burst, per second)` of attempts and of refusals.
    pub fn new(attempts: (f64, f64), failures: (f64, f64)) -> Self {
        EnrollLimiter {
            buckets: Mutex::new(HashMap::new()),
            limits: [attempts, failures],
        }
    }

    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        }
    }

    /// `ip`'s bucket refilled to `now`.
    fn refill(&self, b: &mut Bucket, now: Instant) {
        let secs = now.saturating_duration_since(b.at).as_secs_f64();
        let [(a_burst, a_rate), (f_burst, f_rate)] = self.limits;
        b.attempts = (b.attempts + secs * a_rate).min(a_burst);
        b.failures = (b.failures + secs * f_rate).min(f_burst);
        b.at = now;
    }

    /// Takes one attempt for `ip` at `now`; `Err(seconds to wait)` when either bucket is empty.
    pub fn take(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED {
            let [(a_burst, _), (f_burst, _)] = self.limits;
            map.retain(|_, b| {
                let mut b = *b;
                self.refill(&mut b, now);
                b.attempts < a_burst || b.failures < f_burst
            });
        }
        let [(a_burst, a_rate), (f_burst, f_rate)] = self.limits;
        let b = map.entry(Self::key(ip)).or_insert(Bucket {
            attempts: a_burst,
            failures: f_burst,
            at: now,
        });
        self.refill(b, now);
        let wait = |have: f64, rate: f64| ((1.0 - have) / rate).ceil().max(1.0) as u64;
        if b.failures < 1.0 {
            return Err(wait(b.failures, f_rate));
        }
        if b.attempts < 1.0 {
            return Err(wait(b.attempts, a_rate));
        }
        b.attempts -= 1.0;
        Ok(())
    }

    /// Counts a refused attempt of `ip`.
    pub fn refused(&self, ip: IpAddr) {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = map.get_mut(&Self::key(ip)) {
            b.failures -= 1.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff_ms(4, 4), 0);
        assert_eq!(backoff_ms(5, 4), 30_000);
        assert_eq!(backoff_ms(6, 4), 60_000);
        assert_eq!(backoff_ms(1000, 4), MAX_WAIT_MS);
        assert_eq!(backoff_ms(i64::MAX, 4), MAX_WAIT_MS);
        let v6: std::net::IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(client_address(v6), "2001:db8:1:2::/64");
        let mapped: std::net::IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_address(mapped), "10.1.2.3");
        assert_eq!(login_name_key(&"x".repeat(100)).len(), 5 + 64);
    }

    /// Failures slow the (name, address) they came from: the same name from another address
    /// is not slowed (nobody can lock the admin out), and a good login clears the pair.
    #[tokio::test]
    async fn login_backoff_is_per_name_and_address() {
        for db in crate::db::test_db::test_backends().await {
            let s = &db.store;
            let admin = login_name_key("admin");
            let now = 1_000_000_000;
            for i in 0..FREE_FAILURES_PER_NAME {
                assert_eq!(
                    login_wait(s, &admin, "10.0.0.9", now + i).await.unwrap(),
                    None
                );
                login_failed(s, &admin, "10.0.0.9", now + i).await.unwrap();
            }
            assert_eq!(
                login_wait(s, &admin, "10.0.0.9", now + 10).await.unwrap(),
                None
            );
            login_failed(s, &admin, "10.0.0.9", now + 10).await.unwrap();
            assert_eq!(
                login_wait(s, &admin, "10.0.0.9", now + 10).await.unwrap(),
                Some(30)
            );
            assert_eq!(
                login_wait(s, &admin, "10.0.0.1", now + 10).await.unwrap(),
                None
            );
            assert_eq!(
                login_wait(s, &login_name_key("bob"), "10.0.0.9", now + 10)
                    .await
                    .unwrap(),
                None
            );
            assert_eq!(
                login_wait(s, &admin, "10.0.0.9", now + 10 + 30_000)
                    .await
                    .unwrap(),
                None
            );
            login_succeeded(s, &admin, "10.0.0.9").await.unwrap();
            login_failed(s, &admin, "10.0.0.9", now + 40_000)
                .await
                .unwrap();
            assert_eq!(
                login_wait(s, &admin, "10.0.0.9", now + 40_000)
                    .await
                    .unwrap(),
                None
            );
            // An address that fails with many names waits for all of them.
            for i in 0..=FREE_FAILURES_PER_ADDRESS {
                login_failed(s, &login_name_key(&format!("u{i}")), "10.0.0.7", now + i)
                    .await
                    .unwrap();
            }
            assert!(login_wait(s, &login_name_key("new"), "10.0.0.7", now + 100)
                .await
                .unwrap()
                .is_some());
            db.cleanup().await;
        }
    }

    #[test]
    fn the_limiter_slows_one_address_and_not_another() {
        let l = EnrollLimiter::new((5.0, 1.0), (2.0, 0.1));
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..5 {
            assert!(l.take(a, t0).is_ok());
        }
        assert_eq!(l.take(a, t0), Err(1));
        assert!(l.take(b, t0).is_ok(), "another address has its own bucket");
        assert!(l.take(a, t0 + Duration::from_secs(1)).is_ok());
        // Refusals have a bucket of their own, much slower to refill.
        l.refused(b);
        l.refused(b);
        assert_eq!(l.take(b, t0), Err(10));
        assert!(l.take(b, t0 + Duration::from_secs(10)).is_ok());
        // IPv6 addresses of one /64 share a bucket.
        let l = EnrollLimiter::new((1.0, 1.0), (1.0, 1.0));
        assert!(l.take("2001:db8::1".parse().unwrap(), t0).is_ok());
        assert!(l.take("2001:db8::2".parse().unwrap(), t0).is_err());
    }
}
