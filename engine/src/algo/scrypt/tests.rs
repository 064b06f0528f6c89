//! Scrypt tests: the RFC 7914 vectors for every building block, the Litecoin genesis proof of
//! work, and every SIMD kernel against the portable one on random headers and ranges.

use super::portable::{self, block_mix_general, pbkdf2_sha256, romix_general, salsa20_8};
use super::{hash_header, kernels, scrypt};
use crate::algo::{set_nonce, Algorithm, Kernel, NonceRange};
use crate::hex;
use crate::target::Target;
use crate::test_rng::SplitMix64;
use crate::test_vectors::LITECOIN_GENESIS;
use std::sync::OnceLock;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("test vector hex")
}

fn le_words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn le_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

// The vectors below are RFC 7914's; they were copied from two independent test suites that
// quote the RFC (libbitcoin-system `test/hash/scrypt.cpp` and a C `test_util.c` citing RFC 7914
// §8–§12), which agree byte for byte.

/// RFC 7914 §9 and §10 input block (r = 1).
const RFC_BLOCK_IN: &str = "f7ce0b653d2d72a4108cf5abe912ffdd777616dbbb27a70e8204f3ae2d0f6fad\
                            89f68f4811d1e87bcc3bd7400a9ffd29094f0184639574f39ae5a1315217bcd7\
                            894991447213bb226c25b54da86370fbcd984380374666bb8ffcb5bf40c254b0\
                            67d27c51ce4ad5fed829c90b505a571b7f4d1cad6a523cda770e67bceaaf7e89";

#[test]
fn rfc7914_section8_salsa20_8_core() {
    let input = unhex(
        "7e879a214f3ec9867ca940e641718f26baee555b8c61c1b50df846116dcd3b1d\
         ee24f319df9b3d8514121e4b5ac5aa3276021d2909c74829edebc68db8b8c25e",
    );
    let mut b: [u32; 16] = le_words(&input).try_into().unwrap();
    salsa20_8(&mut b);
    assert_eq!(
        hex::encode(&le_bytes(&b)),
        "a41f859c6608cc993b81cacb020cef05044b2181a2fd337dfd7b1c6396682f29\
         b4393168e3c9e6bcfe6bc5b7a06d96bae424cc102c91745c24ad673dc7618f81"
    );
}

#[test]
fn rfc7914_section9_block_mix_r1() {
    let mut b = le_words(&unhex(RFC_BLOCK_IN));
    let mut y = vec![0u32; b.len()];
    block_mix_general(&mut b, &mut y);
    assert_eq!(
        hex::encode(&le_bytes(&b)),
        "a41f859c6608cc993b81cacb020cef05044b2181a2fd337dfd7b1c6396682f29\
         b4393168e3c9e6bcfe6bc5b7a06d96bae424cc102c91745c24ad673dc7618f81\
         20edc975323881a80540f64c162dcd3c21077cfe5f8d5fe2b1a4168f953678b7\
         7d3b3d803b60e4ab920996e59b4d53b65d2a225877d5edf5842cb9f14eefe425"
    );
}

#[test]
fn rfc7914_section10_romix_n16_r1() {
    let mut b = le_words(&unhex(RFC_BLOCK_IN));
    let mut scratch = vec![0u32; 16 * 32];
    romix_general(&mut b, 1, &mut scratch);
    assert_eq!(
        hex::encode(&le_bytes(&b)),
        "79ccc193629debca047f0b70604bf6b62ce3dd4a9626e355fafc6198e6ea2b46\
         d58413673b99b029d665c357601fb426a0b2f4bba200ee9f0a43d19b571a9c71\
         ef1142e65d5a266fddca832ce59faa7cac0b9cf1be2bffca300d01ee387619c4\
         ae12fd4438f203a0e4e1c47ec314861f4e9087cb33396a6873e8f9d2539a4b8e"
    );
}

#[test]
fn rfc7914_section11_pbkdf2_hmac_sha256() {
    let mut out = [0u8; 64];
    pbkdf2_sha256(b"passwd", b"salt", 1, &mut out);
    assert_eq!(
        hex::encode(&out),
        "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc\
         49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"
    );
    pbkdf2_sha256(b"Password", b"NaCl", 80_000, &mut out);
    assert_eq!(
        hex::encode(&out),
        "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56\
         a1d425a1225833549adb841b51c9b3176a272bdebba1d078478f62b397f33c8d"
    );
}

fn rfc7914_section12_vector(password: &[u8], salt: &[u8], n: u64, r: u32, p: u32, hex_out: &str) {
    let mut out = [0u8; 64];
    scrypt(password, salt, n, r, p, &mut out);
    assert_eq!(hex::encode(&out), hex_out, "N={n} r={r} p={p}");
}

