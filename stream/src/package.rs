//! Signed data packages (FORMATS.md §2): envelope, EIP-191 hash and signature, DID,
//! verification by public-key recovery.

use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
use sha3::{Digest, Keccak256};

use crate::json::{self, JsonError, Map, Value};

/// `did:peaq:` prefix of a machine DID.
pub const DID_PREFIX: &str = "did:peaq:";

/// Why a package document could not be read or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    /// The document is not a JSON object.
    #[error("package is not a JSON object")]
    NotAnObject,
    /// A required field is missing; holds its name.
    #[error("package field `{0}` is missing")]
    Missing(&'static str),
    /// A field has the wrong JSON type.
    #[error("package field `{field}` must be {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// The type it must have.
        expected: &'static str,
    },
    /// The DID is not `did:peaq:0x` followed by 40 hex digits; holds the DID.
    #[error("DID {0:?} is not did:peaq:0x followed by 40 hex digits")]
    BadDid(String),
    /// The signature is not 65 bytes of hex (optional `0x`).
    #[error("signature is not 65 bytes of hex (r, s, v)")]
    SignatureFormat,
    /// The signature recovers no public key: v is not 0, 1, 27 or 28, or r or s is invalid.
    #[error("signature does not recover a public key")]
    SignatureInvalid,
    /// The signature recovers a signer other than the DID's address.
    #[error("recovered signer {recovered} does not match the package DID {did}")]
    SignerMismatch {
        /// The recovered address, `0x` + lowercase hex.
        recovered: String,
        /// The package's DID.
        did: String,
    },
    /// The envelope cannot be written as canonical JSON (a non-finite number).
    #[error("envelope cannot be made canonical: {0}")]
    Canonical(#[from] JsonError),
}

/// The signed envelope as a JSON object: `{did, timestamp, schemaVersion, sequenceNumber, payload}`.
pub fn envelope(
    did: &str,
    timestamp: &Value,
    schema_version: &Value,
    sequence_number: &Value,
    payload: &Value,
) -> Value {
    let mut map = Map::with_capacity(5);
    map.insert("did".into(), Value::String(did.to_string()));
    map.insert("timestamp".into(), timestamp.clone());
    map.insert("schemaVersion".into(), schema_version.clone());
    map.insert("sequenceNumber".into(), sequence_number.clone());
    map.insert("payload".into(), payload.clone());
    Value::Object(map)
}

/// The canonical JSON of the envelope, written straight from its parts (keys in canonical
/// order: did, payload, schemaVersion, sequenceNumber, timestamp). Equal to
/// `json::canonical(&envelope(..))` without building or cloning anything.
pub fn canonical_envelope(
    did: &str,
    timestamp: &Value,
    schema_version: &Value,
    sequence_number: &Value,
    payload: &Value,
) -> Result<Vec<u8>, JsonError> {
    Ok(PackageParts {
        did,
        timestamp: &json::canonical(timestamp)?,
        schema_version: &json::canonical(schema_version)?,
        sequence_number: &json::canonical(sequence_number)?,
        payload: &json::canonical(payload)?,
    }
    .envelope())
}

/// The parts of a package as canonical JSON texts, written once and laid out twice: as the
/// signed envelope and as the package's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageParts<'a> {
    /// The DID (a plain string, escaped when written).
    pub did: &'a str,
    /// Canonical JSON of `timestamp`.
    pub timestamp: &'a str,
    /// Canonical JSON of `schemaVersion`.
    pub schema_version: &'a str,
    /// Canonical JSON of `sequenceNumber`.
    pub sequence_number: &'a str,
    /// Canonical JSON of the payload.
    pub payload: &'a str,
}

