//! The engine's end-to-end checks on real blocks: every kernel path, the CPU device on every
//! path, and the miner's rolling of version bits and headers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rigfleet_engine::device::cpu::{CpuConfig, CpuDevice};
use rigfleet_engine::device::{event_channel, Device, DeviceEvent};
use rigfleet_engine::test_vectors::{RealBlock, BIP320_MASK, BITCOIN_881423, SHA256D_BLOCKS};
use rigfleet_engine::{hex, Algorithm, Miner, NonceRange, Share, Target, Work};

const WAIT: Duration = Duration::from_secs(30);

fn around(nonce: u32, half_width: u32) -> NonceRange {
    NonceRange::new(
        nonce.saturating_sub(half_width),
        nonce.saturating_add(half_width),
    )
}

fn block_work(block: &RealBlock, range: NonceRange) -> Work {
    let mut w = Work::new(
        block.name,
        Algorithm::Sha256d,
        block.header_with_nonce(0),
        Target::from_nbits(block.bits).unwrap(),
    );
    w.nonce_range = range;
    w
}

#[test]
fn every_kernel_path_finds_exactly_the_real_nonce_of_every_block() {
    for kernel in Algorithm::Sha256d.kernels() {
        for block in SHA256D_BLOCKS {
            let target = Target::from_nbits(block.bits).unwrap();
            let mut found = Vec::new();
            kernel.scan(
                &block.header_with_nonce(0),
                &target,
                around(block.nonce, 20_000),
                &mut found,
            );
            let confirmed: Vec<u32> = found
                .into_iter()
                .filter(|&n| {
                    target.is_met_by(&Algorithm::Sha256d.hash(&block.header_with_nonce(n)))
                })
                .collect();
            assert_eq!(
                confirmed,
                vec![block.nonce],
                "{} on {}",
                block.name,
                kernel.path()
            );
            let hash = Algorithm::Sha256d.hash(&block.header_with_nonce(block.nonce));
            assert_eq!(hex::encode_reversed(&hash), block.hash);
        }
    }
}

#[test]
fn cpu_device_reports_the_real_nonce_on_every_path() {
    for kernel in Algorithm::Sha256d.kernels() {
        let (tx, rx) = event_channel();
        let mut config = CpuConfig::new(Algorithm::Sha256d);
        config.threads = 2;
        config.path = Some(kernel.path().to_string());
        let mut device = CpuDevice::new(config, tx).unwrap();
        assert_eq!(device.info().path, kernel.path());
        for block in SHA256D_BLOCKS {
            let work = block_work(&block, around(block.nonce, 300_000));
            let id = work.id;
            device.start(work).unwrap();
            let mut nonces = Vec::new();
            loop {
                match rx.recv_timeout(WAIT).expect("device went silent") {
                    DeviceEvent::Found { work_id, nonce, .. } if work_id == id => {
                        nonces.push(nonce)
                    }
                    DeviceEvent::Exhausted { work_id, .. } if work_id == id => break,
                    _ => {}
                }
            }
            // The exhausted event may overtake a found event sent by another worker.
            while let Ok(DeviceEvent::Found { work_id, nonce, .. }) =
                rx.recv_timeout(Duration::from_millis(100))
            {
                if work_id == id {
                    nonces.push(nonce);
                }
            }
            assert_eq!(
                nonces,
                vec![block.nonce],
                "{} on {}",
                block.name,
                kernel.path()
            );
        }
        assert!(device.hashes_done().unwrap() >= 4 * 600_000);
    }
}

fn miner_with_cpu(threads: usize) -> (Miner, mpsc::Receiver<Share>) {
    let (tx, rx) = event_channel();
    let mut config = CpuConfig::new(Algorithm::Sha256d);
    config.threads = threads;
    let device = CpuDevice::new(config, tx).unwrap();
    let (share_tx, share_rx) = mpsc::channel();
    let miner = Miner::new(vec![Box::new(device)], rx, share_tx).unwrap();
    (miner, share_rx)
}

#[test]
fn miner_rolls_version_bits_to_reach_the_real_header() {
    let block = BITCOIN_881423;
    // Start from the block's version with two rollable bits flipped; the miner must walk the
    // four combinations of those bits and find the real nonce on the real version.
    let flipped = 0x0000_6000;
    assert_eq!(flipped & BIP320_MASK, flipped);
    let mut template = block_work(&block, around(block.nonce, 50_000));
    template = template.with_version(block.version ^ flipped);
    template.version_mask = flipped;
    let (miner, shares) = miner_with_cpu(2);
    let mut sent = false;
    miner.set_source(Box::new(move || {
        if sent {
            None
        } else {
            sent = true;
            Some(template.clone())
        }
    }));
    let share = shares
        .recv_timeout(WAIT)
        .expect("share from the rolled version");
    assert_eq!(share.version, block.version);
    assert_eq!(share.nonce, block.nonce);
    assert_eq!(hex::encode_reversed(&share.hash), block.hash);
    assert_eq!(share.header, block.header());
    assert!(share.difficulty() > 1e14, "a real block is a huge share");
    let stats = miner.stats();
    assert_eq!(stats.devices[0].shares, 1);
    assert_eq!(stats.devices[0].hardware_errors, 0);
}

