//! One topic's spool and published chain.
//!
//! The spool directory holds the open chunk, `open.jsonl` (signed packages, one per line,
//! exactly the future plaintext of the next chunk), and the last committed point in two
//! state slots, `state-0` and `state-1` (the next chunk index, the previous chunk id and
//! the saved `sourceHash` state, with a checksum; chunk N's commit rewrites slot N mod 2 in
//! place, so a torn write leaves the other slot valid).
//!
//! Closing chunk N: seal it (chunk key from keyd, XChaCha20-Poly1305, hash signed by keyd),
//! have the chain writer (`stream::chain::ChainWriter`) link it and write `chunk-N.bin` and
//! `chunk-N.json` (synced), then the state slot (synced: this is the commit point; it holds
//! the writer's state), then `manifest.json`, then empty `open.jsonl`. After a crash at any
//! point, [`TopicSpool::open`] rolls back to the committed state: chunk files above it are
//! removed (they are rebuilt from the spool), a spool that still holds the committed chunk
//! (its plaintext hash is that chunk's `plaintextHash`) is emptied, a torn last line is cut
//! off. Files are reused rather than created per chunk: on ext4, creating and deleting
//! files was most of the writer's CPU time.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use store::upload::StorageRefs;
use store::S3Path;
use stream::chain::{seal_chunk, BuildError, ChainState, ChainWriter, DirOutput};
use stream::dataset::index::{span_of_lines, ChunkIndexEntry, PackageSpan, SpanError, INDEX_FILE};
use stream::layout::{self, Durability};
use stream::signer::{ChunkHashSigner, ChunkKeySource, SignerError};

use crate::config::ChunkBounds;

/// A spool or output directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Inconsistent { path: String, reason: String },
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    #[error("keyd: {0}")]
    Keyd(#[from] SignerError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("{path}: {holder} is using it (one process per spool directory)")]
    Busy { path: String, holder: &'static str },
}

/// Whether `error` says the filesystem is full (or the quota spent): a pause, not a failure.
pub fn is_disk_full(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded
    ) || matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

impl SpoolError {
    /// Whether this failed only because the disk is full: nothing was committed, and the same
    /// call succeeds once space returns.
    pub fn is_disk_full(&self) -> bool {
        match self {
            SpoolError::Io { source, .. }
            | SpoolError::Layout(layout::LayoutError::Io { source, .. }) => is_disk_full(source),
            _ => false,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A state slot: the chain writer's state and whose chain it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    #[serde(flatten)]
    chain: ChainState,
    machine_did: String,
}

const SPOOL_FILE: &str = "open.jsonl";

fn slot_name(slot: u64) -> String {
    format!("state-{slot}")
}

/// `state` as a slot's bytes: its JSON, then a line with the JSON's SHA-256.
fn encode_state(state: &State) -> Vec<u8> {
    // Strings and numbers only: serialization cannot fail.
    let mut bytes = serde_json::to_vec(state).unwrap_or_default();
    let check = stream::hexenc::sha256_0x(&bytes);
    bytes.push(b'\n');
    bytes.extend_from_slice(check.as_bytes());
    bytes.push(b'\n');
    bytes
}

/// A slot's state, if it is complete and intact.
fn decode_state(bytes: &[u8]) -> Option<State> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (json, check) = text.strip_suffix('\n')?.split_once('\n')?;
    (stream::hexenc::sha256_0x(json.as_bytes()) == check)
        .then(|| serde_json::from_str(json).ok())
        .flatten()
}

/// Overwrites a slot in place and flushes it (no new file, no rename).
fn write_slot(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let new = !path.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(0o640)
        .open(path)
        .map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.set_len(bytes.len() as u64).map_err(io(path))?;
    file.sync_data().map_err(io(path))?;
    match (new, path.parent()) {
        (true, Some(dir)) => sync_dir(dir),
        _ => Ok(()),
    }
}

/// What closing a chunk produced.
#[derive(Debug, Clone)]
pub struct Committed {
    pub index: u64,
    pub plaintext_bytes: usize,
    pub packages: usize,
}

/// The spool and chain of one topic.
pub struct TopicSpool {
    spool: PathBuf,
    /// The published directory: chunks synced (before the commit point), the manifest not
    /// (recovery rewrites it); envelopes carry their `storageRef` when the chain is uploaded.
    output: StorageRefs<DirOutput>,
    /// Where the chain is uploaded to first (its `storageRef`), if anywhere.
    storage: Option<S3Path>,
    /// `index.jsonl` beside the chain: each committed chunk's packages in brief.
    index_file: File,
    /// Chunks committed: what the uploads may take (they read only below it).
    committed: Arc<AtomicU64>,
    did: String,
    writer: ChainWriter,
    /// The open chunk: its file and a copy of its bytes.
    file: File,
    open: Vec<u8>,
    open_packages: usize,
    opened_at: Option<Instant>,
    /// How much of `open` is written to the file.
    written: usize,
    /// How much of `open` is known durable (synced).
    synced: usize,
    /// The manifest lags the committed chunks (its write found the disk full).
    manifest_stale: bool,
    /// Bytes written since the last sync.
    unsynced: bool,
}

impl std::fmt::Debug for TopicSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicSpool")
            .field("spool", &self.spool)
            .field("output", &self.output.inner().dir())
            .field("next_index", &self.writer.next_index())
            .field("open_packages", &self.open_packages)
            .finish_non_exhaustive()
    }
}