impl PackageParts<'_> {
    /// The canonical envelope the signature covers (keys in canonical order: did, payload,
    /// schemaVersion, sequenceNumber, timestamp).
    pub fn envelope(&self) -> Vec<u8> {
        let mut out = String::with_capacity(self.payload.len() + 160);
        out.push_str("{\"did\":");
        json::write_string(self.did, &mut out);
        out.push_str(",\"payload\":");
        out.push_str(self.payload);
        out.push_str(",\"schemaVersion\":");
        out.push_str(self.schema_version);
        out.push_str(",\"sequenceNumber\":");
        out.push_str(self.sequence_number);
        out.push_str(",\"timestamp\":");
        out.push_str(self.timestamp);
        out.push('}');
        out.into_bytes()
    }

    /// The package as one JSON line (keys in document order, payload canonical), with its
    /// signature and `signingKeyId`.
    pub fn line(&self, signature: &str, signing_key_id: Option<&str>) -> String {
        let mut out = String::with_capacity(self.payload.len() + 320);
        out.push_str("{\"did\":");
        json::write_string(self.did, &mut out);
        out.push_str(",\"timestamp\":");
        out.push_str(self.timestamp);
        out.push_str(",\"schemaVersion\":");
        out.push_str(self.schema_version);
        out.push_str(",\"sequenceNumber\":");
        out.push_str(self.sequence_number);
        out.push_str(",\"payload\":");
        out.push_str(self.payload);
        out.push_str(",\"signature\":");
        json::write_string(signature, &mut out);
        out.push_str(",\"signingKeyId\":");
        match signing_key_id {
            Some(id) => json::write_string(id, &mut out),
            None => out.push_str("null"),
        }
        out.push('}');
        out
    }
}

/// `keccak256("\x19Ethereum Signed Message:\n" + len(message) + message)`.
pub fn eip191_hash(message: &[u8]) -> [u8; 32] {
    let mut hasher = Keccak256::new();
    hasher.update(b"\x19Ethereum Signed Message:\n");
    hasher.update(message.len().to_string().as_bytes());
    hasher.update(message);
    hasher.finalize().into()
}

/// EIP-191 `personal_sign`: r ‖ s ‖ v, low-s, v = 27 or 28, deterministic (RFC 6979).
pub fn sign_eip191(key: &SigningKey, message: &[u8]) -> [u8; 65] {
    sign_eip191_prehash(key, &eip191_hash(message))
}

/// Signs an EIP-191 digest already computed by [`eip191_hash`].
pub fn sign_eip191_prehash(key: &SigningKey, digest: &[u8; 32]) -> [u8; 65] {
    // k256 signs with RFC 6979 and normalizes s to the low half, adjusting the recovery id.
    let (signature, recovery_id) = key
        .sign_prehash_recoverable(digest)
        .expect("a 32-byte prehash is always signable");
    let mut out = [0u8; 65];
    out[..64].copy_from_slice(&signature.to_bytes());
    out[64] = 27 + recovery_id.to_byte();
    out
}

/// The recovery id of a signature made by `public` over `digest`, computed directly as the
/// y-parity of R = (z/s)·G + (r/s)·Q: one linear combination instead of trial recoveries.
/// For signers that return only r ‖ s (PKCS#11 tokens). `None` if the signature is not
/// `public`'s over `digest`, or in the negligible case x(R) ≥ n (callers may then try both).
/// A signer that answers for one key many times builds a [`SignerTable`] instead.
pub fn recovery_id_for(
    digest: &[u8; 32],
    signature: &Signature,
    public: &VerifyingKey,
) -> Option<RecoveryId> {
    use k256::elliptic_curve::ops::LinearCombination;
    use k256::ProjectivePoint;

    let (u1, u2, r) = recovery_scalars(digest, signature)?;
    let q = ProjectivePoint::from(*public.as_affine());
    recovery_id_of(
        ProjectivePoint::lincomb(&ProjectivePoint::GENERATOR, &u1, &q, &u2),
        &r,
    )
}

