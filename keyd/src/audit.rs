//! The audit log: one JSON line per request, keyed so that only keyd can extend it.
//!
//! Each line carries its number `n`, the MAC of the line before (`prev`) and its own `mac`:
//! HMAC-SHA256, under a key that never leaves keyd ([`crate::backend::Backend::audit_key`]),
//! of the line without its `mac`. An edited, inserted, deleted or rewritten line breaks the
//! chain, and without the key no one can write a new chain that verifies. A checkpoint in
//! keyd's state directory (`audit.checkpoint`, MACed too) holds the length and head of the
//! log at its last fsync, so cutting the tail is noticed as well; only the records written
//! since the last fsync (at most `audit_fsync_ms`) can be lost unnoticed, by a power cut.
//!
//! Records never hold a secret: operation, key name, batch size, result, timing, the caller,
//! and for grants the buyer and the chunk ids.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use stream::fsio::{self, Durability};
use stream::keys::Secret32;

/// The `prev` of the first line.
pub const GENESIS: [u8; 32] = [0; 32];

/// One audited request.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub time: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    /// TCP callers: SHA-256 of the client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<&'a str>,
    pub op: &'a str,
    pub key: &'a str,
    pub batch: usize,
    pub result: &'a str,
    pub latency_us: u64,
    /// Grants: who the keys were sealed to, and for which chunks; dataset signatures: what
    /// the dataset lists.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Detail<'a>>,
}

/// What an operation gave away, recorded with it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Detail<'a> {
    Grant(GrantRecord<'a>),
    Dataset(DatasetRecord<'a>),
}

/// What a signed dataset lists: the topic, the chunk range and the root.
#[derive(Debug, Serialize)]
pub struct DatasetRecord<'a> {
    pub topic: &'a str,
    pub first_index: u64,
    pub last_index: u64,
    pub merkle_root: &'a str,
}

/// What a grant gave away: the buyer's id and key, and the chunk ids.
#[derive(Debug, Serialize)]
pub struct GrantRecord<'a> {
    pub buyer_id: &'a str,
    pub buyer_public_key_hex: &'a str,
    pub chunk_ids: Vec<&'a str>,
}

impl Record<'_> {
    /// The record as a JSON object, serialized outside the log's lock.
    pub fn to_json(&self) -> String {
        // A record holds only strings and numbers: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// Why the audit log cannot be opened or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {reason}")]
    Broken {
        path: String,
        line: u64,
        reason: String,
    },
    #[error("{path}: truncated: the checkpoint says {expected} lines ({bytes} bytes), the log has {found}")]
    Truncated {
        path: String,
        expected: u64,
        bytes: u64,
        found: u64,
    },
    #[error("{path}: line {line} is not the line the checkpoint recorded: the log was rewritten")]
    Rewritten { path: String, line: u64 },
    #[error("{path}: the checkpoint is unreadable or was not written with this machine's keys: {reason}")]
    Checkpoint { path: String, reason: String },
}

type HmacSha256 = Hmac<Sha256>;

/// The MAC chain's key, ready to use.
#[derive(Clone)]
pub struct AuditKey(HmacSha256);

impl AuditKey {
    pub fn new(key: &Secret32) -> Self {
        // HMAC takes keys of any length.
        AuditKey(HmacSha256::new_from_slice(key.expose()).expect("HMAC accepts any key length"))
    }
    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(<redacted>)")
    }
}

/// `audit.checkpoint`: the log's length and head at its last fsync.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Checkpoint {
    lines: u64,
    bytes: u64,
    head: String,
    mac: String,
}

impl Checkpoint {
    fn mac_of(key: &AuditKey, lines: u64, bytes: u64, head: &str) -> String {
        hex::encode(key.mac(&[
            b"keyd audit checkpoint|",
            lines.to_string().as_bytes(),
            b"|",
            bytes.to_string().as_bytes(),
            b"|",
            head.as_bytes(),
        ]))
    }
}

/// Where the checkpoint lives in a state directory.
pub fn checkpoint_path(state_dir: &Path) -> PathBuf {
    state_dir.join("audit.checkpoint")
}

