//! The published directory: `chunk-{i}.json`, `chunk-{i}.bin`, `manifest.json`.
//!
//! Every file is written atomically (temporary file in the same directory, then rename),
//! so a reader never sees half a file; `.bin` before `.json`, so an envelope on disk
//! always has its ciphertext.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::chain::{ChunkEnvelope, EnvelopeError, CHUNK_SCHEMA_VERSION};
use crate::json::{self, Layout};

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// [`CHUNK_SCHEMA_VERSION`], as in the chunk envelopes.
    pub schema_version: String,
    /// `sourceHash`: `0x` + sha256 hex of the whole input (every chunk's plaintext, in order).
    pub source_hash: String,
    /// How many chunks the chain has.
    pub total_chunks: u64,
    /// The bytes per chunk the input was cut into (the last chunk may be shorter).
    pub chunk_size: u64,
    /// The DID of the machine whose chain it is.
    pub machine_did: String,
    /// When the manifest was made, in UTC (`%Y-%m-%dT%H:%M:%SZ` as this crate writes it).
    pub created_at: String,
    /// `s3Bucket`: the bucket the chain was uploaded to, added after `createdAt` by an
    /// upload (as the reference's `publish --s3` adds it); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_bucket: Option<String>,
    /// `s3Prefix`: the key prefix in that bucket (empty or ending with `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_prefix: Option<String>,
}

impl Manifest {
    /// A manifest of [`CHUNK_SCHEMA_VERSION`], created now.
    pub fn new(
        source_hash: String,
        total_chunks: u64,
        chunk_size: u64,
        machine_did: String,
    ) -> Self {
        Manifest {
            schema_version: CHUNK_SCHEMA_VERSION.into(),
            source_hash,
            total_chunks,
            chunk_size,
            machine_did,
            created_at: utc_now_iso8601(),
            s3_bucket: None,
            s3_prefix: None,
        }
    }

    /// Reads the bytes of a `manifest.json`; the error says what is wrong (the caller
    /// names the file or message).
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let value = json::parse_slice(bytes).map_err(|e| e.to_string())?;
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    /// `json.dumps(manifest, indent=2) + "\n"`.
    pub fn to_file_text(&self) -> String {
        let value = serde_json::to_value(self).expect("a manifest always serializes");
        let mut text =
            json::python_dumps(&value, Layout::Indent2).expect("a manifest holds no floats");
        text.push('\n');
        text
    }
}

/// `%Y-%m-%dT%H:%M:%SZ` of the current UTC time.
pub fn utc_now_iso8601() -> String {
    utc_iso8601(std::time::SystemTime::now(), false)
}

/// `%Y-%m-%dT%H:%M:%SZ` (or `…%S.ffffffZ` with `micros`) of a UTC time.
pub fn utc_iso8601(time: std::time::SystemTime, micros: bool) -> String {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let fraction = if micros {
        format!(".{:06}", since.subsec_micros())
    } else {
        String::new()
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// A published directory that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A file or the directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A `chunk-{i}.json` is not a valid chunk envelope.
    #[error("{path}: {source}")]
    Envelope {
        /// The envelope file.
        path: String,
        /// Why it is not valid.
        #[source]
        source: EnvelopeError,
    },
    /// `manifest.json` is not a valid manifest, or an envelope cannot be written as JSON.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The directory holds no `chunk-*.json`; holds the directory.
    #[error("no chunk files (chunk-*.json) in {0}")]
    NoChunks(String),
    /// Another output of the chain (an upload) failed.
    #[error("{to}: {reason}")]
    Output {
        /// Where the chain was going (`s3://bucket/prefix`).
        to: String,
        /// What failed.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub use crate::fsio::Durability;

/// Writes `bytes` to `dir/name` atomically ([`crate::fsio::write_atomic`]).
pub fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    durability: Durability,
) -> Result<(), LayoutError> {
    let target = dir.join(name);
    crate::fsio::write_atomic(&target, bytes, durability).map_err(io_error(&target))
}

/// Writes one chunk: `chunk-{i}.bin`, then `chunk-{i}.json`.
pub fn write_chunk(
    dir: &Path,
    envelope: &ChunkEnvelope,
    ciphertext: &[u8],
    durability: Durability,
) -> Result<(), LayoutError> {
    let index = envelope.index;
    write_atomic(dir, &format!("chunk-{index}.bin"), ciphertext, durability)?;
    let text = envelope.to_file_text().map_err(|e| LayoutError::Invalid {
        path: dir
            .join(format!("chunk-{index}.json"))
            .display()
            .to_string(),
        reason: e.to_string(),
    })?;
    write_atomic(
        dir,
        &format!("chunk-{index}.json"),
        text.as_bytes(),
        durability,
    )
}

/// Writes `manifest.json`.
pub fn write_manifest(
    dir: &Path,
    manifest: &Manifest,
    durability: Durability,
) -> Result<PathBuf, LayoutError> {
    write_atomic(
        dir,
        "manifest.json",
        manifest.to_file_text().as_bytes(),
        durability,
    )?;
    Ok(dir.join("manifest.json"))
}

/// Reads `manifest.json` if there is one.
pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>, LayoutError> {
    let path = dir.join("manifest.json");
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path)(e)),
    };
    Manifest::from_json(&bytes)
        .map(Some)
        .map_err(|reason| LayoutError::Invalid {
            path: path.display().to_string(),
            reason,
        })
}

