//! Checks every x86 SHA-256d kernel against the portable one on random headers, targets and
//! ranges (lane tails, ranges at both ends of the nonce space), and on the Bitcoin genesis block.
//! Kernels the CPU lacks are skipped with a note, so the suite passes on any x86-64 machine.

use super::portable::PORTABLE;
use super::x86_shani::Variant;
use super::{x86_avx2, x86_avx512, x86_shani};
use crate::algo::{Algorithm, Kernel, NonceRange};
use crate::target::Target;
use crate::test_rng::SplitMix64;

/// One compiled copy of the SHA-NI kernel as a kernel of its own, so that every copy the CPU can
/// run is tested, not only the one the `shani` path picks.
#[derive(Debug)]
struct ShaNiVariant(Variant);

impl Kernel for ShaNiVariant {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Sha256d
    }

    fn path(&self) -> &'static str {
        match self.0 {
            Variant::Sse41 => "shani (sse4.1 copy)",
            Variant::Avx => "shani (avx copy)",
            Variant::Avx512Vl => "shani (avx512vl copy)",
        }
    }

    fn chunk_nonces(&self) -> u32 {
        x86_shani::SHANI.chunk_nonces()
    }

    fn scan(&self, header: &[u8; 80], target: &Target, range: NonceRange, found: &mut Vec<u32>) {
        self.0.scan(header, target, range, found)
    }
}

static SHANI_VARIANTS: [ShaNiVariant; 3] = [
    ShaNiVariant(Variant::Sse41),
    ShaNiVariant(Variant::Avx),
    ShaNiVariant(Variant::Avx512Vl),
];

/// Every fast kernel with whether this CPU runs it.
fn fast_kernels() -> Vec<(&'static dyn Kernel, bool)> {
    let mut list: Vec<(&'static dyn Kernel, bool)> = vec![
        (&x86_avx2::AVX2, x86_avx2::supported()),
        (&x86_avx512::AVX512, x86_avx512::supported()),
        (&x86_shani::SHANI, x86_shani::supported()),
    ];
    for variant in &SHANI_VARIANTS {
        list.push((variant, variant.0.supported()));
    }
    list
}

/// A target whose top word makes candidates rare, common, certain or near-impossible, with
/// random lower words (which the kernels must ignore).
fn random_target(rng: &mut SplitMix64) -> Target {
    let top: u32 = match rng.below(8) {
        0 => 0,
        1 => u32::MAX,
        2 => 0x7FFF_FFFF,
        3 => rng.next_u64() as u32,
        // 0x00FFFFFF..=0x0FFFFFFF: roughly one nonce in 256 to one in 16 is a candidate.
        _ => 0x00FF_FFFF + rng.below(0x0F00_0001) as u32,
    };
    Target::from_limbs([
        rng.next_u64(),
        rng.next_u64(),
        rng.next_u64(),
        (u64::from(top) << 32) | (rng.next_u64() & 0xFFFF_FFFF),
    ])
}

/// A range of 1..=300 nonces: anywhere, starting at 0, or ending at 0xFFFFFFFF.
fn random_range(rng: &mut SplitMix64) -> NonceRange {
    let len = 1 + rng.below(300) as u32;
    match rng.below(4) {
        0 => NonceRange::new(0, len - 1),
        1 => NonceRange::new(u32::MAX - (len - 1), u32::MAX),
        _ => {
            let first = rng.next_u64() as u32 % (u32::MAX - len + 1);
            NonceRange::new(first, first + (len - 1))
        }
    }
}

#[test]
fn every_fast_path_equals_portable_on_random_headers() {
    const SEED: u64 = 0x5EED_0000_2560_D0D0;
    const HEADERS: usize = 10_000;
    let mut kernels = Vec::new();
    for (kernel, supported) in fast_kernels() {
        if supported {
            kernels.push(kernel);
        } else {
            eprintln!("skipping sha256d/{}: this CPU lacks it", kernel.path());
        }
    }
    let mut rng = SplitMix64(SEED);
    let mut candidates = 0usize;
    for case in 0..HEADERS {
        let mut header = [0u8; 80];
        for chunk in header.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes()[..chunk.len()]);
        }
        let target = random_target(&mut rng);
        let range = random_range(&mut rng);
        let mut expect = Vec::new();
        PORTABLE.scan(&header, &target, range, &mut expect);
        candidates += expect.len();
        for kernel in &kernels {
            // Start from a non-empty vector: kernels append.
            let mut got = vec![7u32];
            kernel.scan(&header, &target, range, &mut got);
            assert_eq!(
                got[1..],
                expect[..],
                "sha256d/{} differs from portable: seed {SEED:#x}, case {case}, range {range:?}, \
                 top word {:#010x}",
                kernel.path(),
                target.top_word()
            );
        }
    }
    // Make sure the comparison was not vacuous.
    assert!(
        candidates > 10 * HEADERS,
        "seed {SEED:#x}: only {candidates} candidates"
    );
}

/// The Bitcoin genesis block header (block 0).
fn genesis_header() -> [u8; 80] {
    // Merkle root in display order; headers store it byte-reversed.
    const MERKLE_DISPLAY: &str = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b";
    let mut header = [0u8; 80];
    header[0..4].copy_from_slice(&1u32.to_le_bytes());
    for i in 0..32 {
        let byte =
            u8::from_str_radix(&MERKLE_DISPLAY[2 * i..2 * i + 2], 16).expect("BUG: constant hex");
        header[36 + 31 - i] = byte;
    }
    header[68..72].copy_from_slice(&1_231_006_505u32.to_le_bytes());
    header[72..76].copy_from_slice(&0x1d00_ffffu32.to_le_bytes());
    header
}

#[test]
fn every_fast_path_finds_the_genesis_nonce() {
    const NONCE: u32 = 2_083_236_893;
    let header = genesis_header();
    let target = Target::from_nbits(0x1d00_ffff).expect("BUG: genesis nbits are valid");
    let range = NonceRange::new(NONCE - 5000, NONCE + 5000);
    let mut expect = Vec::new();
    PORTABLE.scan(&header, &target, range, &mut expect);
    assert_eq!(expect, vec![NONCE]);
    for (kernel, supported) in fast_kernels() {
        if !supported {
            eprintln!("skipping sha256d/{}: this CPU lacks it", kernel.path());
            continue;
        }
        let mut found = Vec::new();
        kernel.scan(&header, &target, range, &mut found);
        assert_eq!(found, vec![NONCE], "sha256d/{}", kernel.path());
    }
}

#[test]
fn whole_vector_batches_at_the_top_of_the_nonce_space_do_not_wrap() {
    // Every nonce is a candidate, so the result must be exactly the range, in order.
    let header = genesis_header();
    for (kernel, supported) in fast_kernels() {
        if !supported {
            continue;
        }
        for len in [1u32, 15, 16, 17, 64, 100] {
            let range = NonceRange::new(u32::MAX - (len - 1), u32::MAX);
            let mut found = Vec::new();
            kernel.scan(&header, &Target::MAX, range, &mut found);
            let expect: Vec<u32> = (range.first..=range.last).collect();
            assert_eq!(found, expect, "sha256d/{} len {len}", kernel.path());
        }
    }
}
