//! Backends hold the keys and perform raw operations with them. Purpose checks, the
//! sequence guard, policy and audit are above them, in [`crate::service`], the same for
//! every backend.

pub mod pkcs11;
pub mod provider;
pub mod software;
pub mod tpm;

use stream::keys::{BoxPublicKey, Secret32};
use zeroize::Zeroizing;

/// A backend operation that failed. Never carries key material or a PIN.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The token, TPM or key file refused or failed an operation.
    #[error("{backend}: {operation}: {detail}")]
    Failed {
        backend: &'static str,
        operation: String,
        detail: String,
    },
    /// The backend is not provisioned the way keyd needs (run `keyd init`), or its
    /// configuration cannot be used.
    #[error("{backend}: {detail}")]
    Setup {
        backend: &'static str,
        detail: String,
    },
}

impl BackendError {
    pub fn failed(backend: &'static str, operation: &str, detail: impl std::fmt::Display) -> Self {
        BackendError::Failed {
            backend,
            operation: operation.to_string(),
            detail: detail.to_string(),
        }
    }
    pub fn setup(backend: &'static str, detail: impl std::fmt::Display) -> Self {
        BackendError::Setup {
            backend,
            detail: detail.to_string(),
        }
    }
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

/// The sequence ceilings a backend's own monotonic store holds advance in steps of this
/// size: a TPM counter or a token object is written once per 65,536 signed numbers, and a
/// restart skips at most that many (keyd starts above the higher of its two ceilings).
pub const CEILING_STEP: u64 = 1 << 16;

/// The keys of one machine and the raw operations on them.
pub trait Backend: Send + Sync {
    fn info(&self) -> BackendInfo;
    /// The secp256k1 identity public key.
    fn identity_public(&self) -> k256::ecdsa::VerifyingKey;
    /// The Ed25519 chain public key.
    fn chain_public(&self) -> [u8; 32];
    /// The machine's X25519 box public key.
    fn box_public(&self) -> BoxPublicKey;
    /// r ‖ s ‖ v (v = 27/28, low s) over a 32-byte EIP-191 digest.
    fn sign_secp256k1_prehash(&self, digest: &[u8; 32]) -> Result<[u8; 65], BackendError>;
    /// Ed25519 over `message`.
    fn sign_ed25519(&self, message: &[u8]) -> Result<[u8; 64], BackendError>;
    /// X25519(machine box secret, `peer`).
    fn x25519(&self, peer: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, BackendError>;
    /// AES-256-GCM with the field key under a fresh IV: (the IV used, ciphertext ‖ tag).
    /// The backend picks the IV (a token may insist on its own).
    fn aes_gcm_encrypt(&self, plaintext: &[u8]) -> Result<([u8; 12], Vec<u8>), BackendError>;
    /// Randomness from the token or TPM (the OS's for the software backend).
    fn random(&self, out: &mut [u8]) -> Result<(), BackendError>;
    /// The key of the audit log's MAC chain: derived from the backend's keys (software,
    /// TPM) or made by the token (PKCS#11). Never leaves keyd.
    fn audit_key(&self) -> &Secret32;
    /// The backend's own monotonic store for the sequence guard's ceiling (a TPM NV
    /// counter, a token object), which survives a wiped state directory; `None` when the
    /// backend has none (the software backend keeps its keys in the state directory anyway).
    fn ceiling_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn crate::guard::CeilingStore>> {
        None
    }
}

/// `ceiling` rounded up to the next multiple of [`CEILING_STEP`].
pub fn ceiling_step_above(ceiling: u64) -> u64 {
    ceiling
        .div_ceil(CEILING_STEP)
        .saturating_mul(CEILING_STEP)
        .max(CEILING_STEP)
}

/// The audit MAC key of backends that hold their keys in memory: HKDF-SHA256 over the four
/// secrets, so it changes with the keys and reveals nothing about them.
pub fn derive_audit_key(secrets: [&[u8; 32]; 4]) -> Secret32 {
    let mut ikm = Zeroizing::new([0u8; 128]);
    for (i, s) in secrets.iter().enumerate() {
        ikm[i * 32..(i + 1) * 32].copy_from_slice(*s);
    }
    let mut out = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(b"keyd audit log v1"), &*ikm)
        .expand(b"audit-mac", &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    let key = Secret32::from_bytes(out);
    zeroize::Zeroize::zeroize(&mut out);
    key
}
