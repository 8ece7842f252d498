//! Proof documents: an inclusion proof (audit path) of one chunk in a dataset, and a
//! consistency proof between two datasets of one chain that start at the same chunk.

use serde::{Deserialize, Serialize};

use super::document::{hash_hex, parse_hash};
use super::tree::Hash;
use super::DatasetError;
use crate::json::{self, Layout};

/// `schemaVersion` of inclusion proofs.
pub const INCLUSION_SCHEMA_VERSION: &str = "peaq.stream.dataset.inclusion.v1";
/// `schemaVersion` of consistency proofs.
pub const CONSISTENCY_SCHEMA_VERSION: &str = "peaq.stream.dataset.consistency.v1";

/// That chunk `chunkIndex` is leaf `leafIndex` of the tree with root `merkleRoot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InclusionProof {
    /// [`INCLUSION_SCHEMA_VERSION`].
    pub schema_version: String,
    /// The dataset's root.
    pub merkle_root: String,
    /// The dataset's `treeSize`.
    pub tree_size: u64,
    /// The leaf's position in the tree: `chunkIndex - firstIndex`.
    pub leaf_index: u64,
    /// The chunk's `index` in its chain.
    pub chunk_index: u64,
    /// The chunk's `chunkId`.
    pub chunk_id: String,
    /// The leaf hash of the chunk.
    pub leaf_hash: String,
    /// The audit path, from the leaf's sibling up (RFC 6962 §2.1.1).
    pub audit_path: Vec<String>,
}

/// That the tree of `oldTreeSize` leaves is a prefix of the tree of `newTreeSize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistencyProof {
    /// [`CONSISTENCY_SCHEMA_VERSION`].
    pub schema_version: String,
    /// The index of the first chunk of both datasets.
    pub first_index: u64,
    /// The older dataset's `treeSize`.
    pub old_tree_size: u64,
    /// The older dataset's root.
    pub old_merkle_root: String,
    /// The newer dataset's `treeSize`.
    pub new_tree_size: u64,
    /// The newer dataset's root.
    pub new_merkle_root: String,
    /// The proof (RFC 6962 §2.1.2).
    pub proof: Vec<String>,
}

/// Hashes as the proofs write them.
pub fn hashes_hex(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(hash_hex).collect()
}

/// A proof's hash list, naming `name` and the position of a malformed one.
pub fn parse_hashes(name: &'static str, texts: &[String]) -> Result<Vec<Hash>, DatasetError> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            parse_hash(name, t).map_err(|_| DatasetError::Field {
                field: name,
                reason: format!("entry {i} must be \"0x\" + 64 lowercase hex digits"),
            })
        })
        .collect()
}

fn read<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DatasetError> {
    let value = json::parse_slice(bytes).map_err(|e| DatasetError::Json(e.to_string()))?;
    serde_path_to_error::deserialize(value).map_err(|e| DatasetError::Shape {
        path: e.path().to_string(),
        reason: e.inner().to_string(),
    })
}

fn file_text<T: Serialize>(value: &T) -> Result<String, DatasetError> {
    let value = serde_json::to_value(value).map_err(|e| DatasetError::Json(e.to_string()))?;
    let mut text = json::python_dumps(&value, Layout::Indent2)
        .map_err(|e| DatasetError::Json(e.to_string()))?;
    text.push('\n');
    Ok(text)
}

fn schema(found: &str, expected: &'static str) -> Result<(), DatasetError> {
    if found == expected {
        Ok(())
    } else {
        Err(DatasetError::Field {
            field: "schemaVersion",
            reason: format!("{found:?} is not {expected:?}"),
        })
    }
}

impl InclusionProof {
    /// Parses an inclusion proof and checks its schema and hashes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DatasetError> {
        let proof: InclusionProof = read(bytes)?;
        schema(&proof.schema_version, INCLUSION_SCHEMA_VERSION)?;
        parse_hash("merkleRoot", &proof.merkle_root)?;
        parse_hash("chunkId", &proof.chunk_id)?;
        parse_hash("leafHash", &proof.leaf_hash)?;
        parse_hashes("auditPath", &proof.audit_path)?;
        Ok(proof)
    }

    /// As a file, indented.
    pub fn to_file_text(&self) -> Result<String, DatasetError> {
        file_text(self)
    }
}

impl ConsistencyProof {
    /// Parses a consistency proof and checks its schema and hashes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DatasetError> {
        let proof: ConsistencyProof = read(bytes)?;
        schema(&proof.schema_version, CONSISTENCY_SCHEMA_VERSION)?;
        parse_hash("oldMerkleRoot", &proof.old_merkle_root)?;
        parse_hash("newMerkleRoot", &proof.new_merkle_root)?;
        parse_hashes("proof", &proof.proof)?;
        Ok(proof)
    }

    /// As a file, indented.
    pub fn to_file_text(&self) -> Result<String, DatasetError> {
        file_text(self)
    }
}
