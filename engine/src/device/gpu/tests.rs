//! The GPU host logic on a fake backend (everywhere), and the real kernel on whatever OpenCL
//! platform the machine has (PoCL in CI): found nonces must equal the CPU engine's.

use super::*;
use crate::algo::sha256d::portable::PORTABLE;
use crate::test_rng::SplitMix64;
use crate::test_vectors::{LITECOIN_GENESIS, SHA256D_BLOCKS};

/// A backend that hashes on the CPU like the kernel would, and can be told to lie.
struct FakeBackend {
    info: GpuInfo,
    header: [u8; 80],
    /// Extra nonces reported by every launch although they do not pass.
    wrong: Vec<u32>,
}

impl GpuBackend for FakeBackend {
    fn info(&self) -> &GpuInfo {
        &self.info
    }

    fn launch_sha256d(
        &mut self,
        words: &[u32; 20],
        top: u32,
        base: u32,
        count: u32,
    ) -> Result<LaunchOutput, GpuError> {
        assert_eq!(*words, sha256d_kernel_words(&self.header));
        assert_eq!(count % LAUNCH_GRANULE, 0);
        let prepared = Prepared::new(&self.header);
        let mut nonces = Vec::new();
        for i in 0..count {
            let nonce = base.wrapping_add(i);
            if sha256d::portable::hash_top_word(&prepared, nonce) <= top {
                nonces.push(nonce);
            }
        }
        nonces.extend(self.wrong.iter().copied());
        let count = nonces.len() as u32;
        nonces.truncate(CANDIDATE_CAPACITY as usize);
        Ok(LaunchOutput { count, nonces })
    }

    fn launch_scrypt(
        &mut self,
        words: &[u32; 27],
        _top: u32,
        _base: u32,
        _count: u32,
    ) -> Result<LaunchOutput, GpuError> {
        assert_eq!(*words, scrypt_kernel_words(&self.header));
        Ok(LaunchOutput {
            count: self.wrong.len() as u32,
            nonces: self.wrong.clone(),
        })
    }

    fn max_scrypt_launch(&self) -> u32 {
        LAUNCH_GRANULE
    }
}

fn fake(header: [u8; 80], wrong: Vec<u32>) -> GpuScanner {
    let info = GpuInfo {
        id: "fake".into(),
        pci_bus_id: None,
        name: "fake".into(),
        platform: "test".into(),
        route: Route::OpenCl,
        compute_units: 1,
        is_gpu: true,
    };
    GpuScanner::new(
        Box::new(FakeBackend {
            info,
            header,
            wrong,
        }),
        Duration::from_millis(50),
    )
}

fn cpu_scan(header: &[u8; 80], target: &Target, range: NonceRange) -> Vec<u32> {
    let mut found = Vec::new();
    PORTABLE.scan(header, target, range, &mut found);
    found
}

fn target_with_top(top: u32) -> Target {
    let mut bytes = [0xffu8; 32];
    bytes[28..32].copy_from_slice(&top.to_le_bytes());
    Target::from_le_bytes(&bytes)
}

#[test]
fn wrong_gpu_nonces_are_counted_and_never_reported() {
    let mut rng = SplitMix64(7);
    let header = rng.header();
    let target = target_with_top(0x00ff_ffff);
    let range = NonceRange::new(1000, 1000 + 5000);
    let truth = cpu_scan(&header, &target, range);
    // Nonces in the range that do not pass, as a broken card would return them.
    let prepared = Prepared::new(&header);
    let wrong: Vec<u32> = (1000..6000)
        .filter(|&n| sha256d::portable::hash_top_word(&prepared, n) > target.top_word())
        .take(3)
        .collect();
    let mut gpu = fake(header, wrong);
    let out = gpu
        .scan(Algorithm::Sha256d, &header, &target, range)
        .unwrap();
    assert_eq!(out.candidates, truth);
    assert!(out.rejected >= 3, "rejected {}", out.rejected);
}

#[test]
fn overflowing_launch_is_rescanned_on_the_cpu_and_range_end_is_respected() {
    let mut rng = SplitMix64(8);
    let header = rng.header();
    // One nonce in 16 passes: a launch of 2^16 overflows the 4096 slots.
    let target = target_with_top(0x0fff_ffff);
    let range = NonceRange::new(u32::MAX - 70_000, u32::MAX);
    let mut gpu = fake(header, Vec::new());
    gpu.set_launch_nonces(1 << 16);
    let out = gpu
        .scan(Algorithm::Sha256d, &header, &target, range)
        .unwrap();
    assert_eq!(out.candidates, cpu_scan(&header, &target, range));
    assert!(out.cpu_rescans >= 1);
    assert_eq!(out.rejected, 0);
}

