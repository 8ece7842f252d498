//! Key material held in process: parsing, generation, and the identities derived from it.
//!
//! Secrets are zeroized on drop and never appear in `Debug`, `Display` or errors.

use std::fmt;
use std::path::Path;

use zeroize::{Zeroize, Zeroizing};

use crate::hexenc;

/// A 32-byte secret (private key, chunk key, field key). Zeroized on drop; `Debug` is redacted.
#[derive(Clone, Zeroize, zeroize::ZeroizeOnDrop)]
pub struct Secret32([u8; 32]);

impl Secret32 {
    /// Takes `bytes` as the secret.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Secret32(bytes)
    }
    /// 32 bytes from the operating system's randomness.
    pub fn random() -> Result<Self, KeyError> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|_| KeyError::Randomness)?;
        Ok(Secret32(bytes))
    }
    /// The secret's bytes. A copy made of them is not zeroized.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}

/// Why a key could not be read or used. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The key file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A key file does not hold a 32-byte secret as hex (optional `0x`, 64 hex digits).
    #[error("key file {path} does not hold {what} (expected optional 0x and 64 hex digits)")]
    Format {
        /// The key file.
        path: String,
        /// The kind of key it should hold.
        what: &'static str,
    },
    /// The secret is not a valid key of its kind (a secp256k1 identity key must be a
    /// non-zero scalar below the curve order).
    #[error("{what} is not a valid key")]
    Invalid {
        /// The kind of key.
        what: &'static str,
    },
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed")]
    Randomness,
    /// A key file could not be written (also when it already exists: key files are
    /// never overwritten).
    #[error("cannot write key file {path}: {source}")]
    Write {
        /// The key file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Parses a 32-byte secret written as hex (optional `0x`, surrounding whitespace ignored).
pub fn parse_secret_hex(text: &str) -> Option<Secret32> {
    let trimmed = text.trim();
    let body = trimmed.strip_prefix("0x").unwrap_or(trimmed);
    if body.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(body, &mut out).ok()?;
    Some(Secret32(out))
}

/// Reads a key file holding one 32-byte secret as hex.
pub fn read_secret_file(path: &Path, what: &'static str) -> Result<Secret32, KeyError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?,
    );
    parse_secret_hex(&text).ok_or_else(|| KeyError::Format {
        path: path.display().to_string(),
        what,
    })
}

/// Writes a secret as hex to a new file readable only by its owner (0600).
pub fn write_secret_file(path: &Path, secret: &Secret32, prefix_0x: bool) -> Result<(), KeyError> {
    let mut text = Zeroizing::new(String::with_capacity(68));
    if prefix_0x {
        text.push_str("0x");
    }
    text.push_str(&hex::encode(secret.expose()));
    text.push('\n');
    write_file_0600(path, text.as_bytes()).map_err(|source| KeyError::Write {
        path: path.display().to_string(),
        source,
    })
}

fn write_file_0600(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The secp256k1 identity: EIP-191 package signatures, DID.
pub struct IdentityKey {
    key: k256::ecdsa::SigningKey,
}

impl IdentityKey {
    /// The secp256k1 key whose scalar is `secret`; [`KeyError::Invalid`] when it is zero or
    /// not below the curve order.
    pub fn from_secret(secret: &Secret32) -> Result<Self, KeyError> {
        let key = k256::ecdsa::SigningKey::from_slice(secret.expose()).map_err(|_| {
            KeyError::Invalid {
                what: "secp256k1 identity key",
            }
        })?;
        Ok(IdentityKey { key })
    }
    /// The ECDSA signing key (EIP-191 package signatures).
    pub fn signing_key(&self) -> &k256::ecdsa::SigningKey {
        &self.key
    }
    /// The 20-byte Ethereum address: the last 20 bytes of keccak256 of the uncompressed
    /// public key without its `04` prefix.
    pub fn address(&self) -> [u8; 20] {
        crate::package::address_of(self.key.verifying_key())
    }
    /// The machine DID: `did:peaq:0x` + the address in lowercase hex.
    pub fn did(&self) -> String {
        crate::package::did_of_address(&self.address())
    }
    /// Uncompressed SEC1 public key (65 bytes, `04`‖X‖Y) as hex.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_encoded_point(false).as_bytes())
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey")
            .field("did", &self.did())
            .finish_non_exhaustive()
    }
}

/// The Ed25519 chain key: chunk signatures.
pub struct ChainKey {
    key: ed25519_dalek::SigningKey,
}

