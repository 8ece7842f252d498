//! The primitives the formats need from whatever holds the keys, the way rustls takes a
//! `CryptoProvider`: randomness, key agreement with a box key, and field encryption.
//!
//! The formatting around them (sealing chunk keys to recipients, re-wrapping a chunk key
//! for a buyer, packing an encrypted field) is written once, in [`crate::local`] and
//! [`crate::access`], over these traits. Keys held in this process implement them here;
//! keyd's backends implement them over a token or a TPM, so keyd formats nothing itself.

use zeroize::Zeroizing;

use crate::keys::{BoxKey, BoxPublicKey, KeyError};

/// A primitive that failed. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The random number generator failed.
    #[error("the random number generator failed")]
    Randomness,
    /// The provider (a token, a TPM) failed or refused.
    #[error("{0}")]
    Failed(String),
}

impl From<KeyError> for ProviderError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Randomness => ProviderError::Randomness,
            other => ProviderError::Failed(other.to_string()),
        }
    }
}

/// Cryptographic randomness (for chunk keys).
pub trait Randomness: Send + Sync {
    /// Fills `out` with random bytes.
    fn fill(&self, out: &mut [u8]) -> Result<(), ProviderError>;
}

/// The operating system's randomness.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

impl Randomness for OsRandom {
    fn fill(&self, out: &mut [u8]) -> Result<(), ProviderError> {
        getrandom::getrandom(out).map_err(|_| ProviderError::Randomness)
    }
}

/// An X25519 box key whose secret may live elsewhere (a token): it opens sealed chunk keys.
pub trait KeyAgreement: Send + Sync {
    /// The public key.
    fn public_key(&self) -> BoxPublicKey;
    /// X25519(this key's secret, `peer`).
    fn agree(&self, peer: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, ProviderError>;
}

impl KeyAgreement for BoxKey {
    fn public_key(&self) -> BoxPublicKey {
        self.box_public_key()
    }
    fn agree(&self, peer: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, ProviderError> {
        Ok(Zeroizing::new(x25519_dalek::x25519(
            *self.secret_bytes(),
            *peer,
        )))
    }
}

/// AES-256-GCM under a field key whose bytes may live elsewhere.
pub trait FieldCipher: Send + Sync {
    /// Encrypts under a fresh IV the cipher chooses: (the IV used, ciphertext ‖ tag).
    fn seal(&self, plaintext: &[u8]) -> Result<([u8; 12], Vec<u8>), ProviderError>;
}
