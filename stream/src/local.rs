//! In-process implementations of the [`crate::signer`] traits over key files: for tests,
//! development and the CLI without keyd.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use ed25519_dalek::Signer as _;

use crate::access::{self, BuyerAccessEntry, BuyerIdentity};
use crate::chain::{ChunkEnvelope, KeyRecipient, RECIPIENT_ALGORITHM};
use crate::hexenc;
use crate::keys::{BoxKey, ChainKey, IdentityKey, KeyError, Secret32};
use crate::package;
use crate::sealed;
use crate::signer::*;

/// Signs package envelopes with an identity key held in memory.
#[derive(Debug)]
pub struct LocalPackageSigner {
    key: IdentityKey,
    did: String,
}

impl LocalPackageSigner {
    pub fn new(key: IdentityKey) -> Self {
        let did = key.did();
        LocalPackageSigner { key, did }
    }

    /// Signs as `did`, which must name this key's address (hex digits of either case).
    pub fn with_did(key: IdentityKey, did: &str) -> Result<Self, SignerError> {
        match package::address_of_did(did) {
            Some(address) if address == key.address() => Ok(LocalPackageSigner {
                key,
                did: did.to_string(),
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
    pub recipient_id: String,
    pub recipient_type: String,
    /// As given by the operator: copied into envelopes unchanged (FORMATS.md §4).
    pub public_key_hex: String,
    pub public_key: crate::keys::BoxPublicKey,
}

impl RecipientSpec {
    pub fn new(
        recipient_id: &str,
        recipient_type: &str,
        public_key_hex: &str,
    ) -> Result<Self, crate::hexenc::HexError> {
        Ok(RecipientSpec {
            recipient_id: recipient_id.into(),
            recipient_type: recipient_type.into(),
            public_key: crate::keys::parse_x25519_public_hex(recipient_type, public_key_hex)?,
            public_key_hex: public_key_hex.into(),
        })
    }
}

/// Makes chunk keys from the OS's randomness and seals them to fixed recipients.
#[derive(Debug, Clone)]
pub struct LocalChunkKeys {
    recipients: Vec<RecipientSpec>,
}

impl LocalChunkKeys {
    pub fn new(recipients: Vec<RecipientSpec>) -> Self {
        LocalChunkKeys { recipients }
    }
}

impl ChunkKeySource for LocalChunkKeys {
    fn new_chunk_keys(&self, count: usize) -> Result<Vec<ChunkKey>, SignerError> {
        (0..count)
            .map(|_| {
                let key = Secret32::random()?;
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
                    .collect::<Result<Vec<_>, KeyError>>()?;
                Ok(ChunkKey {
                    commitment: hexenc::key_commitment(key.expose()),
                    key,
                    recipients,
                })
            })
            .collect()
    }
}

/// Grants buyers access with a recipient's box key held in memory (owner, or machine).
#[derive(Debug)]
pub struct LocalGranter {
    key: BoxKey,
}

impl LocalGranter {
    pub fn new(key: BoxKey) -> Self {
        LocalGranter { key }
    }
}

impl ChunkKeyGranter for LocalGranter {
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

/// AES-256-GCM of `plaintext` under `cipher` with a random 96-bit IV:
/// base64(iv ‖ ciphertext ‖ tag).
pub fn encrypt_field(cipher: &Aes256Gcm, plaintext: &[u8]) -> Result<String, KeyError> {
    let mut iv = [0u8; 12];
    getrandom::getrandom(&mut iv).map_err(|_| KeyError::Randomness)?;
    let mut packed = Vec::with_capacity(12 + plaintext.len() + 16);
    packed.extend_from_slice(&iv);
    packed.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&iv), b"", &mut packed[12..])
        .map_err(|_| KeyError::Invalid {
            what: "field plaintext",
        })?;
    packed.extend_from_slice(&tag);
    Ok(base64::engine::general_purpose::STANDARD.encode(packed))
}

impl FieldEncryptor for LocalFieldEncryptor {
    fn encrypt_fields(&self, plaintexts: &[&[u8]]) -> Result<Vec<String>, SignerError> {
        plaintexts
            .iter()
            .map(|p| encrypt_field(&self.cipher, p).map_err(SignerError::from))
            .collect()
    }
}