#[test]
fn rfc7914_section12_scrypt_vectors_1_to_3() {
    rfc7914_section12_vector(
        b"",
        b"",
        16,
        1,
        1,
        "77d6576238657b203b19ca42c18a0497f16b4844e3074ae8dfdffa3fede21442\
         fcd0069ded0948f8326a753a0fc81f17e8d3e0fb2e0d3628cf35e20c38d18906",
    );
    rfc7914_section12_vector(
        b"password",
        b"NaCl",
        1024,
        8,
        16,
        "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162\
         2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640",
    );
    rfc7914_section12_vector(
        b"pleaseletmein",
        b"SodiumChloride",
        16384,
        8,
        1,
        "7023bdcb3afd7348461c06cd81fd38ebfda8fbba904f8e3ea9b543f6545da1f2\
         d5432955613f0fcf62d49705242a9af9e61e85dc0d651e40dfcf017b45575887",
    );
}

/// The fourth vector needs 1 GiB of scratchpad and a few seconds; it runs in its own test so
/// that it overlaps the others.
#[test]
fn rfc7914_section12_scrypt_vector_4_n1048576() {
    rfc7914_section12_vector(
        b"pleaseletmein",
        b"SodiumChloride",
        1 << 20,
        8,
        1,
        "2101cb9b6a511aaeaddbbe09cf70f881ec568d574a2ffd4dabe5ee9820adaa47\
         8e56fd8f4ba5d09ffa1c6d927c40f4c337304049e8a952fbcbf45c6fa77a41a4",
    );
}

#[test]
fn specialised_portable_equals_the_general_function() {
    let mut rng = SplitMix64(0x5eed_0001);
    for _ in 0..6 {
        let header = rng.header();
        let mut general = [0u8; 32];
        scrypt(&header, &header, 1024, 1, 1, &mut general);
        assert_eq!(hash_header(&header), general, "seed 0x5eed0001");
    }
}

/// Litecoin's genesis proof of work in display order, published by `mycroft/generate-genesis`
/// (README, Litecoin sample: "Ctrl Hash" for nonce 2084524493) and used as
/// `ltc_genesis_hash_numeric_` in Open-Transactions' opentxs test suite.
const LITECOIN_GENESIS_POW: &str =
    "0000050c34a64b415b6b15b37f2216634b5b1669cb9a2e38d76f7213b0671e00";

#[test]
fn litecoin_genesis_proof_of_work() {
    let header = LITECOIN_GENESIS.header();
    assert_eq!(
        hex::encode_reversed(&Algorithm::Sha256d.hash(&header)),
        "12a765e31ffd4059bada1e25190f6e98c99d9714d334efa41a195a7e7e04bfe2",
        "the header is Litecoin's genesis"
    );
    let pow = hash_header(&header);
    assert_eq!(hex::encode_reversed(&pow), LITECOIN_GENESIS_POW);
    let target = Target::from_nbits(LITECOIN_GENESIS.bits).unwrap();
    assert!(target.is_met_by(&pow));

    let nonce = LITECOIN_GENESIS.nonce;
    let template = LITECOIN_GENESIS.header_with_nonce(0);
    for kernel in kernels() {
        // 41 nonces around the winner: none of the others meets a 1-in-2^20 target.
        let mut found = Vec::new();
        kernel.scan(
            &template,
            &target,
            NonceRange::new(nonce - 20, nonce + 20),
            &mut found,
        );
        assert_eq!(found, [nonce], "path {}", kernel.path());
    }
}

#[test]
fn kernels_are_listed_portable_first_and_chunks_fill_their_batches() {
    let list = kernels();
    assert_eq!(list[0].path(), "portable");
    for kernel in &list {
        assert_eq!(kernel.algorithm(), Algorithm::Scrypt);
        assert!(kernel.chunk_nonces() > 0);
    }
    #[cfg(target_arch = "x86_64")]
    for kernel in x86_kernels() {
        assert_eq!(kernel.chunk_nonces() as usize % kernel.batch(), 0);
    }
}

/// Seed of the shared random headers.
#[cfg(target_arch = "x86_64")]
const HEADER_SEED: u64 = 0x0123_4567_89ab_cdef;
/// How many random headers every fast path hashes (a multiple of every batch).
#[cfg(target_arch = "x86_64")]
const RANDOM_HEADERS: usize = 10_240;

