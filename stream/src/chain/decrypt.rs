//! Opening a chunk as one of its recipients: unwrap, check commitment, decrypt, check hash.

use chacha20poly1305::aead::Aead;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use super::envelope::{ChunkEnvelope, KeyRecipient};
use crate::hexenc;
use crate::keys::{BoxKey, Secret32};
use crate::sealed;

/// Why a chunk could not be opened. Each names the check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The wrapped key does not open with the recipient key: sealed to another key, not
    /// 32 bytes, or damaged.
    #[error("wrapped key: not sealed to this recipient key, or damaged")]
    Unwrap,
    /// `wrappedKeyHex` is not valid hex; holds the reason.
    #[error("wrapped key: {0}")]
    WrappedKeyHex(String),
    /// The sha256 of the unwrapped key does not match the chunk's `keyCommitment`.
    #[error("keyCommitment: the unwrapped key does not match the chunk's commitment")]
    KeyCommitment,
    /// `encryption.nonce` is not 24 bytes of hex; holds the reason.
    #[error("nonce: {0}")]
    Nonce(String),
    /// XChaCha20-Poly1305 authentication failed: tampered ciphertext, wrong nonce or wrong
    /// key.
    #[error("ciphertext: authentication failed (tampered data, wrong nonce or wrong key)")]
    Ciphertext,
    /// The sha256 of the decrypted data does not match the chunk's `plaintextHash`.
    #[error("plaintextHash: the decrypted data does not match the chunk's plaintext hash")]
    PlaintextHash,
}

/// Unwraps a recipient's copy of the chunk key and checks it against `keyCommitment`.
pub fn unwrap_chunk_key(
    envelope: &ChunkEnvelope,
    recipient: &KeyRecipient,
    key: &BoxKey,
) -> Result<Secret32, DecryptError> {
    let wrapped = hexenc::decode("wrappedKeyHex", &recipient.wrapped_key_hex)
        .map_err(|e| DecryptError::WrappedKeyHex(e.reason.to_string()))?;
    let chunk_key = sealed::open_key(&wrapped, key).ok_or(DecryptError::Unwrap)?;
    if hexenc::key_commitment(chunk_key.expose()) != envelope.encryption.key_commitment {
        return Err(DecryptError::KeyCommitment);
    }
    Ok(chunk_key)
}

/// Decrypts `ciphertext` with an already unwrapped and checked chunk key.
pub fn decrypt_with_key(
    envelope: &ChunkEnvelope,
    chunk_key: &Secret32,
    ciphertext: &[u8],
) -> Result<Vec<u8>, DecryptError> {
    let nonce = hexenc::decode_array::<24>("nonce", &envelope.encryption.nonce)
        .map_err(|_| DecryptError::Nonce("expected 24 bytes of hex".into()))?;
    let cipher = XChaCha20Poly1305::new(chunk_key.expose().into());
    let plaintext = cipher
        .decrypt(XNonce::from_slice(&nonce), ciphertext)
        .map_err(|_| DecryptError::Ciphertext)?;
    if hexenc::digest_0x(&Sha256::digest(&plaintext)) != envelope.plaintext_hash {
        return Err(DecryptError::PlaintextHash);
    }
    Ok(plaintext)
}

/// Unwraps, checks and decrypts in one step.
pub fn decrypt_chunk(
    envelope: &ChunkEnvelope,
    recipient: &KeyRecipient,
    key: &BoxKey,
    ciphertext: &[u8],
) -> Result<Vec<u8>, DecryptError> {
    let chunk_key = unwrap_chunk_key(envelope, recipient, key)?;
    decrypt_with_key(envelope, &chunk_key, ciphertext)
}

/// The recipient entry of `envelope` sealed to `public_key` (compared as bytes).
pub fn recipient_for<'a>(
    envelope: &'a ChunkEnvelope,
    public_key: &[u8; 32],
) -> Option<&'a KeyRecipient> {
    envelope.encryption.key_recipients.iter().find(|r| {
        hexenc::decode_array::<32>("publicKeyHex", &r.public_key_hex)
            .ok()
            .as_ref()
            == Some(public_key)
    })
}
