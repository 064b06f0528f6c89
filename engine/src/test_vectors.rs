//! Real block headers with their known nonces and published hashes.
//!
//! Every kernel, device and the miner is checked against these: from the header with the nonce
//! zeroed, scanning a range around the true nonce must find exactly that nonce and hash. The
//! fields are written as block explorers print them (hashes in display order, reversed relative
//! to the header bytes), so each can be checked against any explorer.

use crate::hex;

/// A mined block's header fields, its height and where the values come from.
#[derive(Debug, Clone, Copy)]
pub struct RealBlock {
    /// Chain and height, for messages.
    pub name: &'static str,
    /// Where the values were taken from.
    pub source: &'static str,
    /// nVersion.
    pub version: u32,
    /// Previous block hash, display order.
    pub prev_hash: &'static str,
    /// Merkle root, display order.
    pub merkle_root: &'static str,
    /// nTime.
    pub time: u32,
    /// nBits.
    pub bits: u32,
    /// The winning nonce.
    pub nonce: u32,
    /// Block hash (SHA-256d of the header), display order.
    pub hash: &'static str,
}

impl RealBlock {
    /// The 80-byte header with the given nonce.
    pub fn header_with_nonce(&self, nonce: u32) -> [u8; 80] {
        let mut h = [0u8; 80];
        h[0..4].copy_from_slice(&self.version.to_le_bytes());
        h[4..36].copy_from_slice(&reversed(self.prev_hash));
        h[36..68].copy_from_slice(&reversed(self.merkle_root));
        h[68..72].copy_from_slice(&self.time.to_le_bytes());
        h[72..76].copy_from_slice(&self.bits.to_le_bytes());
        h[76..80].copy_from_slice(&nonce.to_le_bytes());
        h
    }

    /// The header as mined.
    pub fn header(&self) -> [u8; 80] {
        self.header_with_nonce(self.nonce)
    }

    /// The block hash as SHA-256 produces it (the reverse of the display order).
    pub fn hash_bytes(&self) -> [u8; 32] {
        reversed(self.hash)
    }
}

fn reversed(display_hex: &str) -> [u8; 32] {
    let mut b = hex::decode_array::<32>(display_hex).expect("BUG: test vector hex is 32 bytes");
    b.reverse();
    b
}

/// Bitcoin block 0. Source: the genesis block in Bitcoin Core `src/kernel/chainparams.cpp`
/// (`CreateGenesisBlock(1231006505, 2083236893, 0x1d00ffff, 1, …)`, `hashGenesisBlock`,
/// `hashMerkleRoot`).
pub const BITCOIN_GENESIS: RealBlock = RealBlock {
    name: "bitcoin block 0 (genesis)",
    source: "Bitcoin Core chainparams.cpp",
    version: 1,
    prev_hash: "0000000000000000000000000000000000000000000000000000000000000000",
    merkle_root: "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b",
    time: 1_231_006_505,
    bits: 0x1d00ffff,
    nonce: 2_083_236_893,
    hash: "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
};

/// Bitcoin block 125552, the worked example of the Bitcoin wiki page "Block hashing algorithm"
/// (header fields and the resulting hash `…1dbd981fe6985776b644b173a4d0385ddc1aa2a829688d1e…`
/// are printed there in little-endian byte order).
pub const BITCOIN_125552: RealBlock = RealBlock {
    name: "bitcoin block 125552",
    source: "Bitcoin wiki, Block hashing algorithm",
    version: 1,
    prev_hash: "00000000000008a3a41b85b8b29ad444def299fee21793cd8b9e567eab02cd81",
    merkle_root: "2b12fcf1b09288fcaff797d71e950e71ae42b91e8bdb2304758dfcffc2b620e3",
    time: 1_305_998_791,
    bits: 0x1a44b9f2,
    nonce: 2_504_433_986,
    hash: "00000000000000001e8d6829a8a21adc5d38d0a473b144b6765798e61f98bd1d",
};

