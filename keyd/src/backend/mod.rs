//! Backends hold the keys and perform raw operations with them. Purpose checks, the
//! sequence guard, policy and audit are above them, in [`crate::service`], the same for
//! every backend.

pub mod pkcs11;
pub mod software;
pub mod tpm;

use zeroize::Zeroizing;

/// A backend operation that failed. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Failed(String),
}

/// What keyd reports as its backend.
#[derive(Debug, Clone, Copy)]
pub struct BackendInfo {
    /// "tee" for token or TPM, "software" for a key file.
    pub class: &'static str,
    /// pkcs11 | tpm | software
    pub detail: &'static str,
    /// Whether every key's memory is locked (software and TPM backends hold keys in memory).
    pub memory_locked: bool,
}

/// The keys of one machine and the raw operations on them.
pub trait Backend: Send + Sync {
    fn info(&self) -> BackendInfo;
    /// The secp256k1 identity public key.
    fn identity_public(&self) -> k256::ecdsa::VerifyingKey;
    /// The Ed25519 chain public key.
    fn chain_public(&self) -> [u8; 32];
    /// The machine's X25519 box public key.
    fn box_public(&self) -> [u8; 32];
    /// r ‖ s ‖ v (v = 27/28, low s) over a 32-byte EIP-191 digest.
    fn sign_secp256k1_prehash(&self, digest: &[u8; 32]) -> Result<[u8; 65], BackendError>;
    /// Ed25519 over `message`.
    fn sign_ed25519(&self, message: &[u8]) -> Result<[u8; 64], BackendError>;
    /// X25519(machine box secret, `peer`).
    fn x25519(&self, peer: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, BackendError>;
    /// AES-256-GCM with the field key: ciphertext ‖ tag.
    fn aes_gcm_encrypt(&self, iv: &[u8; 12], plaintext: &[u8]) -> Result<Vec<u8>, BackendError>;
    /// Randomness from the token or TPM (the OS's for the software backend).
    fn random(&self, out: &mut [u8]) -> Result<(), BackendError>;
}