#[test]
fn launch_size_moves_toward_the_target_time_within_bounds() {
    let mut gpu = fake([0; 80], Vec::new());
    gpu.set_launch_nonces(1 << 20);
    gpu.tune(1 << 20, Duration::from_millis(25));
    assert_eq!(gpu.launch_nonces(), 1 << 21);
    gpu.tune(1 << 21, Duration::from_secs(10));
    assert_eq!(gpu.launch_nonces(), 1 << 19);
    gpu.tune(1 << 19, Duration::from_nanos(1));
    assert_eq!(gpu.launch_nonces(), 1 << 21);
    gpu.set_launch_nonces(1);
    assert_eq!(gpu.launch_nonces(), LAUNCH_GRANULE);
}

/// PoCL 3.1 was seen to crash (SIGSEGV) when two tests drove OpenCL from two threads at once:
/// the OpenCL tests take turns.
static OPENCL_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The OpenCL devices of this machine with the kernel built, CPU devices (PoCL) included. With
/// none, the test is skipped loudly, or fails when `RIGFLEET_REQUIRE_OPENCL=1` (CI installs PoCL
/// and sets it, so a broken install cannot pass silently).
fn opencl_scanners(test: &str) -> (std::sync::MutexGuard<'static, ()>, Vec<GpuScanner>) {
    let turn = OPENCL_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let found = discover(&DiscoverOptions {
        opencl: true,
        cuda: false,
        include_cpu_devices: true,
        both_routes: false,
        target_launch: Duration::from_millis(50),
    });
    if found.scanners.is_empty() {
        let why = found.problems.join("; ");
        if std::env::var("RIGFLEET_REQUIRE_OPENCL").as_deref() == Ok("1") {
            panic!("{test}: no OpenCL device but RIGFLEET_REQUIRE_OPENCL=1: {why}");
        }
        eprintln!(
            "\n*** SKIPPED {test}: no OpenCL platform/device ({why}); install pocl-opencl-icd ***\n"
        );
    }
    (turn, found.scanners)
}

#[test]
fn opencl_sha256d_finds_the_nonces_of_real_blocks() {
    let (_turn, scanners) = opencl_scanners("opencl_sha256d_finds_the_nonces_of_real_blocks");
    for mut gpu in scanners {
        for block in SHA256D_BLOCKS {
            let header = block.header();
            let target = Target::from_nbits(block.bits).unwrap();
            let first = block.nonce.saturating_sub(40_000);
            let range = NonceRange::new(first, block.nonce.saturating_add(40_000));
            let out = gpu
                .scan(Algorithm::Sha256d, &header, &target, range)
                .unwrap();
            assert_eq!(out.rejected, 0, "{} on {}", block.name, gpu.info().name);
            assert_eq!(
                out.candidates,
                cpu_scan(&header, &target, range),
                "{} on {}",
                block.name,
                gpu.info().name
            );
            assert!(out.candidates.contains(&block.nonce), "{}", block.name);
        }
    }
}

#[test]
fn opencl_sha256d_equals_the_cpu_on_random_work() {
    let (_turn, scanners) = opencl_scanners("opencl_sha256d_equals_the_cpu_on_random_work");
    for mut gpu in scanners {
        let mut rng = SplitMix64(0x5eed_0018);
        for case in 0..12 {
            let header = rng.header();
            // Targets that pass one nonce in 2^8 .. 2^14, so each case has hits to compare.
            let top = (u32::MAX >> 8) >> rng.below(7);
            let target = target_with_top(top);
            let len = 1 + rng.below(60_000) as u32;
            let first = match case {
                0 => u32::MAX - len + 1, // the top of the nonce space
                1 => 0,
                _ => rng.next_u64() as u32 & !0xffff,
            };
            let range = NonceRange::new(first, first.saturating_add(len - 1));
            let out = gpu
                .scan(Algorithm::Sha256d, &header, &target, range)
                .unwrap();
            let cpu = cpu_scan(&header, &target, range);
            assert_eq!(out.rejected, 0, "case {case}");
            assert_eq!(out.candidates, cpu, "case {case} on {}", gpu.info().name);
        }
    }
}

#[test]
fn wrong_scrypt_nonces_from_a_gpu_are_rejected() {
    let header = LITECOIN_GENESIS.header();
    // The genesis nonce is right; its neighbours miss the block target's top word (about one
    // hash in 2^12 passes it; these two do not, as the CPU recomputes).
    let n = LITECOIN_GENESIS.nonce;
    let mut gpu = fake(header, vec![n - 1, n, n + 1]);
    let target = Target::from_nbits(LITECOIN_GENESIS.bits).unwrap();
    let out = gpu
        .scan(
            Algorithm::Scrypt,
            &header,
            &target,
            NonceRange::new(n - 10, n + 10),
        )
        .unwrap();
    assert_eq!(out.candidates, vec![n]);
    assert_eq!(out.rejected, 2);
}

