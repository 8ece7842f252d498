//! The sequence guard: for its DID keyd never signs a sequence number at or below one it
//! signed before, across restarts and kill -9, without an fsync per signature.
//!
//! It persists a reserved *ceiling*: every number up to it may have been signed. Signing
//! past the ceiling first raises it (by `reserve`) with an atomic, fsynced write before any
//! signature is returned. After a crash keyd continues above the persisted ceiling, so it
//! may skip numbers but never repeats one.
//!
//! It fails closed. `keyd init` creates the state; `keyd run` refuses to start without it, or
//! with one written for another DID, unless the operator names the floor to continue from
//! (`--sequence-floor N`): a wiped `/var/lib/keyd` while the token or TPM keeps the keys must
//! not restart the sequence at 0. Where the backend has a monotonic store of its own (a TPM
//! NV counter, a token object: [`CeilingStore`]), the ceiling is kept there too, in coarse
//! steps, and the guard starts above the higher of the two.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stream::fsio::{self, Durability};

/// The state file, `sequence.json` in keyd's state directory.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    did: String,
    /// Every number up to this may have been signed; `null` before the first signature.
    ceiling: Option<u64>,
}

/// A monotonic store outside the state directory that holds a ceiling of its own.
pub trait CeilingStore: Send + Sync {
    /// The ceiling it holds, if any.
    fn read(&self) -> Result<Option<u64>, String>;
    /// Raises it to at least `ceiling`; returns what it holds now (at least `ceiling`).
    fn raise(&self, ceiling: u64) -> Result<u64, String>;
}

/// A refused batch, or a guard that cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("item {index}: sequence number {found} is not above {floor}, the last one this machine may have signed")]
    NotIncreasing {
        index: usize,
        found: u64,
        floor: u64,
    },
    #[error("item {index}: sequence number {found} is more than max_sequence_jump {max_jump} above {floor}, where this batch started")]
    TooFar {
        index: usize,
        found: u64,
        floor: String,
        max_jump: u64,
    },
    #[error("cannot persist the sequence state {path}: {reason}")]
    Persist { path: String, reason: String },
    #[error("the sequence state {path} is missing{hint}: keyd would restart the sequence at 0 and sign old numbers again. `keyd init` creates it; if the keys were kept and the state lost, start once with `keyd run --sequence-floor N`, N at or above the last sequence number this machine signed")]
    Missing { path: String, hint: String },
    #[error("the sequence state {path} was written for {found}, not this machine's {expected}: start once with `keyd run --sequence-floor N` to continue above N")]
    ForeignDid {
        path: String,
        found: String,
        expected: String,
    },
    #[error("the sequence state {path} is unreadable ({reason}): start once with `keyd run --sequence-floor N` to replace it")]
    Unreadable { path: String, reason: String },
    #[error("the backend's sequence ceiling: {0}")]
    Store(String),
}

impl GuardError {
    /// Whether the request may succeed later (the state could not be written just now).
    pub fn is_retryable(&self) -> bool {
        matches!(self, GuardError::Persist { .. } | GuardError::Store(_))
    }
}

/// The guard for one DID.
pub struct SequenceGuard {
    path: PathBuf,
    did: String,
    /// Every number at or below this may have been signed; `None` before the first.
    floor: Option<u64>,
    /// Persisted ceiling; signing above it needs a new reservation first.
    ceiling: Option<u64>,
    /// What the backend's store holds (`None`: nothing yet, or no store).
    store_ceiling: Option<u64>,
    store: Option<Arc<dyn CeilingStore>>,
    reserve: u64,
    max_jump: u64,
}

impl std::fmt::Debug for SequenceGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceGuard")
            .field("path", &self.path)
            .field("floor", &self.floor)
            .field("ceiling", &self.ceiling)
            .field("store_ceiling", &self.store_ceiling)
            .finish_non_exhaustive()
    }
}

/// Where the state lives in a state directory.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("sequence.json")
}

/// The DID the state in `dir` was written for, if there is a readable one.
pub fn recorded_did(dir: &Path) -> Option<String> {
    let bytes = fs::read(state_path(dir)).ok()?;
    serde_json::from_slice::<State>(&bytes).ok().map(|s| s.did)
}

