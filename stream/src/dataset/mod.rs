//! Datasets (`peaq.stream.dataset.v1`, docs/datasets.md): a contiguous range of one chain
//! committed to by an RFC 6962 Merkle root over the chunks' leaves, signed by the machine's
//! identity key (EIP-191), with inclusion proofs for single chunks and consistency proofs
//! between a dataset and a later, longer one of the same chain.
//!
//! - [`tree`]: the Merkle tree, its proofs made and checked;
//! - [`leaf`]: what of a chunk's envelope a leaf commits to;
//! - [`document`]: the signed document;
//! - [`proof`]: the proof documents;
//! - [`index`]: the span of a chunk's packages (the agent's `index.jsonl`);
//! - [`check`]: building a dataset and checking one.

pub mod check;
pub mod document;
pub mod index;
pub mod leaf;
pub mod proof;
pub mod tree;

pub use check::{
    chain_options, check_consistency, check_document, check_inclusion, check_packages,
    make_consistency, make_inclusion, DatasetBuilder, DatasetFailure, RangeCheck,
};
pub use document::{DatasetDocument, DatasetSignature, TimeRange, DATASET_SCHEMA_VERSION};
pub use proof::{ConsistencyProof, InclusionProof};

/// A dataset or proof document that cannot be read, or whose signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatasetError {
    /// Not JSON, or not serializable; holds the reason.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// A field is missing, unknown, or of the wrong type.
    #[error("{path}: {reason}")]
    Shape {
        /// Where in the document (`.` for the top).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A field's value is not acceptable.
    #[error("{field} {reason}")]
    Field {
        /// The field (camelCase, dotted below the top).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The document has no `signature`.
    #[error("signature: the document is not signed")]
    Unsigned,
    /// The signature is malformed or recovers to another address than `machineDid`'s.
    #[error("signature: {0}")]
    Signature(String),
}
