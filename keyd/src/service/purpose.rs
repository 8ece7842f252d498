//! What each key may sign (DESIGN: purpose-bound keys). keyd never signs an arbitrary digest.

use stream::hexenc;
use stream::json::{self, PyNumber, Value};

use crate::ledger::Pair;

/// The identity key's purpose: canonical JSON of exactly
/// `{did, timestamp, schemaVersion, sequenceNumber, payload}` with keyd's own DID, string
/// timestamp and schema version, and a non-negative integer sequence number. Returns it.
pub fn check_envelope(bytes: &[u8], did: &str) -> Result<u64, String> {
    let value = json::parse_slice(bytes).map_err(|_| "not JSON".to_string())?;
    let Value::Object(map) = &value else {
        return Err("not a JSON object".into());
    };
    const KEYS: [&str; 5] = [
        "did",
        "payload",
        "schemaVersion",
        "sequenceNumber",
        "timestamp",
    ];
    let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != KEYS {
        return Err(format!("must hold exactly the keys {KEYS:?}"));
    }
    if json::canonical_bytes(&value).ok().as_deref() != Some(bytes) {
        return Err("not in canonical form".into());
    }
    if map["did"].as_str() != Some(did) {
        return Err(format!("did is not this machine's DID {did}"));
    }
    if !map["timestamp"].is_string() || !map["schemaVersion"].is_string() {
        return Err("timestamp and schemaVersion must be strings".into());
    }
    match &map["sequenceNumber"] {
        Value::Number(n) => match json::py_number(n) {
            PyNumber::Int(text) if !text.starts_with('-') => text
                .parse::<u64>()
                .map_err(|_| "sequenceNumber does not fit in 64 bits".to_string()),
            _ => Err("sequenceNumber must be a non-negative integer".into()),
        },
        _ => Err("sequenceNumber must be a non-negative integer".into()),
    }
}

/// What a dataset signature lists, for its audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedDataset {
    pub topic: String,
    pub first_index: u64,
    pub last_index: u64,
    pub merkle_root: String,
}

/// The identity key's other purpose: the canonical JSON of a `peaq.stream.dataset.v1`
/// document without its `signature`, well formed (its range, root and hashes), carrying
/// keyd's own DID as `machineDid` and keyd's chain key as `chainPublicKeyHex`.
pub fn check_dataset(
    bytes: &[u8],
    did: &str,
    chain_key_hex: &str,
) -> Result<ListedDataset, String> {
    let value = json::parse_slice(bytes).map_err(|_| "not JSON".to_string())?;
    if json::canonical_bytes(&value).ok().as_deref() != Some(bytes) {
        return Err("not in canonical form".into());
    }
    if value.get("signature").is_some() {
        return Err("must not hold a signature: keyd signs the document without it".into());
    }
    let doc = stream::dataset::DatasetDocument::from_value(value).map_err(|e| e.to_string())?;
    if !doc.machine_did.eq_ignore_ascii_case(did) {
        return Err(format!("machineDid is not this machine's DID {did}"));
    }
    if doc.chain_public_key_hex != chain_key_hex {
        return Err(format!(
            "chainPublicKeyHex is not this machine's chain key {chain_key_hex}"
        ));
    }
    Ok(ListedDataset {
        topic: doc.topic,
        first_index: doc.first_index,
        last_index: doc.last_index,
        merkle_root: doc.merkle_root,
    })
}

