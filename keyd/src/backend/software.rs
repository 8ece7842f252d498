//! The software backend: keys in a JSON key file (mode 0600, owned by keyd's user).
//! For development only; keyd says so at start.

use std::path::Path;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};
use stream::fsio::{self, Durability};
use stream::keys::{parse_secret_hex, BoxPublicKey, Secret32};
use zeroize::{Zeroize, Zeroizing};

use super::{Backend, BackendError, BackendInfo};
use crate::harden::Locked;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    identity: String,
    chain: String,
    #[serde(rename = "box")]
    box_key: String,
    field: String,
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        self.identity.zeroize();
        self.chain.zeroize();
        self.box_key.zeroize();
        self.field.zeroize();
    }
}

/// Keys held in locked, zeroized memory.
pub struct SoftwareBackend {
    identity: Locked<k256::ecdsa::SigningKey>,
    chain: Locked<ed25519_dalek::SigningKey>,
    box_key: Locked<x25519_dalek::StaticSecret>,
    box_public: BoxPublicKey,
    field: Locked<Aes256Gcm>,
    audit: Locked<Secret32>,
}

/// A key file that cannot be used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path}: {reason}")]
    Invalid { path: String, reason: String },
}

fn invalid(path: &Path, reason: impl Into<String>) -> KeyFileError {
    KeyFileError::Invalid {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

impl SoftwareBackend {
    /// Loads the key file, refusing one that others can read or that keyd's user does not own.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        crate::files::check_private(path).map_err(|e| invalid(path, e.to_string()))?;
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| invalid(path, e.to_string()))?,
        );
        let file: KeyFile = serde_json::from_str(&text).map_err(|_| {
            invalid(
                path,
                "not a keyd key file (JSON with identity, chain, box, field)",
            )
        })?;
        let secret = |hex: &str, what: &str| {
            parse_secret_hex(hex)
                .ok_or_else(|| invalid(path, format!("{what} is not 64 hex digits")))
        };
        Self::from_secrets(
            secret(&file.identity, "identity")?.expose(),
            secret(&file.chain, "chain")?.expose(),
            secret(&file.box_key, "box")?.expose(),
            secret(&file.field, "field")?.expose(),
        )
        .map_err(|reason| invalid(path, reason))
    }

    /// Holds the four keys in locked memory (also keys unsealed from a TPM).
    pub fn from_secrets(
        identity: &[u8; 32],
        chain: &[u8; 32],
        box_key: &[u8; 32],
        field: &[u8; 32],
    ) -> Result<Self, String> {
        let signing = k256::ecdsa::SigningKey::from_slice(identity)
            .map_err(|_| "identity is not a valid secp256k1 key".to_string())?;
        let box_secret = x25519_dalek::StaticSecret::from(*box_key);
        let box_public =
            BoxPublicKey::from_bytes(x25519_dalek::PublicKey::from(&box_secret).to_bytes())
                .ok_or("the box key's public key is a low-order point")?;
        Ok(SoftwareBackend {
            identity: Locked::new(signing),
            chain: Locked::new(ed25519_dalek::SigningKey::from_bytes(chain)),
            box_key: Locked::new(box_secret),
            box_public,
            field: Locked::new(Aes256Gcm::new(field.into())),
            audit: Locked::new(super::derive_audit_key([identity, chain, box_key, field])),
        })
    }

    /// Writes a new key file (0600). Refuses to replace one unless `force`.
    pub fn generate(path: &Path, force: bool) -> Result<(), KeyFileError> {
        if path.exists() && !force {
            return Err(invalid(
                path,
                "exists; keyd init never replaces keys without --force",
            ));
        }
        let identity = loop {
            let s = Secret32::random().map_err(|e| invalid(path, e.to_string()))?;
            if k256::ecdsa::SigningKey::from_slice(s.expose()).is_ok() {
                break s;
            }
        };
        let random = || Secret32::random().map_err(|e| invalid(path, e.to_string()));
        let file = KeyFile {
            identity: hex::encode(identity.expose()),
            chain: hex::encode(random()?.expose()),
            box_key: hex::encode(random()?.expose()),
            field: hex::encode(random()?.expose()),
        };
        let text =
            Zeroizing::new(serde_json::to_string_pretty(&file).expect("key file serializes"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| invalid(path, e.to_string()))?;
        }
        fsio::write_atomic_private(path, text.as_bytes(), Durability::Synced)
            .map_err(|e| invalid(path, e.to_string()))
    }
}

impl Backend for SoftwareBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            class: "software",
            detail: "software",
            memory_locked: self.identity.is_locked()
                && self.chain.is_locked()
                && self.box_key.is_locked()
                && self.field.is_locked()
                && self.audit.is_locked(),
        }
    }
    fn identity_public(&self) -> k256::ecdsa::VerifyingKey {
        *self.identity.verifying_key()
    }
    fn chain_public(&self) -> [u8; 32] {
        self.chain.verifying_key().to_bytes()
    }
    fn box_public(&self) -> BoxPublicKey {
        self.box_public
    }
    fn sign_secp256k1_prehash(&self, digest: &[u8; 32]) -> Result<[u8; 65], BackendError> {
        Ok(stream::package::sign_eip191_prehash(&self.identity, digest))
    }
    fn sign_ed25519(&self, message: &[u8]) -> Result<[u8; 64], BackendError> {
        Ok(self.chain.sign(message).to_bytes())
    }
    fn x25519(&self, peer: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, BackendError> {
        let shared = self
            .box_key
            .diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
        Ok(Zeroizing::new(shared.to_bytes()))
    }
    fn aes_gcm_encrypt(&self, plaintext: &[u8]) -> Result<([u8; 12], Vec<u8>), BackendError> {
        let mut iv = [0u8; 12];
        self.random(&mut iv)?;
        let mut buffer = Vec::with_capacity(plaintext.len() + 16);
        buffer.extend_from_slice(plaintext);
        let tag = self
            .field
            .encrypt_in_place_detached(Nonce::from_slice(&iv), b"", &mut buffer)
            .map_err(|_| BackendError::failed("software", "AES-GCM", "encryption failed"))?;
        buffer.extend_from_slice(&tag);
        Ok((iv, buffer))
    }
    fn random(&self, out: &mut [u8]) -> Result<(), BackendError> {
        getrandom::getrandom(out).map_err(|_| {
            BackendError::failed(
                "software",
                "random",
                "the OS random number generator failed",
            )
        })
    }
    fn audit_key(&self) -> &Secret32 {
        &self.audit
    }
}
