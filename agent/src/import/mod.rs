//! `edge-agent import`: recorded ROS 2 bags through the same field rules, keyd signatures,
//! chunking and outputs as live capture.
//!
//! Each bag becomes chains of its own, one per map topic, beside the live ones:
//! `<output>/../imports/<name>/<topic>` (and `imports/<name>/` under each S3 output's
//! prefix); live feeds are not used for recordings. `capturedAt` is the bag's log time;
//! sequence numbers come from keyd, as for live capture. The [`journal`] makes a killed
//! import resume where its packages stop, without one twice.

pub mod bag;
pub mod journal;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::backlog::{item_size, Backlog, Captured, Pushed};
use crate::config::{topic_slug, AgentConfig, Overflow, QueueConfig};
use crate::metrics::Metrics;
use crate::msg::decode::decode_cdr_le;
use crate::msg::registry::normalize;
use crate::msg::MsgType;
use bag::{Bag, BagError, BagMessage, Flow};
use journal::Journal;

/// The directory, beside the live chains, that holds the imported ones.
pub const IMPORTS_DIR: &str = "imports";

/// Why an import cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Bag(#[from] BagError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("--name {0:?}: use letters, digits, '.', '_' and '-', not starting with '.'")]
    Name(String),
    #[error("{path}: topic {topic} is recorded as {recorded}, but the map says {mapped}")]
    Type {
        path: String,
        topic: String,
        recorded: String,
        mapped: String,
    },
    #[error("{path}: topic {topic} is recorded in {encoding:?}, not ROS 2's cdr")]
    Encoding {
        path: String,
        topic: String,
        encoding: String,
    },
    #[error(
        "topic {0}: its chains would live in the imports directory; rename the topic's output"
    )]
    Collides(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    #[error(transparent)]
    Backlog(#[from] crate::backlog::BacklogError),
}

/// A bag's import: its chains' configuration, its journal, and its lock.
pub struct Plan {
    pub bag: Bag,
    pub name: String,
    /// The map, with every topic's spool and output moved to the import's own.
    pub config: AgentConfig,
    /// The import's spool directory (journal, lock, the topics' spools).
    pub root: PathBuf,
    _lock: std::fs::File,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Plan {
    /// Plans the import of `bag` as `name` (default: the bag's name) and takes its lock.
    pub fn new(config: &AgentConfig, bag: Bag, name: Option<&str>) -> Result<Plan, ImportError> {
        let name = name.map(str::to_string).unwrap_or_else(|| bag.name());
        if !valid_name(&name) {
            return Err(ImportError::Name(name));
        }
        let root = config.spool_dir.join(IMPORTS_DIR).join(&name);
        let mut config = config.clone();
        for t in &mut config.topics {
            let slug = topic_slug(&t.topic);
            if slug == IMPORTS_DIR {
                return Err(ImportError::Collides(t.topic.clone()));
            }
            let base = t.output.parent().unwrap_or(&t.output).to_path_buf();
            t.output = base.join(IMPORTS_DIR).join(&name).join(&slug);
            t.spool = root.join(&slug);
            for u in &mut t.uploads {
                let topic_prefix = format!("{slug}/");
                let prefix = u
                    .path
                    .prefix
                    .strip_suffix(&topic_prefix)
                    .unwrap_or(&u.path.prefix)
                    .to_string();
                u.path.prefix = format!("{prefix}{IMPORTS_DIR}/{name}/{slug}/");
            }
            t.feeds.clear();
            if t.uploads.is_empty() {
                t.keep_local = None;
            }
        }
        // A bag waits for room: nothing in it is dropped.
        config.queue = QueueConfig {
            overflow: Overflow::Pause,
            ..config.queue
        };
        let lock = crate::spool::lock_dir(&root, "another import of this bag")?;
        Ok(Plan {
            bag,
            name,
            config,
            root,
            _lock: lock,
        })
    }

    pub fn journal_path(&self) -> PathBuf {
        self.root.join("import.journal")
    }

    pub fn topics(&self) -> Vec<String> {
        self.config.topics.iter().map(|t| t.topic.clone()).collect()
    }
}

/// The map's topic of a bag message, checked against the map's type once per topic.
struct Topics<'c> {
    index: HashMap<&'c str, usize>,
    checked: Vec<bool>,
    config: &'c AgentConfig,
}

impl<'c> Topics<'c> {
    fn new(config: &'c AgentConfig) -> Self {
        Topics {
            index: config
                .topics
                .iter()
                .enumerate()
                .map(|(i, t)| (t.topic.as_str(), i))
                .collect(),
            checked: vec![false; config.topics.len()],
            config,
        }
    }

    fn of(&mut self, path: &Path, m: &BagMessage<'_>) -> Result<Option<usize>, ImportError> {
        let Some(&i) = self.index.get(m.topic) else {
            return Ok(None);
        };
        if !self.checked[i] {
            let mapped = &self.config.topics[i].type_name;
            if normalize(m.type_name) != normalize(mapped) {
                return Err(ImportError::Type {
                    path: path.display().to_string(),
                    topic: m.topic.to_string(),
                    recorded: m.type_name.to_string(),
                    mapped: mapped.clone(),
                });
            }
            if m.encoding != "cdr" {
                return Err(ImportError::Encoding {
                    path: path.display().to_string(),
                    topic: m.topic.to_string(),
                    encoding: m.encoding.to_string(),
                });
            }
            self.checked[i] = true;
        }
        Ok(Some(i))
    }
}

/// Where a resumed import starts: per topic, how many of its messages are in the chain.
/// `last_sequence[i]` is the last sequence number in topic `i`'s spool and chain.
pub fn resume_point(
    plan: &Plan,
    journal: &Journal,
    last_sequence: &[Option<u64>],
) -> Result<BTreeMap<String, u64>, ImportError> {
    let mut next = journal.header().next.clone();
    let runs = journal.runs();
    if runs.is_empty() {
        return Ok(next);
    }
    let mut topics = Topics::new(&plan.config);
    let mut ordinal = 0u64;
    let mut run = 0;
    plan.bag.read::<ImportError>(
        |path, m| {
            let Some(i) = topics.of(path, &m)? else {
                return Ok(Flow::Continue);
            };
            let o = ordinal;
            ordinal += 1;
            while run < runs.len() && runs[run].ordinal + runs[run].count <= o {
                run += 1;
            }
            let Some(r) = runs.get(run).filter(|r| r.ordinal <= o) else {
                return Ok(if run >= runs.len() {
                    Flow::Stop
                } else {
                    Flow::Continue
                });
            };
            let sequence = r.sequence + (o - r.ordinal);
            if last_sequence[i].is_some_and(|last| sequence <= last) {
                let topic = &plan.config.topics[i].topic;
                let n = next.entry(topic.clone()).or_insert(0);
                *n = (*n).max(o + 1);
            }
            Ok(Flow::Continue)
        },
        |_| {},
    )?;
    Ok(next)
}

/// What feeding a bag did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fed {
    /// Messages of the map's topics in the bag.
    pub messages: u64,
    /// Of those, already in the chain (a resumed import).
    pub skipped: u64,
    /// Queued for signing.
    pub queued: u64,
    /// Did not decode as the map's type (logged; not imported).
    pub undecodable: u64,
    /// Messages of topics the map does not have.
    pub other_topics: u64,
    /// Stopped (a signal) before the end.
    pub stopped: bool,
}

