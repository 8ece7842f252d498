//! Where an import stands, so that a killed import resumes without a package twice.
//!
//! `import.journal` in the import's spool directory: a header line (the bag, the map's
//! topics, and per topic how many of its messages are known to be in the chain), then one
//! line per signed batch, appended and synced before the batch goes to the spools: which
//! bag messages (by ordinal: the position among the bag's messages of the map's topics)
//! got which sequence numbers. On resume, a journaled message is in the chain if its
//! sequence number is at most the last one of its topic's spool and chain; per topic these
//! are a prefix, so the header's counts say everything, and the journal is rewritten with
//! them before anything new is signed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use stream::layout::Durability;

/// The journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl JournalError {
    /// Whether this failed only because the disk is full (a record that failed so was
    /// undone: the same call succeeds once space returns).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, JournalError::Io { source, .. } if crate::spool::is_disk_full(source))
    }
}

/// The journal's first line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The bag, as given when the import started.
    pub bag: String,
    /// The bag's storage files' total size then: a changed bag is not resumed.
    pub bag_bytes: u64,
    /// The map's topics, in order: the ordinals count their messages.
    pub topics: Vec<String>,
    /// Per topic: its first messages (by ordinal) below this are in the chain.
    pub next: BTreeMap<String, u64>,
    /// Every message is in the chain and every chunk committed.
    pub done: bool,
}

/// A signed batch: bag messages `ordinal..ordinal + count` got sequence numbers
/// `sequence..sequence + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    #[serde(rename = "o")]
    pub ordinal: u64,
    #[serde(rename = "s")]
    pub sequence: u64,
    #[serde(rename = "n")]
    pub count: u64,
}

/// An import's journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    header: Header,
    runs: Vec<Run>,
    file: Mutex<File>,
}

