//! Single-core inner loop of every kernel path, and a plain loop over the `sha2` crate's double
//! hash as the baseline the SHA-256d paths are compared with. Run: `cargo bench -p rigfleet-engine`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rigfleet_engine::test_vectors::BITCOIN_GENESIS;
use rigfleet_engine::{Algorithm, NonceRange, Target};
use sha2::{Digest, Sha256};
use std::hint::black_box;

fn kernels(c: &mut Criterion) {
    let header = BITCOIN_GENESIS.header_with_nonce(0);
    let target = Target::from_nbits(0x1d00ffff).expect("constant nbits");
    for algorithm in Algorithm::ALL {
        let nonces: u32 = match algorithm {
            Algorithm::Sha256d => 1 << 18,
            Algorithm::Scrypt => 256,
        };
        let mut group = c.benchmark_group(format!("{algorithm}_scan"));
        group.throughput(Throughput::Elements(u64::from(nonces)));
        group.sample_size(10);
        for kernel in algorithm.kernels() {
            let mut found = Vec::new();
            group.bench_function(BenchmarkId::from_parameter(kernel.path()), |b| {
                b.iter(|| {
                    found.clear();
                    kernel.scan(
                        black_box(&header),
                        &target,
                        NonceRange::new(0, nonces - 1),
                        &mut found,
                    );
                    black_box(found.len())
                })
            });
        }
        if algorithm == Algorithm::Sha256d {
            group.bench_function(BenchmarkId::from_parameter("sha2-crate-loop"), |b| {
                b.iter(|| {
                    let mut h = header;
                    let mut hits = 0u32;
                    for nonce in 0..nonces {
                        h[76..80].copy_from_slice(&nonce.to_le_bytes());
                        let digest = Sha256::digest(Sha256::digest(black_box(&h)));
                        hits += u32::from(digest[28..32] == [0, 0, 0, 0]);
                    }
                    black_box(hits)
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