fn captured_at(log_time_ns: u64) -> String {
    stream::layout::utc_iso8601(UNIX_EPOCH + Duration::from_nanos(log_time_ns), true)
}

/// Decodes a ROS 2 CDR message (its 4-byte encapsulation header first; little-endian).
fn decode(
    ty: &Arc<MsgType>,
    data: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match data {
        [0, 1, _, _, body @ ..] => decode_cdr_le(ty, body)
            .map(|d| d.0)
            .map_err(|e| e.to_string()),
        [0, 0, _, _, ..] => Err("big-endian CDR is not supported".into()),
        _ => Err("no CDR encapsulation header".into()),
    }
}

/// Reads the bag into `backlog`, skipping the messages `next` says are in the chain; each
/// queued message carries its ordinal. `progress` gets the work done so far.
pub fn feed(
    plan: &Plan,
    next: &BTreeMap<String, u64>,
    backlog: &Backlog,
    metrics: &Metrics,
    stop: &AtomicBool,
    mut progress: impl FnMut(u64),
) -> Result<Fed, ImportError> {
    let mut topics = Topics::new(&plan.config);
    let next: Vec<u64> = plan
        .config
        .topics
        .iter()
        .map(|t| next.get(&t.topic).copied().unwrap_or(0))
        .collect();
    // Per topic, looked up once (not a label allocation and a lock per message).
    let counters: Vec<_> = plan
        .config
        .topics
        .iter()
        .map(|t| {
            let labels = crate::metrics::topic(&t.topic);
            (
                metrics.received.get_or_create(&labels).clone(),
                metrics.decode_errors.get_or_create(&labels).clone(),
            )
        })
        .collect();
    let mut fed = Fed::default();
    let mut ordinal = 0u64;
    let flow = plan.bag.read::<ImportError>(
        |path, m| {
            let Some(i) = topics.of(path, &m)? else {
                fed.other_topics += 1;
                return Ok(Flow::Continue);
            };
            let o = ordinal;
            ordinal += 1;
            fed.messages += 1;
            if o < next[i] {
                fed.skipped += 1;
                return Ok(Flow::Continue);
            }
            let topic = &plan.config.topics[i];
            let (received, decode_errors) = &counters[i];
            received.inc();
            let fields = match decode(&topic.msg_type, m.data) {
                Ok(fields) => fields,
                Err(e) => {
                    decode_errors.inc();
                    fed.undecodable += 1;
                    tracing::warn!(bag = %path.display(), topic = %topic.topic, ordinal = o, error = %e, "a message did not decode as the map's type: not imported");
                    return Ok(Flow::Continue);
                }
            };
            let mut item = Captured {
                topic: i,
                captured_at: captured_at(m.log_time_ns),
                size: item_size(&fields),
                fields,
                origin: Some(o),
            };
            loop {
                match backlog.push(item)? {
                    Pushed::Queued => break,
                    Pushed::Full(back) => {
                        if stop.load(Ordering::Relaxed) {
                            return Ok(Flow::Stop);
                        }
                        item = *back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    // Not with the pause policy the plan sets.
                    Pushed::QueuedDropping(_) | Pushed::Dropped(_) => {
                        return Err(ImportError::Io {
                            path: plan.bag.path.display().to_string(),
                            source: std::io::Error::other("the import queue dropped a message"),
                        })
                    }
                }
            }
            fed.queued += 1;
            Ok(if stop.load(Ordering::Relaxed) {
                Flow::Stop
            } else {
                Flow::Continue
            })
        },
        &mut progress,
    )?;
    fed.stopped = flow == Flow::Stop;
    Ok(fed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_timestamps() {
        assert!(valid_name("run-2026.12_01"));
        assert!(
            !valid_name("../x") && !valid_name(".hidden") && !valid_name("a/b") && !valid_name("")
        );
        assert_eq!(
            captured_at(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456Z"
        );
    }
}