/// (z/s, r/s, r) of a signature; `None` if s has no inverse.
fn recovery_scalars(
    digest: &[u8; 32],
    signature: &Signature,
) -> Option<(k256::Scalar, k256::Scalar, k256::Scalar)> {
    use k256::elliptic_curve::ops::Reduce;
    use k256::{Scalar, U256};

    let z = <Scalar as Reduce<U256>>::reduce_bytes(digest.into());
    let (r, s) = signature.split_scalars();
    let (r, s): (Scalar, Scalar) = (*r.as_ref(), *s.as_ref());
    let s_inv = Option::<Scalar>::from(s.invert())?;
    Some((z * s_inv, r * s_inv, r))
}

/// R's y-parity, if x(R) is r (the signature is the key's over the digest).
fn recovery_id_of(point: k256::ProjectivePoint, r: &k256::Scalar) -> Option<RecoveryId> {
    use k256::elliptic_curve::ops::Reduce;
    use k256::elliptic_curve::point::AffineCoordinates;
    use k256::{Scalar, U256};

    let point = point.to_affine();
    if <Scalar as Reduce<U256>>::reduce_bytes(&point.x()) != *r {
        return None;
    }
    Some(RecoveryId::new(point.y_is_odd().into(), false))
}

/// One public key's multiples j·16^i·Q (every 4-bit window i, every digit j), computed once
/// (about 1.5 ms, 85 KiB) so that [`SignerTable::recovery_id`] needs no doublings: u1·G
/// from k256's generator table plus 64 additions for u2·Q, about half the cost of the
/// linear combination [`recovery_id_for`] makes. Everything it touches is public (the key,
/// the digest, the signature), so the table lookups need not be constant-time.
pub struct SignerTable {
    rows: Vec<[k256::AffinePoint; 15]>,
}

impl SignerTable {
    /// The table of `public`.
    pub fn new(public: &VerifyingKey) -> SignerTable {
        use k256::elliptic_curve::group::Curve;
        use k256::{AffinePoint, ProjectivePoint};

        let mut rows = Vec::with_capacity(64);
        let mut base = ProjectivePoint::from(*public.as_affine());
        for _ in 0..64 {
            let mut multiples = [ProjectivePoint::IDENTITY; 15];
            let mut next = base;
            for m in multiples.iter_mut() {
                *m = next;
                next += base;
            }
            let mut row = [AffinePoint::IDENTITY; 15];
            ProjectivePoint::batch_normalize(&multiples, &mut row);
            rows.push(row);
            base = next; // 16 · base
        }
        SignerTable { rows }
    }

    /// As [`recovery_id_for`] with this table's key.
    pub fn recovery_id(&self, digest: &[u8; 32], signature: &Signature) -> Option<RecoveryId> {
        use k256::elliptic_curve::ops::MulByGenerator;
        use k256::ProjectivePoint;

        let (u1, u2, r) = recovery_scalars(digest, signature)?;
        let bytes = u2.to_bytes(); // big-endian
        let mut u2q = ProjectivePoint::IDENTITY;
        for (i, row) in self.rows.iter().enumerate() {
            let byte = bytes[31 - i / 2];
            let digit = usize::from(if i % 2 == 0 { byte & 15 } else { byte >> 4 });
            if digit != 0 {
                u2q += row[digit - 1];
            }
        }
        recovery_id_of(ProjectivePoint::mul_by_generator(&u1) + u2q, &r)
    }
}

impl std::fmt::Debug for SignerTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignerTable")
    }
}

/// `0x` + hex of a 65-byte signature.
pub fn signature_hex(signature: &[u8; 65]) -> String {
    format!("0x{}", hex::encode(signature))
}

/// The 20-byte Ethereum address of a secp256k1 public key.
pub fn address_of(key: &VerifyingKey) -> [u8; 20] {
    let point = key.to_encoded_point(false);
    let digest = Keccak256::digest(&point.as_bytes()[1..]);
    let mut address = [0u8; 20];
    address.copy_from_slice(&digest[12..]);
    address
}