impl Journal {
    /// Opens the journal at `path`, or starts one for `bag` and `topics`. Refuses one that
    /// was started with other topics (the ordinals would not mean the same messages).
    pub fn open(
        path: &Path,
        bag: &str,
        bag_bytes: u64,
        topics: &[String],
    ) -> Result<Journal, JournalError> {
        let io = |source| JournalError::Io {
            path: path.display().to_string(),
            source,
        };
        let invalid = |line: usize, reason: String| JournalError::Invalid {
            path: format!("{}:{line}", path.display()),
            reason,
        };
        let (header, runs) = match std::fs::read(path) {
            Ok(bytes) => {
                let mut lines = bytes
                    .split_inclusive(|b| *b == b'\n')
                    .enumerate()
                    .peekable();
                let header: Header = match lines.next() {
                    Some((_, line)) if line.ends_with(b"\n") => serde_json::from_slice(line)
                        .map_err(|e| invalid(1, format!("not a journal header: {e}")))?,
                    _ => return Err(invalid(1, "no header line".into())),
                };
                let mut runs = Vec::new();
                while let Some((i, line)) = lines.next() {
                    match serde_json::from_slice::<Run>(line) {
                        Ok(run) if line.ends_with(b"\n") => runs.push(run),
                        // The last line, cut by a crash while it was written: never synced, so
                        // its batch never reached a spool.
                        _ if lines.peek().is_none() => break,
                        Err(e) => return Err(invalid(i + 1, e.to_string())),
                        Ok(_) => return Err(invalid(i + 1, "a line without its end".into())),
                    }
                }
                if header.bag_bytes != bag_bytes {
                    return Err(invalid(
                        1,
                        format!(
                            "this import started with a bag of {} bytes, {bag} now has {bag_bytes}: the bag changed; remove {} to import it anew",
                            header.bag_bytes,
                            path.parent().unwrap_or(path).display()
                        ),
                    ));
                }
                if header.topics != topics {
                    return Err(invalid(
                        1,
                        format!(
                            "this import started with the topics {:?}, the map now has {:?}: finish it with the map it started with, or remove {} to start over",
                            header.topics,
                            topics,
                            path.parent().unwrap_or(path).display()
                        ),
                    ));
                }
                (header, runs)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let header = Header {
                    bag: bag.to_string(),
                    bag_bytes,
                    topics: topics.to_vec(),
                    next: topics.iter().map(|t| (t.clone(), 0)).collect(),
                    done: false,
                };
                write_header(path, &header)?;
                (header, Vec::new())
            }
            Err(e) => return Err(io(e)),
        };
        let file = append(path)?;
        Ok(Journal {
            path: path.to_path_buf(),
            header,
            runs,
            file: Mutex::new(file),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The batches signed since the header was last written, in order.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Rewrites the journal as `next` and nothing signed since (atomically).
    pub fn restart(&mut self, next: BTreeMap<String, u64>) -> Result<(), JournalError> {
        let header = Header {
            next,
            ..self.header.clone()
        };
        write_header(&self.path, &header)?;
        *self.file.get_mut().unwrap_or_else(|e| e.into_inner()) = append(&self.path)?;
        self.header = header;
        self.runs.clear();
        Ok(())
    }

    /// Marks the import complete.
    pub fn finish(&mut self) -> Result<(), JournalError> {
        let header = Header {
            done: true,
            ..self.header.clone()
        };
        write_header(&self.path, &header)?;
        self.header = header;
        Ok(())
    }

    /// Records a signed batch (`ordinals[i]` got `first_sequence + i`), synced. A record that
    /// fails is cut off again, so that a retry appends to whole lines.
    pub fn record(&self, ordinals: &[u64], first_sequence: u64) -> Result<(), JournalError> {
        let mut text = String::new();
        let mut i = 0;
        while i < ordinals.len() {
            let mut n = 1;
            while i + n < ordinals.len() && ordinals[i + n] == ordinals[i] + n as u64 {
                n += 1;
            }
            let run = Run {
                ordinal: ordinals[i],
                sequence: first_sequence + i as u64,
                count: n as u64,
            };
            // Numbers only: serialization cannot fail.
            text.push_str(&serde_json::to_string(&run).unwrap_or_default());
            text.push('\n');
            i += n;
        }
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let io = |source| JournalError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let len = file.metadata().map_err(io)?.len();
        match file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_data())
        {
            Ok(()) => Ok(()),
            Err(source) => {
                // Shrinking needs no space. If even that fails, the journal cannot be trusted
                // to end in whole lines: not a pause but an error.
                if let Err(cut) = file.set_len(len) {
                    return Err(io(std::io::Error::other(format!(
                        "{source}; and cutting off the failed record failed: {cut}"
                    ))));
                }
                Err(io(source))
            }
        }
    }
}

fn write_header(path: &Path, header: &Header) -> Result<(), JournalError> {
    let mut line = serde_json::to_vec(header).unwrap_or_default();
    line.push(b'\n');
    stream::fsio::write_atomic(path, &line, Durability::Synced).map_err(|source| JournalError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn append(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new()
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| JournalError::Io {
            path: path.display().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_survive_a_torn_line_and_restart_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("import.journal");
        let topics = vec!["/a".to_string(), "/b".to_string()];
        let j = Journal::open(&path, "bag", 9, &topics).unwrap();
        j.record(&[0, 1, 2, 5, 6], 100).unwrap();
        drop(j);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"o\":7,\"s\":1");
        std::fs::write(&path, bytes).unwrap();
        let mut j = Journal::open(&path, "bag", 9, &topics).unwrap();
        assert_eq!(
            j.runs(),
            [
                Run {
                    ordinal: 0,
                    sequence: 100,
                    count: 3
                },
                Run {
                    ordinal: 5,
                    sequence: 103,
                    count: 2
                }
            ]
        );
        j.restart([("/a".into(), 3), ("/b".into(), 1)].into())
            .unwrap();
        j.record(&[9], 200).unwrap();
        drop(j);
        let j = Journal::open(&path, "bag", 9, &topics).unwrap();
        assert_eq!(j.header().next["/a"], 3);
        assert_eq!(
            j.runs(),
            [Run {
                ordinal: 9,
                sequence: 200,
                count: 1
            }]
        );

        let e = Journal::open(&path, "bag", 10, &topics).unwrap_err();
        assert!(e.to_string().contains("the bag changed"), "{e}");
        let e = Journal::open(&path, "bag", 9, &["/a".to_string()]).unwrap_err();
        assert!(e.to_string().contains("started with the topics"), "{e}");
        std::fs::write(&path, b"{\"bag\":1}\n").unwrap();
        let e = Journal::open(&path, "bag", 9, &topics).unwrap_err();
        assert!(e.to_string().contains("import.journal:1"), "{e}");
    }
}
