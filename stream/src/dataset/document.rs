//! The dataset document (`peaq.stream.dataset.v1`): what an owner lists, signed with the
//! machine's identity key (EIP-191, as packages are) over the canonical JSON of the document
//! without its `signature`.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::tree::Hash;
use super::DatasetError;
use crate::hexenc;
use crate::json::{self, Layout, Value};
use crate::package;

/// `schemaVersion` of dataset documents.
pub const DATASET_SCHEMA_VERSION: &str = "peaq.stream.dataset.v1";
/// `signature.algorithm` of dataset documents.
pub const DATASET_SIGNATURE_ALGORITHM: &str = "eip191-secp256k1";

/// The time the dataset's packages cover: their earliest and latest `timestamp`, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeRange {
    /// The earliest package timestamp (RFC 3339).
    pub from: String,
    /// The latest package timestamp (RFC 3339).
    pub to: String,
}

impl TimeRange {
    /// Whether `timestamp` (RFC 3339) lies within the range, ends included; `None` when it
    /// is not RFC 3339.
    pub fn contains(&self, timestamp: &str) -> Option<bool> {
        let t = instant(timestamp)?;
        Some(instant(&self.from)? <= t && t <= instant(&self.to)?)
    }
}

/// An RFC 3339 timestamp as an instant.
pub fn instant(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// The document's `signature`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatasetSignature {
    /// [`DATASET_SIGNATURE_ALGORITHM`].
    pub algorithm: String,
    /// The identity key's id (e.g. `did:peaq:0x…#keys-1`).
    pub key_id: String,
    /// `0x` + hex of r ‖ s ‖ v.
    pub value: String,
}

/// A dataset: a contiguous range of one chain, committed to by a Merkle root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatasetDocument {
    /// [`DATASET_SCHEMA_VERSION`].
    pub schema_version: String,
    /// The machine whose chain this is and whose identity key signs the document.
    pub machine_did: String,
    /// The topic (or, for a chain of a file, the name the owner gives it).
    pub topic: String,
    /// The index of the first chunk.
    pub first_index: u64,
    /// The index of the last chunk.
    pub last_index: u64,
    /// The number of leaves: `lastIndex - firstIndex + 1`.
    pub tree_size: u64,
    /// `0x` + 64 lowercase hex digits: MTH over the chunks' leaves.
    pub merkle_root: String,
    /// The `chunkId` of the first chunk.
    pub first_chunk_id: String,
    /// The `chunkId` of the last chunk.
    pub last_chunk_id: String,
    /// For chains of signed packages: the time their timestamps cover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_range: Option<TimeRange>,
    /// The chain key every chunk is signed with (Ed25519, 64 lowercase hex digits).
    pub chain_public_key_hex: String,
    /// When the document was made (RFC 3339).
    pub created_at: String,
    /// A title for the listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// A description for the listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The seller's terms (price, token, chain…): an object, signed with the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms: Option<Value>,
    /// The machine's signature; `None` before signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<DatasetSignature>,
}

fn field(field: &'static str, reason: impl Into<String>) -> DatasetError {
    DatasetError::Field {
        field,
        reason: reason.into(),
    }
}