/// The suffix every line ends with: `,"mac":"` + 64 hex digits + `"}`.
const MAC_SUFFIX_LEN: usize = 8 + 64 + 2;

/// One line checked: its number, MAC and the `prev` it names.
struct CheckedLine {
    n: u64,
    prev: [u8; 32],
    mac: [u8; 32],
}

#[derive(Deserialize)]
struct Chained {
    n: u64,
    prev: String,
}

fn check_line(key: &AuditKey, line: &[u8]) -> Result<CheckedLine, String> {
    let len = line.len();
    if len < MAC_SUFFIX_LEN + 2
        || !line.ends_with(b"\"}")
        || line[len - MAC_SUFFIX_LEN..].get(..8) != Some(b",\"mac\":\"")
    {
        return Err("no MAC (not a line of keyd's keyed audit chain)".into());
    }
    let mac_hex = &line[len - 66..len - 2];
    let mut mac = [0u8; 32];
    hex::decode_to_slice(mac_hex, &mut mac).map_err(|_| "MAC is not hex".to_string())?;
    let unsigned_body = &line[..len - MAC_SUFFIX_LEN];
    if key.mac(&[unsigned_body, b"}"]) != mac {
        return Err(
            "MAC does not verify: the line was edited, or written without keyd's key".into(),
        );
    }
    let mut unsigned = unsigned_body.to_vec();
    unsigned.push(b'}');
    let chained: Chained =
        serde_json::from_slice(&unsigned).map_err(|e| format!("not a record: {e}"))?;
    let mut prev = [0u8; 32];
    hex::decode_to_slice(&chained.prev, &mut prev).map_err(|_| "prev is not hex".to_string())?;
    Ok(CheckedLine {
        n: chained.n,
        prev,
        mac,
    })
}

/// Walks complete lines of `bytes` (starting at line `first_n`, after `prev`), checking
/// each; returns the last line's number and MAC, and the offset after the last newline.
fn check_lines(
    path: &Path,
    key: &AuditKey,
    bytes: &[u8],
    mut n: u64,
    mut prev: [u8; 32],
) -> Result<(u64, [u8; 32], usize), AuditError> {
    let mut offset = 0;
    while let Some(end) = bytes[offset..].iter().position(|&b| b == b'\n') {
        let line = &bytes[offset..offset + end];
        n += 1;
        let broken = |reason: String| AuditError::Broken {
            path: path.display().to_string(),
            line: n,
            reason,
        };
        let checked = check_line(key, line).map_err(broken)?;
        if checked.n != n {
            return Err(broken(format!(
                "numbered {} where line {n} belongs: lines were deleted, inserted or reordered",
                checked.n
            )));
        }
        if checked.prev != prev {
            return Err(broken(
                "prev does not name the line before: this line or the one before was replaced"
                    .into(),
            ));
        }
        prev = checked.mac;
        offset += end + 1;
    }
    Ok((n, prev, offset))
}

fn read_checkpoint(path: &Path, key: &AuditKey) -> Result<Option<Checkpoint>, AuditError> {
    let bad = |reason: String| AuditError::Checkpoint {
        path: path.display().to_string(),
        reason,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let checkpoint: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if Checkpoint::mac_of(key, checkpoint.lines, checkpoint.bytes, &checkpoint.head)
        != checkpoint.mac
    {
        return Err(bad("its MAC does not verify".into()));
    }
    Ok(Some(checkpoint))
}

/// An append-only, keyed, checkpointed log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    checkpoint: PathBuf,
    file: File,
    key: AuditKey,
    prev: [u8; 32],
    lines: u64,
    bytes: u64,
    /// Lines written since the last fsync.
    dirty: bool,
    /// A failed write or sync: the log may be torn, so nothing more is answered.
    broken: Option<String>,
}

/// The result of reading a whole log: its length and how much the checkpoint covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub lines: u64,
    /// Lines covered by the checkpoint (fsynced); `None` without a checkpoint.
    pub checkpointed: Option<u64>,
}