/// `did:peaq:0x` + lowercase hex address.
pub fn did_of_address(address: &[u8; 20]) -> String {
    format!("{DID_PREFIX}0x{}", hex::encode(address))
}

/// The address in a `did:peaq:0x…` DID (hex digits of either case), if well formed.
pub fn address_of_did(did: &str) -> Option<[u8; 20]> {
    let hex_part = did.strip_prefix(DID_PREFIX)?.strip_prefix("0x")?;
    if hex_part.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

/// Recovers the signer's address from an EIP-191 signature over `message`.
/// Accepts what the reference accepts: optional `0x`, v in {0, 1, 27, 28}, high s.
pub fn recover_signer(message: &[u8], signature: &str) -> Result<[u8; 20], PackageError> {
    let body = signature.strip_prefix("0x").unwrap_or(signature);
    let mut raw = [0u8; 65];
    hex::decode_to_slice(body, &mut raw).map_err(|_| PackageError::SignatureFormat)?;
    let v = match raw[64] {
        0 | 27 => 0u8,
        1 | 28 => 1u8,
        _ => return Err(PackageError::SignatureInvalid),
    };
    let mut signature =
        Signature::from_slice(&raw[..64]).map_err(|_| PackageError::SignatureInvalid)?;
    let mut parity = v;
    if let Some(low) = signature.normalize_s() {
        signature = low;
        parity ^= 1;
    }
    let recovery_id = RecoveryId::from_byte(parity).ok_or(PackageError::SignatureInvalid)?;
    let key = VerifyingKey::recover_from_prehash(&eip191_hash(message), &signature, recovery_id)
        .map_err(|_| PackageError::SignatureInvalid)?;
    Ok(address_of(&key))
}

/// A signed data package document:
/// `{did, timestamp, schemaVersion, sequenceNumber, payload, signature, signingKeyId}`.
///
/// `timestamp`, `schemaVersion`, `sequenceNumber` and `payload` are kept as the JSON they
/// were read as, so that verification canonicalizes exactly what was signed.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPackage {
    /// The signing machine's DID, `did:peaq:0x` + its address.
    pub did: String,
    /// `timestamp` (a free string as we write it).
    pub timestamp: Value,
    /// `schemaVersion` (a free string as we write it).
    pub schema_version: Value,
    /// `sequenceNumber` (`1.0` is not `1`).
    pub sequence_number: Value,
    /// The message's fields after the field rules.
    pub payload: Value,
    /// `0x` + hex of r ‖ s ‖ v (65 bytes): EIP-191 over the canonical envelope.
    pub signature: String,
    /// `signingKeyId`, the signing key's id: not signed; null when absent.
    pub signing_key_id: Option<String>,
}