/// `0x` + 64 lowercase hex digits as a hash, naming `name` when it is not.
pub fn parse_hash(name: &'static str, text: &str) -> Result<Hash, DatasetError> {
    if !hexenc::is_0x_sha256_lower(text) {
        return Err(field(name, "must be \"0x\" + 64 lowercase hex digits"));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(&text[2..], &mut out).map_err(|_| field(name, "is not hex"))?;
    Ok(out)
}

/// A hash as the documents write it: `0x` + 64 lowercase hex digits.
pub fn hash_hex(hash: &Hash) -> String {
    hexenc::digest_0x(hash)
}

impl DatasetDocument {
    /// Parses and checks a dataset document (its shape; see [`Self::check_shape`]).
    pub fn from_json(bytes: &[u8]) -> Result<Self, DatasetError> {
        let value = json::parse_slice(bytes).map_err(|e| DatasetError::Json(e.to_string()))?;
        Self::from_value(value)
    }

    /// Reads and checks a dataset document already parsed.
    pub fn from_value(value: Value) -> Result<Self, DatasetError> {
        let doc: DatasetDocument =
            serde_path_to_error::deserialize(value).map_err(|e| DatasetError::Shape {
                path: e.path().to_string(),
                reason: e.inner().to_string(),
            })?;
        doc.check_shape()?;
        Ok(doc)
    }

    /// Every field well formed: the schema, the DID, a range whose size is `treeSize`,
    /// hashes and keys as lowercase hex, RFC 3339 times with `from` ≤ `to`, `terms` an
    /// object, the signature's algorithm.
    pub fn check_shape(&self) -> Result<(), DatasetError> {
        if self.schema_version != DATASET_SCHEMA_VERSION {
            return Err(field(
                "schemaVersion",
                format!(
                    "{:?} is not {DATASET_SCHEMA_VERSION:?}",
                    self.schema_version
                ),
            ));
        }
        if package::address_of_did(&self.machine_did).is_none() {
            return Err(field(
                "machineDid",
                "must be did:peaq:0x followed by 40 hex digits",
            ));
        }
        if self.topic.trim().is_empty() {
            return Err(field("topic", "must not be empty"));
        }
        if self.first_index > self.last_index {
            return Err(field("lastIndex", "is below firstIndex"));
        }
        let chunks = (self.last_index - self.first_index).checked_add(1);
        if chunks != Some(self.tree_size) {
            return Err(field(
                "treeSize",
                format!(
                    "is {}, but the range {}..={} holds {} chunks",
                    self.tree_size,
                    self.first_index,
                    self.last_index,
                    chunks.map_or_else(|| "2^64".to_string(), |n| n.to_string())
                ),
            ));
        }
        parse_hash("merkleRoot", &self.merkle_root)?;
        parse_hash("firstChunkId", &self.first_chunk_id)?;
        parse_hash("lastChunkId", &self.last_chunk_id)?;
        if self.tree_size == 1 && self.first_chunk_id != self.last_chunk_id {
            return Err(field(
                "lastChunkId",
                "differs from firstChunkId in a dataset of one chunk",
            ));
        }
        let key = &self.chain_public_key_hex;
        if key.len() != 64 || !key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(field(
                "chainPublicKeyHex",
                "must be 64 lowercase hex digits",
            ));
        }
        if instant(&self.created_at).is_none() {
            return Err(field("createdAt", "is not an RFC 3339 time"));
        }
        if let Some(range) = &self.time_range {
            let from = instant(&range.from)
                .ok_or_else(|| field("timeRange.from", "is not an RFC 3339 time"))?;
            let to = instant(&range.to)
                .ok_or_else(|| field("timeRange.to", "is not an RFC 3339 time"))?;
            if from > to {
                return Err(field("timeRange", "from is after to"));
            }
        }
        if self.terms.as_ref().is_some_and(|t| !t.is_object()) {
            return Err(field("terms", "must be a JSON object"));
        }
        if let Some(signature) = &self.signature {
            if signature.algorithm != DATASET_SIGNATURE_ALGORITHM {
                return Err(field(
                    "signature.algorithm",
                    format!(
                        "{:?} is not {DATASET_SIGNATURE_ALGORITHM:?}",
                        signature.algorithm
                    ),
                ));
            }
            if signature.key_id.trim().is_empty() {
                return Err(field("signature.keyId", "must not be empty"));
            }
        }
        Ok(())
    }

    /// The root as bytes (the shape is checked on reading).
    pub fn root(&self) -> Result<Hash, DatasetError> {
        parse_hash("merkleRoot", &self.merkle_root)
    }

    /// What the signature covers: the canonical JSON of the document without `signature`.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, DatasetError> {
        let mut unsigned = self.clone();
        unsigned.signature = None;
        let value =
            serde_json::to_value(&unsigned).map_err(|e| DatasetError::Json(e.to_string()))?;
        json::canonical_bytes(&value).map_err(|e| DatasetError::Json(e.to_string()))
    }

    /// Attaches a signature made over [`Self::signing_bytes`].
    pub fn signed(mut self, key_id: &str, signature: &[u8; 65]) -> Self {
        self.signature = Some(DatasetSignature {
            algorithm: DATASET_SIGNATURE_ALGORITHM.into(),
            key_id: key_id.into(),
            value: package::signature_hex(signature),
        });
        self
    }

    /// That the document is signed and its signature recovers to `machineDid`'s address.
    pub fn verify_signature(&self) -> Result<(), DatasetError> {
        let signature = self.signature.as_ref().ok_or(DatasetError::Unsigned)?;
        let expected = package::address_of_did(&self.machine_did).ok_or_else(|| {
            field(
                "machineDid",
                "must be did:peaq:0x followed by 40 hex digits",
            )
        })?;
        let found = package::recover_signer(&self.signing_bytes()?, &signature.value)
            .map_err(|e| DatasetError::Signature(e.to_string()))?;
        if found != expected {
            return Err(DatasetError::Signature(format!(
                "recovers to {}, not machineDid {}",
                package::did_of_address(&found),
                self.machine_did
            )));
        }
        Ok(())
    }

    /// `json.dumps(document, indent=2) + "\n"`.
    pub fn to_file_text(&self) -> Result<String, DatasetError> {
        let value = serde_json::to_value(self).map_err(|e| DatasetError::Json(e.to_string()))?;
        let mut text = json::python_dumps(&value, Layout::Indent2)
            .map_err(|e| DatasetError::Json(e.to_string()))?;
        text.push('\n');
        Ok(text)
    }
}
