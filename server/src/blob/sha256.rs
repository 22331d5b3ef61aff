//! SHA-256 whose running state can be written down and picked up again: an
//! upload resumed after a restart goes on hashing where it stopped, without
//! reading back what it already has (on s3, it could not: the parts of an
//! unfinished multipart upload cannot be read). The block function is sha2's
//! (`compress256`, with the CPU's SHA extensions where present); this file
//! only keeps the state and pads at the end (FIPS 180-4 §5.1.1).

use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::GenericArray;

const BLOCK: usize = 64;
/// Blocks hashed per call (copied into an aligned batch first).
const BATCH: usize = 64;
const INITIAL: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

type Block = GenericArray<u8, sha2::digest::consts::U64>;

/// A SHA-256 computation in progress, serializable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sha256State {
    /// The chaining value after `blocks` whole blocks.
    h: [u32; 8],
    blocks: u64,
    /// The bytes after the last whole block (fewer than 64), in hex.
    #[serde(with = "hex_bytes")]
    tail: Vec<u8>,
}

impl Default for Sha256State {
    fn default() -> Self {
        Self { h: INITIAL, blocks: 0, tail: Vec::with_capacity(BLOCK) }
    }
}

impl Sha256State {
    /// Bytes hashed so far.
    pub(crate) fn len(&self) -> u64 {
        self.blocks * BLOCK as u64 + self.tail.len() as u64
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        if !self.tail.is_empty() {
            let take = (BLOCK - self.tail.len()).min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.tail.len() < BLOCK {
                return;
            }
            let block = Block::clone_from_slice(&self.tail);
            sha2::compress256(&mut self.h, std::slice::from_ref(&block));
            self.blocks += 1;
            self.tail.clear();
        }
        let mut batch = [Block::default(); BATCH];
        let mut chunks = data.chunks_exact(BLOCK * BATCH);
        for chunk in &mut chunks {
            for (block, bytes) in batch.iter_mut().zip(chunk.chunks_exact(BLOCK)) {
                block.copy_from_slice(bytes);
            }
            sha2::compress256(&mut self.h, &batch);
            self.blocks += BATCH as u64;
        }
        let rest = chunks.remainder();
        let whole = rest.len() / BLOCK;
        for (block, bytes) in batch.iter_mut().zip(rest.chunks_exact(BLOCK)) {
            block.copy_from_slice(bytes);
        }
        sha2::compress256(&mut self.h, &batch[..whole]);
        self.blocks += whole as u64;
        self.tail.extend_from_slice(&rest[whole * BLOCK..]);
    }

    /// The digest of everything hashed (the state itself is left as it is).
    pub(crate) fn finish(&self) -> [u8; 32] {
        let bits = self.len().wrapping_mul(8);
        let mut last = self.tail.clone();
        last.push(0x80);
        while last.len() % BLOCK != BLOCK - 8 {
            last.push(0);
        }
        last.extend_from_slice(&bits.to_be_bytes());
        let mut h = self.h;
        let blocks: Vec<Block> = last.chunks_exact(BLOCK).map(Block::clone_from_slice).collect();
        sha2::compress256(&mut h, &blocks);
        let mut out = [0u8; 32];
        for (word, bytes) in h.iter().zip(out.chunks_exact_mut(4)) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    /// Whether the state is one that `update` can have produced.
    pub(crate) fn is_well_formed(&self) -> bool {
        self.tail.len() < BLOCK
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    #[test]
    fn matches_sha2_for_every_length_around_the_block_edges() {
        for n in (0..300).chain([4095, 4096, 4097, 64 * 64 * 3 + 5, 100_000]) {
            let data = bytes(n);
            let mut s = Sha256State::default();
            s.update(&data);
            assert_eq!(s.len(), n as u64);
            assert_eq!(s.finish(), <[u8; 32]>::from(sha2::Sha256::digest(&data)), "length {n}");
        }
    }

    #[test]
    fn any_split_and_a_round_trip_through_json_give_the_same_digest() {
        let data = bytes(50_000);
        let want: [u8; 32] = sha2::Sha256::digest(&data).into();
        for split in [1, 7, 63, 64, 65, 1000, 4096, 4097, 33_333] {
            let mut s = Sha256State::default();
            for (i, piece) in data.chunks(split).enumerate() {
                s.update(piece);
                if i % 3 == 0 {
                    let text = serde_json::to_string(&s).unwrap();
                    s = serde_json::from_str(&text).unwrap();
                    assert!(s.is_well_formed());
                }
            }
            assert_eq!(s.finish(), want, "split {split}");
        }
    }

    #[test]
    fn the_empty_input() {
        assert_eq!(
            hex::encode(Sha256State::default().finish()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
