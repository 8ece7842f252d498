//! Reading ROS 2 bags: MCAP (the default since Iron) and sqlite3 (`.db3`, Humble's default),
//! message by message in recording order, in bounded memory.
//!
//! A bag is a rosbag2 directory (its storage files in split order) or one storage file.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use mcap::records::Record;
use mcap::sans_io::linear_reader::{LinearReadEvent, LinearReader, LinearReaderOptions};

/// The largest MCAP record or chunk read (a message larger than this is an error).
pub const MAX_RECORD_BYTES: usize = 256 << 20;

/// A bag that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BagError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not an MCAP or sqlite3 bag (expected a rosbag2 directory, a .mcap or a .db3 file)"
    )]
    NotABag { path: String },
    #[error("{path}: {source}")]
    Mcap {
        path: String,
        #[source]
        source: mcap::McapError,
    },
    #[error("{path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: a record (opcode {opcode:#04x}) holds a length beyond its end: the file is damaged")]
    Damaged { path: String, opcode: u8 },
    #[error("{path}: message {index} names channel {channel}, which the file does not define")]
    UnknownChannel {
        path: String,
        index: u64,
        channel: u16,
    },
}

/// How a storage file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Mcap,
    Sqlite3,
}

/// One recorded message.
#[derive(Debug)]
pub struct BagMessage<'a> {
    pub topic: &'a str,
    /// As recorded, `pkg/msg/Name`.
    pub type_name: &'a str,
    /// `cdr` for ROS 2.
    pub encoding: &'a str,
    /// When it was recorded, nanoseconds since the Unix epoch.
    pub log_time_ns: u64,
    /// The serialized message (with its CDR encapsulation header).
    pub data: &'a [u8],
}

/// What a reader is told after each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// A bag's storage files, in order.
#[derive(Debug, Clone)]
pub struct Bag {
    pub path: PathBuf,
    pub files: Vec<(PathBuf, Storage)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BagError + '_ {
    move |source| BagError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn storage_of(path: &Path) -> Option<Storage> {
    match path.extension()?.to_str()? {
        "mcap" => Some(Storage::Mcap),
        "db3" => Some(Storage::Sqlite3),
        _ => None,
    }
}

/// rosbag2 names split files `<name>_<n>.<ext>`: order by `n`, then by name.
fn split_order(path: &Path) -> (u64, String) {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let n = stem
        .rsplit_once('_')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0);
    (n, stem.to_string())
}

impl Bag {
    /// A rosbag2 directory or a single `.mcap` / `.db3` file.
    pub fn open(path: &Path) -> Result<Bag, BagError> {
        let meta = std::fs::metadata(path).map_err(io(path))?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(path).map_err(io(path))? {
                let entry = entry.map_err(io(path))?;
                let p = entry.path();
                if let Some(s) = storage_of(&p) {
                    files.push((p, s));
                }
            }
            files.sort_by_key(|(p, _)| split_order(p));
            files
        } else {
            storage_of(path)
                .map(|s| vec![(path.to_path_buf(), s)])
                .unwrap_or_default()
        };
        if files.is_empty() {
            return Err(BagError::NotABag {
                path: path.display().to_string(),
            });
        }
        Ok(Bag {
            path: path.to_path_buf(),
            files,
        })
    }

    /// The storage files' total size in bytes.
    pub fn bytes(&self) -> Result<u64, BagError> {
        self.files
            .iter()
            .map(|(path, _)| Ok(std::fs::metadata(path).map_err(io(path))?.len()))
            .sum()
    }

    /// The bag's name: its directory's (or file's) name without extension.
    pub fn name(&self) -> String {
        let name = if self.path.is_dir() {
            self.path.file_name()
        } else {
            self.path.file_stem()
        };
        name.map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bag".into())
    }

    /// How much work reading it is, in the units `read` reports progress in (bytes of MCAP
    /// files, rows of sqlite3 ones).
    pub fn work(&self) -> Result<u64, BagError> {
        self.files
            .iter()
            .map(|(path, storage)| file_work(path, *storage))
            .sum()
    }

    /// Calls `each` with every message in recording order (file by file), and `progress`
    /// with the work done so far, until `each` says stop.
    pub fn read<E: From<BagError>>(
        &self,
        mut each: impl FnMut(&Path, BagMessage<'_>) -> Result<Flow, E>,
        mut progress: impl FnMut(u64),
    ) -> Result<Flow, E> {
        let mut done = 0;
        for (path, storage) in &self.files {
            let flow = match storage {
                Storage::Mcap => read_mcap(path, &mut each, &mut |n| progress(done + n))?,
                Storage::Sqlite3 => read_sqlite(path, &mut each, &mut |n| progress(done + n))?,
            };
            if flow == Flow::Stop {
                return Ok(Flow::Stop);
            }
            done += file_work(path, *storage)?;
        }
        Ok(Flow::Continue)
    }
}

