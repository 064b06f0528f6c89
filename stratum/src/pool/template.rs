//! The synthetic block template the test pool hands out, and the jobs cut from it.
//!
//! A template is what a real pool gets from its node: a height, the previous block hash, nBits
//! and a list of transactions. From it the pool builds a coinbase (BIP 34 height first), splits
//! the coinbase around the miner's extranonce into coinb1/coinb2, and sends the merkle branch of
//! the coinbase's position.
//!
//! This module deliberately does not use [`crate::job`]: it serialises the whole coinbase, builds
//! the whole merkle tree from every transaction id and lays out headers with its own code, hashing
//! with the `sha2` crate rather than the engine's SHA-256. The pool checks every share with both
//! (see [`super::validate`]), so a bug in the client's header building shows up as a disagreement
//! instead of being silently shared by miner and pool.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::message::Notify;

/// Non-coinbase transactions in every template: 11 + the coinbase = 12 leaves, so the tree has
/// four levels (12 → 6 → 3 → 2 → 1). That gives a branch of depth 4 and one odd level, where the
/// last hash is paired with itself, which is the case merkle code most often gets wrong.
pub const TEMPLATE_TRANSACTIONS: usize = 11;

/// Bytes of extranonce1 the pool assigns per connection: a 32-bit counter, unique for the pool's
/// life (2^32 connections before it would repeat).
pub const EXTRANONCE1_SIZE: usize = 4;

/// Block version: BIP 9 top bits `001` and no deployment signalled (what most blocks carry).
pub const BLOCK_VERSION: u32 = 0x2000_0000;

/// nBits of Bitcoin block 881423 (January 2025), a realistic mainnet SHA-256d network target.
pub const SHA256D_NBITS: u32 = 0x1702_9a8a;

/// A Litecoin-like Scrypt network target: exponent 0x19, mantissa 0x6bd000, i.e. a network
/// difficulty of about 4·10^7 in the Bitcoin diff-1 convention explorers use, the order of
/// Litecoin's difficulty in 2024. Not a specific block's value.
pub const SCRYPT_NBITS: u32 = 0x196b_d000;

/// Coinbase output value in satoshis: 3.125 BTC, the subsidy since the April 2024 halving. Nobody
/// checks it; it makes the coinbase look like one.
const COINBASE_VALUE_SATS: u64 = 312_500_000;

/// Marker pushed after the extranonce, as pools tag their blocks (`/slush/`, `/ViaBTC/`…).
const POOL_TAG: &[u8] = b"/rigfleet/";

/// SHA-256d with the `sha2` crate (independent of the engine's SHA-256).
pub fn sha256d(data: &[u8]) -> [u8; 32] {
    let first = Sha256::digest(data);
    Sha256::digest(first).into()
}

/// The BIP 34 height push that starts a coinbase scriptSig, exactly as Bitcoin Core's
/// `CScript() << nHeight` writes it: `OP_0` for 0, `OP_1`…`OP_16` for 1 to 16, otherwise a push of
/// the height as a minimal little-endian CScriptNum (a zero byte is appended when the top bit of
/// the last byte is set, since that bit is the sign).
pub fn bip34_height_push(height: u64) -> Vec<u8> {
    match height {
        0 => vec![0x00],
        1..=16 => vec![0x50 + height as u8],
        _ => {
            let mut num = Vec::with_capacity(9);
            let mut h = height;
            while h > 0 {
                num.push((h & 0xff) as u8);
                h >>= 8;
            }
            if num.last().is_some_and(|b| b & 0x80 != 0) {
                num.push(0x00);
            }
            let mut out = Vec::with_capacity(num.len() + 1);
            // At most 9 bytes, so a direct push opcode (1–75) is the length itself.
            out.push(num.len() as u8);
            out.extend_from_slice(&num);
            out
        }
    }
}

/// Bitcoin's CompactSize length prefix.
fn push_compact_size(out: &mut Vec<u8>, n: usize) {
    match n {
        0..=0xfc => out.push(n as u8),
        0xfd..=0xffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
    }
}

