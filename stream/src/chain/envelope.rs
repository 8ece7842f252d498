//! The chunk envelope (`chunk-i.json`) as the reference writes and reads it.

use serde::{Deserialize, Serialize};

use crate::json::{self, JsonError, Layout, Value};

/// `schemaVersion` of chunk envelopes and manifests.
pub const CHUNK_SCHEMA_VERSION: &str = "peaq.stream.chunks.v1";
/// Default bytes per chunk.
pub const DEFAULT_CHUNK_SIZE: usize = 262_144;
/// The chunk cipher.
pub const CHUNK_ALGORITHM: &str = "xchacha20-poly1305";
/// The key wrapping of every recipient.
pub const RECIPIENT_ALGORITHM: &str = "x25519-sealedbox";
/// The chunk signature algorithm.
pub const SIGNATURE_ALGORITHM: &str = "ed25519";

/// One wrapped copy of a chunk key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecipient {
    #[serde(alias = "recipient_id")]
    pub recipient_id: String,
    #[serde(alias = "recipient_type")]
    pub recipient_type: String,
    pub algorithm: String,
    #[serde(alias = "public_key_hex")]
    pub public_key_hex: String,
    #[serde(alias = "wrapped_key_hex")]
    pub wrapped_key_hex: String,
}

/// `encryption` of a chunk envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkEncryption {
    pub algorithm: String,
    pub nonce: String,
    #[serde(alias = "key_commitment")]
    pub key_commitment: String,
    #[serde(alias = "key_recipients")]
    pub key_recipients: Vec<KeyRecipient>,
}

/// `signature` of a chunk envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkSignature {
    pub algorithm: String,
    #[serde(alias = "machine_did")]
    pub machine_did: String,
    #[serde(alias = "key_id")]
    pub key_id: String,
    #[serde(alias = "public_key_hex")]
    pub public_key_hex: String,
    pub value: String,
}

/// A chunk envelope. Reads camelCase or snake_case, writes camelCase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkEnvelope {
    #[serde(alias = "schema_version")]
    pub schema_version: String,
    #[serde(alias = "chunk_id")]
    pub chunk_id: String,
    #[serde(default, alias = "previous_chunk_id")]
    pub previous_chunk_id: Option<String>,
    pub index: u64,
    #[serde(alias = "encrypted_data_hash")]
    pub encrypted_data_hash: String,
    #[serde(alias = "plaintext_hash")]
    pub plaintext_hash: String,
    #[serde(default, alias = "storage_ref")]
    pub storage_ref: Option<String>,
    pub encryption: ChunkEncryption,
    pub signature: ChunkSignature,
}

/// A chunk envelope document that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Shape(String),
    #[error("unsupported schemaVersion {found:?} (expected {CHUNK_SCHEMA_VERSION:?})")]
    Schema { found: String },
}

impl ChunkEnvelope {
    /// Parses a `chunk-i.json` document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let value = json::parse_slice(bytes).map_err(|e| EnvelopeError::Json(e.to_string()))?;
        let envelope: ChunkEnvelope =
            serde_json::from_value(value).map_err(|e| EnvelopeError::Shape(e.to_string()))?;
        if envelope.schema_version != CHUNK_SCHEMA_VERSION {
            return Err(EnvelopeError::Schema {
                found: envelope.schema_version,
            });
        }
        Ok(envelope)
    }

    /// As JSON, keys in the reference's order.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a chunk envelope always serializes")
    }

    /// `json.dumps(envelope, indent=2) + "\n"`, byte for byte what the reference writes.
    pub fn to_file_text(&self) -> Result<String, JsonError> {
        let mut text = json::python_dumps(&self.to_value(), Layout::Indent2)?;
        text.push('\n');
        Ok(text)
    }
}