/// Which file of a published directory a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkFile {
    /// `chunk-{i}.json`
    Envelope(u64),
    /// `chunk-{i}.bin`
    Ciphertext(u64),
}

impl ChunkFile {
    /// The chunk index the file belongs to.
    pub fn index(self) -> u64 {
        match self {
            ChunkFile::Envelope(i) | ChunkFile::Ciphertext(i) => i,
        }
    }
}

/// Parses a published directory's chunk file name (`chunk-{i}.json`, `chunk-{i}.bin`).
pub fn chunk_file(name: &str) -> Option<ChunkFile> {
    let rest = name.strip_prefix("chunk-")?;
    let (digits, kind): (&str, fn(u64) -> ChunkFile) = if let Some(d) = rest.strip_suffix(".json") {
        (d, ChunkFile::Envelope)
    } else {
        (rest.strip_suffix(".bin")?, ChunkFile::Ciphertext)
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(kind)
}

/// The indices of the `chunk-*.json` envelopes in `dir`, sorted (none is read).
pub fn envelope_indices(dir: &Path) -> Result<Vec<u64>, LayoutError> {
    let mut found: Vec<u64> = fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| match chunk_file(&e.file_name().to_string_lossy()) {
            Some(ChunkFile::Envelope(index)) => Some(index),
            _ => None,
        })
        .collect();
    found.sort_unstable();
    Ok(found)
}

/// Reads every `chunk-*.json` envelope in `dir`, sorted by `index`. Gaps and duplicates are
/// left for [`crate::chain::verify_chain`] to report with their index.
pub fn read_chunks(dir: &Path) -> Result<Vec<ChunkEnvelope>, LayoutError> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(chunk_file)
                .is_some_and(|f| matches!(f, ChunkFile::Envelope(_)))
        })
        .collect();
    if paths.is_empty() {
        return Err(LayoutError::NoChunks(dir.display().to_string()));
    }
    paths.sort();
    let mut chunks = Vec::with_capacity(paths.len());
    for path in paths {
        let bytes = fs::read(&path).map_err(io_error(&path))?;
        let envelope =
            ChunkEnvelope::from_json(&bytes).map_err(|source| LayoutError::Envelope {
                path: path.display().to_string(),
                source,
            })?;
        chunks.push(envelope);
    }
    chunks.sort_by_key(|c| c.index);
    Ok(chunks)
}

/// Reads `chunk-{index}.bin` from `dir`, `None` if it is not there.
pub fn read_ciphertext(dir: &Path, index: u64) -> Result<Option<Vec<u8>>, LayoutError> {
    let path = dir.join(format!("chunk-{index}.bin"));
    match fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(&path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_file_names() {
        assert_eq!(chunk_file("chunk-12.json"), Some(ChunkFile::Envelope(12)));
        assert_eq!(chunk_file("chunk-0.bin"), Some(ChunkFile::Ciphertext(0)));
        for other in [
            "chunk-.json",
            "chunk-1.jsonx",
            "chunk-+1.bin",
            "manifest.json",
            ".chunk-1.json.tmp-3",
        ] {
            assert_eq!(chunk_file(other), None, "{other}");
        }
    }

    #[test]
    fn timestamp_shape() {
        let t = utc_now_iso8601();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T");
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(951_782_400_000_007);
        assert_eq!(utc_iso8601(at, true), "2000-02-29T00:00:00.000007Z");
    }
}
