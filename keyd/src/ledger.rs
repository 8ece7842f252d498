//! The chunks keyd signed: every (encryptedDataHash, keyCommitment) pair it signed, so that
//! `Grant` re-wraps a chunk key only for the chunk the key was made for. A chunk signature
//! covers the hash alone (the reference's format), so without this an envelope for chunk A
//! carrying chunk B's wrapped key and commitment would be granted B's key.
//!
//! The file (`signed-chunks` in the state directory) is a 32-byte header (magic and the
//! machine's address) and one 64-byte record per chunk (the two SHA-256 values), appended
//! before a signature is answered and fsynced with the audit log. In memory keyd keeps a
//! keyed 64-bit fingerprint per pair (about 16 bytes per chunk).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 12] = b"keyd-chunks1";
const HEADER: usize = 32;
const RECORD: usize = 64;

/// A pair as it is stored: the SHA-256 behind `0x…` and the one behind `sha256:…`.
pub type Pair = ([u8; 32], [u8; 32]);

/// Why the ledger cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// The signed pairs, on disk and indexed.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: File,
    fingerprints: HashSet<u64>,
    keyed: RandomState,
    dirty: bool,
    broken: Option<String>,
}

/// Where the ledger lives in a state directory.
pub fn ledger_path(state_dir: &Path) -> PathBuf {
    state_dir.join("signed-chunks")
}

fn header(address: &[u8; 20]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..12].copy_from_slice(MAGIC);
    h[12..].copy_from_slice(address);
    h
}

impl Ledger {
    /// Opens (or starts) the ledger of the machine with `address`; a record torn by a crash
    /// is cut.
    pub fn open(path: &Path, address: &[u8; 20]) -> Result<Ledger, LedgerError> {
        let io = |source| LedgerError::Io {
            path: path.display().to_string(),
            source,
        };
        let invalid = |reason: String| LedgerError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        let mut options = OpenOptions::new();
        options.create(true).read(true).append(true);
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let want = header(address);
        if bytes.is_empty() {
            file.write_all(&want).map_err(io)?;
            file.sync_data().map_err(io)?;
            bytes.extend_from_slice(&want);
        }
        if bytes.len() < HEADER || bytes[..12] != MAGIC[..] {
            return Err(invalid("not a keyd ledger of signed chunks".into()));
        }
        if bytes[..HEADER] != want {
            return Err(invalid(format!(
                "written for machine 0x{}, not this one (0x{}): the keys changed; move it aside",
                hex::encode(&bytes[12..HEADER]),
                hex::encode(address)
            )));
        }
        let whole = (bytes.len() - HEADER) / RECORD * RECORD + HEADER;
        if whole < bytes.len() {
            tracing::warn!(ledger = %path.display(), "the last record was torn by a crash: cut");
            file.set_len(whole as u64).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        let keyed = RandomState::new();
        let fingerprints = bytes[HEADER..whole]
            .chunks_exact(RECORD)
            .map(|r| keyed.hash_one(r))
            .collect();
        Ok(Ledger {
            path: path.to_path_buf(),
            file,
            fingerprints,
            keyed,
            dirty: false,
            broken: None,
        })
    }

    fn fingerprint(&self, pair: &Pair) -> u64 {
        let mut record = [0u8; RECORD];
        record[..32].copy_from_slice(&pair.0);
        record[32..].copy_from_slice(&pair.1);
        self.keyed.hash_one(&record[..])
    }

    /// Records signed pairs (one write). An error means they are not recorded: the
    /// signatures must not be answered.
    pub fn record(&mut self, pairs: &[Pair]) -> Result<(), String> {
        if let Some(reason) = &self.broken {
            return Err(reason.clone());
        }
        let mut bytes = Vec::with_capacity(pairs.len() * RECORD);
        for (hash, commitment) in pairs {
            bytes.extend_from_slice(hash);
            bytes.extend_from_slice(commitment);
        }
        if let Err(e) = self.file.write_all(&bytes) {
            let reason = format!("cannot write the chunk ledger {}: {e}", self.path.display());
            self.broken = Some(reason.clone());
            return Err(reason);
        }
        for pair in pairs {
            let fingerprint = self.fingerprint(pair);
            self.fingerprints.insert(fingerprint);
        }
        self.dirty = true;
        Ok(())
    }

    /// Whether keyd signed this pair.
    pub fn contains(&self, pair: &Pair) -> bool {
        self.fingerprints.contains(&self.fingerprint(pair))
    }

    /// Makes every record durable.
    pub fn sync(&mut self) -> Result<(), String> {
        if let Some(reason) = &self.broken {
            return Err(reason.clone());
        }
        if self.dirty {
            if let Err(e) = self.file.sync_data() {
                let reason = format!("cannot sync the chunk ledger {}: {e}", self.path.display());
                self.broken = Some(reason.clone());
                return Err(reason);
            }
            self.dirty = false;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_survive_reopening_and_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signed-chunks");
        let me = [0xaa; 20];
        let mut ledger = Ledger::open(&path, &me).unwrap();
        let a = ([1; 32], [2; 32]);
        let b = ([3; 32], [4; 32]);
        ledger.record(&[a, b]).unwrap();
        ledger.sync().unwrap();
        assert!(ledger.contains(&a) && ledger.contains(&b));
        assert!(
            !ledger.contains(&([1; 32], [4; 32])),
            "A's hash with B's key"
        );
        drop(ledger);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[9; 40]).unwrap(); // half a record, as after kill -9
        drop(file);
        let ledger = Ledger::open(&path, &me).unwrap();
        assert_eq!(ledger.len(), 2);
        assert!(ledger.contains(&a));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 32 + 128);
        drop(ledger);
        let err = Ledger::open(&path, &[0xbb; 20]).unwrap_err().to_string();
        assert!(err.contains("keys changed"), "{err}");
    }
}
