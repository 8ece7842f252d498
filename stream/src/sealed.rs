//! libsodium `crypto_box_seal` of 32-byte chunk keys to X25519 public keys.

use crypto_box::aead::OsRng;

use crate::keys::{self, BoxKey, BoxPublicKey, KeyError, Secret32};

/// Length of a sealed 32-byte key: ephemeral public key (32) + box (32 + 16).
pub const SEALED_KEY_LEN: usize = 80;

/// Seals `key` to `recipient` (ephemeral pk ‖ box; nonce = BLAKE2b-192(epk ‖ pk)). The
/// recipient is never a low-order point ([`BoxPublicKey`] refuses them).
pub fn seal_key(key: &Secret32, recipient: &BoxPublicKey) -> Result<Vec<u8>, KeyError> {
    crypto_box::PublicKey::from(*recipient.as_bytes())
        .seal(&mut OsRng, key.expose())
        .map_err(|_| KeyError::Randomness)
}

/// Opens a sealed chunk key; `None` when it was not sealed to `key`, is not 32 bytes, or
/// carries a low-order ephemeral key (whose shared secret is zero: anyone could have made it).
pub fn open_key(sealed: &[u8], key: &BoxKey) -> Option<Secret32> {
    let epk: &[u8; 32] = sealed.get(..32)?.try_into().ok()?;
    if keys::is_low_order(epk) {
        return None;
    }
    let secret = crypto_box::SecretKey::from(*key.secret_bytes());
    let opened = zeroize::Zeroizing::new(secret.unseal(sealed).ok()?);
    let bytes: [u8; 32] = opened.as_slice().try_into().ok()?;
    Some(Secret32::from_bytes(bytes))
}

/// Opens a sealed chunk key given only a Diffie-Hellman oracle for the recipient's secret
/// key: `dh(epk)` must return X25519(recipient secret, epk). This is libsodium's
/// `crypto_box_seal_open` (nonce = BLAKE2b-192(epk ‖ pk), key = HSalsa20(shared, 0),
/// XSalsa20-Poly1305 with the tag first), for keys that never leave a token.
/// `None` when the box was not sealed to `recipient_public` or is damaged.
pub fn open_key_with<E>(
    sealed: &[u8],
    recipient_public: &[u8; 32],
    dh: impl FnOnce(&[u8; 32]) -> Result<zeroize::Zeroizing<[u8; 32]>, E>,
) -> Result<Option<Secret32>, E> {
    use blake2::digest::{Update, VariableOutput};
    use crypto_secretbox::aead::{Aead, KeyInit};
    use zeroize::Zeroizing;

    if sealed.len() != SEALED_KEY_LEN {
        return Ok(None);
    }
    let epk: [u8; 32] = sealed[..32].try_into().expect("length checked");
    let shared = dh(&epk)?;
    if shared.iter().all(|b| *b == 0) {
        return Ok(None); // a low-order point: libsodium refuses it too
    }
    let mut nonce = [0u8; 24];
    let mut hasher = blake2::Blake2bVar::new(24).expect("24 is a valid BLAKE2b length");
    hasher.update(&epk);
    hasher.update(recipient_public);
    hasher
        .finalize_variable(&mut nonce)
        .expect("buffer of the requested length");
    let key = Zeroizing::new(salsa20::hsalsa::<salsa20::cipher::consts::U10>(
        (&*shared).into(),
        &Default::default(),
    ));
    let cipher = crypto_secretbox::XSalsa20Poly1305::new(&key);
    let Ok(opened) = cipher.decrypt((&nonce).into(), &sealed[32..]) else {
        return Ok(None);
    };
    let opened = Zeroizing::new(opened);
    Ok(opened.as_slice().try_into().ok().map(Secret32::from_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_through_a_dh_oracle_matches_crypto_box() {
        for i in 0..32u8 {
            let me = BoxKey::from_secret(&Secret32::from_bytes(
                [i.wrapping_mul(7).wrapping_add(1); 32],
            ));
            let key = Secret32::from_bytes([i; 32]);
            let sealed = seal_key(&key, &me.box_public_key()).unwrap();
            let dh = |epk: &[u8; 32]| -> Result<_, ()> {
                Ok(zeroize::Zeroizing::new(x25519_dalek::x25519(
                    *me.secret_bytes(),
                    *epk,
                )))
            };
            let opened = open_key_with(&sealed, &me.public_key(), dh)
                .unwrap()
                .unwrap();
            assert_eq!(opened.expose(), key.expose());
            assert_eq!(open_key(&sealed, &me).unwrap().expose(), key.expose());
            let mut damaged = sealed.clone();
            damaged[50] ^= 1;
            assert!(open_key_with(&damaged, &me.public_key(), dh)
                .unwrap()
                .is_none());
            let other = BoxKey::from_secret(&Secret32::from_bytes([200; 32]));
            assert!(open_key_with(
                &sealed,
                &other.public_key(),
                |epk: &[u8; 32]| -> Result<_, ()> {
                    Ok(zeroize::Zeroizing::new(x25519_dalek::x25519(
                        *other.secret_bytes(),
                        *epk,
                    )))
                }
            )
            .unwrap()
            .is_none());
        }
    }

    #[test]
    fn seal_open_round_trip() {
        let me = BoxKey::from_secret(&Secret32::from_bytes([9; 32]));
        let other = BoxKey::from_secret(&Secret32::from_bytes([8; 32]));
        let key = Secret32::from_bytes([1; 32]);
        let sealed = seal_key(&key, &me.box_public_key()).unwrap();
        assert_eq!(sealed.len(), SEALED_KEY_LEN);
        assert_eq!(open_key(&sealed, &me).unwrap().expose(), key.expose());
        assert!(open_key(&sealed, &other).is_none());
        assert!(open_key(&sealed[..40], &me).is_none());
    }

    /// A box whose ephemeral key is a low-order point has a zero shared secret: anyone can
    /// make one, so it proves nothing about who sealed it. Both openers refuse it.
    #[test]
    fn boxes_with_a_low_order_ephemeral_key_are_refused() {
        use crypto_secretbox::aead::{Aead, KeyInit};
        let me = BoxKey::from_secret(&Secret32::from_bytes([9; 32]));
        let epk = [0u8; 32];
        // What a forger makes: key = HSalsa20(0), nonce = BLAKE2b-192(epk ‖ pk).
        use blake2::digest::{Update, VariableOutput};
        let mut nonce = [0u8; 24];
        let mut hasher = blake2::Blake2bVar::new(24).unwrap();
        hasher.update(&epk);
        hasher.update(&me.public_key());
        hasher.finalize_variable(&mut nonce).unwrap();
        let key =
            salsa20::hsalsa::<salsa20::cipher::consts::U10>(&[0u8; 32].into(), &Default::default());
        let boxed = crypto_secretbox::XSalsa20Poly1305::new(&key)
            .encrypt((&nonce).into(), &[7u8; 32][..])
            .unwrap();
        let forged = [&epk[..], &boxed].concat();
        assert!(open_key(&forged, &me).is_none());
        let dh = |p: &[u8; 32]| -> Result<_, ()> {
            Ok(zeroize::Zeroizing::new(x25519_dalek::x25519(
                *me.secret_bytes(),
                *p,
            )))
        };
        assert!(open_key_with(&forged, &me.public_key(), dh)
            .unwrap()
            .is_none());
    }
}
