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
    /// Who the copy is for: `owner-1`, `operator-1`, `machine-1` by default, or a buyer's id.
    #[serde(alias = "recipient_id")]
    pub recipient_id: String,
    /// `owner`, `operator`, `machine` or `buyer`.
    #[serde(alias = "recipient_type")]
    pub recipient_type: String,
    /// The key wrapping, [`RECIPIENT_ALGORITHM`] (`x25519-sealedbox`).
    pub algorithm: String,
    /// The recipient's X25519 public key as hex, copied unchanged from its configuration.
    #[serde(alias = "public_key_hex")]
    pub public_key_hex: String,
    /// The chunk key sealed to that key (libsodium `crypto_box_seal`: ephemeral public key ‖
    /// box), as hex.
    #[serde(alias = "wrapped_key_hex")]
    pub wrapped_key_hex: String,
}

/// `encryption` of a chunk envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkEncryption {
    /// The chunk cipher, [`CHUNK_ALGORITHM`] (`xchacha20-poly1305`).
    pub algorithm: String,
    /// The 24-byte nonce, as bare hex.
    pub nonce: String,
    /// `sha256:` + sha256 hex of the chunk key.
    #[serde(alias = "key_commitment")]
    pub key_commitment: String,
    /// The chunk key, sealed once to each recipient.
    #[serde(alias = "key_recipients")]
    pub key_recipients: Vec<KeyRecipient>,
}

/// `signature` of a chunk envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkSignature {
    /// The signature algorithm, [`SIGNATURE_ALGORITHM`] (`ed25519`).
    pub algorithm: String,
    /// The DID of the machine that signed the chunk.
    #[serde(alias = "machine_did")]
    pub machine_did: String,
    /// The id of the chain key that signed it.
    #[serde(alias = "key_id")]
    pub key_id: String,
    /// The Ed25519 public key the signature verifies with, as hex.
    #[serde(alias = "public_key_hex")]
    pub public_key_hex: String,
    /// The Ed25519 signature (hex) of the UTF-8 bytes of the `encryptedDataHash` string.
    pub value: String,
}

/// A chunk envelope. Reads camelCase or snake_case, writes camelCase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkEnvelope {
    /// [`CHUNK_SCHEMA_VERSION`]; [`ChunkEnvelope::from_json`] refuses any other.
    #[serde(alias = "schema_version")]
    pub schema_version: String,
    /// `0x` + sha256 hex of `"{previousChunkId or ''}|{encryptedDataHash}|{index}"`.
    #[serde(alias = "chunk_id")]
    pub chunk_id: String,
    /// The `chunkId` of the chunk before; `None` (null) for index 0.
    #[serde(default, alias = "previous_chunk_id")]
    pub previous_chunk_id: Option<String>,
    /// The chunk's position in the chain, from 0; its files are `chunk-{index}.*`.
    pub index: u64,
    /// `0x` + sha256 hex of the ciphertext (`chunk-{index}.bin`).
    #[serde(alias = "encrypted_data_hash")]
    pub encrypted_data_hash: String,
    /// `0x` + sha256 hex of the plaintext.
    #[serde(alias = "plaintext_hash")]
    pub plaintext_hash: String,
    /// `storageRef`, a reference to the stored ciphertext (`s3://bucket/key` once
    /// uploaded, else null): covered by no hash or signature, kept as read, never checked.
    #[serde(default, alias = "storage_ref")]
    pub storage_ref: Option<String>,
    /// The cipher, nonce, key commitment and wrapped chunk keys.
    pub encryption: ChunkEncryption,
    /// The Ed25519 chunk signature and its signer's identity.
    pub signature: ChunkSignature,
}

/// A chunk envelope document that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The document is not JSON; holds the parser's message.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The JSON lacks an envelope field or has one of the wrong type; holds the reason.
    #[error("{0}")]
    Shape(String),
    /// `schemaVersion` is not [`CHUNK_SCHEMA_VERSION`].
    #[error("unsupported schemaVersion {found:?} (expected {CHUNK_SCHEMA_VERSION:?})")]
    Schema {
        /// The `schemaVersion` the document has.
        found: String,
    },
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