/// Random headers with their portable hashes, computed once (on two threads) for every path.
#[cfg(target_arch = "x86_64")]
fn random_headers() -> &'static [([u8; 80], [u8; 32])] {
    static CASES: OnceLock<Vec<([u8; 80], [u8; 32])>> = OnceLock::new();
    CASES.get_or_init(|| {
        let mut rng = SplitMix64(HEADER_SEED);
        let headers: Vec<[u8; 80]> = (0..RANDOM_HEADERS).map(|_| rng.header()).collect();
        let mut out = vec![[0u8; 32]; headers.len()];
        std::thread::scope(|s| {
            let half = headers.len() / 2;
            let (out_a, out_b) = out.split_at_mut(half);
            for (ins, outs) in [(&headers[..half], out_a), (&headers[half..], out_b)] {
                s.spawn(move || {
                    let mut scratch = vec![[0u32; 32]; super::N];
                    for (h, o) in ins.iter().zip(outs.iter_mut()) {
                        *o = portable::scrypt_with_scratch(h, &mut scratch);
                    }
                });
            }
        });
        headers.into_iter().zip(out).collect()
    })
}

/// One scan to compare: a header, a range and a target, with the portable answer.
struct ScanCase {
    header: [u8; 80],
    range: NonceRange,
    target: Target,
    expected: Vec<u32>,
}

/// Seed of the shared random scans.
const SCAN_SEED: u64 = 0xfeed_face_cafe_beef;

/// Random ranges of 1..=40 nonces (some starting at 0, some ending at 0xFFFFFFFF) with targets
/// that some of their nonces meet (the hash of a random member, so equality is covered), plus
/// the largest and the smallest targets.
fn random_scans() -> &'static [ScanCase] {
    static CASES: OnceLock<Vec<ScanCase>> = OnceLock::new();
    CASES.get_or_init(|| {
        let mut rng = SplitMix64(SCAN_SEED);
        let mut cases = Vec::new();
        for i in 0..24 {
            let header = rng.header();
            let len = 1 + rng.below(40) as u32;
            let first = match i % 4 {
                0 => 0,
                1 => u32::MAX - (len - 1),
                _ => rng.next_u64() as u32 % (u32::MAX - len),
            };
            let range = NonceRange::new(first, first + (len - 1));
            let hashes: Vec<(u32, [u8; 32])> = (first..=range.last)
                .map(|n| {
                    let mut h = header;
                    set_nonce(&mut h, n);
                    (n, hash_header(&h))
                })
                .collect();
            let member = hashes[rng.below(len.into()) as usize].1;
            let targets = match i % 6 {
                0 => vec![Target::MAX, Target::from_limbs([0; 4])],
                _ => vec![Target::from_le_bytes(&member)],
            };
            for target in targets {
                let expected = hashes
                    .iter()
                    .filter(|(_, hash)| target.is_met_by(hash))
                    .map(|&(n, _)| n)
                    .collect();
                cases.push(ScanCase {
                    header,
                    range,
                    target,
                    expected,
                });
            }
        }
        cases
    })
}

fn check_scans(kernel: &dyn Kernel) {
    for (i, case) in random_scans().iter().enumerate() {
        let mut found = vec![7]; // scans append: what was there stays
        kernel.scan(&case.header, &case.target, case.range, &mut found);
        assert_eq!(found[0], 7);
        assert_eq!(
            found[1..],
            case.expected,
            "path {} scan case {i} (seed {SCAN_SEED:#x}) range {:?}",
            kernel.path(),
            case.range
        );
    }
}

#[test]
fn portable_kernel_scans_match_hashes() {
    check_scans(&portable::PORTABLE);
}

#[cfg(target_arch = "x86_64")]
fn x86_kernels() -> [&'static super::x86::SimdKernel; 3] {
    [&super::x86::SSE2, &super::x86::AVX2, &super::x86::AVX512]
}

/// Hashes every random header with `kernel` batch by batch and compares with the portable hash.
#[cfg(target_arch = "x86_64")]
fn check_fast_path(kernel: &super::x86::SimdKernel) {
    if !kernel.supported() {
        eprintln!("skipping scrypt path {}: this CPU lacks it", kernel.path());
        return;
    }
    let cases = random_headers();
    let batch = kernel.batch();
    assert_eq!(cases.len() % batch, 0);
    let mut out = vec![[0u8; 32]; batch];
    for (b, chunk) in cases.chunks(batch).enumerate() {
        let headers: Vec<[u8; 80]> = chunk.iter().map(|c| c.0).collect();
        kernel.hash_batch(&headers, &mut out);
        for (lane, (case, got)) in chunk.iter().zip(&out).enumerate() {
            assert_eq!(
                *got,
                case.1,
                "path {} header {} (lane {lane}, seed {HEADER_SEED:#x})",
                kernel.path(),
                b * batch + lane
            );
        }
    }
    check_scans(kernel);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn sse2_matches_portable() {
    check_fast_path(&super::x86::SSE2);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_matches_portable() {
    check_fast_path(&super::x86::AVX2);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_matches_portable() {
    check_fast_path(&super::x86::AVX512);
}