/// A script data push of at most 75 bytes (the only size this module needs).
fn push_data(out: &mut Vec<u8>, data: &[u8]) {
    debug_assert!(data.len() <= 75, "BUG: direct pushes only");
    out.push(data.len() as u8);
    out.extend_from_slice(data);
}

/// One block being mined: what a node's `getblocktemplate` would give the pool.
#[derive(Clone, Debug)]
pub struct BlockTemplate {
    /// Height of the block being built (goes into the coinbase, BIP 34).
    pub height: u64,
    /// Previous block hash in header (internal) byte order.
    pub prev_hash: [u8; 32],
    /// nVersion of the jobs (miners may roll the bits the pool grants).
    pub version: u32,
    /// Network target, compact form.
    pub nbits: u32,
    /// Serialised non-coinbase transactions.
    pub transactions: Vec<Vec<u8>>,
    /// Their ids (SHA-256d of the serialisation), internal byte order, in block order.
    txids: Vec<[u8; 32]>,
}

impl BlockTemplate {
    /// A deterministic synthetic template for a height: previous hash and transactions are
    /// derived from the height, so every new block differs and tests are reproducible.
    pub fn synthetic(height: u64, nbits: u32) -> Self {
        let mut prev_hash = sha256d(&[b"rigfleet prev".as_slice(), &height.to_le_bytes()].concat());
        // A real block hash has leading zeros in display order, i.e. at the end internally.
        prev_hash[28..].fill(0);
        let transactions: Vec<Vec<u8>> = (0..TEMPLATE_TRANSACTIONS)
            .map(|i| synthetic_transaction(height, i as u32))
            .collect();
        let txids = transactions.iter().map(|t| sha256d(t)).collect();
        Self {
            height,
            prev_hash,
            version: BLOCK_VERSION,
            nbits,
            transactions,
            txids,
        }
    }

    /// The ids of the non-coinbase transactions, in block order.
    pub fn txids(&self) -> &[[u8; 32]] {
        &self.txids
    }

    /// The full coinbase transaction (txid serialisation, no witness) for a job tag and the
    /// miner's extranonce bytes (extranonce1 ‖ extranonce2).
    pub fn coinbase(&self, job_tag: u32, extranonce: &[u8]) -> Vec<u8> {
        let mut script = bip34_height_push(self.height);
        // The job tag makes every job's coinbase (and merkle root) distinct, so a share can
        // never be valid for two jobs.
        push_data(&mut script, &job_tag.to_le_bytes());
        push_data(&mut script, extranonce);
        push_data(&mut script, POOL_TAG);

        let mut tx = Vec::with_capacity(150);
        tx.extend_from_slice(&2u32.to_le_bytes()); // version
        tx.push(1); // one input
        tx.extend_from_slice(&[0u8; 32]); // null prevout hash
        tx.extend_from_slice(&u32::MAX.to_le_bytes()); // prevout index 0xffffffff
        push_compact_size(&mut tx, script.len());
        tx.extend_from_slice(&script);
        tx.extend_from_slice(&u32::MAX.to_le_bytes()); // sequence
        tx.push(2); // two outputs
        tx.extend_from_slice(&COINBASE_VALUE_SATS.to_le_bytes());
        let payout = p2wpkh_script(&sha256d(b"rigfleet payout")[..20]);
        push_compact_size(&mut tx, payout.len());
        tx.extend_from_slice(&payout);
        tx.extend_from_slice(&0u64.to_le_bytes());
        let mut op_return = vec![0x6a];
        push_data(&mut op_return, b"rigfleet test pool");
        push_compact_size(&mut tx, op_return.len());
        tx.extend_from_slice(&op_return);
        tx.extend_from_slice(&0u32.to_le_bytes()); // lock time
        tx
    }