/// Takes `dir`'s lock (`dir/spool.lock`, created with `dir`; no topic's directory has a
/// dot), held while the returned file lives: two processes writing one spool would
/// interleave its queue and chains. `holder` names
/// who holds it in the error the second one gets. The kernel drops the lock when its
/// process dies, so a killed agent leaves nothing stale.
pub fn lock_dir(dir: &Path, holder: &'static str) -> Result<File, SpoolError> {
    make_dir(dir)?;
    let path = dir.join("spool.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o640)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(SpoolError::Busy {
            path: dir.display().to_string(),
            holder,
        }),
        Err(fs::TryLockError::Error(e)) => Err(io(&path)(e)),
    }
}

fn make_dir(dir: &Path) -> Result<(), SpoolError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(io(dir))
}

/// Opens `index.jsonl` for appending, first cutting it back to the committed chunks (lines
/// of chunks at or above `committed`, and a torn last line, are dropped).
fn open_index(output: &Path, committed: u64) -> Result<File, SpoolError> {
    let path = output.join(INDEX_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(&path)(e)),
    };
    let mut keep = 0;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        let below = line.ends_with(b"\n")
            && serde_json::from_slice::<ChunkIndexEntry>(&line[..line.len() - 1])
                .is_ok_and(|e| e.index < committed);
        if !below {
            break;
        }
        keep += line.len();
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&path)
        .map_err(io(&path))?;
    if keep < bytes.len() {
        file.set_len(keep as u64).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
    }
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl TopicSpool {
    /// Opens (and recovers) a topic's spool and output directory for the machine `did`.
    pub fn open(
        spool: &Path,
        output: &Path,
        did: &str,
        chunk_size: u64,
        storage: Option<S3Path>,
    ) -> Result<Self, SpoolError> {
        make_dir(spool)?;
        make_dir(output)?;
        let state_path = spool.join(slot_name(0));
        let inconsistent = |path: &Path, reason: String| SpoolError::Inconsistent {
            path: path.display().to_string(),
            reason,
        };
        let mut slots_found = 0;
        let mut best: Option<State> = None;
        for slot in 0..2 {
            let path = spool.join(slot_name(slot));
            match fs::read(&path) {
                Ok(bytes) => {
                    slots_found += 1;
                    if let Some(state) = decode_state(&bytes) {
                        if best
                            .as_ref()
                            .is_none_or(|b| state.chain.next_index > b.chain.next_index)
                        {
                            best = Some(state);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        let state = match best {
            Some(state) => state,
            None if slots_found > 0 => {
                return Err(inconsistent(
                    spool,
                    "no intact state slot: the spool is damaged".into(),
                ))
            }
            None => {
                if layout::read_manifest(output)?.is_some_and(|m| m.total_chunks > 0) {
                    return Err(inconsistent(
                        output,
                        format!(
                            "holds a published chain but the spool {} has no state: refusing to start a second chain in the same directory",
                            spool.display()
                        ),
                    ));
                }
                State {
                    chain: ChainState::default(),
                    machine_did: did.to_string(),
                }
            }
        };
        if state.machine_did != did {
            return Err(inconsistent(
                &state_path,
                format!("belongs to {}, but keyd is {did}", state.machine_did),
            ));
        }
        let writer = ChainWriter::resume(&state.chain, did, chunk_size)
            .map_err(|e| inconsistent(&state_path, e.to_string()))?;
        let committed = state.chain.next_index;

        // Roll the output back to the committed point.
        for entry in fs::read_dir(output).map_err(io(output))? {
            let entry = entry.map_err(io(output))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = layout::chunk_file(&name).is_some_and(|f| f.index() >= committed)
                || stream::fsio::is_temp_name(&name);
            if stale {
                fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
            }
        }
        let index_file = open_index(output, committed)?;
        let mut last_plaintext_hash = None;
        if committed > 0 {
            let last = output.join(format!("chunk-{}.json", committed - 1));
            let text = fs::read(&last).map_err(io(&last))?;
            let envelope = stream::chain::ChunkEnvelope::from_json(&text)
                .map_err(|e| inconsistent(&last, e.to_string()))?;
            if Some(&envelope.chunk_id) != state.chain.previous_chunk_id.as_ref() {
                return Err(inconsistent(
                    &last,
                    "is not the chunk the spool's state names: the output directory was changed behind the agent".into(),
                ));
            }
            last_plaintext_hash = Some(envelope.plaintext_hash.clone());
            writer.write_manifest(&mut StorageRefs::new(
                DirOutput::new(output, Durability::Synced),
                storage.clone(),
            ))?;
        }

        // The spool: cut a torn line; empty it if it still holds the committed chunk.
        let open_path = spool.join(SPOOL_FILE);
        let mut open_bytes = match fs::read(&open_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&open_path)(e)),
        };
        let complete = open_bytes
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        open_bytes.truncate(complete);
        if last_plaintext_hash.as_deref() == Some(stream::hexenc::sha256_0x(&open_bytes).as_str()) {
            open_bytes.clear();
        }
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o640)
            .open(&open_path)
            .map_err(io(&open_path))?;
        file.write_all(&open_bytes).map_err(io(&open_path))?;
        file.sync_all().map_err(io(&open_path))?;
        sync_dir(spool)?;
        let open_packages = open_bytes.iter().filter(|b| **b == b'\n').count();
        Ok(TopicSpool {
            spool: spool.to_path_buf(),
            output: StorageRefs::new(
                DirOutput::with(output, Durability::Synced, Durability::Atomic),
                storage.clone(),
            ),
            storage,
            index_file,
            committed: Arc::new(AtomicU64::new(committed)),
            did: did.to_string(),
            writer,
            file,
            opened_at: (open_packages > 0).then(Instant::now),
            written: open_bytes.len(),
            synced: open_bytes.len(),
            manifest_stale: false,
            open: open_bytes,
            open_packages,
            unsynced: false,
        })
    }

    /// Packages in the open chunk.
    pub fn open_packages(&self) -> usize {
        self.open_packages
    }
    /// The index the open chunk will have.
    pub fn next_index(&self) -> u64 {
        self.writer.next_index()
    }

    /// The highest `sequenceNumber` in this topic's spool and chain, if it has packages.
    pub fn last_sequence(&self) -> Result<Option<u64>, SpoolError> {
        let sequence_of = |line: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(line)
                .ok()?
                .get("sequenceNumber")?
                .as_u64()
        };
        if let Some(line) = self.open.split(|b| *b == b'\n').rfind(|l| !l.is_empty()) {
            let path = self.spool.join(SPOOL_FILE);
            return sequence_of(line)
                .map(Some)
                .ok_or_else(|| SpoolError::Inconsistent {
                    path: path.display().to_string(),
                    reason: "its last package has no sequenceNumber".into(),
                });
        }
        if self.writer.next_index() == 0 {
            return Ok(None);
        }
        let path = self.output.inner().dir().join(INDEX_FILE);
        let bytes = fs::read(&path).map_err(io(&path))?;
        bytes
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .and_then(|l| serde_json::from_slice::<ChunkIndexEntry>(l).ok())
            .filter(|e| e.index + 1 == self.writer.next_index())
            .map(|e| Some(e.last_sequence_number))
            .ok_or_else(|| SpoolError::Inconsistent {
                path: path.display().to_string(),
                reason: format!(
                    "has no line for the last chunk ({}): cannot tell which packages the chain holds",
                    self.writer.next_index() - 1
                ),
            })
    }

    /// How many chunks are committed, kept current: the uploads read it.
    pub fn committed(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.committed)
    }

    /// Where the chain's `storageRef`s point.
    pub fn storage(&self) -> Option<&S3Path> {
        self.storage.as_ref()
    }

    /// Whether the open chunk must close before `incoming` more bytes are added.
    pub fn full_before(&self, bounds: &ChunkBounds, incoming: usize) -> bool {
        self.open_packages > 0
            && (self.open.len() + incoming > bounds.max_bytes as usize
                || bounds
                    .max_messages
                    .is_some_and(|m| self.open_packages as u64 >= m))
    }

    /// Whether the open chunk has reached its age bound.
    pub fn expired(&self, bounds: &ChunkBounds, now: Instant) -> bool {
        match (bounds.max_age_ms, self.opened_at) {
            (Some(ms), Some(at)) => now.duration_since(at).as_millis() as u64 >= ms,
            _ => false,
        }
    }

    /// Appends one package line (with its `\n`) to the open chunk (written to the file by
    /// [`Self::flush`] or [`Self::sync`]).
    pub fn append(&mut self, line: &[u8]) {
        self.open.extend_from_slice(line);
        self.open_packages += 1;
        self.opened_at.get_or_insert_with(Instant::now);
    }

    /// Writes what was appended to the spool file (one write for the batch). On error the
    /// file is cut back to what it held before, so the call can be repeated.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        if self.written < self.open.len() {
            let path = self.spool.join(SPOOL_FILE);
            if let Err(e) = self.file.write_all(&self.open[self.written..]) {
                self.rewind(self.written)?;
                return Err(io(&path)(e));
            }
            self.written = self.open.len();
            self.unsynced = true;
        }
        Ok(())
    }

    /// Makes every appended package durable. After a failed sync the bytes since the last
    /// good one are written again (a failed `fsync` may have dropped them from the cache).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.flush()?;
        if self.unsynced {
            let path = self.spool.join(SPOOL_FILE);
            if let Err(e) = self.file.sync_data() {
                self.rewind(self.synced)?;
                return Err(io(&path)(e));
            }
            self.unsynced = false;
        }
        self.synced = self.written;
        Ok(())
    }

    /// Cuts the spool file back to `len` bytes of `open` and writes on from there.
    fn rewind(&mut self, len: usize) -> Result<(), SpoolError> {
        let path = self.spool.join(SPOOL_FILE);
        self.file
            .set_len(len as u64)
            .and_then(|()| self.file.seek(SeekFrom::Start(len as u64)))
            .map_err(|e| SpoolError::Inconsistent {
                path: path.display().to_string(),
                reason: format!("a write failed and the file could not be cut back: {e}"),
            })?;
        self.written = len;
        self.synced = self.synced.min(len);
        Ok(())
    }

    /// Rewrites the manifest if a commit could not (the disk was full then).
    pub fn refresh_manifest(&mut self) -> Result<(), SpoolError> {
        if self.manifest_stale {
            self.writer.write_manifest(&mut self.output)?;
            self.manifest_stale = false;
        }
        Ok(())
    }

    /// Whether the manifest still lags the committed chunks.
    pub fn manifest_stale(&self) -> bool {
        self.manifest_stale
    }

    /// Appends chunk `envelope`'s line to `index.jsonl` (synced: before the commit point, so
    /// that a committed chunk always has its line; recovery drops lines above it).
    fn write_index(
        &mut self,
        span: &Result<PackageSpan, SpanError>,
        envelope: &stream::chain::ChunkEnvelope,
    ) -> Result<(), SpoolError> {
        let path = self.output.inner().dir().join(INDEX_FILE);
        let entry = match span {
            Ok(span) => span.entry(envelope.index, &envelope.chunk_id),
            Err(e) => {
                tracing::warn!(chunk = envelope.index, error = %e, "chunk not indexed: a package line without a readable timestamp or sequence number");
                None
            }
        };
        if let Some(entry) = entry {
            let before = self.index_file.metadata().map_err(io(&path))?.len();
            if let Err(e) = self
                .index_file
                .write_all(entry.to_line().as_bytes())
                .and_then(|()| self.index_file.sync_data())
            {
                // No torn line: cut back to the lines of committed chunks.
                self.index_file
                    .set_len(before)
                    .map_err(|cut| SpoolError::Inconsistent {
                        path: path.display().to_string(),
                        reason: format!(
                            "a write failed ({e}) and the file could not be cut back: {cut}"
                        ),
                    })?;
                return Err(io(&path)(e));
            }
        }
        Ok(())
    }

    /// Closes the open chunk: seals it through keyd, publishes it, and starts the next one.
    /// On error nothing is committed and the call can be repeated.
    pub fn commit(
        &mut self,
        keys: &dyn ChunkKeySource,
        signer: &dyn ChunkHashSigner,
        fsync: bool,
    ) -> Result<Option<Committed>, SpoolError> {
        if self.open_packages == 0 {
            return Ok(None);
        }
        if fsync {
            self.sync()?;
        } else {
            self.flush()?;
        }
        let index = self.writer.next_index();
        let key = keys
            .new_chunk_keys(1)?
            .pop()
            .ok_or_else(|| SignerError::Unavailable("keyd returned no chunk key".into()))?;
        // The writer advances only at the commit point: a copy does the work until then.
        let mut next = self.writer.clone();
        next.absorb(&self.open);
        let plaintext_bytes = self.open.len();
        let span = span_of_lines(&self.open);
        // Sealed in place (no copy of the chunk); on any failure from here to the commit
        // point the spool file gives the plaintext back.
        let result = seal_chunk(std::mem::take(&mut self.open), key, signer, index)
            .map_err(SpoolError::from)
            .and_then(|sealed| {
                next.append(sealed, &mut self.output)
                    .map_err(SpoolError::from)
            })
            .and_then(|written| self.write_index(&span, &written.envelope))
            .and_then(|_| {
                let state = State {
                    chain: next.state(),
                    machine_did: self.did.clone(),
                };
                write_slot(
                    &self.spool.join(slot_name(index % 2)),
                    &encode_state(&state),
                )
            });
        if let Err(e) = result {
            let path = self.spool.join(SPOOL_FILE);
            self.open = fs::read(&path).map_err(io(&path))?;
            self.written = self.open.len();
            self.synced = self.synced.min(self.written);
            return Err(e);
        }
        // Committed. The rest is redone by recovery if interrupted.
        self.writer = next;
        self.committed
            .store(self.writer.next_index(), Ordering::Release);
        self.manifest_stale = true;
        match self.refresh_manifest() {
            Ok(()) => {}
            // Committed all the same: the manifest is written again when space returns.
            Err(e) if e.is_disk_full() => {
                tracing::warn!(error = %e, "manifest not rewritten: the disk is full");
            }
            Err(e) => return Err(e),
        }

        let path = self.spool.join(SPOOL_FILE);
        self.file.set_len(0).map_err(io(&path))?;
        self.file.seek(SeekFrom::Start(0)).map_err(io(&path))?;
        let committed = Committed {
            index,
            plaintext_bytes,
            packages: self.open_packages,
        };
        self.open.clear();
        self.written = 0;
        self.synced = 0;
        self.open_packages = 0;
        self.opened_at = None;
        self.unsynced = false;
        Ok(Some(committed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stream::chain::{verify_chain, VerifyOptions};
    use stream::keys::{BoxKey, ChainKey, IdentityKey, Secret32};
    use stream::local::{LocalChunkKeys, LocalChunkSigner, RecipientSpec};

    struct Keys {
        source: LocalChunkKeys,
        signer: LocalChunkSigner,
        did: String,
        machine: BoxKey,
    }

    fn keys() -> Keys {
        let identity = IdentityKey::from_secret(&Secret32::random().unwrap()).unwrap();
        let chain = ChainKey::from_secret(&Secret32::random().unwrap());
        let machine = BoxKey::from_secret(&Secret32::random().unwrap());
        let did = identity.did();
        let recipient = RecipientSpec::new("m", "machine", &machine.public_key_hex()).unwrap();
        Keys {
            source: LocalChunkKeys::new(vec![recipient]),
            signer: LocalChunkSigner::new(chain, did.clone(), "chain-1".into()),
            did,
            machine,
        }
    }

    #[test]
    fn recovery_after_a_crash_between_chunk_files_and_state() {
        let dir = tempfile::tempdir().unwrap();
        let (spool_dir, out) = (dir.path().join("spool"), dir.path().join("out"));
        let k = keys();
        let bounds = ChunkBounds {
            max_bytes: 20,
            max_messages: None,
            max_age_ms: None,
        };
        let mut spool = TopicSpool::open(&spool_dir, &out, &k.did, 20, None).unwrap();
        spool.append(b"{\"a\":1}\n");
        assert!(!spool.full_before(&bounds, 8));
        spool.append(b"{\"a\":2}\n");
        assert!(spool.full_before(&bounds, 8));
        spool.commit(&k.source, &k.signer, true).unwrap().unwrap();
        spool.append(b"{\"a\":3}\n");
        spool.append(b"{\"a\":4");
        spool.flush().unwrap(); // torn: never synced
        drop(spool);

        // A half-done commit of chunk 1: its files exist, the state was not written.
        std::fs::write(out.join("chunk-1.bin"), b"junk").unwrap();
        std::fs::write(out.join(".chunk-1.json.tmp-9"), b"junk").unwrap();
        let mut spool = TopicSpool::open(&spool_dir, &out, &k.did, 20, None).unwrap();
        assert!(!out.join("chunk-1.bin").exists());
        assert!(!out.join(".chunk-1.json.tmp-9").exists());
        assert_eq!(spool.next_index(), 1);
        assert_eq!(spool.open_packages(), 1);
        spool.append(b"{\"a\":5}\n");
        spool.commit(&k.source, &k.signer, true).unwrap().unwrap();

        let chunks = stream::layout::read_chunks(&out).unwrap();
        assert_eq!(chunks.len(), 2);
        let manifest = stream::layout::read_manifest(&out).unwrap().unwrap();
        assert_eq!(manifest.total_chunks, 2);
        // sourceHash is the hash of both plaintexts.
        let all = b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n{\"a\":5}\n";
        assert_eq!(manifest.source_hash, stream::hexenc::sha256_0x(all));
        let options = VerifyOptions {
            recipient: Some(&k.machine),
            expect_source_hash: Some(&manifest.source_hash),
            ..VerifyOptions::default()
        };
        let mut plain = Vec::new();
        let report = verify_chain(
            &chunks,
            |i| stream::layout::read_ciphertext(&out, i).map_err(|e| e.to_string()),
            &options,
            |_, p| plain.extend_from_slice(p),
        );
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(plain, all);

        // A crash after the state was committed but before the spool was emptied: the spool
        // still holds the published chunk, and must not become the next chunk too.
        let published = b"{\"a\":6}\n".to_vec();
        let mut spool = TopicSpool::open(&spool_dir, &out, &k.did, 20, None).unwrap();
        spool.append(&published);
        spool.commit(&k.source, &k.signer, true).unwrap().unwrap();
        drop(spool);
        std::fs::write(spool_dir.join(SPOOL_FILE), &published).unwrap();
        let spool = TopicSpool::open(&spool_dir, &out, &k.did, 20, None).unwrap();
        assert_eq!((spool.next_index(), spool.open_packages()), (3, 0));
        drop(spool);

        // A crash while chunk 2's state slot was written (torn; the spool still holds chunk
        // 2): the other slot is used, and chunk 2 is rebuilt from the spool.
        std::fs::write(spool_dir.join(SPOOL_FILE), &published).unwrap();
        std::fs::write(spool_dir.join(slot_name(0)), b"{\"nextIndex\":3").unwrap();
        let mut spool = TopicSpool::open(&spool_dir, &out, &k.did, 20, None).unwrap();
        assert_eq!((spool.next_index(), spool.open_packages()), (2, 1));
        assert!(!out.join("chunk-2.json").exists());
        spool.commit(&k.source, &k.signer, true).unwrap().unwrap();
        drop(spool);

        // Another machine's keyd must not continue this chain.
        let other = keys();
        let e = TopicSpool::open(&spool_dir, &out, &other.did, 20, None).unwrap_err();
        assert!(e.to_string().contains("belongs to"), "{e}");
    }
}
