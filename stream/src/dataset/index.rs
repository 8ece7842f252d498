//! What a chunk of signed packages holds, in brief: its package count, sequence numbers and
//! time span. The edge agent writes one line per chunk to `index.jsonl` beside its chain,
//! so that an owner can build a dataset by time without decrypting; anyone who can decrypt
//! computes the same from the plaintext.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::document::{instant, TimeRange};
use crate::json::{self, PyNumber, Value};
use crate::package::DataPackage;

/// The chunk index's file name, in the chain's directory.
pub const INDEX_FILE: &str = "index.jsonl";

/// One line of `index.jsonl`: chunk `index` and the packages it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChunkIndexEntry {
    /// The chunk's index.
    pub index: u64,
    /// The chunk's `chunkId`.
    pub chunk_id: String,
    /// The number of packages in it.
    pub packages: u64,
    /// The lowest `sequenceNumber`.
    pub first_sequence_number: u64,
    /// The highest `sequenceNumber`.
    pub last_sequence_number: u64,
    /// The earliest `timestamp`, as written.
    pub first_timestamp: String,
    /// The latest `timestamp`, as written.
    pub last_timestamp: String,
}

impl ChunkIndexEntry {
    /// The entry as one line, with its `\n`.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("an index entry always serializes");
        line.push('\n');
        line
    }
}

/// The packages of one or more chunks: count, sequence numbers and time span.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackageSpan {
    packages: u64,
    sequence: Option<(u64, u64)>,
    /// The earliest and latest timestamp, as written and as instants.
    times: Option<[(String, time::OffsetDateTime); 2]>,
}

/// Why a package line does not fit a span.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct SpanError {
    /// The line, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl PackageSpan {
    /// Adds one package by its timestamp (RFC 3339) and sequence number.
    pub fn add(&mut self, timestamp: &str, sequence: u64) -> Result<(), String> {
        let t = instant(timestamp)
            .ok_or_else(|| format!("timestamp {timestamp:?} is not an RFC 3339 time"))?;
        self.packages += 1;
        self.sequence = Some(match self.sequence {
            None => (sequence, sequence),
            Some((lo, hi)) => (lo.min(sequence), hi.max(sequence)),
        });
        match &mut self.times {
            None => self.times = Some([(timestamp.into(), t), (timestamp.into(), t)]),
            Some([from, to]) => {
                if t < from.1 {
                    *from = (timestamp.into(), t);
                }
                if t > to.1 {
                    *to = (timestamp.into(), t);
                }
            }
        }
        Ok(())
    }

    /// Adds an index entry's span.
    pub fn add_entry(&mut self, entry: &ChunkIndexEntry) -> Result<(), String> {
        let before = self.packages;
        self.add(&entry.first_timestamp, entry.first_sequence_number)?;
        self.add(&entry.last_timestamp, entry.last_sequence_number)?;
        self.packages = before + entry.packages;
        Ok(())
    }

    /// The number of packages.
    pub fn packages(&self) -> u64 {
        self.packages
    }

    /// The time the packages cover; `None` when there are none.
    pub fn time_range(&self) -> Option<TimeRange> {
        self.times.as_ref().map(|[from, to]| TimeRange {
            from: from.0.clone(),
            to: to.0.clone(),
        })
    }

    /// The entry of chunk `index` with this span; `None` when it holds no package.
    pub fn entry(&self, index: u64, chunk_id: &str) -> Option<ChunkIndexEntry> {
        let (first_sequence_number, last_sequence_number) = self.sequence?;
        let [(first_timestamp, _), (last_timestamp, _)] = self.times.clone()?;
        Some(ChunkIndexEntry {
            index,
            chunk_id: chunk_id.into(),
            packages: self.packages,
            first_sequence_number,
            last_sequence_number,
            first_timestamp,
            last_timestamp,
        })
    }
}

/// The timestamp and sequence number at the head of a package line as the edge agent and
/// `peaqos stream sign` write it (`{"did":…,"timestamp":…,"schemaVersion":…,
/// "sequenceNumber":…,`), without reading the payload; `None` for any other layout.
pub fn line_head(line: &[u8]) -> Option<(String, u64)> {
    fn value<T: serde::de::DeserializeOwned>(s: &[u8]) -> Option<(T, &[u8])> {
        let mut values = serde_json::Deserializer::from_slice(s).into_iter::<T>();
        let v = values.next()?.ok()?;
        Some((v, &s[values.byte_offset()..]))
    }
    let rest = line.strip_prefix(b"{\"did\":")?;
    let (_, rest) = value::<String>(rest)?;
    let (timestamp, rest) = value::<String>(rest.strip_prefix(b",\"timestamp\":")?)?;
    let (_, rest) = value::<serde::de::IgnoredAny>(rest.strip_prefix(b",\"schemaVersion\":")?)?;
    let (sequence, rest) = value::<u64>(rest.strip_prefix(b",\"sequenceNumber\":")?)?;
    rest.starts_with(b",").then_some((timestamp, sequence))
}