    /// coinb1 and coinb2: the coinbase cut around an extranonce of `extranonce_len` bytes.
    /// Found by building the coinbase around a marker, so the split can never drift from
    /// [`BlockTemplate::coinbase`].
    pub fn coinbase_parts(&self, job_tag: u32, extranonce_len: usize) -> (Vec<u8>, Vec<u8>) {
        let zeros = vec![0u8; extranonce_len];
        let ones = vec![0xffu8; extranonce_len];
        let a = self.coinbase(job_tag, &zeros);
        let b = self.coinbase(job_tag, &ones);
        // The extranonce starts at the first byte where the two differ (every extranonce byte
        // differs between the two, and nothing else does).
        let start = a
            .iter()
            .zip(&b)
            .position(|(x, y)| x != y)
            .expect("BUG: extranonce is at least one byte");
        (a[..start].to_vec(), a[start + extranonce_len..].to_vec())
    }

    /// The merkle branch of the coinbase (position 0): at each level the sibling of the path,
    /// that is the second hash of the level.
    pub fn merkle_branch(&self) -> Vec<[u8; 32]> {
        // The coinbase's own hash never appears in its branch, so any placeholder works here.
        let mut level: Vec<[u8; 32]> = std::iter::once([0u8; 32])
            .chain(self.txids.iter().copied())
            .collect();
        let mut branch = Vec::new();
        while level.len() > 1 {
            branch.push(level[1]);
            level = next_level(&level);
        }
        branch
    }

    /// The merkle root of the whole block for a coinbase txid, from every leaf (not from the
    /// branch).
    pub fn merkle_root(&self, coinbase_txid: &[u8; 32]) -> [u8; 32] {
        let mut level: Vec<[u8; 32]> = std::iter::once(*coinbase_txid)
            .chain(self.txids.iter().copied())
            .collect();
        while level.len() > 1 {
            level = next_level(&level);
        }
        level[0]
    }

    /// An 80-byte header: version, previous hash, merkle root, time, bits, nonce, the numbers
    /// little-endian.
    pub fn header(&self, merkle_root: &[u8; 32], version: u32, ntime: u32, nonce: u32) -> [u8; 80] {
        let mut h = Vec::with_capacity(80);
        h.extend_from_slice(&version.to_le_bytes());
        h.extend_from_slice(&self.prev_hash);
        h.extend_from_slice(merkle_root);
        h.extend_from_slice(&ntime.to_le_bytes());
        h.extend_from_slice(&self.nbits.to_le_bytes());
        h.extend_from_slice(&nonce.to_le_bytes());
        h.try_into().expect("BUG: 4 + 32 + 32 + 4 + 4 + 4 = 80")
    }

    /// The previous hash as Stratum sends it: each 4-byte word of the header bytes reversed.
    pub fn stratum_prev_hash(&self) -> [u8; 32] {
        let mut out = self.prev_hash;
        for word in out.chunks_exact_mut(4) {
            word.reverse();
        }
        out
    }
}

/// One level up the tree; an odd level pairs its last hash with itself (Bitcoin's rule).
fn next_level(level: &[[u8; 32]]) -> Vec<[u8; 32]> {
    level
        .chunks(2)
        .map(|pair| {
            let left = pair[0];
            let right = pair.get(1).copied().unwrap_or(left);
            sha256d(&[left, right].concat())
        })
        .collect()
}

/// `OP_0 <20-byte key hash>`.
fn p2wpkh_script(key_hash: &[u8]) -> Vec<u8> {
    let mut s = vec![0x00];
    push_data(&mut s, key_hash);
    s
}