/// Bitcoin block 839900 (April 2024), mined with BIP 320 version rolling: nVersion 0x2a966000
/// has bits set inside the general-purpose mask 0x1fffe000. Source: the block's raw data as
/// published by block explorers (blockchain.info `rawblock/000000000000000000023dfa…721f37`).
pub const BITCOIN_839900: RealBlock = RealBlock {
    name: "bitcoin block 839900",
    source: "block explorer raw block 000000000000000000023dfa…721f37",
    version: 0x2a96_6000,
    prev_hash: "000000000000000000015d7eee767c24abd355f70fb382d2ef47398610439ba3",
    merkle_root: "088083f58ddef995494fec492880da49e3463cc73dee1306dbdf6cf3af77454c",
    time: 1_713_511_391,
    bits: 0x1703_4219,
    nonce: 0xd260_8517,
    hash: "000000000000000000023dfafae2b6e6b5ecf9d1365fafa075dec49625721f37",
};

/// Bitcoin block 881423 (30 January 2025, the 256 Foundation's "Telehash" block), nVersion
/// 0x2e596000 with BIP 320 rolled bits. Source: the Mujina miner's real-block test data
/// (`test_blocks.rs`, module `block_881423`), which carries the full 80-byte header.
pub const BITCOIN_881423: RealBlock = RealBlock {
    name: "bitcoin block 881423",
    source: "Mujina miner test_blocks.rs block_881423",
    version: 0x2e59_6000,
    prev_hash: "00000000000000000001543bc4d2b5e1434cb64af8995e21fe15ca708a6ac9e3",
    merkle_root: "2d62cfdf6b3470f7c870e8a4be8fbf58dfbbeee2ccb03e6d01b5b8f1353af676",
    time: 0x679a_c169,
    bits: 0x1702_9a8a,
    nonce: 0xff05_fb02,
    hash: "0000000000000000000269d52c24ea451225613aab095d90d771d4e29aa96cdd",
};

/// Litecoin block 0. Source: Litecoin Core `src/chainparams.cpp` (`CreateGenesisBlock(1317972665,
/// 2084524493, 0x1e0ffff0, 1, …)`, `hashGenesisBlock` 12a765e3…, `hashMerkleRoot` 97ddfbba…).
/// `hash` is the SHA-256d block id; its Scrypt proof of work is tested with the Scrypt kernels.
pub const LITECOIN_GENESIS: RealBlock = RealBlock {
    name: "litecoin block 0 (genesis)",
    source: "Litecoin Core chainparams.cpp",
    version: 1,
    prev_hash: "0000000000000000000000000000000000000000000000000000000000000000",
    merkle_root: "97ddfbbae6be97fd6cdf3e7ca13232a3afff2353e29badfab7f73011edd4ced9",
    time: 1_317_972_665,
    bits: 0x1e0ffff0,
    nonce: 2_084_524_493,
    hash: "12a765e31ffd4059bada1e25190f6e98c99d9714d334efa41a195a7e7e04bfe2",
};

/// The SHA-256d blocks every path is checked on.
pub const SHA256D_BLOCKS: [RealBlock; 4] = [
    BITCOIN_GENESIS,
    BITCOIN_125552,
    BITCOIN_839900,
    BITCOIN_881423,
];

/// The BIP 320 general-purpose version bits miners may roll (bits 13 to 28).
pub const BIP320_MASK: u32 = 0x1fff_e000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, Target};

    #[test]
    fn every_real_block_hashes_to_its_published_hash_and_meets_its_nbits() {
        for block in SHA256D_BLOCKS {
            let hash = Algorithm::Sha256d.hash(&block.header());
            assert_eq!(hex::encode_reversed(&hash), block.hash, "{}", block.name);
            let target = Target::from_nbits(block.bits).unwrap();
            assert!(target.is_met_by(&hash), "{} meets its target", block.name);
        }
    }

    #[test]
    fn litecoin_genesis_block_id_is_its_sha256d_and_its_scrypt_meets_nbits() {
        let header = LITECOIN_GENESIS.header();
        let id = Algorithm::Sha256d.hash(&header);
        assert_eq!(hex::encode_reversed(&id), LITECOIN_GENESIS.hash);
        let target = Target::from_nbits(LITECOIN_GENESIS.bits).unwrap();
        assert!(target.is_met_by(&Algorithm::Scrypt.hash(&header)));
        assert!(
            !target.is_met_by(&id),
            "the block id is not the proof of work"
        );
    }

    #[test]
    fn recent_blocks_use_version_rolling_bits() {
        for block in [BITCOIN_839900, BITCOIN_881423] {
            assert_ne!(block.version & BIP320_MASK, 0, "{}", block.name);
            // Top bits 001 (BIP 9 signalling) are outside the rolling mask.
            assert_eq!(block.version >> 29, 0b001, "{}", block.name);
        }
    }
}
