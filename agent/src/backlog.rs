//! The queue between the DDS receive path and signing: memory first, then a disk file, then
//! the map's overflow policy. Pushing never waits for keyd; a full queue either refuses the
//! message (`pause`: the capture task stops reading from DDS until there is room) or drops
//! the oldest queued message (`drop_oldest`), and every drop is counted.
//!
//! Messages here are not yet accepted (they are not signed): the disk part is a spill area
//! for when keyd is slow or down, not a durable log, and is emptied at start. It holds
//! fields before the field rules ran (some are to be encrypted), so every record is
//! sealed with ChaCha20-Poly1305 under a key that exists only in this process's memory:
//! what is left on disk after a crash is unreadable, and is removed at the next start.
//!
//! A full disk is one more way of being full: the message that did not fit is refused (the
//! overflow policy applies to it) and the file is left as it was.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use chacha20poly1305::aead::Aead;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{Overflow, QueueConfig};

/// A decoded message waiting to be signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Captured {
    #[serde(rename = "t")]
    pub topic: usize,
    #[serde(rename = "c")]
    pub captured_at: String,
    #[serde(rename = "f")]
    pub fields: Map<String, Value>,
    /// Where it came from, when that must be remembered (a bag message's ordinal).
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<u64>,
    /// Approximate size in memory (not written to disk).
    #[serde(skip)]
    pub size: usize,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq)]
pub enum Pushed {
    Queued,
    /// Queued, after dropping this many older messages (`drop_oldest`).
    QueuedDropping(usize),
    /// Not queued: full, with the `pause` policy. Here it is back; try again later.
    Full(Box<Captured>),
    /// Not queued, with the `drop_oldest` policy and the disk full: this message and
    /// `n - 1` older ones were dropped.
    Dropped(usize),
}

/// Queue depth, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub messages: usize,
    pub memory_bytes: usize,
    pub disk_bytes: u64,
}

/// The disk part: `[u32 length][ciphertext ‖ tag]` records, the nonce a record counter.
/// Bytes `[0, flushed)` are in the file, `[flushed, written)` in `pending`; records are read
/// back from either by offset.
struct Spill {
    path: PathBuf,
    file: File,
    /// Written in one piece per 64 KiB, not per message (the receive path pays for it).
    pending: Vec<u8>,
    flushed: u64,
    /// A fresh key per spill file, never written anywhere (zeroized on drop).
    cipher: ChaCha20Poly1305,
    written_records: u64,
    read_records: u64,
    written: u64,
    read: u64,
    messages: usize,
}

const SPILL_BUFFER: usize = 64 << 10;

impl Spill {
    /// Moves `pending` into the file; on error the file is cut back and `pending` kept.
    fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all_at(&self.pending, self.flushed) {
            self.file.set_len(self.flushed)?;
            return Err(e);
        }
        self.flushed += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// `buf.len()` bytes at `offset`, from the file or from `pending`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if offset >= self.flushed {
            let start = (offset - self.flushed) as usize;
            let bytes = self
                .pending
                .get(start..start + buf.len())
                .ok_or_else(|| std::io::Error::other("a queue record is cut short"))?;
            buf.copy_from_slice(bytes);
            Ok(())
        } else {
            self.file.read_exact_at(buf, offset)
        }
    }
}

fn record_nonce(counter: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&counter.to_le_bytes());
    Nonce::from(nonce)
}

struct Inner {
    memory: VecDeque<Captured>,
    memory_bytes: usize,
    spill: Option<Spill>,
    closed: bool,
}

/// A bounded memory + disk FIFO.
pub struct Backlog {
    inner: Mutex<Inner>,
    ready: Condvar,
    config: QueueConfig,
    dir: PathBuf,
    /// The consumer's batch size: pushes wake it only when the queue stops being empty or
    /// holds a full batch (a wake-up per message would cost more than the message).
    batch: usize,
}

/// The queue could not use its disk file.
#[derive(Debug, thiserror::Error)]
#[error("disk queue {path}: {source}")]
pub struct BacklogError {
    path: String,
    #[source]
    source: std::io::Error,
}