/// The chain key's purpose: an `encryptedDataHash` (`0x` + 64 lowercase hex digits), with the
/// `keyCommitment` (`sha256:` + 64 lowercase hex digits) of the chunk's key. Returns the pair
/// as the ledger stores it.
pub fn chunk_pair(hash: &str, commitment: &str) -> Result<Pair, String> {
    if !hexenc::is_0x_sha256_lower(hash) {
        return Err("the chain key signs only \"0x\" + 64 lowercase hex digits".into());
    }
    let digits = commitment
        .strip_prefix("sha256:")
        .filter(|d| d.len() == 64 && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or("keyCommitment must be \"sha256:\" + 64 lowercase hex digits")?;
    let mut pair = ([0u8; 32], [0u8; 32]);
    hex::decode_to_slice(&hash[2..], &mut pair.0).map_err(|_| "hash is not hex".to_string())?;
    hex::decode_to_slice(digits, &mut pair.1)
        .map_err(|_| "keyCommitment is not hex".to_string())?;
    Ok(pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DID: &str = "did:peaq:0x00000000000000000000000000000000000000aa";

    #[test]
    fn the_identity_key_signs_only_canonical_envelopes_of_its_did() {
        let good = format!(
            r#"{{"did":"{DID}","payload":{{"a":1}},"schemaVersion":"1","sequenceNumber":7,"timestamp":"t"}}"#
        );
        assert_eq!(check_envelope(good.as_bytes(), DID), Ok(7));
        let spaced = good.replace(',', ", ");
        assert!(check_envelope(spaced.as_bytes(), DID)
            .unwrap_err()
            .contains("canonical"));
        let foreign = good.replace("aa\"", "ab\"");
        assert!(check_envelope(foreign.as_bytes(), DID)
            .unwrap_err()
            .contains("DID"));
        let extra = good.replace("\"timestamp\"", "\"topic\":\"x\",\"timestamp\"");
        assert!(check_envelope(extra.as_bytes(), DID)
            .unwrap_err()
            .contains("exactly"));
        let float = good.replace(":7,", ":7.0,");
        assert!(check_envelope(float.as_bytes(), DID)
            .unwrap_err()
            .contains("integer"));
        assert!(check_envelope(&[0x19, 0x45, 0x74, 0x68], DID).is_err());
        let tx = br#"{"nonce":1,"to":"0x00","value":1000}"#;
        assert!(check_envelope(tx, DID).is_err());
    }

    #[test]
    fn the_identity_key_signs_only_datasets_of_its_did_and_chain() {
        let key = "ab".repeat(32);
        let root = format!("0x{}", "01".repeat(32));
        let id = format!("0x{}", "02".repeat(32));
        let doc = |did: &str, key: &str, size: u64| {
            let value = serde_json::json!({
                "schemaVersion": "peaq.stream.dataset.v1", "machineDid": did, "topic": "/imu",
                "firstIndex": 3, "lastIndex": 4, "treeSize": size, "merkleRoot": root,
                "firstChunkId": id, "lastChunkId": id, "chainPublicKeyHex": key,
                "createdAt": "2026-12-01T10:00:00Z",
            });
            json::canonical_bytes(&value).unwrap()
        };
        let listed = check_dataset(&doc(DID, &key, 2), DID, &key).unwrap();
        assert_eq!((listed.first_index, listed.last_index), (3, 4));
        let foreign = DID.replace("aa", "ab");
        assert!(check_dataset(&doc(&foreign, &key, 2), DID, &key)
            .unwrap_err()
            .contains("DID"));
        assert!(check_dataset(&doc(DID, &"cd".repeat(32), 2), DID, &key)
            .unwrap_err()
            .contains("chain key"));
        assert!(check_dataset(&doc(DID, &key, 5), DID, &key)
            .unwrap_err()
            .contains("treeSize"));
        let spaced = String::from_utf8(doc(DID, &key, 2))
            .unwrap()
            .replace(',', ", ");
        assert!(check_dataset(spaced.as_bytes(), DID, &key)
            .unwrap_err()
            .contains("canonical"));
        // A package envelope, or anything else, is not a dataset.
        let envelope = format!(
            r#"{{"did":"{DID}","payload":{{"a":1}},"schemaVersion":"1","sequenceNumber":7,"timestamp":"t"}}"#
        );
        assert!(check_dataset(envelope.as_bytes(), DID, &key).is_err());
    }

    #[test]
    fn the_chain_key_signs_only_hashes_with_their_commitment() {
        let hash = hexenc::sha256_0x(b"x");
        let commitment = hexenc::key_commitment(&[1; 32]);
        assert!(chunk_pair(&hash, &commitment).is_ok());
        assert!(chunk_pair(&hash.to_uppercase(), &commitment).is_err());
        assert!(chunk_pair("hello", &commitment).is_err());
        assert!(chunk_pair(&hash, "").unwrap_err().contains("keyCommitment"));
        assert!(chunk_pair(&hash, &commitment.replace("sha256:", "0x")).is_err());
    }
}
