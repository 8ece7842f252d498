//! The software backend: keys in a JSON key file (mode 0600, owned by keyd's user).
//! For development only; keyd says so at start.

use std::path::Path;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};
use stream::keys::{parse_secret_hex, Secret32};
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
    field: Locked<Aes256Gcm>,
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
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| invalid(path, e.to_string()))?;
        if meta.mode() & 0o777 != 0o600 {
            return Err(invalid(
                path,
                format!("mode is {:o}; it must be 600", meta.mode() & 0o777),
            ));
        }
        // SAFETY: geteuid has no failure mode.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(invalid(
                path,
                format!("owned by uid {}, not keyd's uid {euid}", meta.uid()),
            ));
        }
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
        let identity = k256::ecdsa::SigningKey::from_slice(identity)
            .map_err(|_| "identity is not a valid secp256k1 key".to_string())?;
        Ok(SoftwareBackend {
            identity: Locked::new(identity),
            chain: Locked::new(ed25519_dalek::SigningKey::from_bytes(chain)),
            box_key: Locked::new(x25519_dalek::StaticSecret::from(*box_key)),
            field: Locked::new(Aes256Gcm::new(field.into())),
        })
    }

    /// Writes a new key file (0600). Refuses to replace one unless `force`.
    pub fn generate(path: &Path, force: bool) -> Result<(), KeyFileError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
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
        let temp = path.with_extension("tmp");
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| invalid(path, e.to_string()))?;
        out.write_all(text.as_bytes())
            .and_then(|()| out.sync_all())
            .map_err(|e| invalid(path, e.to_string()))?;
        std::fs::rename(&temp, path).map_err(|e| invalid(path, e.to_string()))?;
        Ok(())
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
                && self.field.is_locked(),
        }
    }
    fn identity_public(&self) -> k256::ecdsa::VerifyingKey {
        *self.identity.verifying_key()
    }
    fn chain_public(&self) -> [u8; 32] {
        self.chain.verifying_key().to_bytes()
    }
    fn box_public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&*self.box_key).to_bytes()
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
    fn aes_gcm_encrypt(&self, iv: &[u8; 12], plaintext: &[u8]) -> Result<Vec<u8>, BackendError> {
        let mut buffer = Vec::with_capacity(plaintext.len() + 16);
        buffer.extend_from_slice(plaintext);
        let tag = self
            .field
            .encrypt_in_place_detached(Nonce::from_slice(iv), b"", &mut buffer)
            .map_err(|_| BackendError::Failed("AES-GCM encryption failed".into()))?;
        buffer.extend_from_slice(&tag);
        Ok(buffer)
    }
    fn random(&self, out: &mut [u8]) -> Result<(), BackendError> {
        getrandom::getrandom(out)
            .map_err(|_| BackendError::Failed("the OS random number generator failed".into()))
    }
}
