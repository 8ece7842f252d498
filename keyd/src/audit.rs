//! The audit log: one JSON line per request, each carrying the SHA-256 of the line
//! before it, so an edited, inserted or deleted line breaks the chain at that point.
//! Never a secret: operation, key name, batch size, result, timing and the caller.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    record: &'a Record<'a>,
    prev: &'a str,
}

/// An append-only, hash-chained log.
#[derive(Debug)]
pub struct AuditLog {
    file: File,
    prev: String,
}

impl AuditLog {
    /// Opens `path` for appending, continuing the chain from its last line.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let prev = match File::open(path) {
            Ok(file) => BufReader::new(file)
                .lines()
                .map_while(Result::ok)
                .filter(|l| !l.is_empty())
                .last()
                .map_or_else(|| GENESIS.to_string(), |l| line_hash(&l)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => GENESIS.to_string(),
            Err(e) => return Err(e),
        };
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o640);
        }
        Ok(AuditLog {
            file: options.open(path)?,
            prev,
        })
    }

    /// Appends one record (a single write of the whole line).
    pub fn append(&mut self, record: &Record<'_>) -> std::io::Result<()> {
        let line = serde_json::to_string(&Line {
            record,
            prev: &self.prev,
        })
        .map_err(std::io::Error::other)?;
        let mut bytes = line.clone().into_bytes();
        bytes.push(b'\n');
        self.file.write_all(&bytes)?;
        self.prev = line_hash(&line);
        Ok(())
    }

    /// Flushes the log to stable storage.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

fn line_hash(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

/// Why an audit log does not verify: the first bad line (1-based).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("line {line}: {reason}")]
    Broken { line: usize, reason: String },
}

/// Checks the whole chain; returns the number of lines.
pub fn verify(path: &Path) -> Result<usize, AuditError> {
    let file = File::open(path).map_err(|e| AuditError::Read(path.display().to_string(), e))?;
    let mut prev = GENESIS.to_string();
    let mut count = 0;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let number = i + 1;
        let line = line.map_err(|e| AuditError::Read(path.display().to_string(), e))?;
        let broken = |reason: String| AuditError::Broken {
            line: number,
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| broken(format!("not JSON: {e}")))?;
        let claimed = value
            .get("prev")
            .and_then(|v| v.as_str())
            .ok_or_else(|| broken("no prev hash".into()))?;
        if claimed != prev {
            return Err(broken(format!(
                "prev hash {claimed} does not match the line before ({prev}): this line or the one before was edited, inserted or deleted"
            )));
        }
        prev = line_hash(&line);
        count = number;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(op: &str) -> Record<'_> {
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
        }
    }

    #[test]
    fn chain_catches_edits_and_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        for op in ["a", "b", "c"] {
            log.append(&record(op)).unwrap();
        }
        drop(log);
        let mut log = AuditLog::open(&path).unwrap(); // continues the chain
        log.append(&record("d")).unwrap();
        assert_eq!(verify(&path).unwrap(), 4);

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(
            &path,
            format!(
                "{}\n{}\n{}\n{}\n",
                lines[0],
                lines[1].replace("\"batch\":3", "\"batch\":4"),
                lines[2],
                lines[3]
            ),
        )
        .unwrap();
        assert!(matches!(
            verify(&path),
            Err(AuditError::Broken { line: 3, .. })
        ));
        std::fs::write(&path, format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3])).unwrap();
        assert!(matches!(
            verify(&path),
            Err(AuditError::Broken { line: 2, .. })
        ));
    }
}
