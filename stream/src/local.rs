//! Implementations of the [`crate::signer`] traits: over keys held in this process (tests,
//! development, the CLI without keyd), and, for chunk keys, grants and fields, over any
//! [`crate::provider`] (keyd's backends).

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use ed25519_dalek::Signer as _;

use crate::access::{self, BuyerAccessEntry, BuyerIdentity};
use crate::chain::{ChunkEnvelope, KeyRecipient, RECIPIENT_ALGORITHM};
use crate::hexenc;
use crate::keys::{BoxKey, ChainKey, IdentityKey, Secret32};
use crate::package;
use crate::provider::{FieldCipher, KeyAgreement, OsRandom, ProviderError, Randomness};
use crate::sealed;
use crate::signer::*;

/// Signs package envelopes (and dataset documents) with an identity key held in memory.
#[derive(Debug)]
pub struct LocalPackageSigner {
    key: IdentityKey,
    did: String,
    key_id: String,
}

impl LocalPackageSigner {
    /// Signs as the key's own DID (its address in lowercase hex).
    pub fn new(key: IdentityKey) -> Self {
        let did = key.did();
        LocalPackageSigner {
            key,
            key_id: format!("{did}#keys-1"),
            did,
        }
    }

    /// Signs as `did`, which must name this key's address (hex digits of either case).
    pub fn with_did(key: IdentityKey, did: &str) -> Result<Self, SignerError> {
        match package::address_of_did(did) {
            Some(address) if address == key.address() => Ok(LocalPackageSigner {
                key,
                did: did.to_string(),
                key_id: format!("{did}#keys-1"),
            }),
            Some(_) => Err(SignerError::Refused(format!(
                "{did} is not the DID of the identity key ({})",
                key.did()
            ))),
            None => Err(SignerError::Refused(format!(
                "{did:?} is not did:peaq:0x followed by 40 hex digits"
            ))),
        }
    }
}

impl LocalPackageSigner {
    /// Writes `key_id` as the dataset signature's `keyId` (default `{did}#keys-1`).
    pub fn with_key_id(mut self, key_id: &str) -> Self {
        self.key_id = key_id.to_string();
        self
    }
}

impl DatasetSigner for LocalPackageSigner {
    fn key_id(&self) -> &str {
        &self.key_id
    }
    fn sign_dataset(&self, document: &[u8]) -> Result<[u8; 65], SignerError> {
        Ok(package::sign_eip191(self.key.signing_key(), document))
    }
}

impl PackageSigner for LocalPackageSigner {
    fn did(&self) -> &str {
        &self.did
    }
    fn sign_envelopes(&self, envelopes: &[&[u8]]) -> Result<Vec<[u8; 65]>, SignerError> {
        Ok(envelopes
            .iter()
            .map(|m| package::sign_eip191(self.key.signing_key(), m))
            .collect())
    }
}

/// Signs chunk hashes with a chain key held in memory.
#[derive(Debug)]
pub struct LocalChunkSigner {
    key: ChainKey,
    identity: ChunkSignerIdentity,
}

impl LocalChunkSigner {
    /// Signs with `key`, naming `machine_did` and `key_id` in every chunk signature.
    pub fn new(key: ChainKey, machine_did: String, key_id: String) -> Self {
        let public_key_hex = key.public_key_hex();
        LocalChunkSigner {
            key,
            identity: ChunkSignerIdentity {
                machine_did,
                key_id,
                public_key_hex,
            },
        }
    }
}

impl ChunkHashSigner for LocalChunkSigner {
    fn chunk_signer(&self) -> &ChunkSignerIdentity {
        &self.identity
    }
    fn sign_chunks(&self, chunks: &[ChunkToSign<'_>]) -> Result<Vec<[u8; 64]>, SignerError> {
        chunks
            .iter()
            .enumerate()
            .map(|(index, chunk)| {
                if !hexenc::is_0x_sha256_lower(chunk.encrypted_data_hash) {
                    return Err(SignerError::Item {
                        index,
                        reason: "encryptedDataHash is not 0x + 64 lowercase hex digits".into(),
                    });
                }
                Ok(self
                    .key
                    .signing_key()
                    .sign(chunk.encrypted_data_hash.as_bytes())
                    .to_bytes())
            })
            .collect()
    }
}

/// A recipient every chunk key is sealed to.
#[derive(Debug, Clone)]
pub struct RecipientSpec {
    /// The `recipientId` of its `keyRecipients` entries (`owner-1`, `operator-1`, …).
    pub recipient_id: String,
    /// The `recipientType`: `owner`, `operator` or `machine`.
    pub recipient_type: String,
    /// As given by the operator: copied into envelopes unchanged (FORMATS.md §4).
    pub public_key_hex: String,
    /// The parsed key, never a low-order point.
    pub public_key: crate::keys::BoxPublicKey,
}

impl RecipientSpec {
    /// A recipient whose X25519 public key is `public_key_hex` (32 bytes of hex, optional
    /// `0x`). Fails when the key is not that, or is a low-order point; the error names the
    /// field after `recipient_type`.
    pub fn new(
        recipient_id: &str,
        recipient_type: &str,
        public_key_hex: &str,
    ) -> Result<Self, crate::hexenc::HexError> {
        // As given, but without surrounding whitespace (a key pasted from a file).
        let public_key_hex = public_key_hex.trim();
        Ok(RecipientSpec {
            recipient_id: recipient_id.into(),
            recipient_type: recipient_type.into(),
            public_key: crate::keys::parse_x25519_public_hex(recipient_type, public_key_hex)?,
            public_key_hex: public_key_hex.into(),
        })
    }
}

/// Makes chunk keys and seals them to fixed recipients: from the OS's randomness by
/// default, or from any [`Randomness`] (keyd mixes its token's or TPM's in).
#[derive(Debug, Clone)]
pub struct LocalChunkKeys<R = OsRandom> {
    recipients: Vec<RecipientSpec>,
    randomness: R,
}

impl LocalChunkKeys {
    /// Keys from the operating system's randomness, sealed to `recipients`.
    pub fn new(recipients: Vec<RecipientSpec>) -> Self {
        Self::with_randomness(recipients, OsRandom)
    }
}

impl<R: Randomness> LocalChunkKeys<R> {
    /// Keys from `randomness`, sealed to `recipients`.
    pub fn with_randomness(recipients: Vec<RecipientSpec>, randomness: R) -> Self {
        LocalChunkKeys {
            recipients,
            randomness,
        }
    }

