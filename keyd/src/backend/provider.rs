//! A backend as `stream`'s provider: its box key for key agreement, its field key for
//! AES-GCM, its randomness (mixed with the OS's) for chunk keys. With these, keyd seals
//! chunk keys, grants and encrypts fields with `stream`'s own code, formatting nothing.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use stream::keys::BoxPublicKey;
use stream::provider::{FieldCipher, KeyAgreement, ProviderError, Randomness};
use zeroize::Zeroizing;

use super::{Backend, BackendError};

/// A backend behind `stream`'s provider traits.
#[derive(Clone)]
pub struct Provider(pub Arc<dyn Backend>);

fn failed(e: BackendError) -> ProviderError {
    ProviderError::Failed(e.to_string())
}

impl KeyAgreement for Provider {
    fn public_key(&self) -> BoxPublicKey {
        self.0.box_public()
    }
    fn agree(&self, peer: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, ProviderError> {
        self.0.x25519(peer).map_err(failed)
    }
}

impl FieldCipher for Provider {
    fn seal(&self, plaintext: &[u8]) -> Result<([u8; 12], Vec<u8>), ProviderError> {
        self.0.aes_gcm_encrypt(plaintext).map_err(failed)
    }
}

/// Each 32 bytes are SHA-256(32 bytes of the token's or TPM's randomness ‖ 32 of the OS's):
/// as good as the better of the two.
impl Randomness for Provider {
    fn fill(&self, out: &mut [u8]) -> Result<(), ProviderError> {
        for part in out.chunks_mut(32) {
            let mut device = Zeroizing::new([0u8; 32]);
            let mut os = Zeroizing::new([0u8; 32]);
            self.0.random(&mut *device).map_err(failed)?;
            getrandom::getrandom(&mut *os).map_err(|_| ProviderError::Randomness)?;
            let mut mix = Sha256::new();
            mix.update(*device);
            mix.update(*os);
            let digest = Zeroizing::new(<[u8; 32]>::from(mix.finalize()));
            part.copy_from_slice(&digest[..part.len()]);
        }
        Ok(())
    }
}
