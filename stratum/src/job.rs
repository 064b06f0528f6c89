//! From a `mining.notify` job to engine [`Work`], exactly as pools build blocks, and back from a
//! found share to `mining.submit`.
//!
//! - coinbase = coinb1 ‖ extranonce1 ‖ extranonce2 ‖ coinb2, hashed with SHA-256d;
//! - merkle root = the coinbase hash folded with each branch hash: `root = sha256d(root ‖ b)`;
//! - header = version (LE) ‖ prevhash ‖ merkle root ‖ ntime (LE) ‖ nbits (LE) ‖ nonce (LE),
//!   where the prevhash arrives with each 4-byte word byte-swapped (a historical quirk of the
//!   first pool, kept by every pool since) and the 32-bit fields arrive as big-endian hex.

use std::sync::Arc;

use rigfleet_engine::algo::sha256::sha256d;
use rigfleet_engine::{Algorithm, Share, Target, Work};

use crate::message::{Notify, Submit};

/// How far ahead of the job's ntime a header may be rolled, in seconds, once every extranonce2
/// value is used. Bitcoin nodes accept headers up to two hours ahead; pools commonly accept a few
/// minutes, so stay well inside that.
pub const MAX_NTIME_ROLL_SECS: u32 = 300;

/// The header's previous-block-hash bytes from the form pools send (swapping each 4-byte word);
/// the operation is its own inverse.
pub fn prevhash_to_header(sent: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, i) in out.chunks_exact_mut(4).zip(sent.chunks_exact(4)) {
        o.copy_from_slice(&[i[3], i[2], i[1], i[0]]);
    }
    out
}

/// coinb1 ‖ extranonce1 ‖ extranonce2 ‖ coinb2.
pub fn coinbase(notify: &Notify, extranonce1: &[u8], extranonce2: &[u8]) -> Vec<u8> {
    let mut tx = Vec::with_capacity(
        notify.coinb1.len() + extranonce1.len() + extranonce2.len() + notify.coinb2.len(),
    );
    tx.extend_from_slice(&notify.coinb1);
    tx.extend_from_slice(extranonce1);
    tx.extend_from_slice(extranonce2);
    tx.extend_from_slice(&notify.coinb2);
    tx
}

/// The merkle root (internal byte order) from the coinbase transaction and the branch.
pub fn merkle_root(coinbase_tx: &[u8], branch: &[[u8; 32]]) -> [u8; 32] {
    let mut root = sha256d(coinbase_tx);
    let mut pair = [0u8; 64];
    for b in branch {
        pair[..32].copy_from_slice(&root);
        pair[32..].copy_from_slice(b);
        root = sha256d(&pair);
    }
    root
}

/// The 80-byte header of a job for a merkle root, version, ntime and nonce.
pub fn header(
    notify: &Notify,
    merkle_root: &[u8; 32],
    version: u32,
    ntime: u32,
    nonce: u32,
) -> [u8; 80] {
    let mut h = [0u8; 80];
    h[0..4].copy_from_slice(&version.to_le_bytes());
    h[4..36].copy_from_slice(&prevhash_to_header(&notify.prevhash));
    h[36..68].copy_from_slice(merkle_root);
    h[68..72].copy_from_slice(&ntime.to_le_bytes());
    h[72..76].copy_from_slice(&notify.nbits.to_le_bytes());
    h[76..80].copy_from_slice(&nonce.to_le_bytes());
    h
}

/// A job with everything the session knew when it arrived: the connection's extranonce1 and
/// extranonce2 size, the share target, and the negotiated version-rolling mask.
#[derive(Clone, Debug, PartialEq)]
pub struct JobTemplate {
    /// The job.
    pub notify: Notify,
    /// Connection's extranonce1.
    pub extranonce1: Vec<u8>,
    /// Bytes of extranonce2.
    pub extranonce2_size: usize,
    /// What the engine computes.
    pub algorithm: Algorithm,
    /// Share target from the pool's difficulty.
    pub target: Target,
    /// Version bits the pool granted (0 without version rolling).
    pub version_mask: u32,
}

