//! The manifest's `sourceHash`: a SHA-256 of every chunk plaintext so far, whose state can
//! be saved and resumed, so that a writer restarted after a crash continues it without the
//! earlier plaintexts (the edge agent cannot decrypt its own chunks).
//!
//! Written over `sha2::compress256` with the padding of FIPS 180-4 by hand: sha2 0.10 cannot
//! save its state (0.11 can, but belongs to the next RustCrypto generation, which this
//! graph's crypto_box 0.9 cannot share). Checked against `sha2::Sha256` below.

use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::GenericArray;

const INITIAL: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// The running hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceHasher {
    state: [u32; 8],
    /// Bytes not yet in a full 64-byte block.
    pending: Vec<u8>,
    length: u64,
}

/// The saved form (hex), kept with a writer's [`super::ChainState`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SavedSourceHash {
    state: String,
    pending: String,
    length: u64,
}

impl Default for SourceHasher {
    fn default() -> Self {
        SourceHasher {
            state: INITIAL,
            pending: Vec::with_capacity(64),
            length: 0,
        }
    }
}

impl SourceHasher {
    /// Adds the next bytes of the source.
    pub fn update(&mut self, mut data: &[u8]) {
        self.length += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (64 - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < 64 {
                return;
            }
            sha2::compress256(
                &mut self.state,
                std::slice::from_ref(GenericArray::from_slice(&self.pending)),
            );
            self.pending.clear();
        }
        let full = data.len() / 64 * 64;
        for block in data[..full].chunks_exact(64) {
            sha2::compress256(
                &mut self.state,
                std::slice::from_ref(GenericArray::from_slice(block)),
            );
        }
        self.pending.extend_from_slice(&data[full..]);
    }

    /// `0x` + hex of the SHA-256 of everything so far (the state continues unchanged).
    pub fn digest(&self) -> String {
        let mut state = self.state;
        let mut tail = self.pending.clone();
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&(self.length * 8).to_be_bytes());
        let blocks: Vec<_> = tail
            .chunks_exact(64)
            .map(GenericArray::clone_from_slice)
            .collect();
        sha2::compress256(&mut state, &blocks);
        let bytes: Vec<u8> = state.iter().flat_map(|w| w.to_be_bytes()).collect();
        format!("0x{}", hex::encode(bytes))
    }

    /// The state, to resume from later.
    pub fn save(&self) -> SavedSourceHash {
        SavedSourceHash {
            state: hex::encode(
                self.state
                    .iter()
                    .flat_map(|w| w.to_be_bytes())
                    .collect::<Vec<_>>(),
            ),
            pending: hex::encode(&self.pending),
            length: self.length,
        }
    }

    /// Resumes a saved state; `None` when it is not one.
    pub fn restore(saved: &SavedSourceHash) -> Option<Self> {
        let state = hex::decode(&saved.state).ok()?;
        let pending = hex::decode(&saved.pending).ok()?;
        if state.len() != 32 || pending.len() >= 64 || saved.length % 64 != pending.len() as u64 {
            return None;
        }
        let mut words = [0u32; 8];
        for (w, bytes) in words.iter_mut().zip(state.chunks_exact(4)) {
            *w = u32::from_be_bytes(bytes.try_into().ok()?);
        }
        Some(SourceHasher {
            state: words,
            pending,
            length: saved.length,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn equals_sha256_across_saves_and_odd_splits() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        for split in [0, 1, 55, 56, 63, 64, 65, 127, 128, 1000, 4999, 5000] {
            let mut h = SourceHasher::default();
            h.update(&data[..split]);
            let mut h = SourceHasher::restore(&h.save()).unwrap();
            h.update(&data[split..]);
            assert_eq!(
                h.digest(),
                format!("0x{}", hex::encode(Sha256::digest(&data))),
                "split {split}"
            );
        }
        assert_eq!(
            SourceHasher::default().digest(),
            format!("0x{}", hex::encode(Sha256::digest(b"")))
        );
    }
}
