//! The narrow, batch-friendly traits behind which every signature and key wrap happens.
//!
//! In-process implementations over key files live in [`crate::local`]; keyd's client
//! implements the same traits. Every method takes a batch and answers in order, so a
//! remote implementation pays one round trip per batch, not per item.

use crate::access::{BuyerAccessEntry, BuyerIdentity};
use crate::chain::{ChunkEnvelope, KeyRecipient};
use crate::keys::{KeyError, Secret32};

/// Why a signer could not do what it was asked. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// A key could not be read or used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The signer's policy does not allow this caller the operation.
    #[error("denied: {0}")]
    Denied(String),
    /// The request does not fit the key's purpose (a foreign DID, a malformed item, a batch
    /// too large): as it is, it never will.
    #[error("refused: {0}")]
    Refused(String),
    /// A sequence number at or below one the signer already signed: ask it where the
    /// sequence continues, renumber, and try again.
    #[error("sequence: {0}")]
    Sequence(String),
    /// The signer could not be reached or failed: the same request may succeed later.
    #[error("signer unavailable: {0}")]
    Unavailable(String),
    /// Item `index` of the batch could not be processed.
    #[error("item {index}: {reason}")]
    Item {
        /// The item's position in the batch, from 0.
        index: usize,
        /// Why it failed.
        reason: String,
    },
}

impl SignerError {
    /// Whether the same request may succeed if simply sent again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SignerError::Unavailable(_))
    }
}

/// Signs canonical data-package envelopes with the machine identity (EIP-191).
pub trait PackageSigner: Send + Sync {
    /// The DID every envelope must carry.
    fn did(&self) -> &str;
    /// One 65-byte signature (r ‖ s ‖ v, v = 27/28) per canonical envelope, in order.
    fn sign_envelopes(&self, envelopes: &[&[u8]]) -> Result<Vec<[u8; 65]>, SignerError>;
}

/// Signs dataset documents (`peaq.stream.dataset.v1`) with the machine identity (EIP-191);
/// a document must carry the signer's [`PackageSigner::did`] as `machineDid`.
pub trait DatasetSigner: PackageSigner {
    /// The identity key's id, written as `signature.keyId`.
    fn key_id(&self) -> &str;
    /// One 65-byte signature (r ‖ s ‖ v, v = 27/28) over the canonical JSON of the document
    /// without its `signature`.
    fn sign_dataset(&self, document: &[u8]) -> Result<[u8; 65], SignerError>;
}

/// The identity written into every chunk signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSignerIdentity {
    /// The machine DID, written as `signature.machineDid`.
    pub machine_did: String,
    /// The chain key's id, written as `signature.keyId`.
    pub key_id: String,
    /// The Ed25519 public key as hex, written as `signature.publicKeyHex`.
    pub public_key_hex: String,
}

/// A chunk to sign: the `encryptedDataHash` the signature covers and the `keyCommitment` of
/// the key the chunk was sealed with. The signature covers the hash alone (FORMATS.md §4);
/// keyd records the pair, so that it re-wraps a key for a buyer only for the chunk the key
/// was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkToSign<'a> {
    /// `0x` + 64 lowercase hex digits.
    pub encrypted_data_hash: &'a str,
    /// `sha256:` + 64 lowercase hex digits.
    pub key_commitment: &'a str,
}

/// Signs chunk `encryptedDataHash` strings with the chain key (Ed25519).
pub trait ChunkHashSigner: Send + Sync {
    /// The identity written into every chunk signature it makes.
    fn chunk_signer(&self) -> &ChunkSignerIdentity;
    /// One 64-byte Ed25519 signature over each chunk's `encryptedDataHash`, in order.
    fn sign_chunks(&self, chunks: &[ChunkToSign<'_>]) -> Result<Vec<[u8; 64]>, SignerError>;
}

/// A fresh chunk key, its commitment, and its sealed copies for the configured recipients.
/// The key is zeroized when dropped.
#[derive(Debug)]
pub struct ChunkKey {
    /// The 32-byte XChaCha20-Poly1305 chunk key.
    pub key: Secret32,
    /// `keyCommitment`: `sha256:` + sha256 hex of the key.
    pub commitment: String,
    /// The key sealed to each configured recipient (`keyRecipients`).
    pub recipients: Vec<KeyRecipient>,
}

/// Makes fresh chunk keys and wraps them to the recipients it is configured with.
pub trait ChunkKeySource: Send + Sync {
    /// `count` fresh chunk keys, each sealed to every configured recipient.
    fn new_chunk_keys(&self, count: usize) -> Result<Vec<ChunkKey>, SignerError>;
}

/// Re-wraps chunk keys for a buyer without ever handing the plaintext key out.
pub trait ChunkKeyGranter: Send + Sync {
    /// One buyer access entry per chunk, in order; each chunk key is opened, checked
    /// against the chunk's `keyCommitment`, and sealed to the buyer.
    fn grant(
        &self,
        chunks: &[ChunkEnvelope],
        buyer: &BuyerIdentity,
    ) -> Result<Vec<BuyerAccessEntry>, SignerError>;
}

/// Encrypts field values (AES-256-GCM, FORMATS.md §3 packing).
pub trait FieldEncryptor: Send + Sync {
    /// One base64 of iv(12) ‖ ciphertext ‖ tag(16) per plaintext, in order.
    fn encrypt_fields(&self, plaintexts: &[&[u8]]) -> Result<Vec<String>, SignerError>;
}