impl JobTemplate {
    /// How many extranonce2 values exist (saturating at 2^64).
    pub fn extranonce2_space(&self) -> u64 {
        match self.extranonce2_size {
            0 => 1,
            s if s >= 8 => u64::MAX,
            s => 1u64 << (8 * s),
        }
    }

    /// The extranonce2 bytes for a counter value: the counter little-endian, zero-padded or
    /// truncated to the size (as cgminer and most miners fill it).
    pub fn extranonce2(&self, counter: u64) -> Vec<u8> {
        let mut out = vec![0u8; self.extranonce2_size];
        for (o, b) in out.iter_mut().zip(counter.to_le_bytes()) {
            *o = b;
        }
        out
    }

    /// Splits a work tag into its extranonce2 counter and ntime offset.
    fn split_tag(&self, tag: u64) -> (u64, u32) {
        let space = self.extranonce2_space();
        if space == u64::MAX {
            (tag, 0)
        } else {
            (tag % space, (tag / space) as u32)
        }
    }

    /// The work for a tag (extranonce2 counter and ntime roll), or `None` when ntime would roll
    /// past [`MAX_NTIME_ROLL_SECS`].
    pub fn work(&self, tag: u64) -> Option<Work> {
        let (counter, ntime_offset) = self.split_tag(tag);
        if ntime_offset > MAX_NTIME_ROLL_SECS {
            return None;
        }
        let en2 = self.extranonce2(counter);
        let root = merkle_root(
            &coinbase(&self.notify, &self.extranonce1, &en2),
            &self.notify.merkle_branch,
        );
        let h = header(
            &self.notify,
            &root,
            self.notify.version,
            self.notify.ntime.wrapping_add(ntime_offset),
            0,
        );
        let mut work = Work::new(self.notify.job_id.as_str(), self.algorithm, h, self.target);
        work.version_mask = self.version_mask;
        work.source_tag = tag;
        Some(work)
    }

    /// The `mining.submit` for a share found on work from this template.
    pub fn submit(&self, worker: &str, share: &Share) -> Submit {
        let (counter, _) = self.split_tag(share.work.source_tag);
        let ntime = u32::from_le_bytes([
            share.header[68],
            share.header[69],
            share.header[70],
            share.header[71],
        ]);
        Submit {
            worker: worker.to_string(),
            job_id: self.notify.job_id.clone(),
            extranonce2: self.extranonce2(counter),
            ntime,
            nonce: share.nonce,
            version_bits: (self.version_mask != 0).then_some(share.version & self.version_mask),
        }
    }

    /// A work source for the engine's miner that walks extranonce2, then ntime.
    pub fn work_source(self: Arc<Self>) -> JobWorkSource {
        JobWorkSource {
            template: self,
            next_tag: 0,
        }
    }
}

/// Successive headers of one job for [`rigfleet_engine::Miner`].
pub struct JobWorkSource {
    template: Arc<JobTemplate>,
    next_tag: u64,
}

