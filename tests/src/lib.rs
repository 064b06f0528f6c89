//! Harness for rigfleet's end-to-end tests: pieces started for real on 127.0.0.1 ports chosen
//! at run time, and waiting helpers. The tests live in `tests/e2e/`, one integration binary.

pub mod agent_proc;
pub mod browser;
pub mod fault;
pub mod fault_scenarios;
pub mod rig;
pub mod server;

use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub async fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the async probe every 100 ms until it gives a value; panics naming `what` after
/// `timeout`.
pub async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