impl DataPackage {
    /// Reads a package document (camelCase, as FORMATS.md §2 writes it).
    pub fn from_value(value: &Value) -> Result<Self, PackageError> {
        let map = value.as_object().ok_or(PackageError::NotAnObject)?;
        let get = |field: &'static str| map.get(field).ok_or(PackageError::Missing(field));
        let string = |field: &'static str| -> Result<String, PackageError> {
            get(field)?
                .as_str()
                .map(str::to_string)
                .ok_or(PackageError::WrongType {
                    field,
                    expected: "a string",
                })
        };
        let signing_key_id = match map.get("signingKeyId") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(PackageError::WrongType {
                    field: "signingKeyId",
                    expected: "a string",
                })
            }
        };
        Ok(DataPackage {
            did: string("did")?,
            timestamp: get("timestamp")?.clone(),
            schema_version: get("schemaVersion")?.clone(),
            sequence_number: get("sequenceNumber")?.clone(),
            payload: get("payload")?.clone(),
            signature: string("signature")?,
            signing_key_id,
        })
    }

    /// The document as JSON, keys in the reference's order.
    pub fn to_value(&self) -> Value {
        let mut map = Map::with_capacity(7);
        map.insert("did".into(), Value::String(self.did.clone()));
        map.insert("timestamp".into(), self.timestamp.clone());
        map.insert("schemaVersion".into(), self.schema_version.clone());
        map.insert("sequenceNumber".into(), self.sequence_number.clone());
        map.insert("payload".into(), self.payload.clone());
        map.insert("signature".into(), Value::String(self.signature.clone()));
        map.insert(
            "signingKeyId".into(),
            self.signing_key_id
                .clone()
                .map_or(Value::Null, Value::String),
        );
        Value::Object(map)
    }

    /// One JSON line: keys in document order, payload in canonical form.
    pub fn to_json_line(&self) -> Result<String, JsonError> {
        Ok(PackageParts {
            did: &self.did,
            timestamp: &json::canonical(&self.timestamp)?,
            schema_version: &json::canonical(&self.schema_version)?,
            sequence_number: &json::canonical(&self.sequence_number)?,
            payload: &json::canonical(&self.payload)?,
        }
        .line(&self.signature, self.signing_key_id.as_deref()))
    }

    /// The canonical envelope bytes that the signature covers.
    pub fn envelope_bytes(&self) -> Result<Vec<u8>, JsonError> {
        canonical_envelope(
            &self.did,
            &self.timestamp,
            &self.schema_version,
            &self.sequence_number,
            &self.payload,
        )
    }

    /// Verifies as the reference does: recover the signer and compare with the DID's address.
    pub fn verify(&self) -> Result<(), PackageError> {
        let expected =
            address_of_did(&self.did).ok_or_else(|| PackageError::BadDid(self.did.clone()))?;
        let message = self.envelope_bytes()?;
        let recovered = recover_signer(&message, &self.signature)?;
        if recovered != expected {
            return Err(PackageError::SignerMismatch {
                recovered: format!("0x{}", hex::encode(recovered)),
                did: self.did.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    fn key() -> SigningKey {
        SigningKey::from_slice(&[7u8; 32]).unwrap()
    }

    #[test]
    fn sign_and_verify_round_trip_low_s() {
        let key = key();
        let did = did_of_address(&address_of(key.verifying_key()));
        for seq in 0..64u64 {
            let payload = parse(&format!(r#"{{"x":{seq},"y":"é"}}"#)).unwrap();
            let env = envelope(
                &did,
                &Value::String("2026-01-01T00:00:00Z".into()),
                &Value::String("1".into()),
                &Value::from(seq),
                &payload,
            );
            let bytes = json::canonical_bytes(&env).unwrap();
            assert_eq!(
                bytes,
                canonical_envelope(
                    &did,
                    &env["timestamp"],
                    &env["schemaVersion"],
                    &env["sequenceNumber"],
                    &payload
                )
                .unwrap()
            );
            let sig = sign_eip191(&key, &bytes);
            assert!(sig[64] == 27 || sig[64] == 28);
            let s = Signature::from_slice(&sig[..64]).unwrap();
            assert!(s.normalize_s().is_none(), "s must be low");
            let package = DataPackage {
                did: did.clone(),
                timestamp: Value::String("2026-01-01T00:00:00Z".into()),
                schema_version: Value::String("1".into()),
                sequence_number: Value::from(seq),
                payload,
                signature: signature_hex(&sig),
                signing_key_id: Some("k".into()),
            };
            package.verify().unwrap();
            let reparsed =
                DataPackage::from_value(&parse(&package.to_json_line().unwrap()).unwrap()).unwrap();
            reparsed.verify().unwrap();
        }
    }

    #[test]
    fn tampering_is_caught() {
        let key = key();
        let did = did_of_address(&address_of(key.verifying_key()));
        let payload = parse(r#"{"a":1}"#).unwrap();
        let env = envelope(&did, &"t".into(), &"1".into(), &Value::from(1u8), &payload);
        let sig = signature_hex(&sign_eip191(&key, &json::canonical_bytes(&env).unwrap()));
        let mut package = DataPackage {
            did: did.clone(),
            timestamp: "t".into(),
            schema_version: "1".into(),
            sequence_number: Value::from(1u8),
            payload,
            signature: sig,
            signing_key_id: None,
        };
        package.verify().unwrap();
        // 1.0 is not 1.
        package.sequence_number = parse("1.0").unwrap();
        assert!(matches!(
            package.verify(),
            Err(PackageError::SignerMismatch { .. })
        ));
        package.sequence_number = Value::from(1u8);
        // The DID is part of what is signed: another spelling is another message.
        package.did = did.to_uppercase().replace("DID:PEAQ:0X", "did:peaq:0x");
        assert!(matches!(
            package.verify(),
            Err(PackageError::SignerMismatch { .. })
        ));
        package.did = "did:peaq:0x1234".into();
        assert!(matches!(package.verify(), Err(PackageError::BadDid(_))));
    }

    #[test]
    fn direct_recovery_ids_match_k256s() {
        for i in 1..=64u8 {
            let key = SigningKey::from_slice(&[i; 32]).unwrap();
            let digest = eip191_hash(&[i, 7, 42]);
            let (signature, id) = key.sign_prehash_recoverable(&digest).unwrap();
            assert_eq!(
                recovery_id_for(&digest, &signature, key.verifying_key()),
                Some(id),
                "key {i}"
            );
            // High s (as tokens return half the time): the normalized form recovers.
            let (r, s) = signature.split_scalars();
            let high = Signature::from_scalars(r, -*s.as_ref()).unwrap();
            let low = high.normalize_s().unwrap();
            assert_eq!(
                recovery_id_for(&digest, &low, key.verifying_key()),
                Some(id)
            );
            let other = SigningKey::from_slice(&[i.wrapping_add(100); 32]).unwrap();
            assert_eq!(
                recovery_id_for(&digest, &signature, other.verifying_key()),
                None
            );
        }
    }

    #[test]
    fn signer_tables_give_the_direct_recovery_ids() {
        for i in 1..=16u8 {
            let key = SigningKey::from_slice(&[i; 32]).unwrap();
            let table = SignerTable::new(key.verifying_key());
            let other = SignerTable::new(
                SigningKey::from_slice(&[i ^ 0x80; 32])
                    .unwrap()
                    .verifying_key(),
            );
            for m in 0..16u8 {
                let digest = eip191_hash(&[i, m]);
                let (signature, id) = key.sign_prehash_recoverable(&digest).unwrap();
                assert_eq!(
                    table.recovery_id(&digest, &signature),
                    Some(id),
                    "key {i}, message {m}"
                );
                let (r, s) = signature.split_scalars();
                let low = Signature::from_scalars(r, -*s.as_ref())
                    .unwrap()
                    .normalize_s()
                    .unwrap();
                assert_eq!(table.recovery_id(&digest, &low), Some(id));
                assert_eq!(other.recovery_id(&digest, &signature), None);
                assert_eq!(
                    table.recovery_id(&eip191_hash(&[i, m, 1]), &signature),
                    None
                );
            }
        }
    }

    #[test]
    fn accepts_v01_and_high_s_like_the_reference() {
        let key = key();
        let message = b"hello";
        let sig = sign_eip191(&key, message);
        let expected = address_of(key.verifying_key());
        let mut v01 = sig;
        v01[64] -= 27;
        assert_eq!(
            recover_signer(message, &hex::encode(v01)).unwrap(),
            expected
        );
        // Flip to high s: s' = n - s, parity flips.
        let s = Signature::from_slice(&sig[..64]).unwrap();
        let (r, s_scalar) = s.split_scalars();
        let high = Signature::from_scalars(r, -*s_scalar.as_ref()).unwrap();
        let mut raw = [0u8; 65];
        raw[..64].copy_from_slice(&high.to_bytes());
        raw[64] = if sig[64] == 27 { 28 } else { 27 };
        assert_eq!(
            recover_signer(message, &hex::encode(raw)).unwrap(),
            expected
        );
    }
}
