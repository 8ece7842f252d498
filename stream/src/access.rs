//! Buyer access (FORMATS.md §5): entries re-wrapping chunk keys for a buyer, and the
//! `peaq.stream.buyer-access.v1` files that carry them.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::chain::{self, ChunkEnvelope, DecryptError, KeyRecipient, RECIPIENT_ALGORITHM};
use crate::hexenc;
use crate::json::{self, Layout, Map, Value};
use crate::keys;
use crate::provider::{KeyAgreement, ProviderError};
use crate::sealed;

/// `schemaVersion` of buyer access files.
pub const BUYER_ACCESS_SCHEMA_VERSION: &str = "peaq.stream.buyer-access.v1";
/// Default size bound of one access file, in the reference's measure.
pub const DEFAULT_MAX_FILE_SIZE: usize = 512_000;

/// One chunk's key, sealed to the buyer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuyerAccessEntry {
    /// The `chunkId` of the chunk whose key this entry carries.
    #[serde(alias = "chunk_id")]
    pub chunk_id: String,
    /// The chunk key sealed to the buyer (`recipientType` `buyer`, `x25519-sealedbox`).
    pub buyer: KeyRecipient,
}

/// Who the buyer is: the id entries are matched by, and the X25519 key they are sealed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuyerIdentity {
    /// The buyer's `recipientId`: written into every entry, and how entries are found again.
    pub recipient_id: String,
    /// As given (written into entries and file names unchanged, like the reference).
    pub public_key_hex: String,
    /// Never a low-order point.
    pub public_key: keys::BoxPublicKey,
}

impl BuyerIdentity {
    /// The buyer `recipient_id` with the X25519 public key `public_key_hex` (32 bytes of hex,
    /// optional `0x`); both are trimmed of surrounding whitespace. Fails when the key is not
    /// 32 bytes of hex or is a low-order point.
    pub fn new(recipient_id: &str, public_key_hex: &str) -> Result<Self, crate::hexenc::HexError> {
        let public_key_hex = public_key_hex.trim();
        Ok(BuyerIdentity {
            recipient_id: recipient_id.trim().to_string(),
            public_key: keys::parse_x25519_public_hex("buyer public key", public_key_hex)?,
            public_key_hex: public_key_hex.to_string(),
        })
    }
}

/// A grant that could not be made for one chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// No entry of the chunk's `keyRecipients` is sealed to the granting key.
    #[error("chunk {index}: no key recipient is sealed to this key (public key {public_key})")]
    NoRecipient {
        /// The chunk's index.
        index: u64,
        /// The granting key's public key, as hex.
        public_key: String,
    },
    /// The granter's copy of the chunk key is not valid hex, does not open, or does not
    /// match the chunk's `keyCommitment`.
    #[error("chunk {index}: {source}")]
    Open {
        /// The chunk's index.
        index: u64,
        /// The check that failed.
        #[source]
        source: DecryptError,
    },
    /// Sealing the chunk key to the buyer's public key failed.
    #[error("chunk {index}: sealing to the buyer failed")]
    Seal {
        /// The chunk's index.
        index: u64,
    },
    /// The key agreement behind the granting key (a token, keyd's backend) failed.
    #[error("chunk {index}: {reason}")]
    Provider {
        /// The chunk's index.
        index: u64,
        /// The provider's error message.
        reason: String,
    },
}