/// A plausible one-input, one-output legacy transaction, unique per height and index.
fn synthetic_transaction(height: u64, index: u32) -> Vec<u8> {
    let seed = [
        b"rigfleet tx".as_slice(),
        &height.to_le_bytes(),
        &index.to_le_bytes(),
    ]
    .concat();
    let prevout = sha256d(&seed);
    let mut tx = Vec::with_capacity(90);
    tx.extend_from_slice(&2u32.to_le_bytes());
    tx.push(1);
    tx.extend_from_slice(&prevout);
    tx.extend_from_slice(&index.to_le_bytes());
    tx.push(0); // empty scriptSig
    tx.extend_from_slice(&0xffff_fffdu32.to_le_bytes()); // RBF sequence, as wallets send
    tx.push(1);
    tx.extend_from_slice(&(10_000 + u64::from(index) * 1_000).to_le_bytes());
    let out = p2wpkh_script(&prevout[..20]);
    push_compact_size(&mut tx, out.len());
    tx.extend_from_slice(&out);
    tx.extend_from_slice(&0u32.to_le_bytes());
    tx
}

/// One job: a template, the tag that makes its coinbase unique, and its `mining.notify`.
#[derive(Debug)]
pub struct Job {
    /// The id sent to miners (hex of `seq`).
    pub id: String,
    /// Increasing job number across the pool's life.
    pub seq: u64,
    /// Which block (template) the job belongs to; a job of an older block is stale.
    pub block_seq: u64,
    /// The block.
    pub block: Arc<BlockTemplate>,
    /// Put into the coinbase before the extranonce.
    pub tag: u32,
    /// The job as sent (`clean_jobs` is set per connection when sending).
    pub notify: Notify,
}

impl Job {
    /// Cuts a job from a block for an extranonce2 size.
    pub fn new(
        seq: u64,
        block_seq: u64,
        block: Arc<BlockTemplate>,
        extranonce2_size: usize,
        ntime: u32,
        clean_jobs: bool,
    ) -> Self {
        let tag = seq as u32;
        let (coinb1, coinb2) = block.coinbase_parts(tag, EXTRANONCE1_SIZE + extranonce2_size);
        let id = format!("{seq:x}");
        let notify = Notify {
            job_id: id.clone(),
            prevhash: block.stratum_prev_hash(),
            coinb1,
            coinb2,
            merkle_branch: block.merkle_branch(),
            version: block.version,
            nbits: block.nbits,
            ntime,
            clean_jobs,
        };
        Self {
            id,
            seq,
            block_seq,
            block,
            tag,
            notify,
        }
    }