fn cpu_scrypt_scan(header: &[u8; 80], target: &Target, range: NonceRange) -> Vec<u32> {
    let mut found = Vec::new();
    Algorithm::Scrypt
        .kernel("portable")
        .unwrap()
        .scan(header, target, range, &mut found);
    found
}

#[test]
fn opencl_scrypt_finds_the_litecoin_genesis_nonce_and_equals_the_cpu() {
    let (_turn, scanners) =
        opencl_scanners("opencl_scrypt_finds_the_litecoin_genesis_nonce_and_equals_the_cpu");
    for mut gpu in scanners {
        let header = LITECOIN_GENESIS.header();
        let target = Target::from_nbits(LITECOIN_GENESIS.bits).unwrap();
        let n = LITECOIN_GENESIS.nonce;
        let range = NonceRange::new(n - 300, n + 300);
        let out = gpu
            .scan(Algorithm::Scrypt, &header, &target, range)
            .unwrap();
        assert_eq!(out.rejected, 0);
        assert_eq!(out.candidates, vec![n], "on {}", gpu.info().name);

        // Random headers, one nonce in 2^6 passing, the last case at the top of the space.
        let mut rng = SplitMix64(0x5c_0018);
        for case in 0..3 {
            let header = rng.header();
            let target = target_with_top(u32::MAX >> 6);
            let first = if case == 2 {
                u32::MAX - 599
            } else {
                rng.next_u64() as u32 >> 1
            };
            let range = NonceRange::new(first, first + 599);
            let out = gpu
                .scan(Algorithm::Scrypt, &header, &target, range)
                .unwrap();
            assert_eq!(out.rejected, 0, "case {case}");
            assert_eq!(
                out.candidates,
                cpu_scrypt_scan(&header, &target, range),
                "case {case}"
            );
            assert!(
                !out.candidates.is_empty(),
                "case {case} has hits to compare"
            );
        }
    }
}

fn next_event(rx: &crate::device::EventReceiver) -> crate::device::DeviceEvent {
    rx.recv_timeout(Duration::from_secs(60))
        .expect("an event from the GPU device")
}

#[test]
fn gpu_device_with_wrong_nonces_fails_and_reports_none_of_them() {
    use crate::device::{event_channel, Device, DeviceEvent};
    let header = SHA256D_BLOCKS[0].header();
    let target = Target::from_nbits(SHA256D_BLOCKS[0].bits).unwrap();
    // Nonces 5 and 6 do not meet the genesis target; a broken card returns them.
    let (tx, rx) = event_channel();
    let mut dev = GpuDevice::new(fake(header, vec![5, 6]), Algorithm::Sha256d, tx).unwrap();
    let mut work = crate::Work::new("j", Algorithm::Sha256d, header, target);
    work.nonce_range = NonceRange::new(0, 1023);
    dev.start(work).unwrap();
    match next_event(&rx) {
        DeviceEvent::Failed { reason, .. } => assert!(reason.contains("recheck"), "{reason}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(dev.hardware_errors() >= 2);
}

#[test]
fn opencl_gpu_device_mines_the_genesis_block() {
    use crate::device::{event_channel, Device, DeviceEvent};
    let (_turn, scanners) = opencl_scanners("opencl_gpu_device_mines_the_genesis_block");
    for gpu in scanners {
        let block = SHA256D_BLOCKS[0];
        let (tx, rx) = event_channel();
        let mut dev = GpuDevice::new(gpu, Algorithm::Sha256d, tx).unwrap();
        let mut work = crate::Work::new(
            "genesis",
            Algorithm::Sha256d,
            block.header(),
            Target::from_nbits(block.bits).unwrap(),
        );
        work.nonce_range = NonceRange::new(block.nonce - 50_000, block.nonce + 50_000);
        let id = work.id;
        dev.start(work).unwrap();
        match next_event(&rx) {
            DeviceEvent::Found { nonce, work_id, .. } => {
                assert_eq!((nonce, work_id), (block.nonce, id))
            }
            other => panic!("expected Found, got {other:?}"),
        }
        match next_event(&rx) {
            DeviceEvent::Exhausted { work_id, .. } => assert_eq!(work_id, id),
            other => panic!("expected Exhausted, got {other:?}"),
        }
        assert!(dev.hashes_done().unwrap() >= 100_001);
    }
}