impl ChainKey {
    /// The Ed25519 key whose 32-byte seed is `secret`.
    pub fn from_secret(secret: &Secret32) -> Self {
        ChainKey {
            key: ed25519_dalek::SigningKey::from_bytes(secret.expose()),
        }
    }
    /// The Ed25519 signing key (chunk signatures).
    pub fn signing_key(&self) -> &ed25519_dalek::SigningKey {
        &self.key
    }
    /// The 32-byte public key as hex: a chunk signature's `publicKeyHex`.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainKey")
            .field("public_key", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

/// An X25519 box key (owner, operator, machine, buyer): opens sealed chunk keys.
pub struct BoxKey {
    secret: x25519_dalek::StaticSecret,
}

impl BoxKey {
    /// The X25519 key whose private scalar is `secret` (clamped when used).
    pub fn from_secret(secret: &Secret32) -> Self {
        BoxKey {
            secret: x25519_dalek::StaticSecret::from(*secret.expose()),
        }
    }
    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.secret).to_bytes()
    }
    /// The public key as a key to seal to (never low-order: it is a multiple of the base point).
    pub fn box_public_key(&self) -> BoxPublicKey {
        BoxPublicKey(self.public_key())
    }
    /// The public key as lowercase hex: a recipient's `publicKeyHex`.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public_key())
    }
    pub(crate) fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }
}

impl fmt::Debug for BoxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxKey")
            .field("public_key", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

/// An X25519 public key that is safe to seal to: 32 bytes and not a low-order point.
///
/// A low-order point (the all-zero key, for one) makes every Diffie-Hellman result with it
/// zero, so a box sealed to it opens for anyone. libsodium refuses such keys; so do we,
/// wherever a key is configured or a box is sealed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BoxPublicKey([u8; 32]);

/// What [`BoxPublicKey::from_bytes`] refuses.
pub const LOW_ORDER_REASON: &str =
    "a low-order X25519 point: every shared secret with it is zero, so anyone could open a box sealed to it";

impl BoxPublicKey {
    /// The key, unless it is a low-order point.
    pub fn from_bytes(bytes: [u8; 32]) -> Option<Self> {
        (!is_low_order(&bytes)).then_some(BoxPublicKey(bytes))
    }
    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// The key as lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for BoxPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BoxPublicKey({})", self.to_hex())
    }
}

/// Whether every X25519 result with `point` is zero. A clamped scalar is a multiple of the
/// cofactor 8, so it kills the small-order component of any point: the result is zero
/// exactly when the point has small order (the check libsodium makes after each scalar
/// multiplication), whatever the scalar.
pub fn is_low_order(point: &[u8; 32]) -> bool {
    const PROBE: [u8; 32] = [
        0x5d, 0xab, 0x08, 0x7e, 0x62, 0x4a, 0x8a, 0x4b, 0x79, 0xe1, 0x7f, 0x8b, 0x83, 0x80, 0x0e,
        0xe6, 0x6f, 0x3b, 0xb1, 0x29, 0x26, 0x18, 0xb6, 0xfd, 0x1c, 0x2f, 0x8b, 0x27, 0xff, 0x88,
        0xe0, 0xeb,
    ];
    x25519_dalek::x25519(PROBE, *point) == [0u8; 32]
}

/// Parses an X25519 public key given as hex (optional `0x`), refusing low-order points.
pub fn parse_x25519_public_hex(field: &str, text: &str) -> Result<BoxPublicKey, hexenc::HexError> {
    let bytes = hexenc::decode_array::<32>(field, text.trim())?;
    BoxPublicKey::from_bytes(bytes).ok_or_else(|| hexenc::HexError {
        field: field.to_string(),
        reason: LOW_ORDER_REASON,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let secret = Secret32::from_bytes([0xab; 32]);
        let shown = format!(
            "{:?} {:?} {:?} {:?}",
            secret,
            IdentityKey::from_secret(&secret).unwrap(),
            ChainKey::from_secret(&secret),
            BoxKey::from_secret(&secret)
        );
        assert!(!shown.to_lowercase().contains(&"ab".repeat(32)), "{shown}");
        assert!(!shown.contains("171, 171"), "{shown}");
    }

    /// The low-order points of Curve25519 (libsodium's blocklist: 0, 1, the two points of
    /// order 8, p - 1, and the non-canonical p and p + 1): all refused, and real keys accepted.
    #[test]
    fn low_order_public_keys_are_refused() {
        let mut low = vec![[0u8; 32]];
        let mut one = [0u8; 32];
        one[0] = 1;
        low.push(one);
        for hex_point in [
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ] {
            low.push(hex::decode(hex_point).unwrap().try_into().unwrap());
        }
        for point in &low {
            assert!(is_low_order(point), "{}", hex::encode(point));
            let err = parse_x25519_public_hex("owner", &hex::encode(point)).unwrap_err();
            assert!(err.to_string().starts_with("owner: a low-order"), "{err}");
        }
        for i in 1..50u8 {
            let key = BoxKey::from_secret(&Secret32::from_bytes([i; 32]));
            assert!(!is_low_order(&key.public_key()));
            assert!(parse_x25519_public_hex("k", &key.public_key_hex()).is_ok());
        }
    }

    #[test]
    fn parses_hex_secrets() {
        assert!(parse_secret_hex(&format!(" 0x{}\n", "0a".repeat(32))).is_some());
        assert!(parse_secret_hex(&"0a".repeat(31)).is_none());
        assert!(parse_secret_hex(&"zz".repeat(32)).is_none());
    }
}
