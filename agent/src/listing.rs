//! Datasets the agent lists on its own (`datasets: { every: 1h }` on a topic): each period, a
//! dataset (docs/datasets.md) of the chunks committed since the last one, built from the
//! envelopes and `index.jsonl` beside the chain, signed by keyd (`sign_dataset`), and
//! written there as `dataset-{first}-{last}.json`. Where the last one ended is read back
//! from those files at start, so a restart neither skips nor repeats chunks.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stream::chain::ChunkEnvelope;
use stream::dataset::index::{read_index, PackageSpan};
use stream::dataset::DatasetBuilder;
use stream::signer::{DatasetSigner, SignerError};

use crate::config::DatasetSchedule;

/// Why a dataset could not be listed this time.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the chunks do not make a dataset: {0}")]
    Chunks(String),
    #[error("keyd: {0}")]
    Keyd(#[from] SignerError),
}

/// `dataset-{first}-{last}.json`'s range.
fn listed_range(name: &str) -> Option<(u64, u64)> {
    let (first, last) = name
        .strip_prefix("dataset-")?
        .strip_suffix(".json")?
        .split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// One topic's schedule and where its next dataset starts.
#[derive(Debug)]
pub struct Lister {
    topic: String,
    dir: PathBuf,
    schedule: DatasetSchedule,
    next_first: u64,
    due: Instant,
}

impl Lister {
    /// The lister of `topic`'s chain in `dir`: its next dataset starts after the last one
    /// written there and is due one period from now.
    pub fn open(topic: &str, dir: &Path, schedule: &DatasetSchedule) -> Self {
        let next_first = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| listed_range(&e.file_name().to_string_lossy()))
                    .map(|(_, last)| last + 1)
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        Lister {
            topic: topic.to_string(),
            dir: dir.to_path_buf(),
            schedule: schedule.clone(),
            next_first,
            due: Instant::now() + schedule.every,
        }
    }

    /// Whether a dataset is due.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.due
    }

    /// Tries again after `after` (keyd unreachable).
    pub fn retry_in(&mut self, after: Duration) {
        self.due = Instant::now() + after.min(self.schedule.every);
    }

    fn read_envelope(&self, index: u64) -> Result<Option<ChunkEnvelope>, ListError> {
        let path = self.dir.join(format!("chunk-{index}.json"));
        match std::fs::read(&path) {
            Ok(bytes) => ChunkEnvelope::from_json(&bytes)
                .map(Some)
                .map_err(|e| ListError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ListError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// Lists chunks `next_first..committed` (if there are any), and schedules the next one.
    /// Returns the file written.
    pub fn list(
        &mut self,
        committed: u64,
        signer: &dyn DatasetSigner,
    ) -> Result<Option<PathBuf>, ListError> {
        self.due = Instant::now() + self.schedule.every;
        // Chunks already dropped locally (keep_local) cannot be listed here: start after them.
        while self.next_first < committed && self.read_envelope(self.next_first)?.is_none() {
            tracing::warn!(topic = %self.topic, chunk = self.next_first, "chunk no longer kept locally: not listed");
            self.next_first += 1;
        }
        if self.next_first >= committed {
            return Ok(None);
        }
        let (first, last) = (self.next_first, committed - 1);
        let index_path = self.dir.join(stream::dataset::index::INDEX_FILE);
        let index = read_index(&self.dir)
            .map_err(|e| ListError::Read {
                path: index_path.display().to_string(),
                reason: e.to_string(),
            })?
            .unwrap_or_default();
        let mut builder = DatasetBuilder::new(first, signer.did());
        for i in first..=last {
            let chunk = self.read_envelope(i)?.ok_or_else(|| {
                ListError::Chunks(format!("chunk-{i}.json disappeared while listing"))
            })?;
            let span = index
                .get(&i)
                .filter(|e| e.chunk_id == chunk.chunk_id)
                .and_then(|e| {
                    let mut span = PackageSpan::default();
                    span.add_entry(e).ok().map(|()| span)
                });
            builder
                .push(&chunk, span.as_ref())
                .map_err(|f| ListError::Chunks(f.to_string()))?;
        }
        let mut doc = builder
            .finish(&self.topic, stream::layout::utc_now_iso8601())
            .map_err(|f| ListError::Chunks(f.to_string()))?;
        doc.title = self.schedule.title.clone();
        let bytes = doc
            .signing_bytes()
            .map_err(|e| ListError::Chunks(e.to_string()))?;
        let signature = signer.sign_dataset(&bytes)?;
        let doc = doc.signed(signer.key_id(), &signature);
        let text = doc
            .to_file_text()
            .map_err(|e| ListError::Chunks(e.to_string()))?;
        let path = self.dir.join(format!("dataset-{first}-{last}.json"));
        stream::fsio::write_atomic(&path, text.as_bytes(), stream::fsio::Durability::Synced)
            .map_err(|e| ListError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        tracing::info!(topic = %self.topic, first, last, root = %doc.merkle_root, path = %path.display(), "dataset listed");
        self.next_first = last + 1;
        Ok(Some(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_ranges_are_read_from_file_names() {
        assert_eq!(listed_range("dataset-0-41.json"), Some((0, 41)));
        assert_eq!(listed_range("dataset-42-42.json"), Some((42, 42)));
        assert_eq!(listed_range("dataset-x-1.json"), None);
        assert_eq!(listed_range("chunk-1.json"), None);
    }
}
