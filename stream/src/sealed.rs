//! libsodium `crypto_box_seal` of 32-byte chunk keys to X25519 public keys.

use crypto_box::aead::OsRng;

use crate::keys::{BoxKey, KeyError, Secret32};

/// Length of a sealed 32-byte key: ephemeral public key (32) + box (32 + 16).
pub const SEALED_KEY_LEN: usize = 80;

/// Seals `key` to `recipient` (ephemeral pk ‖ box; nonce = BLAKE2b-192(epk ‖ pk)).
pub fn seal_key(key: &Secret32, recipient: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
    crypto_box::PublicKey::from(*recipient)
        .seal(&mut OsRng, key.expose())
        .map_err(|_| KeyError::Randomness)
}

/// Opens a sealed chunk key; `None` when it was not sealed to `key` or is not 32 bytes.
pub fn open_key(sealed: &[u8], key: &BoxKey) -> Option<Secret32> {
    let secret = crypto_box::SecretKey::from(*key.secret_bytes());
    let opened = zeroize::Zeroizing::new(secret.unseal(sealed).ok()?);
    let bytes: [u8; 32] = opened.as_slice().try_into().ok()?;
    Some(Secret32::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip() {
        let me = BoxKey::from_secret(&Secret32::from_bytes([9; 32]));
        let other = BoxKey::from_secret(&Secret32::from_bytes([8; 32]));
        let key = Secret32::from_bytes([1; 32]);
        let sealed = seal_key(&key, &me.public_key()).unwrap();
        assert_eq!(sealed.len(), SEALED_KEY_LEN);
        assert_eq!(open_key(&sealed, &me).unwrap().expose(), key.expose());
        assert!(open_key(&sealed, &other).is_none());
        assert!(open_key(&sealed[..40], &me).is_none());
    }
}