    /// The recipients every key is sealed to.
    pub fn recipients(&self) -> &[RecipientSpec] {
        &self.recipients
    }
}

impl<R: Randomness> ChunkKeySource for LocalChunkKeys<R> {
    fn new_chunk_keys(&self, count: usize) -> Result<Vec<ChunkKey>, SignerError> {
        (0..count)
            .map(|_| {
                let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
                self.randomness.fill(&mut *bytes).map_err(provider_error)?;
                let key = Secret32::from_bytes(*bytes);
                let recipients = self
                    .recipients
                    .iter()
                    .map(|r| {
                        Ok(KeyRecipient {
                            recipient_id: r.recipient_id.clone(),
                            recipient_type: r.recipient_type.clone(),
                            algorithm: RECIPIENT_ALGORITHM.into(),
                            public_key_hex: r.public_key_hex.clone(),
                            wrapped_key_hex: hex::encode(sealed::seal_key(&key, &r.public_key)?),
                        })
                    })
                    .collect::<Result<Vec<_>, crate::keys::KeyError>>()?;
                Ok(ChunkKey {
                    commitment: hexenc::key_commitment(key.expose()),
                    key,
                    recipients,
                })
            })
            .collect()
    }
}

fn provider_error(e: ProviderError) -> SignerError {
    SignerError::Unavailable(e.to_string())
}

/// Grants buyers access with a recipient's box key (the owner's in this process, or the
/// machine's behind a [`KeyAgreement`] in keyd).
#[derive(Debug)]
pub struct LocalGranter<K = BoxKey> {
    key: K,
}

impl<K: KeyAgreement> LocalGranter<K> {
    /// Grants with `key`: each chunk must have a recipient entry sealed to it.
    pub fn new(key: K) -> Self {
        LocalGranter { key }
    }
}

impl<K: KeyAgreement> ChunkKeyGranter for LocalGranter<K> {
    fn grant(
        &self,
        chunks: &[ChunkEnvelope],
        buyer: &BuyerIdentity,
    ) -> Result<Vec<BuyerAccessEntry>, SignerError> {
        chunks
            .iter()
            .enumerate()
            .map(|(index, chunk)| {
                access::grant_entry(chunk, &self.key, buyer).map_err(|e| SignerError::Item {
                    index,
                    reason: e.to_string(),
                })
            })
            .collect()
    }
}

/// AES-256-GCM field encryption with a key held in memory.
pub struct LocalFieldEncryptor {
    cipher: Aes256Gcm,
}

impl LocalFieldEncryptor {
    /// Encrypts under the AES-256 field key `key`, with a fresh random IV per field.
    pub fn new(key: &Secret32) -> Self {
        LocalFieldEncryptor {
            cipher: Aes256Gcm::new(key.expose().into()),
        }
    }
}

impl std::fmt::Debug for LocalFieldEncryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalFieldEncryptor(<key redacted>)")
    }
}

impl FieldCipher for LocalFieldEncryptor {
    fn seal(&self, plaintext: &[u8]) -> Result<([u8; 12], Vec<u8>), ProviderError> {
        let mut iv = [0u8; 12];
        OsRandom.fill(&mut iv)?;
        let mut sealed = Vec::with_capacity(plaintext.len() + 16);
        sealed.extend_from_slice(plaintext);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&iv), b"", &mut sealed)
            .map_err(|_| ProviderError::Failed("AES-GCM encryption failed".into()))?;
        sealed.extend_from_slice(&tag);
        Ok((iv, sealed))
    }
}

/// An encrypted field's `ciphertext` (docs/formats.md §3): base64(iv ‖ ciphertext ‖ tag),
/// by any [`FieldCipher`].
pub fn encrypt_field(cipher: &dyn FieldCipher, plaintext: &[u8]) -> Result<String, ProviderError> {
    let (iv, sealed) = cipher.seal(plaintext)?;
    let mut packed = Vec::with_capacity(12 + sealed.len());
    packed.extend_from_slice(&iv);
    packed.extend_from_slice(&sealed);
    Ok(base64::engine::general_purpose::STANDARD.encode(packed))
}

impl FieldEncryptor for LocalFieldEncryptor {
    fn encrypt_fields(&self, plaintexts: &[&[u8]]) -> Result<Vec<String>, SignerError> {
        plaintexts
            .iter()
            .map(|p| encrypt_field(self, p).map_err(provider_error))
            .collect()
    }
}