/// The span of a chunk plaintext of package lines, read from each line's head (see
/// [`line_head`]) or, for another layout, from the whole line. Nothing is verified.
pub fn span_of_lines(plaintext: &[u8]) -> Result<PackageSpan, SpanError> {
    let mut span = PackageSpan::default();
    for_each_line(plaintext, |line, text| {
        let (timestamp, sequence) = match line_head(text) {
            Some(head) => head,
            None => {
                let package = parse_package(text).map_err(|reason| SpanError { line, reason })?;
                (
                    timestamp_of(&package).map_err(|reason| SpanError { line, reason })?,
                    sequence_of(&package).map_err(|reason| SpanError { line, reason })?,
                )
            }
        };
        span.add(&timestamp, sequence)
            .map_err(|reason| SpanError { line, reason })
    })?;
    Ok(span)
}

/// Calls `each(line number, line)` for every line of `plaintext`, which must be whole
/// lines (each ending in `\n`) and not empty.
pub fn for_each_line(
    plaintext: &[u8],
    mut each: impl FnMut(usize, &[u8]) -> Result<(), SpanError>,
) -> Result<(), SpanError> {
    if plaintext.is_empty() {
        return Err(SpanError {
            line: 1,
            reason: "no package: the chunk is empty".into(),
        });
    }
    let mut lines = plaintext.split_inclusive(|b| *b == b'\n').enumerate();
    for (n, line) in &mut lines {
        let Some(text) = line.strip_suffix(b"\n") else {
            return Err(SpanError {
                line: n + 1,
                reason: "the chunk ends inside a line: it does not hold whole packages".into(),
            });
        };
        each(n + 1, text)?;
    }
    Ok(())
}

/// A package line as a package.
pub fn parse_package(line: &[u8]) -> Result<DataPackage, String> {
    let value = json::parse_slice(line).map_err(|e| format!("not a JSON package: {e}"))?;
    DataPackage::from_value(&value).map_err(|e| format!("not a package: {e}"))
}

/// A package's timestamp, which a dataset needs as a string.
pub fn timestamp_of(package: &DataPackage) -> Result<String, String> {
    package
        .timestamp
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "timestamp is not a string".to_string())
}

/// A package's sequence number as a non-negative integer.
pub fn sequence_of(package: &DataPackage) -> Result<u64, String> {
    match &package.sequence_number {
        Value::Number(n) => match json::py_number(n) {
            PyNumber::Int(text) => text
                .parse()
                .map_err(|_| format!("sequenceNumber {text} is not a non-negative 64-bit integer")),
            _ => Err("sequenceNumber is not an integer".into()),
        },
        _ => Err("sequenceNumber is not a number".into()),
    }
}

/// Why `index.jsonl` cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not an entry.
    #[error("{path}: line {line}: {reason}")]
    Line {
        /// The file.
        path: String,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// The entries of `dir/index.jsonl` by chunk index; `None` when there is no such file. A
/// torn last line (no `\n`) is ignored: the agent rewrites it on its next start.
pub fn read_index(
    dir: &Path,
) -> Result<Option<std::collections::BTreeMap<u64, ChunkIndexEntry>>, IndexError> {
    let path = dir.join(INDEX_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(IndexError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let mut entries = std::collections::BTreeMap::new();
    for (n, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
        let Some(text) = line.strip_suffix(b"\n") else {
            break;
        };
        let entry: ChunkIndexEntry =
            serde_json::from_slice(text).map_err(|e| IndexError::Line {
                path: path.display().to_string(),
                line: n + 1,
                reason: e.to_string(),
            })?;
        entries.insert(entry.index, entry);
    }
    Ok(Some(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_of_a_line_is_read_without_its_payload() {
        let line = br#"{"did":"did:peaq:0x00","timestamp":"2026-12-01T10:00:00.000001Z","schemaVersion":"1","sequenceNumber":42,"payload":{"a":[1,2"#;
        assert_eq!(
            line_head(line),
            Some(("2026-12-01T10:00:00.000001Z".into(), 42))
        );
        assert_eq!(line_head(br#"{"timestamp":"t","did":"x"}"#), None);
        let float =
            br#"{"did":"d","timestamp":"t","schemaVersion":"1","sequenceNumber":4.0,"payload":{}}"#;
        assert_eq!(line_head(float), None);
    }

    #[test]
    fn spans_take_the_earliest_and_latest_instant() {
        let mut span = PackageSpan::default();
        span.add("2026-12-01T10:00:05Z", 7).unwrap();
        span.add("2026-12-01T11:00:00+02:00", 3).unwrap();
        span.add("2026-12-01T10:00:09.5Z", 9).unwrap();
        assert!(span.add("yesterday", 1).is_err());
        let entry = span.entry(4, "0xid").unwrap();
        assert_eq!(entry.packages, 3);
        assert_eq!(
            (entry.first_sequence_number, entry.last_sequence_number),
            (3, 9)
        );
        assert_eq!(entry.first_timestamp, "2026-12-01T11:00:00+02:00");
        assert_eq!(entry.last_timestamp, "2026-12-01T10:00:09.5Z");
    }

    #[test]
    fn a_chunk_that_ends_inside_a_line_is_not_packages() {
        let err = for_each_line(b"{}\n{", |_, _| Ok(())).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(for_each_line(b"", |_, _| Ok(())).is_err());
    }
}