impl AuditLog {
    /// Opens `path` for appending: cuts a line torn by a crash, checks the chain from the
    /// checkpoint on (the whole log without one), and refuses a log that was truncated or
    /// rewritten.
    pub fn open(path: &Path, checkpoint: &Path, key: &Secret32) -> Result<Self, AuditError> {
        let key = AuditKey::new(key);
        let io = |source| AuditError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut options = OpenOptions::new();
        options.create(true).read(true).append(true);
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o640);
        }
        let mut file = options.open(path).map_err(io)?;
        let length = file.metadata().map_err(io)?.len();
        let saved = read_checkpoint(checkpoint, &key)?;
        let (start_n, start_prev, start_at) = match &saved {
            Some(c) => {
                if length < c.bytes {
                    return Err(AuditError::Truncated {
                        path: path.display().to_string(),
                        expected: c.lines,
                        bytes: c.bytes,
                        found: count_lines(&mut file).map_err(io)?,
                    });
                }
                let mut head = [0u8; 32];
                hex::decode_to_slice(&c.head, &mut head).map_err(|_| AuditError::Checkpoint {
                    path: checkpoint.display().to_string(),
                    reason: "head is not hex".into(),
                })?;
                if c.lines > 0 && last_line_mac(&mut file, c.bytes).map_err(io)? != Some(head) {
                    return Err(AuditError::Rewritten {
                        path: path.display().to_string(),
                        line: c.lines,
                    });
                }
                (c.lines, head, c.bytes)
            }
            None => (0, GENESIS, 0),
        };
        let mut tail = Vec::new();
        file.seek(SeekFrom::Start(start_at)).map_err(io)?;
        file.read_to_end(&mut tail).map_err(io)?;
        let (lines, prev, complete) = check_lines(path, &key, &tail, start_n, start_prev)?;
        let bytes = start_at + complete as u64;
        if (complete as u64) < tail.len() as u64 {
            tracing::warn!(
                log = %path.display(),
                torn_bytes = tail.len() - complete,
                "the audit log's last line was torn by a crash: cut"
            );
            file.set_len(bytes).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        Ok(AuditLog {
            path: path.to_path_buf(),
            checkpoint: checkpoint.to_path_buf(),
            file,
            key,
            prev,
            lines,
            bytes,
            dirty: saved.as_ref().is_none_or(|c| c.lines != lines),
            broken: None,
        })
    }

    /// Appends one record (`record` is [`Record::to_json`]) as a single write. An error means
    /// the record is not in the log: the request must get no result, and nor will any later
    /// one until keyd restarts (and repairs the tail).
    pub fn append(&mut self, record: &str) -> Result<(), String> {
        if let Some(reason) = &self.broken {
            return Err(reason.clone());
        }
        let body = record.strip_suffix('}').unwrap_or("{");
        let n = self.lines + 1;
        let mut line = String::with_capacity(body.len() + 180);
        line.push_str(body);
        if body.len() > 1 {
            line.push(',');
        }
        line.push_str("\"n\":");
        line.push_str(&n.to_string());
        line.push_str(",\"prev\":\"");
        line.push_str(&hex::encode(self.prev));
        line.push('"');
        let mac = self.key.mac(&[line.as_bytes(), b"}"]);
        line.push_str(",\"mac\":\"");
        line.push_str(&hex::encode(mac));
        line.push_str("\"}\n");
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            let reason = format!("cannot write the audit log {}: {e}", self.path.display());
            self.broken = Some(reason.clone());
            return Err(reason);
        }
        self.prev = mac;
        self.lines = n;
        self.bytes += line.len() as u64;
        self.dirty = true;
        Ok(())
    }

    /// Makes every appended line durable and records the checkpoint. An error breaks the
    /// log (nothing more is answered).
    pub fn sync(&mut self) -> Result<(), String> {
        if let Some(reason) = &self.broken {
            return Err(reason.clone());
        }
        if !self.dirty {
            return Ok(());
        }
        let result = self.file.sync_data().and_then(|()| {
            let head = hex::encode(self.prev);
            let checkpoint = Checkpoint {
                lines: self.lines,
                bytes: self.bytes,
                mac: Checkpoint::mac_of(&self.key, self.lines, self.bytes, &head),
                head,
            };
            let body = serde_json::to_vec(&checkpoint).map_err(std::io::Error::other)?;
            fsio::write_atomic(&self.checkpoint, &body, Durability::Synced)
        });
        match result {
            Ok(()) => {
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                let reason = format!("cannot sync the audit log {}: {e}", self.path.display());
                self.broken = Some(reason.clone());
                Err(reason)
            }
        }
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }
}

