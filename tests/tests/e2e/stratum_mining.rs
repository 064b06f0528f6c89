use std::time::Duration;

use rigfleet_engine::Algorithm;
use rigfleet_stratum::client::{ClientConfig, PoolConfig as PoolEntry};
use rigfleet_stratum::pool::{Pool, PoolConfig, PoolHandle};
use rigfleet_tests::rig::{RigOptions, TestRig};
use rigfleet_tests::wait_for;

const WORKER: &str = "wallet.rig1";
const WAIT: Duration = Duration::from_secs(60);

async fn start_pool(algorithm: Algorithm) -> PoolHandle {
    let mut config = PoolConfig::new(algorithm);
    // Jobs only when the test asks, so every job change is the test's doing.
    config.job_interval = None;
    Pool::bind(config).await.expect("pool binds on 127.0.0.1:0")
}

fn client_config(pool: &PoolHandle, algorithm: Algorithm, submit_stale: bool) -> ClientConfig {
    let mut entry = PoolEntry::new(&pool.url(), WORKER, "x").expect("pool URL");
    entry.options.submit_stale = submit_stale;
    ClientConfig::new(vec![entry], algorithm)
}

/// Mines until the pool has accepted `shares` from the worker; every share must be accepted.
async fn mine_and_check(
    algorithm: Algorithm,
    shares: u64,
    options: RigOptions,
) -> (PoolHandle, TestRig) {
    let pool = start_pool(algorithm).await;
    let rig = TestRig::start(client_config(&pool, algorithm, false), algorithm, options).unwrap();
    let accepted = wait_for(WAIT, || {
        let w = pool.stats().worker(WORKER);
        (w.accepted >= shares).then_some(w.accepted)
    })
    .await;
    let worker = pool.stats().worker(WORKER);
    assert!(
        accepted.is_some(),
        "{algorithm}: pool accepted only {worker:?}"
    );
    assert_eq!(
        worker.rejected_total(),
        0,
        "{algorithm}: pool rejected {worker:?}"
    );
    let snap = rig.client.snapshot();
    let p = &snap.pools[0];
    assert_eq!(
        p.shares.rejected_total(),
        0,
        "client saw rejections: {:?}",
        p.shares
    );
    assert_eq!(p.shares.stale, 0);
    assert!(
        p.shares.accepted >= shares - 1,
        "client counted {:?}",
        p.shares
    );
    assert_eq!(rig.miner.stats().devices[0].hardware_errors, 0);
    (pool, rig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha256d_shares_are_accepted_by_the_validating_pool() {
    let (pool, rig) = mine_and_check(Algorithm::Sha256d, 8, RigOptions::default()).await;
    // The pool granted BIP 310 version rolling and the client uses the granted mask.
    assert_eq!(
        rig.client.snapshot().pools[0].version_mask,
        Some(0x1fffe000)
    );
    rig.stop().await;
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrypt_shares_are_accepted_by_the_validating_pool() {
    let (pool, rig) = mine_and_check(Algorithm::Scrypt, 8, RigOptions::default()).await;
    rig.stop().await;
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_on_rolled_versions_are_accepted() {
    // 2^20 nonces per version: at difficulty 0.001 (about 2^22 hashes a share) most shares are
    // found on rolled versions.
    let options = RigOptions {
        nonce_span: Some(1 << 20),
        ..RigOptions::default()
    };
    let (pool, rig) = mine_and_check(Algorithm::Sha256d, 8, options).await;
    let job_version = pool.current_job().version;
    let versions = rig.tap.lock().unwrap().versions.clone();
    let rolled = versions.iter().filter(|&&v| v != job_version).count();
    assert!(
        rolled >= 4,
        "only {rolled} of {} shares on rolled versions",
        versions.len()
    );
    for v in &versions {
        assert_eq!(
            (v ^ job_version) & !0x1fffe000,
            0,
            "version {v:#x} outside the mask"
        );
    }
    rig.stop().await;
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_jobs_move_the_miner_to_each_new_block() {
    let (pool, rig) = mine_and_check(Algorithm::Sha256d, 2, RigOptions::default()).await;
    for block in 0..5 {
        pool.new_block();
        let before = pool.stats().worker(WORKER).accepted;
        let after = wait_for(WAIT, || {
            let a = pool.stats().worker(WORKER).accepted;
            (a >= before + 2).then_some(a)
        })
        .await;
        assert!(after.is_some(), "no share accepted after new block {block}");
    }
    let worker = pool.stats().worker(WORKER);
    assert_eq!(worker.rejected_total(), 0, "{worker:?}");
    let snap = rig.client.snapshot();
    assert!(
        snap.clean_job_latency.count >= 5,
        "{:?}",
        snap.clean_job_latency
    );
    rig.stop().await;
    pool.shutdown().await;
}

/// A rig whose devices switch to a new job 1.5 s late (a slow device), mining until the pool
/// accepted a share; then a new block, so shares of the replaced job are found.
async fn slow_rig_across_a_new_block(submit_stale: bool) -> (PoolHandle, TestRig) {
    let pool = start_pool(Algorithm::Sha256d).await;
    let options = RigOptions {
        switch_delay: Some(Duration::from_millis(1500)),
        ..RigOptions::default()
    };
    let config = client_config(&pool, Algorithm::Sha256d, submit_stale);
    let rig = TestRig::start(config, Algorithm::Sha256d, options).unwrap();
    let first = wait_for(WAIT, || {
        (pool.stats().worker(WORKER).accepted >= 1).then_some(())
    })
    .await;
    assert!(first.is_some(), "no share before the new block");
    pool.new_block();
    (pool, rig)
}

/// Shares of the replaced job are counted stale (not rejected) and not submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_of_replaced_jobs_are_counted_stale_and_not_submitted() {
    let (pool, rig) = slow_rig_across_a_new_block(false).await;
    let stale = wait_for(WAIT, || {
        let s = rig.client.snapshot().pools[0].shares.stale;
        (s >= 1).then_some(s)
    })
    .await;
    assert!(
        stale.is_some(),
        "no stale share: {:?}",
        rig.client.snapshot().pools[0].shares
    );
    let worker = pool.stats().worker(WORKER);
    assert_eq!(
        worker.rejected_total(),
        0,
        "stale shares reached the pool: {worker:?}"
    );
    assert_eq!(rig.client.snapshot().pools[0].shares.rejected_total(), 0);
    rig.stop().await;
    pool.shutdown().await;
}

/// With `submit_stale`, the pool answers 21 and the client counts those answers as stale, not
/// as errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_shares_the_pool_refuses_with_21_count_as_stale() {
    let (pool, rig) = slow_rig_across_a_new_block(true).await;
    let stale = wait_for(WAIT, || {
        let w = pool.stats().worker(WORKER);
        (w.stale >= 1).then_some(w.stale)
    })
    .await;
    assert!(
        stale.is_some(),
        "pool saw no stale share: {:?}",
        pool.stats().worker(WORKER)
    );
    let worker = pool.stats().worker(WORKER);
    assert_eq!(
        worker.rejected_total(),
        worker.rejected_with(21),
        "only stale rejections: {worker:?}"
    );
    let client = wait_for(WAIT, || {
        let s = rig.client.snapshot().pools[0].shares.clone();
        (s.stale >= 1).then_some(s)
    })
    .await
    .expect("client counted the pool's 21 as stale");
    assert_eq!(client.rejected_total(), 0, "21 is not an error: {client:?}");
    rig.stop().await;
    pool.shutdown().await;
}
