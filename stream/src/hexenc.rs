//! Hex and hash spellings used by the formats (FORMATS.md §4: each field has its own).

use sha2::{Digest, Sha256};

/// A hex string that does not decode, named by the field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct HexError {
    /// The field the text came from.
    pub field: String,
    /// What is wrong with the text.
    pub reason: &'static str,
}

/// Decodes hex with an optional `0x` prefix (either case of digits), as the reference does.
pub fn decode(field: &str, text: &str) -> Result<Vec<u8>, HexError> {
    let body = text.strip_prefix("0x").unwrap_or(text);
    if body.is_empty() || !body.len().is_multiple_of(2) {
        return Err(HexError {
            field: field.to_string(),
            reason: "expected an even-length, non-empty hex string",
        });
    }
    hex::decode(body).map_err(|_| HexError {
        field: field.to_string(),
        reason: "expected hexadecimal digits only",
    })
}

/// Decodes hex into exactly `N` bytes.
pub fn decode_array<const N: usize>(field: &str, text: &str) -> Result<[u8; N], HexError> {
    let bytes = decode(field, text)?;
    bytes.try_into().map_err(|_| HexError {
        field: field.to_string(),
        reason: match N {
            32 => "expected 32 bytes (64 hex digits)",
            64 => "expected 64 bytes (128 hex digits)",
            65 => "expected 65 bytes (130 hex digits)",
            _ => "wrong length",
        },
    })
}

/// `0x` + lowercase sha256 hex.
pub fn sha256_0x(data: &[u8]) -> String {
    prefixed_hex("0x", &Sha256::digest(data))
}

/// `0x` + lowercase hex of a finished digest.
pub fn digest_0x(digest: &[u8]) -> String {
    prefixed_hex("0x", digest)
}

/// `sha256:` + lowercase sha256 hex of a chunk key.
pub fn key_commitment(key: &[u8; 32]) -> String {
    prefixed_hex("sha256:", &Sha256::digest(key))
}

fn prefixed_hex(prefix: &str, bytes: &[u8]) -> String {
    let mut s = String::with_capacity(prefix.len() + bytes.len() * 2);
    s.push_str(prefix);
    s.push_str(&hex::encode(bytes));
    s
}

/// `chunkId` = `0x` + sha256 hex of `"{previous or ''}|{encryptedDataHash}|{index}"`.
pub fn chunk_id(previous: Option<&str>, encrypted_data_hash: &str, index: u64) -> String {
    let material = format!(
        "{}|{}|{}",
        previous.unwrap_or(""),
        encrypted_data_hash,
        index
    );
    sha256_0x(material.as_bytes())
}

/// True when `s` is `0x` followed by exactly 64 lowercase hex digits.
pub fn is_0x_sha256_lower(s: &str) -> bool {
    s.len() == 66
        && s.starts_with("0x")
        && s[2..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        assert_eq!(
            sha256_0x(b""),
            "0xe3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(key_commitment(&[0; 32]).starts_with("sha256:66687aad"));
        assert!(is_0x_sha256_lower(&sha256_0x(b"x")));
        assert!(!is_0x_sha256_lower(&sha256_0x(b"x").to_uppercase()));
        assert_eq!(decode("f", "0x0aFF").unwrap(), vec![10, 255]);
        assert!(decode("f", "0x").is_err());
        assert!(decode("f", "abc").is_err());
        assert!(decode_array::<32>("f", "00").is_err());
    }
}
