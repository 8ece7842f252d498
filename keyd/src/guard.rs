//! The sequence guard: for its DID keyd never signs a sequence number at or below one it
//! signed before, across restarts and kill -9, without an fsync per signature.
//!
//! It persists a reserved *ceiling*: every number up to it may have been signed. Signing
//! past the ceiling first raises it (by `reserve`) with an atomic write (temporary file,
//! fsync, rename, fsync of the directory) before any signature is returned. After a crash
//! keyd continues above the persisted ceiling, so it may skip numbers but never repeats.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct State {
    did: String,
    ceiling: u64,
}

/// A batch the guard refuses, naming the item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("item {index}: sequence number {found} is not above {floor}, the last one this machine may have signed")]
    NotIncreasing {
        index: usize,
        found: u64,
        floor: u64,
    },
    #[error("item {index}: sequence number {found} jumps more than {max_jump} above the last one signed ({last})")]
    TooFar {
        index: usize,
        found: u64,
        last: u64,
        max_jump: u64,
    },
    #[error("cannot persist the sequence state {path}: {reason}")]
    Persist { path: String, reason: String },
}

/// The guard for one DID.
#[derive(Debug)]
pub struct SequenceGuard {
    path: PathBuf,
    did: String,
    /// Every number at or below this may have been signed; `None` before the first.
    floor: Option<u64>,
    /// Persisted ceiling; signing above it needs a new reservation first.
    ceiling: Option<u64>,
    reserve: u64,
    max_jump: u64,
}

impl SequenceGuard {
    /// Opens (or starts) the guard state in `dir` for `did`. A state written for another
    /// DID (new keys) does not apply and is replaced at the first signature.
    pub fn open(dir: &Path, did: &str, reserve: u64, max_jump: u64) -> Result<Self, GuardError> {
        let path = dir.join("sequence.json");
        let persist_error = |reason: String| GuardError::Persist {
            path: path.display().to_string(),
            reason,
        };
        fs::create_dir_all(dir).map_err(|e| persist_error(e.to_string()))?;
        let ceiling = match fs::read(&path) {
            Ok(bytes) => {
                let state: State = serde_json::from_slice(&bytes)
                    .map_err(|e| persist_error(format!("unreadable: {e}")))?;
                (state.did == did).then_some(state.ceiling)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(persist_error(e.to_string())),
        };
        Ok(SequenceGuard {
            path,
            did: did.to_string(),
            floor: ceiling,
            ceiling,
            reserve,
            max_jump,
        })
    }

    /// The lowest sequence number the guard will accept now.
    pub fn next(&self) -> u64 {
        self.floor.map_or(0, |f| f.saturating_add(1))
    }

    /// Accepts a batch of sequence numbers (strictly increasing, above everything signed,
    /// within `max_jump` steps) and makes it durable before returning. Nothing is accepted
    /// when any item is refused.
    pub fn admit(&mut self, numbers: &[u64]) -> Result<(), GuardError> {
        let mut last = self.floor;
        for (index, &n) in numbers.iter().enumerate() {
            if let Some(floor) = last {
                if n <= floor {
                    return Err(GuardError::NotIncreasing {
                        index,
                        found: n,
                        floor,
                    });
                }
                if n - floor > self.max_jump {
                    return Err(GuardError::TooFar {
                        index,
                        found: n,
                        last: floor,
                        max_jump: self.max_jump,
                    });
                }
            } else if n > self.max_jump {
                return Err(GuardError::TooFar {
                    index,
                    found: n,
                    last: 0,
                    max_jump: self.max_jump,
                });
            }
            last = Some(n);
        }
        let Some(highest) = last else { return Ok(()) };
        if self.ceiling.is_none_or(|c| highest > c) {
            let ceiling = highest.saturating_add(self.reserve);
            self.persist(ceiling)?;
            self.ceiling = Some(ceiling);
        }
        self.floor = Some(highest);
        Ok(())
    }

    fn persist(&self, ceiling: u64) -> Result<(), GuardError> {
        let error = |e: std::io::Error| GuardError::Persist {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let temp = dir.join(".sequence.json.tmp");
        let body = serde_json::to_vec(&State {
            did: self.did.clone(),
            ceiling,
        })
        .expect("state serializes");
        let mut file = fs::File::create(&temp).map_err(error)?;
        file.write_all(&body).map_err(error)?;
        file.sync_all().map_err(error)?;
        drop(file);
        fs::rename(&temp, &self.path).map_err(error)?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut guard = SequenceGuard::open(dir.path(), "did:a", 10, 1000).unwrap();
        assert_eq!(guard.next(), 0);
        guard.admit(&[1, 2, 5]).unwrap();
        assert_eq!(guard.next(), 6);
        assert_eq!(
            guard.admit(&[6, 6]),
            Err(GuardError::NotIncreasing {
                index: 1,
                found: 6,
                floor: 6
            })
        );
        assert_eq!(guard.next(), 6, "a refused batch admits nothing");
        assert!(matches!(
            guard.admit(&[5]),
            Err(GuardError::NotIncreasing { .. })
        ));
        assert!(matches!(
            guard.admit(&[7000]),
            Err(GuardError::TooFar { .. })
        ));
        guard.admit(&[7]).unwrap();
        drop(guard); // as after kill -9: only the persisted ceiling (5 + 10) survives
        let mut again = SequenceGuard::open(dir.path(), "did:a", 10, 1000).unwrap();
        assert_eq!(again.next(), 16);
        assert!(again.admit(&[15]).is_err());
        again.admit(&[16]).unwrap();
        // Another DID (new keys) starts afresh.
        let other = SequenceGuard::open(dir.path(), "did:b", 10, 1000).unwrap();
        assert_eq!(other.next(), 0);
    }
}