/// Opens the chunk key with `key` (the recipient entry sealed to it; the key's secret may be
/// in a token), checks it against the chunk's commitment, and seals it to the buyer.
/// Nothing is re-encrypted.
pub fn grant_entry(
    chunk: &ChunkEnvelope,
    key: &dyn KeyAgreement,
    buyer: &BuyerIdentity,
) -> Result<BuyerAccessEntry, GrantError> {
    let index = chunk.index;
    let public = key.public_key();
    let recipient =
        chain::recipient_for(chunk, public.as_bytes()).ok_or_else(|| GrantError::NoRecipient {
            index,
            public_key: public.to_hex(),
        })?;
    let open = |source| GrantError::Open { index, source };
    let wrapped = hexenc::decode("wrappedKeyHex", &recipient.wrapped_key_hex)
        .map_err(|e| open(DecryptError::WrappedKeyHex(e.reason.to_string())))?;
    let chunk_key = sealed::open_key_with(&wrapped, public.as_bytes(), |epk| key.agree(epk))
        .map_err(|e: ProviderError| GrantError::Provider {
            index,
            reason: e.to_string(),
        })?
        .ok_or_else(|| open(DecryptError::Unwrap))?;
    if hexenc::key_commitment(chunk_key.expose()) != chunk.encryption.key_commitment {
        return Err(open(DecryptError::KeyCommitment));
    }
    let wrapped =
        sealed::seal_key(&chunk_key, &buyer.public_key).map_err(|_| GrantError::Seal { index })?;
    Ok(BuyerAccessEntry {
        chunk_id: chunk.chunk_id.clone(),
        buyer: KeyRecipient {
            recipient_id: buyer.recipient_id.clone(),
            recipient_type: "buyer".into(),
            algorithm: RECIPIENT_ALGORITHM.into(),
            public_key_hex: buyer.public_key_hex.clone(),
            wrapped_key_hex: hex::encode(wrapped),
        },
    })
}

/// One access file, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessFile {
    /// `{buyerPublicKeyHex}-{n}.json`, `n` counting from 1.
    pub file_name: String,
    /// Compact JSON, exactly as the reference writes it (no trailing newline).
    pub text: String,
    /// How many entries the file holds.
    pub entries: usize,
}

fn recipient_snake(r: &KeyRecipient) -> Value {
    let mut m = Map::new();
    m.insert("recipient_id".into(), r.recipient_id.clone().into());
    m.insert("recipient_type".into(), r.recipient_type.clone().into());
    m.insert("algorithm".into(), r.algorithm.clone().into());
    m.insert("public_key_hex".into(), r.public_key_hex.clone().into());
    m.insert("wrapped_key_hex".into(), r.wrapped_key_hex.clone().into());
    Value::Object(m)
}

fn compact(value: &Value) -> String {
    json::python_dumps(value, Layout::Compact).expect("access documents hold only strings")
}

/// The length of one entry in the reference's internal (snake_case) measure.
fn measured_entry_len(entry: &BuyerAccessEntry) -> usize {
    let mut m = Map::new();
    m.insert("chunk_id".into(), entry.chunk_id.clone().into());
    m.insert("buyer".into(), recipient_snake(&entry.buyer));
    m.insert("schema_version".into(), BUYER_ACCESS_SCHEMA_VERSION.into());
    compact(&Value::Object(m)).len()
}

/// The length of the reference's measure of a file without entries (`…"entries":[]}`).
fn measured_shell_len(buyer_public_key_hex: &str, file_index: usize) -> usize {
    let mut m = Map::new();
    m.insert("schema_version".into(), BUYER_ACCESS_SCHEMA_VERSION.into());
    m.insert(
        "file_name".into(),
        format!("{buyer_public_key_hex}-{file_index}.json").into(),
    );
    m.insert("buyer_public_key_hex".into(), buyer_public_key_hex.into());
    m.insert("entries".into(), Value::Array(vec![]));
    compact(&Value::Object(m)).len()
}

fn file_text(buyer_public_key_hex: &str, entries: &[BuyerAccessEntry]) -> String {
    let mut m = Map::new();
    m.insert("schemaVersion".into(), BUYER_ACCESS_SCHEMA_VERSION.into());
    m.insert("buyerPublicKeyHex".into(), buyer_public_key_hex.into());
    m.insert(
        "entries".into(),
        Value::Array(
            entries
                .iter()
                .map(|e| serde_json::to_value(e).expect("entries serialize"))
                .collect(),
        ),
    );
    compact(&Value::Object(m))
}