impl rigfleet_engine::WorkSource for JobWorkSource {
    fn next_work(&mut self) -> Option<Work> {
        let work = self.template.work(self.next_tag)?;
        self.next_tag = self.next_tag.checked_add(1)?;
        Some(work)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigfleet_engine::{hex, Difficulty};
    use serde_json::json;

    /// Block 881423's coinbase split the way a pool sends it, from the Mujina miner's real-block
    /// test data (`test_blocks.rs`, `block_881423`: coinbase1/extranonce1/extranonce2/coinbase2
    /// and the 11 merkle branch hashes). Pools send the txid serialisation, so the SegWit marker
    /// and flag (`0001` after the version) and the witness (`0120` + 32 zero bytes before the
    /// locktime) are taken out of that file's full transaction. The published merkle root and
    /// block hash must come out.
    fn block_881423_job() -> (Notify, Vec<u8>, Vec<u8>, u32) {
        let branch = [
            "4282357ab0a2f4e8e562c8c5eae1d63b559068f9072374b72e26b88ac841908f",
            "c2bbae90d06f8025ade3516ca2e42d79318b6e56fccb9609df85a654a8341068",
            "cbb30084acbcb5ce6d5436e853bc612466df0c00702be6f51d47072f1a5d0480",
            "bb092e533f70b79246fc9e4bdc9b81ac8332e56f2651e3b237a150d6d807b081",
            "0d32959988733447cb340326a1fe4d3c2cff5d636e32a4e08c3fc5a234f6f6bc",
            "8ba3477940924a90067cff3dd30bc46916cf4c2f73fb6229b8f8197b83b6ddb9",
            "3fe97cc5dec1cddd66c9d3780888c145c12418590cd983c4871b1bf03fabbf9e",
            "bd1c6a3bcd0ebaa0eca54d9c802540f312c7705435601d776b4f59bb52cff67d",
            "8638c10190b8f4f558bafdbb57f46226c349a83f229f431143ae75e425fb5cbd",
            "6d6f4eae41cccb21a7c97ac496d9f89b8a4f772389b76f7691519dda38264221",
            "82dad7a1e2613af0e61f77f03d6208c83e72f917dade4235cc35e37ee3ad6e3f",
        ];
        let notify = Notify::parse(&json!([
            "881423",
            "8a6ac9e3fe15ca70f8995e21434cb64ac4d2b5e10001543b0000000000000000",
            "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff3d030f730d000469c19a67",
            "9a67b6600000000000000a41706f6c6c6f192f6d696e65642062792032353620466f756e646174696f6e2fffffffff0275aac01200000000160014c64b1b9283ba1ea86bb9e7b696b0c8f68dad04000000000000000000266a24aa21a9edb395560ab72068c2afb1d7e6c7db26b813482089d2c4d2471b9036c5e826140600000000",
            branch,
            "2e596000",
            "17029a8a",
            "679ac169",
            true
        ]))
        .unwrap();
        (
            notify,
            hex::decode("04830cee").unwrap(),
            hex::decode("220cf1ad").unwrap(),
            0xff05fb02,
        )
    }

    #[test]
    fn real_job_of_block_881423_rebuilds_its_merkle_root_and_block_hash() {
        use rigfleet_engine::test_vectors::BITCOIN_881423;
        let (notify, en1, en2, nonce) = block_881423_job();
        let root = merkle_root(&coinbase(&notify, &en1, &en2), &notify.merkle_branch);
        assert_eq!(
            hex::encode_reversed(&root),
            "2d62cfdf6b3470f7c870e8a4be8fbf58dfbbeee2ccb03e6d01b5b8f1353af676"
        );
        let h = header(&notify, &root, notify.version, notify.ntime, nonce);
        assert_eq!(h, BITCOIN_881423.header());
        assert_eq!(hex::encode_reversed(&sha256d(&h)), BITCOIN_881423.hash);

        // The same through the template, with the extranonce2 counter that fills those bytes.
        let template = JobTemplate {
            notify,
            extranonce1: en1,
            extranonce2_size: 4,
            algorithm: Algorithm::Sha256d,
            target: Target::from_nbits(0x17029a8a).unwrap(),
            version_mask: 0,
        };
        let counter = u64::from(u32::from_le_bytes([0x22, 0x0c, 0xf1, 0xad]));
        let work = template.work(counter).unwrap();
        assert_eq!(work.header_with_nonce(nonce), BITCOIN_881423.header());
    }

    /// A real job from slush pool (May 2023, height 791433 in its BIP 34 push `0389130c`), from
    /// the ESP-Miner (Bitaxe) firmware's test suite, `components/stratum/test/test_mining.c`,
    /// "Test nonce diff checking 2": the coinbase with its extranonces filled in, 13 merkle branch
    /// hashes, the published merkle root 5bdc1968…, and nonce 0x0a029ed1 whose share difficulty
    /// the test pins at 683. The test does not record where the pool split the coinbase, so the
    /// split below (coinb1 | 4-byte extranonce1 | 8-byte extranonce2 | coinb2) is ours; any split
    /// concatenates to the same transaction.
    #[test]
    fn real_slush_pool_job_gives_the_published_merkle_root_and_share_difficulty() {
        let tx = hex::decode(concat!(
            "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4b03",
            "89130cfabe6d6d5cbab26a2599e92916edec5657a94a0708ddb970f5c45b5d12905085617eff8e0100000000",
            "00000031650707758de07b010000000000001cfd7038212f736c7573682f000000000379ad0c2a0000000019",
            "76a9147c154ed1dc59609e3d26abb2df2ea3d587cd8c4188ac00000000000000002c6a4c2952534b424c4f43",
            "4b3ae725d3994b811572c1f345deb98b56b465ef8e153ecbbd27fa37bf1b005161380000000000000000266a",
            "24aa21a9ed63b06a7946b190a3fda1d76165b25c9b883bcc6621b040773050ee2a1bb18f1800000000"
        ))
        .unwrap();
        let branch = [
            "2b77d9e413e8121cd7a17ff46029591051d0922bd90b2b2a38811af1cb57a2b2",
            "5c8874cef00f3a233939516950e160949ef327891c9090467cead995441d22c5",
            "2d91ff8e19ac5fa69a40081f26c5852d366d608b04d2efe0d5b65d111d0d8074",
            "0ae96f609ad2264112a0b2dfb65624bedbcea3b036a59c0173394bba3a74e887",
            "e62172e63973d69574a82828aeb5711fc5ff97946db10fc7ec32830b24df7bde",
            "adb49456453aab49549a9eb46bb26787fb538e0a5f656992275194c04651ec97",
            "a7bc56d04d2672a8683892d6c8d376c73d250a4871fdf6f57019bcc737d6d2c2",
            "d94eceb8182b4f418cd071e93ec2a8993a0898d4c93bc33d9302f60dbbd0ed10",
            "5ad7788b8c66f8f50d332b88a80077ce10e54281ca472b4ed9bbbbcb6cf99083",
            "9f9d784b33df1b3ed3edb4211afc0dc1909af9758c6f8267e469f5148ed04809",
            "48fd17affa76b23e6fb2257df30374da839d6cb264656a82e34b350722b05123",
            "c4f5ab01913fc186d550c1a28f3f3e9ffaca2016b961a6a751f8cca0089df924",
            "cff737e1d00176dd6bbfa73071adbb370f227cfb5fba186562e4060fcec877e1",
        ];
        let notify = Notify::parse(&json!([
            "slush-791433",
            "0c859545a3498373a57452fac22eb7113df2a465000543520000000000000000",
            hex::encode(&tx[..60]),
            hex::encode(&tx[72..]),
            branch,
            "20000004",
            "1705ae3a",
            "647025b5",
            true
        ]))
        .unwrap();
        let (en1, en2) = (&tx[60..64], &tx[64..72]);
        assert_eq!(coinbase(&notify, en1, en2), tx);
        let root = merkle_root(&tx, &notify.merkle_branch);
        assert_eq!(
            hex::encode(&root),
            "5bdc1968499c3393873edf8e07a1c3a50a97fc3a9d1a376bbf77087dd63778eb"
        );
        let h = header(&notify, &root, notify.version, notify.ntime, 0x0a02_9ed1);
        let difficulty = Target::hash_difficulty(Algorithm::Sha256d, &sha256d(&h));
        assert_eq!(difficulty.floor(), 683.0, "{difficulty}");
    }

    /// The `mining.notify` example of the Stratum V1 documentation (slush pool's "Stratum mining
    /// protocol" page) with extranonce1 e9695791 and extranonce2 99999999, as ESP-Miner's
    /// `test_mining.c` ("Check coinbase tx construction", "Validate merkle root calculation")
    /// fills it in, with that test's 12 branch hashes and its published root adbcbc21….
    #[test]
    fn documented_notify_builds_the_coinbase_and_root_esp_miner_publishes() {
        let params = crate::message::server_to_client::tests::slush_doc_notify();
        let mut notify = Notify::parse(&params).unwrap();
        let en1 = hex::decode("e9695791").unwrap();
        let en2 = hex::decode("99999999").unwrap();
        let tx = coinbase(&notify, &en1, &en2);
        assert_eq!(
            hex::encode(&tx),
            concat!(
                "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff",
                "20020862062f503253482f04b8864e5008e969579199999999072f736c7573682f000000000100f2052a",
                "010000001976a914d23fcdf86f7e756a64a7a9688ef9903327048ed988ac00000000"
            )
        );
        notify.merkle_branch = [
            "ae23055e00f0f697cc3640124812d96d4fe8bdfa03484c1c638ce5a1c0e9aa81",
            "980fb87cb61021dd7afd314fcb0dabd096f3d56a7377f6f320684652e7410a21",
            "a52e9868343c55ce405be8971ff340f562ae9ab6353f07140d01666180e19b52",
            "7435bdfa004e603953b2ed39f118803934d9cf17b06d979ceb682f2251bafac2",
            "2a91f061a22d27cb8f44eea79938fb241ebeb359891aa907f05ffde7ed44e52e",
            "302401f80eb5e958155135e25200bb8ea181ad2d05e804a531c7314d86403cdc",
            "318ecb6161eb9b4cfd802bd730e2d36c167ddf102e70aa7b4158e2870dd47392",
            "1114332a9858e0cf84b2425bb1e59eaabf91dd102d114aa443d57fc1b3beb0c9",
            "f43f38095c810613ed795a44d9fab02ff25269706f454885db9be05cdf9c06e1",
            "3e2fc26b27fddc39668b59099cd9635761bb72ed92404204e12bdff08b16fb75",
            "463c19427286342120039a83218fa87ce45448e246895abac11fff0036076758",
            "03d287f655813e540ddb9c4e7aeb922478662b0f5d8e9d0cbd564b20146bab76",
        ]
        .iter()
        .map(|h| hex::decode_array::<32>(h).unwrap())
        .collect();
        let root = merkle_root(&tx, &notify.merkle_branch);
        assert_eq!(
            hex::encode(&root),
            "adbcbc21e20388422198a55957aedfa0e61be0b8f2b87d7c08510bb9f099a893"
        );
    }

    #[test]
    fn prevhash_word_swap_is_an_involution() {
        let sent = hex::decode_array::<32>(
            "4d16b6f85af6e2198f44ae2a6de67f78487ae5611b77c6c0440b921e00000000",
        )
        .unwrap();
        let h = prevhash_to_header(&sent);
        assert_eq!(&h[..4], &[0xf8, 0xb6, 0x16, 0x4d]);
        assert_eq!(prevhash_to_header(&h), sent);
    }

    #[test]
    fn extranonce2_counter_fills_little_endian_and_ntime_rolls_after_the_space() {
        let notify = Notify::parse(&json!([
            "1",
            "00".repeat(32),
            "01",
            "02",
            [],
            "20000000",
            "1d00ffff",
            "5f000000",
            true
        ]))
        .unwrap();
        let t = JobTemplate {
            notify,
            extranonce1: vec![0xaa],
            extranonce2_size: 1,
            algorithm: Algorithm::Sha256d,
            target: Target::from_difficulty(Algorithm::Sha256d, Difficulty::new(1.0).unwrap()),
            version_mask: 0,
        };
        assert_eq!(t.extranonce2(0x0102), vec![0x02]);
        assert_eq!(t.extranonce2_space(), 256);
        let w = t.work(256 * 3 + 5).unwrap();
        assert_eq!(w.ntime(), 0x5f00_0003);
        assert_eq!(w.source_tag, 256 * 3 + 5);
        assert!(t.work(256 * (MAX_NTIME_ROLL_SECS as u64 + 1)).is_none());
        let mut source = Arc::new(t).work_source();
        use rigfleet_engine::WorkSource;
        let a = source.next_work().unwrap();
        let b = source.next_work().unwrap();
        assert_ne!(
            a.header[36..68],
            b.header[36..68],
            "each extranonce2 gives a new merkle root"
        );
    }
}