fn count_lines(file: &mut File) -> std::io::Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    let mut count = 0u64;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(count);
        }
        count += buffer[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// The MAC written at the end of the line that ends at byte `end` (just after its newline).
fn last_line_mac(file: &mut File, end: u64) -> std::io::Result<Option<[u8; 32]>> {
    // `,"mac":"<64 hex>"}\n`: the 67 bytes before the newline's predecessor.
    if end < MAC_SUFFIX_LEN as u64 + 1 {
        return Ok(None);
    }
    let mut tail = [0u8; MAC_SUFFIX_LEN + 1];
    file.seek(SeekFrom::Start(end - tail.len() as u64))?;
    file.read_exact(&mut tail)?;
    if !tail.starts_with(b",\"mac\":\"") || !tail.ends_with(b"\"}\n") {
        return Ok(None);
    }
    let mut mac = [0u8; 32];
    Ok(hex::decode_to_slice(&tail[8..72], &mut mac)
        .ok()
        .map(|()| mac))
}

/// Checks a whole log against `key` and, when there is one, its checkpoint: every line's
/// MAC, number and link, and that the log still holds what the checkpoint recorded.
pub fn verify(path: &Path, checkpoint: &Path, key: &Secret32) -> Result<Verified, AuditError> {
    let key = AuditKey::new(key);
    let io = |source| AuditError::Io {
        path: path.display().to_string(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io)?;
    let saved = read_checkpoint(checkpoint, &key)?;
    let (lines, _, complete) = check_lines(path, &key, &bytes, 0, GENESIS)?;
    if complete < bytes.len() {
        return Err(AuditError::Broken {
            path: path.display().to_string(),
            line: lines + 1,
            reason: "torn (no newline): keyd cuts it at its next start".into(),
        });
    }
    let checkpointed = match saved {
        None => None,
        Some(c) => {
            if lines < c.lines || (bytes.len() as u64) < c.bytes {
                return Err(AuditError::Truncated {
                    path: path.display().to_string(),
                    expected: c.lines,
                    bytes: c.bytes,
                    found: lines,
                });
            }
            let mut file = File::open(path).map_err(io)?;
            let head = last_line_mac(&mut file, c.bytes).map_err(io)?;
            if c.lines > 0 && head.map(hex::encode).as_deref() != Some(c.head.as_str()) {
                return Err(AuditError::Rewritten {
                    path: path.display().to_string(),
                    line: c.lines,
                });
            }
            Some(c.lines)
        }
    };
    Ok(Verified {
        lines,
        checkpointed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(op: &str) -> String {
        Record {
            time: "t".into(),
            uid: Some(1),
            gid: Some(1),
            pid: Some(2),
            client_cert: None,
            op,
            key: "identity",
            batch: 3,
            result: "ok",
            latency_us: 10,
            detail: None,
        }
        .to_json()
    }

    struct Log {
        _dir: tempfile::TempDir,
        path: PathBuf,
        checkpoint: PathBuf,
        key: Secret32,
    }

    fn log_of(ops: &[&str]) -> Log {
        log_with_key(ops, 7)
    }

    fn log_with_key(ops: &[&str], key: u8) -> Log {
        let dir = tempfile::tempdir().unwrap();
        let log = Log {
            path: dir.path().join("audit.jsonl"),
            checkpoint: dir.path().join("audit.checkpoint"),
            key: Secret32::from_bytes([key; 32]),
            _dir: dir,
        };
        let mut audit = AuditLog::open(&log.path, &log.checkpoint, &log.key).unwrap();
        for op in ops {
            audit.append(&record(op)).unwrap();
        }
        audit.sync().unwrap();
        log
    }

    #[test]
    fn chain_continues_across_opens_and_verifies() {
        let log = log_of(&["a", "b", "c"]);
        let mut audit = AuditLog::open(&log.path, &log.checkpoint, &log.key).unwrap();
        audit.append(&record("d")).unwrap();
        audit.sync().unwrap();
        assert_eq!(
            verify(&log.path, &log.checkpoint, &log.key).unwrap(),
            Verified {
                lines: 4,
                checkpointed: Some(4)
            }
        );
    }

    #[test]
    fn edits_deletions_and_rewrites_are_caught() {
        let log = log_of(&["a", "b", "c", "d"]);
        let text = std::fs::read_to_string(&log.path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let write = |kept: &[String]| std::fs::write(&log.path, kept.join("\n") + "\n").unwrap();
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

        let mut edited = own(&lines);
        edited[1] = edited[1].replace("\"batch\":3", "\"batch\":4");
        write(&edited);
        let err = verify(&log.path, &log.checkpoint, &log.key).unwrap_err();
        assert!(matches!(err, AuditError::Broken { line: 2, .. }), "{err}");

        write(&own(&[lines[0], lines[2], lines[3]]));
        let err = verify(&log.path, &log.checkpoint, &log.key).unwrap_err();
        assert!(matches!(err, AuditError::Broken { line: 2, .. }), "{err}");

        // The tail cut: every line left verifies, the checkpoint does not.
        write(&own(&lines[..2]));
        let err = verify(&log.path, &log.checkpoint, &log.key).unwrap_err();
        assert!(
            matches!(
                err,
                AuditError::Truncated {
                    expected: 4,
                    found: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(AuditLog::open(&log.path, &log.checkpoint, &log.key).is_err());

        // A whole new log written by someone without the key.
        let other = log_with_key(&["x", "y", "z", "w", "v"], 8);
        std::fs::copy(&other.path, &log.path).unwrap();
        let err = verify(&log.path, &log.checkpoint, &log.key).unwrap_err();
        assert!(matches!(err, AuditError::Broken { line: 1, .. }), "{err}");
        // Or with the key, but not the history the checkpoint recorded.
        let mut rewritten = AuditLog::open(
            &log.path.with_extension("new"),
            &log.path.with_extension("cp"),
            &log.key,
        )
        .unwrap();
        for op in ["p", "q", "r", "s", "t"] {
            rewritten.append(&record(op)).unwrap();
        }
        std::fs::copy(log.path.with_extension("new"), &log.path).unwrap();
        let err = verify(&log.path, &log.checkpoint, &log.key).unwrap_err();
        assert!(
            matches!(err, AuditError::Rewritten { line: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_torn_last_line_is_cut_on_open() {
        let log = log_of(&["a", "b"]);
        let mut file = OpenOptions::new().append(true).open(&log.path).unwrap();
        file.write_all(b"{\"time\":\"t\",\"op\":\"c").unwrap();
        drop(file);
        assert!(verify(&log.path, &log.checkpoint, &log.key).is_err());
        let mut audit = AuditLog::open(&log.path, &log.checkpoint, &log.key).unwrap();
        assert_eq!(audit.lines(), 2);
        audit.append(&record("c")).unwrap();
        audit.sync().unwrap();
        assert_eq!(
            verify(&log.path, &log.checkpoint, &log.key).unwrap().lines,
            3
        );
    }

    #[test]
    fn another_key_verifies_nothing() {
        let log = log_of(&["a"]);
        let other = Secret32::from_bytes([8; 32]);
        assert!(matches!(
            verify(&log.path, &log.checkpoint, &other),
            Err(AuditError::Checkpoint { .. })
        ));
        std::fs::remove_file(&log.checkpoint).unwrap();
        assert!(matches!(
            verify(&log.path, &log.checkpoint, &other),
            Err(AuditError::Broken { line: 1, .. })
        ));
    }
}
