//! A chunk's leaf: what of its envelope the tree commits to.

use serde_json::json;

use super::tree::{leaf_hash, Hash};
use crate::chain::ChunkEnvelope;
use crate::json;

/// The leaf data of a chunk: the canonical JSON of its `chunkId`, `encryptedDataHash`,
/// `index`, `keyCommitment` (from `encryption`) and `plaintextHash`. The key commitment is
/// in it, so a buyer can check that a granted key is the one listed.
pub fn leaf_data(chunk: &ChunkEnvelope) -> Vec<u8> {
    let value = json!({
        "chunkId": chunk.chunk_id,
        "encryptedDataHash": chunk.encrypted_data_hash,
        "index": chunk.index,
        "keyCommitment": chunk.encryption.key_commitment,
        "plaintextHash": chunk.plaintext_hash,
    });
    json::canonical_bytes(&value).expect("strings and an integer always canonicalize")
}

/// `SHA-256(0x00 ‖ leaf data)` of a chunk.
pub fn chunk_leaf(chunk: &ChunkEnvelope) -> Hash {
    leaf_hash(&leaf_data(chunk))
}