    /// The header of a share with this module's own code (the independent check).
    pub fn header_independent(
        &self,
        extranonce1: &[u8],
        extranonce2: &[u8],
        version: u32,
        ntime: u32,
        nonce: u32,
    ) -> [u8; 80] {
        let extranonce = [extranonce1, extranonce2].concat();
        let coinbase = self.block.coinbase(self.tag, &extranonce);
        let root = self.block.merkle_root(&sha256d(&coinbase));
        self.block.header(&root, version, ntime, nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job;
    use rigfleet_engine::hex;

    #[test]
    fn bip34_heights_encode_as_bitcoin_core_writes_them() {
        for (height, expect) in [
            (881_423u64, "030f730d"),
            (0, "00"),
            (1, "51"),
            (16, "60"),
            (17, "0111"),
            (127, "017f"),
            (128, "028000"),
            (255, "02ff00"),
            (256, "020001"),
            (32_768, "03008000"),
            (227_836, "03fc7903"), // the first BIP 34 block's coinbase starts 03fc7903
            (8_388_608, "0400008000"),
        ] {
            assert_eq!(hex::encode(&bip34_height_push(height)), expect, "{height}");
        }
    }

    #[test]
    fn merkle_root_of_block_100000_from_its_txids() {
        // Bitcoin block 100000: four transactions and its published merkle root (ids as block
        // explorers print them, so reversed).
        let ids = [
            "8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87",
            "fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4",
            "6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4",
            "e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d",
        ]
        .map(|s| {
            let mut b = hex::decode_array::<32>(s).unwrap();
            b.reverse();
            b
        });
        let mut t = BlockTemplate::synthetic(100_000, SHA256D_NBITS);
        t.txids = ids[1..].to_vec();
        assert_eq!(
            hex::encode_reversed(&t.merkle_root(&ids[0])),
            "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766"
        );
        let via_branch = t
            .merkle_branch()
            .iter()
            .fold(ids[0], |root, b| sha256d(&[root, *b].concat()));
        assert_eq!(
            hex::encode_reversed(&via_branch),
            "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766"
        );
    }

    #[test]
    fn branch_is_deep_and_agrees_with_the_full_tree_and_with_job_rs() {
        let t = Arc::new(BlockTemplate::synthetic(881_423, SHA256D_NBITS));
        let branch = t.merkle_branch();
        assert!(branch.len() >= 3, "depth {}", branch.len());
        assert_eq!(branch.len(), 4);
        let job = Job::new(7, 1, t.clone(), 4, 0x6790_0000, true);
        assert_eq!(job.notify.merkle_branch, branch);
        for (en1, en2) in [
            ([0, 0, 0, 1], vec![0, 0, 0, 0]),
            ([0xde, 0xad, 0xbe, 0xef], vec![1, 2, 3, 4]),
            ([0xff; 4], vec![0xff; 4]),
        ] {
            // The client's path: coinb1 ‖ en1 ‖ en2 ‖ coinb2, folded with the branch.
            let coinbase = job::coinbase(&job.notify, &en1, &en2);
            assert_eq!(coinbase, t.coinbase(job.tag, &[&en1[..], &en2].concat()));
            let root_via_branch = job::merkle_root(&coinbase, &job.notify.merkle_branch);
            // The pool's path: every leaf.
            let root_full = t.merkle_root(&sha256d(&coinbase));
            assert_eq!(root_via_branch, root_full);
            let header = job::header(&job.notify, &root_via_branch, 0x2000_4000, 0x6790_0001, 42);
            assert_eq!(
                header,
                job.header_independent(&en1, &en2, 0x2000_4000, 0x6790_0001, 42)
            );
        }
    }

    #[test]
    fn coinbase_is_well_formed_and_starts_with_the_height() {
        let t = BlockTemplate::synthetic(881_423, SHA256D_NBITS);
        let cb = t.coinbase(5, &[0xaa; 8]);
        // version 2, one input, null prevout.
        assert_eq!(&cb[..5], &[2, 0, 0, 0, 1]);
        assert_eq!(&cb[5..37], &[0u8; 32]);
        assert_eq!(&cb[37..41], &[0xff; 4]);
        let script_len = cb[41] as usize;
        assert!(
            (2..=100).contains(&script_len),
            "consensus limits the coinbase script"
        );
        assert_eq!(&cb[42..46], &[0x03, 0x0f, 0x73, 0x0d]);
        // The extranonce sits where coinb1 ends.
        let (coinb1, coinb2) = t.coinbase_parts(5, 8);
        assert_eq!(coinb1.len() + 8 + coinb2.len(), cb.len());
        assert_eq!(&cb[coinb1.len()..coinb1.len() + 8], &[0xaa; 8]);
        assert_eq!(coinb1.last(), Some(&8), "push opcode of the extranonce");
        // Distinct jobs have distinct coinbases; distinct blocks distinct previous hashes.
        assert_ne!(t.coinbase_parts(6, 8).0, coinb1);
        let next = BlockTemplate::synthetic(881_424, SHA256D_NBITS);
        assert_ne!(next.prev_hash, t.prev_hash);
        assert_eq!(&t.prev_hash[28..], &[0; 4]);
    }

    #[test]
    fn stratum_prev_hash_is_the_word_swapped_header_form() {
        let t = BlockTemplate::synthetic(10, SHA256D_NBITS);
        let sent = t.stratum_prev_hash();
        assert_eq!(job::prevhash_to_header(&sent), t.prev_hash);
        assert_eq!(
            sent[..4],
            [
                t.prev_hash[3],
                t.prev_hash[2],
                t.prev_hash[1],
                t.prev_hash[0]
            ]
        );
    }
}