#[test]
fn miner_asks_the_source_for_a_new_header_when_a_header_is_exhausted() {
    let block = SHA256D_BLOCKS[1];
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    // First a header with a corrupted merkle root (nothing to find), then the real one: as a
    // Stratum job does when it moves to the next extranonce2.
    let (miner, shares) = miner_with_cpu(1);
    miner.set_source(Box::new(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let mut work = block_work(&block, around(block.nonce, 20_000));
        match n {
            0 => {
                work.header[40] ^= 1;
                Some(work)
            }
            1 => Some(work),
            _ => None,
        }
    }));
    let share = shares
        .recv_timeout(WAIT)
        .expect("share from the second header");
    assert_eq!(share.nonce, block.nonce);
    assert_eq!(&share.work.header[36..68], &block.header()[36..68]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "third call finds the job exhausted"
    );
}

#[test]
fn new_job_replaces_the_old_one_and_old_nonces_keep_their_job_id() {
    let block = SHA256D_BLOCKS[0];
    let (miner, shares) = miner_with_cpu(2);
    // A job with nothing to find over the full range keeps the device busy.
    let mut busy = block_work(&block, NonceRange::FULL);
    busy.header[50] ^= 0xff;
    busy.job_id = "busy".into();
    miner.set_source(Box::new(move || Some(busy.clone())));
    std::thread::sleep(Duration::from_millis(300));
    assert!(miner.stats().devices[0].hashes_total > 0);
    let real = block_work(&block, around(block.nonce, 1000));
    let mut once = Some(real);
    miner.set_source(Box::new(move || once.take()));
    let share = shares.recv_timeout(WAIT).expect("share of the new job");
    assert_eq!(&*share.work.job_id, block.name);
    assert_eq!(share.nonce, block.nonce);
}

#[test]
fn share_target_easier_than_the_block_finds_many_shares_all_confirmed() {
    // Difficulty 1/4096: about one share per 2^20 hashes.
    let block = SHA256D_BLOCKS[2];
    let (miner, shares) = miner_with_cpu(2);
    let mut work = block_work(&block, NonceRange::FULL);
    work.target = Target::from_difficulty(
        Algorithm::Sha256d,
        rigfleet_engine::Difficulty::new(1.0 / 4096.0).unwrap(),
    );
    miner.set_source(Box::new(move || Some(work.clone())));
    for _ in 0..5 {
        let share = shares.recv_timeout(WAIT).expect("easy share");
        assert!(share.work.target.is_met_by(&share.hash));
        assert_eq!(Algorithm::Sha256d.hash(&share.header), share.hash);
        assert!(share.difficulty() >= 1.0 / 4096.0);
    }
    assert_eq!(miner.stats().devices[0].hardware_errors, 0);
}

#[test]
fn device_rejects_work_for_another_algorithm() {
    let (tx, _rx) = event_channel();
    let mut config = CpuConfig::new(Algorithm::Scrypt);
    config.threads = 1;
    let mut device = CpuDevice::new(config, tx).unwrap();
    let work = block_work(&SHA256D_BLOCKS[0], NonceRange::FULL);
    assert!(device.start(work).is_err());
}

#[test]
fn miner_with_a_short_nonce_span_rolls_versions_before_the_nonce_space_is_spent() {
    let block = BITCOIN_881423;
    let flipped = 0x0000_6000;
    // A range that runs to the end of the nonce space: without the span the miner would spend
    // 2^32 nonces on the wrong version first.
    let mut template = block_work(&block, NonceRange::new(block.nonce - 1000, u32::MAX));
    template = template.with_version(block.version ^ flipped);
    template.version_mask = flipped;
    let (miner, shares) = miner_with_cpu(2);
    miner.set_nonce_span(5000);
    let mut once = Some(template);
    miner.set_source(Box::new(move || once.take()));
    let share = shares
        .recv_timeout(WAIT)
        .expect("share on the fourth version");
    assert_eq!(share.version, block.version);
    assert_eq!(share.nonce, block.nonce);
    assert_eq!(hex::encode_reversed(&share.hash), block.hash);
}