/// What `keyd init` does: a fresh state for `did` (new keys: nothing signed yet).
pub fn create(dir: &Path, did: &str) -> Result<(), GuardError> {
    let path = state_path(dir);
    crate::files::create_private_dir(dir).map_err(|e| GuardError::Persist {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    write_state(&path, did, None)
}

fn write_state(path: &Path, did: &str, ceiling: Option<u64>) -> Result<(), GuardError> {
    let body = serde_json::to_vec(&State {
        did: did.to_string(),
        ceiling,
    })
    .map_err(|e| GuardError::Persist {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    fsio::write_atomic(path, &body, Durability::Synced).map_err(|e| GuardError::Persist {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// How the guard starts.
pub struct GuardOptions {
    /// Numbers reserved per write of the state.
    pub reserve: u64,
    /// The largest step one batch may move the floor.
    pub max_jump: u64,
    /// The operator's `--sequence-floor`: continue above it even without a state.
    pub floor_override: Option<u64>,
    /// The backend's own monotonic store, if it has one.
    pub store: Option<Arc<dyn CeilingStore>>,
}

impl SequenceGuard {
    /// Opens the guard state in `dir` for `did`: refused when missing, foreign or
    /// unreadable unless the operator gave a floor.
    pub fn open(dir: &Path, did: &str, options: GuardOptions) -> Result<Self, GuardError> {
        let path = state_path(dir);
        let shown = path.display().to_string();
        let store_ceiling = match &options.store {
            Some(store) => store.read().map_err(GuardError::Store)?,
            None => None,
        };
        let file_ceiling = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<State>(&bytes) {
                Ok(state) if state.did == did => Ok(state.ceiling),
                Ok(state) => Err(GuardError::ForeignDid {
                    path: shown.clone(),
                    found: state.did,
                    expected: did.to_string(),
                }),
                Err(e) => Err(GuardError::Unreadable {
                    path: shown.clone(),
                    reason: e.to_string(),
                }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(GuardError::Missing {
                path: shown.clone(),
                hint: match store_ceiling {
                    Some(c) => format!(" (the backend says up to {c} may have been signed)"),
                    None => String::new(),
                },
            }),
            Err(e) => {
                return Err(GuardError::Persist {
                    path: shown,
                    reason: e.to_string(),
                })
            }
        };
        let file_ceiling = match (file_ceiling, options.floor_override) {
            (Ok(c), _) => c,
            (Err(_), Some(_)) => None,
            (Err(e), None) => return Err(e),
        };
        let floor = [file_ceiling, store_ceiling, options.floor_override]
            .into_iter()
            .flatten()
            .max();
        let guard = SequenceGuard {
            path,
            did: did.to_string(),
            floor,
            ceiling: floor,
            store_ceiling,
            store: options.store,
            reserve: options.reserve,
            max_jump: options.max_jump,
        };
        if options.floor_override.is_some() || floor != file_ceiling {
            // Written now, so the next start needs no flag and never goes below.
            write_state(&guard.path, did, floor)?;
        }
        Ok(guard)
    }

    /// The lowest sequence number the guard will accept now.
    pub fn next(&self) -> u64 {
        self.floor.map_or(0, |f| f.saturating_add(1))
    }

    /// Accepts a batch of sequence numbers (strictly increasing, above everything signed,
    /// the whole batch within `max_jump` of where it started) and makes it durable before
    /// returning. Nothing is accepted when any item is refused.
    pub fn admit(&mut self, numbers: &[u64]) -> Result<(), GuardError> {
        let start = self.floor;
        let mut last = start;
        for (index, &n) in numbers.iter().enumerate() {
            if let Some(floor) = last {
                if n <= floor {
                    return Err(GuardError::NotIncreasing {
                        index,
                        found: n,
                        floor,
                    });
                }
            }
            let base = start.unwrap_or(0);
            if n.saturating_sub(base) > self.max_jump {
                return Err(GuardError::TooFar {
                    index,
                    found: n,
                    floor: start.map_or("the start (nothing signed yet)".into(), |f| f.to_string()),
                    max_jump: self.max_jump,
                });
            }
            last = Some(n);
        }
        let Some(highest) = last else { return Ok(()) };
        if self.ceiling.is_none_or(|c| highest > c) {
            let ceiling = highest.saturating_add(self.reserve);
            if let Some(store) = &self.store {
                if self.store_ceiling.is_none_or(|c| c < ceiling) {
                    let held = store.raise(ceiling).map_err(GuardError::Store)?;
                    self.store_ceiling = Some(held);
                }
            }
            write_state(&self.path, &self.did, Some(ceiling))?;
            self.ceiling = Some(ceiling);
        }
        self.floor = Some(highest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn options(reserve: u64, max_jump: u64) -> GuardOptions {
        GuardOptions {
            reserve,
            max_jump,
            floor_override: None,
            store: None,
        }
    }

    #[test]
    fn strictly_increasing_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        create(dir.path(), "did:a").unwrap();
        let mut guard = SequenceGuard::open(dir.path(), "did:a", options(10, 1000)).unwrap();
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
        let mut again = SequenceGuard::open(dir.path(), "did:a", options(10, 1000)).unwrap();
        assert_eq!(again.next(), 16);
        assert!(again.admit(&[15]).is_err());
        again.admit(&[16]).unwrap();
    }

    /// A batch may move the floor by `max_jump` in all, not `max_jump` per item.
    #[test]
    fn max_jump_bounds_the_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        create(dir.path(), "did:a").unwrap();
        let mut guard = SequenceGuard::open(dir.path(), "did:a", options(10, 100)).unwrap();
        guard.admit(&[50]).unwrap();
        let stairs: Vec<u64> = (1..=10).map(|i| 50 + i * 90).collect();
        assert!(matches!(
            guard.admit(&stairs),
            Err(GuardError::TooFar { index: 1, .. })
        ));
        assert_eq!(guard.next(), 51);
        guard.admit(&[100, 150]).unwrap();
    }

    /// No state, or another DID's: no start without the operator's floor.
    #[test]
    fn fails_closed_without_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let err = SequenceGuard::open(dir.path(), "did:a", options(10, 1000)).unwrap_err();
        assert!(matches!(err, GuardError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("--sequence-floor"));
        create(dir.path(), "did:b").unwrap();
        let err = SequenceGuard::open(dir.path(), "did:a", options(10, 1000)).unwrap_err();
        assert!(matches!(err, GuardError::ForeignDid { .. }), "{err}");
        fs::write(state_path(dir.path()), b"{").unwrap();
        assert!(matches!(
            SequenceGuard::open(dir.path(), "did:a", options(10, 1000)),
            Err(GuardError::Unreadable { .. })
        ));
        let guard = SequenceGuard::open(
            dir.path(),
            "did:a",
            GuardOptions {
                floor_override: Some(41),
                ..options(10, 1000)
            },
        )
        .unwrap();
        assert_eq!(guard.next(), 42);
        drop(guard);
        // Written at once: the next start needs no flag.
        let guard = SequenceGuard::open(dir.path(), "did:a", options(10, 1000)).unwrap();
        assert_eq!(guard.next(), 42);
        // A lower floor never takes the guard back.
        let guard = SequenceGuard::open(
            dir.path(),
            "did:a",
            GuardOptions {
                floor_override: Some(3),
                ..options(10, 1000)
            },
        )
        .unwrap();
        assert_eq!(guard.next(), 42);
    }

    struct Counter(Mutex<Option<u64>>);
    impl CeilingStore for Counter {
        fn read(&self) -> Result<Option<u64>, String> {
            Ok(*self.0.lock().unwrap())
        }
        fn raise(&self, ceiling: u64) -> Result<u64, String> {
            let mut held = self.0.lock().unwrap();
            let value = held.unwrap_or(0).max(ceiling.div_ceil(1000) * 1000);
            *held = Some(value);
            Ok(value)
        }
    }

    /// The backend's store is raised before the file, and a wiped state directory
    /// continues above what the store holds.
    #[test]
    fn the_backend_store_survives_a_wiped_state() {
        let dir = tempfile::tempdir().unwrap();
        create(dir.path(), "did:a").unwrap();
        let store = Arc::new(Counter(Mutex::new(None)));
        let with_store = || GuardOptions {
            store: Some(store.clone()),
            ..options(10, 1_000_000)
        };
        let mut guard = SequenceGuard::open(dir.path(), "did:a", with_store()).unwrap();
        guard.admit(&[5]).unwrap();
        assert_eq!(store.read().unwrap(), Some(1000));
        guard.admit(&[2500]).unwrap();
        assert_eq!(store.read().unwrap(), Some(3000));
        drop(guard);
        fs::remove_file(state_path(dir.path())).unwrap();
        let err = SequenceGuard::open(dir.path(), "did:a", with_store()).unwrap_err();
        assert!(err.to_string().contains("up to 3000"), "{err}");
        let guard = SequenceGuard::open(
            dir.path(),
            "did:a",
            GuardOptions {
                floor_override: Some(0),
                ..with_store()
            },
        )
        .unwrap();
        assert_eq!(guard.next(), 3001);
    }
}