impl Backlog {
    /// A queue spilling into `dir/queue.bin` (removed now if left from a previous run),
    /// consumed in batches of `batch`.
    pub fn new(dir: &Path, config: QueueConfig, batch: usize) -> Result<Self, BacklogError> {
        let path = dir.join("queue.bin");
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BacklogError {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
        Ok(Backlog {
            inner: Mutex::new(Inner {
                memory: VecDeque::new(),
                memory_bytes: 0,
                spill: None,
                closed: false,
            }),
            ready: Condvar::new(),
            config,
            dir: dir.to_path_buf(),
            batch: batch.max(1),
        })
    }

    fn messages(inner: &Inner) -> usize {
        inner.memory.len() + inner.spill.as_ref().map_or(0, |s| s.messages)
    }

    /// Wakes the consumer if this push made the queue non-empty or filled a batch.
    fn notify(&self, queued: usize) {
        if queued == 1 || queued.is_multiple_of(self.batch) {
            self.ready.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves the queue usable as it was.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn depth(&self) -> Depth {
        let inner = self.lock();
        let (disk_messages, disk_bytes) = inner
            .spill
            .as_ref()
            .map_or((0, 0), |s| (s.messages, s.written - s.read));
        Depth {
            messages: inner.memory.len() + disk_messages,
            memory_bytes: inner.memory_bytes,
            disk_bytes,
        }
    }

    /// Adds a message at the tail.
    pub fn push(&self, item: Captured) -> Result<Pushed, BacklogError> {
        let mut inner = self.lock();
        let fits_memory = inner.spill.is_none()
            && inner.memory_bytes + item.size <= self.config.memory_bytes as usize;
        if fits_memory {
            inner.memory_bytes += item.size;
            inner.memory.push_back(item);
            let queued = Self::messages(&inner);
            drop(inner);
            self.notify(queued);
            return Ok(Pushed::Queued);
        }
        let plain =
            zeroize::Zeroizing::new(serde_json::to_vec(&item).map_err(|e| self.error(e.into()))?);
        let record_len = plain.len() as u64 + 16 + 4;
        let mut dropped = 0;
        loop {
            let disk = inner.spill.as_ref().map_or(0, |s| s.written - s.read);
            if disk + record_len <= self.config.disk_bytes {
                break;
            }
            match self.config.overflow {
                Overflow::Pause => return Ok(Pushed::Full(Box::new(item))),
                Overflow::DropOldest => {
                    if self.pop_one(&mut inner)?.is_none() {
                        // Nothing left to drop: the message alone exceeds the disk queue.
                        return Ok(Pushed::Full(Box::new(item)));
                    }
                    dropped += 1;
                }
            }
        }
        if inner.spill.is_none() {
            inner.spill = Some(self.open_spill()?);
        }
        let spill = inner.spill.as_mut().expect("opened above");
        let sealed = spill
            .cipher
            .encrypt(&record_nonce(spill.written_records), plain.as_slice())
            .map_err(|_| BacklogError {
                path: spill.path.display().to_string(),
                source: std::io::Error::other("sealing a queue record failed"),
            })?;
        let before = spill.pending.len();
        spill
            .pending
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        spill.pending.extend_from_slice(&sealed);
        if spill.pending.len() >= SPILL_BUFFER {
            if let Err(source) = spill.flush() {
                spill.pending.truncate(before);
                if crate::spool::is_disk_full(&source) {
                    return Ok(match self.config.overflow {
                        Overflow::Pause => Pushed::Full(Box::new(item)),
                        Overflow::DropOldest => Pushed::Dropped(dropped + 1),
                    });
                }
                return Err(BacklogError {
                    path: spill.path.display().to_string(),
                    source,
                });
            }
        }
        spill.written_records += 1;
        spill.written += (4 + sealed.len()) as u64;
        spill.messages += 1;
        let queued = Self::messages(&inner);
        drop(inner);
        self.notify(queued);
        Ok(if dropped > 0 {
            Pushed::QueuedDropping(dropped)
        } else {
            Pushed::Queued
        })
    }

    fn error(&self, source: std::io::Error) -> BacklogError {
        BacklogError {
            path: self.dir.join("queue.bin").display().to_string(),
            source,
        }
    }

    fn open_spill(&self) -> Result<Spill, BacklogError> {
        let path = self.dir.join("queue.bin");
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| self.error(e))?;
        let key = stream::keys::Secret32::random()
            .map_err(|_| self.error(std::io::Error::other("no randomness for the queue key")))?;
        Ok(Spill {
            path,
            file,
            pending: Vec::with_capacity(SPILL_BUFFER),
            flushed: 0,
            cipher: ChaCha20Poly1305::new(key.expose().into()),
            written_records: 0,
            read_records: 0,
            written: 0,
            read: 0,
            messages: 0,
        })
    }

    /// The oldest message, from memory, else from the disk file.
    fn pop_one(&self, inner: &mut Inner) -> Result<Option<Captured>, BacklogError> {
        if let Some(item) = inner.memory.pop_front() {
            inner.memory_bytes -= item.size;
            return Ok(Some(item));
        }
        let Some(spill) = inner.spill.as_mut() else {
            return Ok(None);
        };
        if spill.messages == 0 {
            inner.spill = None;
            return Ok(None);
        }
        let path = spill.path.display().to_string();
        let io = |source| BacklogError {
            path: path.clone(),
            source,
        };
        let mut len = [0u8; 4];
        spill.read_at(&mut len, spill.read).map_err(io)?;
        let mut sealed = vec![0u8; u32::from_le_bytes(len) as usize];
        spill.read_at(&mut sealed, spill.read + 4).map_err(io)?;
        let plain = zeroize::Zeroizing::new(
            spill
                .cipher
                .decrypt(&record_nonce(spill.read_records), sealed.as_slice())
                .map_err(|_| io(std::io::Error::other("a queue record does not open")))?,
        );
        spill.read_records += 1;
        spill.read += 4 + sealed.len() as u64;
        spill.messages -= 1;
        let item: Captured = serde_json::from_slice(&plain).map_err(|e| io(e.into()))?;
        if spill.messages == 0 {
            // Drained: back to memory.
            let path = spill.path.clone();
            inner.spill = None;
            let _ = std::fs::remove_file(path);
        }
        Ok(Some(Captured {
            size: item_size(&item.fields),
            ..item
        }))
    }

    /// Up to `max` messages and about `max_bytes` (at least one message): waits for the
    /// first (until `idle` passes), then at most `delay` for the batch to fill. Empty when
    /// idle or closed.
    pub fn pop_batch(
        &self,
        max: usize,
        max_bytes: usize,
        delay: Duration,
        idle: Duration,
    ) -> Result<Vec<Captured>, BacklogError> {
        let mut inner = self.lock();
        let start = Instant::now();
        while inner.memory.is_empty() && inner.spill.is_none() && !inner.closed {
            let left = idle.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            inner = self
                .ready
                .wait_timeout(inner, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let first = Instant::now();
        let mut batch = Vec::with_capacity(max.min(4096));
        let mut bytes = 0;
        loop {
            while batch.len() < max && bytes < max_bytes {
                match self.pop_one(&mut inner)? {
                    Some(item) => {
                        bytes += item.size;
                        batch.push(item);
                    }
                    None => break,
                }
            }
            let left = delay.saturating_sub(first.elapsed());
            if batch.len() >= max || bytes >= max_bytes || left.is_zero() || inner.closed {
                return Ok(batch);
            }
            inner = self
                .ready
                .wait_timeout(inner, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Wakes a waiting `pop_batch` for shutdown.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

/// A cheap estimate of a decoded message's memory: its strings and numbers, plus overhead.
pub fn item_size(fields: &Map<String, Value>) -> usize {
    fn walk(v: &Value) -> usize {
        match v {
            Value::String(s) => 24 + s.len(),
            Value::Number(_) => 32,
            Value::Array(a) => 24 + a.iter().map(walk).sum::<usize>(),
            Value::Object(m) => 64 + m.iter().map(|(k, v)| 24 + k.len() + walk(v)).sum::<usize>(),
            _ => 8,
        }
    }
    64 + fields
        .iter()
        .map(|(k, v)| 24 + k.len() + walk(v))
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u64) -> Captured {
        let mut fields = Map::new();
        fields.insert("n".into(), Value::Number(n.into()));
        Captured {
            topic: 0,
            captured_at: format!("t{n}"),
            size: item_size(&fields),
            fields,
            origin: None,
        }
    }

    fn config(memory: u64, disk: u64, overflow: Overflow) -> QueueConfig {
        QueueConfig {
            memory_bytes: memory,
            disk_bytes: disk,
            overflow,
        }
    }

    fn drain(b: &Backlog) -> Vec<u64> {
        let mut out = Vec::new();
        loop {
            let batch = b
                .pop_batch(7, usize::MAX, Duration::ZERO, Duration::ZERO)
                .unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch.iter().map(|c| c.fields["n"].as_u64().unwrap()));
        }
    }

    #[test]
    fn spills_to_disk_in_order_and_returns_to_memory() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backlog::new(dir.path(), config(1000, 1 << 20, Overflow::Pause), 3).unwrap();
        for n in 0..100 {
            assert_eq!(b.push(item(n)).unwrap(), Pushed::Queued);
        }
        assert!(b.depth().disk_bytes > 0);
        assert_eq!(b.depth().messages, 100);
        let on_disk = std::fs::read(dir.path().join("queue.bin")).unwrap();
        assert!(
            !on_disk.windows(3).any(|w| w == b"t99"),
            "a queued message is on disk in clear"
        );
        assert_eq!(drain(&b), (0..100).collect::<Vec<_>>());
        assert!(!dir.path().join("queue.bin").exists());
        b.push(item(7)).unwrap();
        assert_eq!(b.depth().disk_bytes, 0);
        assert_eq!(drain(&b), vec![7]);
    }

    #[test]
    fn overflow_policies() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backlog::new(dir.path(), config(0, 200, Overflow::Pause), 3).unwrap();
        let mut queued = 0;
        while b.push(item(queued)).unwrap() == Pushed::Queued {
            queued += 1;
        }
        assert!(queued > 0);
        assert_eq!(drain(&b), (0..queued).collect::<Vec<_>>());

        let b = Backlog::new(dir.path(), config(0, 200, Overflow::DropOldest), 3).unwrap();
        let mut dropped = 0;
        for n in 0..50 {
            if let Pushed::QueuedDropping(d) = b.push(item(n)).unwrap() {
                dropped += d;
            }
        }
        let kept = drain(&b);
        assert_eq!(kept.len() + dropped, 50);
        assert_eq!(*kept.last().unwrap(), 49);
        assert!(kept.windows(2).all(|w| w[0] + 1 == w[1]), "{kept:?}");
    }
}