/// Packs entries into files named `{buyerPublicKeyHex}-{n}.json`, filled in order until the
/// next entry would pass `max_file_size` in the reference's measure; each file holds at
/// least one entry. Produces the same files as the reference, byte for byte.
pub fn pack_files(
    buyer_public_key_hex: &str,
    entries: &[BuyerAccessEntry],
    max_file_size: usize,
) -> Vec<AccessFile> {
    let mut files = Vec::new();
    let mut start = 0;
    let mut measured = 0; // sum of entry lengths + separating commas, of entries[start..i]
    for (i, entry) in entries.iter().enumerate() {
        let entry_len = measured_entry_len(entry);
        let with_entry = measured + entry_len + usize::from(i > start);
        let file_index = files.len() + 1;
        if i > start
            && measured_shell_len(buyer_public_key_hex, file_index) + with_entry > max_file_size
        {
            files.push(make_file(
                buyer_public_key_hex,
                file_index,
                &entries[start..i],
            ));
            start = i;
            measured = entry_len;
        } else {
            measured = with_entry;
        }
    }
    if start < entries.len() {
        files.push(make_file(
            buyer_public_key_hex,
            files.len() + 1,
            &entries[start..],
        ));
    }
    files
}

fn make_file(
    buyer_public_key_hex: &str,
    file_index: usize,
    entries: &[BuyerAccessEntry],
) -> AccessFile {
    AccessFile {
        file_name: format!("{buyer_public_key_hex}-{file_index}.json"),
        text: file_text(buyer_public_key_hex, entries),
        entries: entries.len(),
    }
}

/// An access directory that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum AccessReadError {
    /// The directory holds no `*.json` file; holds the directory.
    #[error("no buyer access files (*.json) in {0}")]
    Empty(String),
    /// The directory or one of its files could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The directory or file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a valid access file: not JSON, not an object, another `schemaVersion`,
    /// no `buyerPublicKeyHex` or `entries`, or an entry that does not parse or has an
    /// empty `chunkId`.
    #[error("access file {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads every `*.json` access file in `dir` and returns the entries of `buyer_id`,
/// by chunk id. Every entry of every file is validated, as the reference does.
pub fn read_access_dir(
    dir: &Path,
    buyer_id: &str,
) -> Result<HashMap<String, KeyRecipient>, AccessReadError> {
    let io = |path: &Path, source| AccessReadError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(AccessReadError::Empty(dir.display().to_string()));
    }
    let mut out = HashMap::new();
    for path in paths {
        let invalid = |reason: String| AccessReadError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
        let doc = json::parse_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let obj = doc
            .as_object()
            .ok_or_else(|| invalid("expected a JSON object".into()))?;
        match obj.get("schemaVersion").and_then(Value::as_str) {
            Some(BUYER_ACCESS_SCHEMA_VERSION) => {}
            other => {
                return Err(invalid(format!(
                "unsupported schemaVersion {other:?} (expected {BUYER_ACCESS_SCHEMA_VERSION:?})"
            )))
            }
        }
        if !obj.get("buyerPublicKeyHex").is_some_and(Value::is_string) {
            return Err(invalid("missing buyerPublicKeyHex".into()));
        }
        let entries = obj
            .get("entries")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("missing or invalid entries".into()))?;
        for (i, entry) in entries.iter().enumerate() {
            let entry: BuyerAccessEntry = serde_json::from_value(entry.clone())
                .map_err(|e| invalid(format!("entry {i}: {e}")))?;
            if entry.chunk_id.is_empty() {
                return Err(invalid(format!("entry {i}: empty chunkId")));
            }
            if entry.buyer.recipient_id == buyer_id {
                out.insert(entry.chunk_id, entry.buyer);
            }
        }
    }
    Ok(out)
}