fn file_work(path: &Path, storage: Storage) -> Result<u64, BagError> {
    Ok(match storage {
        Storage::Mcap => std::fs::metadata(path).map_err(io(path))?.len(),
        Storage::Sqlite3 => open_db(path)?
            .query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))
            .map_err(sqlite(path))?
            .max(0) as u64,
    })
}

fn sqlite(path: &Path) -> impl FnOnce(rusqlite::Error) -> BagError + '_ {
    move |source| BagError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

fn open_db(path: &Path) -> Result<rusqlite::Connection, BagError> {
    rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite(path))
}

fn read_sqlite<E: From<BagError>>(
    path: &Path,
    each: &mut impl FnMut(&Path, BagMessage<'_>) -> Result<Flow, E>,
    progress: &mut impl FnMut(u64),
) -> Result<Flow, E> {
    let db = open_db(path)?;
    let mut statement = db
        .prepare(
            "SELECT t.name, t.type, t.serialization_format, m.timestamp, m.data \
             FROM messages m JOIN topics t ON t.id = m.topic_id ORDER BY m.id",
        )
        .map_err(sqlite(path))?;
    let mut rows = statement.query([]).map_err(sqlite(path))?;
    let mut n = 0u64;
    while let Some(row) = rows.next().map_err(sqlite(path))? {
        let at = |e: rusqlite::Error| BagError::Sqlite {
            path: format!("{} (message row {})", path.display(), n + 1),
            source: e,
        };
        let text = |i: usize| -> Result<&str, BagError> {
            row.get_ref(i)
                .and_then(|v| v.as_str().map_err(Into::into))
                .map_err(at)
        };
        let (topic, type_name, encoding) = (text(0)?, text(1)?, text(2)?);
        let timestamp: i64 = row.get(3).map_err(at)?;
        let data = row
            .get_ref(4)
            .and_then(|v| v.as_blob().map_err(Into::into))
            .map_err(at)?;
        let message = BagMessage {
            topic,
            type_name,
            encoding,
            log_time_ns: timestamp.max(0) as u64,
            data,
        };
        n += 1;
        if each(path, message)? == Flow::Stop {
            return Ok(Flow::Stop);
        }
        progress(n);
    }
    Ok(Flow::Continue)
}

/// Whether the length-prefixed fields of a Schema or Channel record (MCAP's layout) stay
/// inside the record.
fn lengths_fit(opcode: u8, data: &[u8]) -> bool {
    fn field(data: &[u8], at: usize) -> Option<usize> {
        let len = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
        let end = at.checked_add(4)?.checked_add(len)?;
        (end <= data.len()).then_some(end)
    }
    let check = || -> Option<()> {
        match opcode {
            // id, name, encoding, data
            mcap::records::op::SCHEMA => {
                let at = field(data, 2)?;
                let at = field(data, at)?;
                field(data, at)?;
            }
            // id, schema id, topic, message encoding, metadata (a map: its byte length, then
            // key and value strings)
            mcap::records::op::CHANNEL => {
                let at = field(data, 4)?;
                let at = field(data, at)?;
                let end = field(data, at)?;
                let map = data.get(at + 4..end)?;
                let mut i = 0;
                while i < map.len() {
                    i = field(map, i)?;
                    i = field(map, i)?;
                }
            }
            _ => {}
        }
        Some(())
    };
    check().is_some()
}

struct Channel {
    topic: String,
    type_name: String,
    encoding: String,
}

fn read_mcap<E: From<BagError>>(
    path: &Path,
    each: &mut impl FnMut(&Path, BagMessage<'_>) -> Result<Flow, E>,
    progress: &mut impl FnMut(u64),
) -> Result<Flow, E> {
    let mcap_error = |source| BagError::Mcap {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(io(path))?;
    // Chunk CRCs checked before a chunk's messages are used (a damaged bag is an error, not
    // imported garbage), and no record or chunk above the limit is buffered.
    let mut reader = LinearReader::new_with_options(LinearReaderOptions {
        prevalidate_chunk_crcs: true,
        validate_chunk_crcs: true,
        record_length_limit: Some(MAX_RECORD_BYTES),
        ..LinearReaderOptions::default()
    });
    let mut schemas: std::collections::HashMap<u16, String> = Default::default();
    let mut channels: std::collections::HashMap<u16, Channel> = Default::default();
    let mut read = 0u64;
    let mut index = 0u64;
    while let Some(event) = reader.next_event() {
        match event.map_err(mcap_error)? {
            LinearReadEvent::ReadRequest(need) => {
                let n = file.read(reader.insert(need)).map_err(io(path))?;
                reader.notify_read(n);
                read += n as u64;
                progress(read);
            }
            LinearReadEvent::Record { opcode, data } => {
                // Only the records read here are parsed, and only when every length inside
                // fits the record: the crate reserves a string's claimed length before reading
                // it (a damaged file would make it allocate gigabytes).
                let wanted = matches!(
                    opcode,
                    mcap::records::op::SCHEMA
                        | mcap::records::op::CHANNEL
                        | mcap::records::op::MESSAGE
                );
                if !wanted {
                    continue;
                }
                if !lengths_fit(opcode, data) {
                    return Err(BagError::Damaged {
                        path: path.display().to_string(),
                        opcode,
                    }
                    .into());
                }
                match mcap::parse_record(opcode, data).map_err(mcap_error)? {
                    Record::Schema { header, .. } => {
                        schemas.insert(header.id, header.name);
                    }
                    Record::Channel(c) => {
                        let type_name = schemas.get(&c.schema_id).cloned().unwrap_or_default();
                        channels.insert(
                            c.id,
                            Channel {
                                topic: c.topic,
                                type_name,
                                encoding: c.message_encoding,
                            },
                        );
                    }
                    Record::Message { header, data } => {
                        let channel = channels.get(&header.channel_id).ok_or_else(|| {
                            BagError::UnknownChannel {
                                path: path.display().to_string(),
                                index,
                                channel: header.channel_id,
                            }
                        })?;
                        index += 1;
                        let message = BagMessage {
                            topic: &channel.topic,
                            type_name: &channel.type_name,
                            encoding: &channel.encoding,
                            log_time_ns: header.log_time,
                            data: &data,
                        };
                        if each(path, message)? == Flow::Stop {
                            return Ok(Flow::Stop);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(Flow::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_files_in_split_order() {
        let mut files = ["b_10.db3", "b_2.db3", "b_0.db3"].map(PathBuf::from);
        files.sort_by_key(|p| split_order(p));
        assert_eq!(
            files.map(|p| p.display().to_string()),
            ["b_0.db3", "b_2.db3", "b_10.db3"]
        );
    }

    #[test]
    fn lengths_beyond_a_record_are_refused_before_parsing() {
        let string = |s: &str| [&(s.len() as u32).to_le_bytes()[..], s.as_bytes()].concat();
        let mut channel = vec![1, 0, 1, 0];
        channel.extend(string("/a"));
        channel.extend(string("cdr"));
        channel.extend(0u32.to_le_bytes());
        assert!(lengths_fit(mcap::records::op::CHANNEL, &channel));
        let mut huge = vec![1, 0, 1, 0];
        huge.extend(u32::MAX.to_le_bytes());
        assert!(!lengths_fit(mcap::records::op::CHANNEL, &huge));
        assert!(!lengths_fit(
            mcap::records::op::SCHEMA,
            &[1, 0, 255, 255, 255, 127]
        ));
    }

    #[test]
    fn names_what_is_not_a_bag() {
        let dir = tempfile::tempdir().unwrap();
        let e = Bag::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not an MCAP or sqlite3 bag"), "{e}");
        let junk = dir.path().join("x.mcap");
        std::fs::write(&junk, b"not mcap").unwrap();
        let bag = Bag::open(&junk).unwrap();
        let e = bag
            .read::<BagError>(|_, _| Ok(Flow::Continue), |_| {})
            .unwrap_err();
        assert!(e.to_string().contains("x.mcap"), "{e}");
    }
}
