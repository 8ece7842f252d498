//! Uploads: every committed chunk of a topic to each of its S3 outputs, from a durable
//! outbox, on a thread of its own (the capture and signing paths never wait for it).
//!
//! The outbox is the published directory itself plus, per output, a position file in the
//! spool (`upload-<id>.pos`: the next chunk index to upload, written atomically after both
//! of a chunk's objects are up). Only committed chunks are read (below the spool's commit
//! count), and committed chunk files never change, so after `kill -9`, an S3 outage or a
//! full disk the upload resumes from the position and sends the same bytes: an object
//! already there with those bytes counts as uploaded, one with other bytes is never
//! overwritten (a conflict, reported). `manifest.json`, the chain's head, goes up only when
//! every chunk it names is up.
//!
//! Retention (`keep_local`): chunks uploaded to every output may then be deleted locally,
//! oldest first, beyond a size or an age; the newest chunk always stays (the spool resumes
//! from it).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use store::{Credentials, Patience, PutOnce, S3Bucket, S3Path, S3Settings, StoreError};
use stream::layout::{self, ChunkFile, Durability};

use crate::config::{AgentConfig, KeepLocal};
use crate::metrics::{self, Metrics};
use crate::spool::TopicSpool;

/// An output that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("{topic} {output}: {source}")]
    Store {
        topic: String,
        output: String,
        #[source]
        source: StoreError,
    },
    #[error("{path}: {reason}")]
    Position { path: String, reason: String },
}

/// How long a finishing agent keeps uploading what its last chunks left behind.
const FINISH_GRACE: Duration = Duration::from_secs(10);
/// Backoff between failed attempts, per output.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Uploads failing this long with a backlog make `/health` say degraded.
const STALLED_AFTER: Duration = Duration::from_secs(10);
/// A backlog of more than one chunk that has not shrunk for this long (uploads that
/// succeed but fall behind what capture makes) makes `/health` say degraded too.
const GROWING_AFTER: Duration = Duration::from_secs(30);

struct Target {
    name: String,
    bucket: S3Bucket,
    path: S3Path,
    position_file: PathBuf,
    /// The next chunk index to upload.
    next: u64,
    /// The chunk count of the manifest last uploaded.
    manifest_at: Option<u64>,
    /// Bytes of chunks `next..sized_upto` (the backlog, as far as it has been measured).
    backlog_bytes: u64,
    sized_upto: u64,
    backoff: Duration,
    retry_at: Instant,
    /// Since when uploads fail (with a backlog), if they do.
    failing_since: Option<Instant>,
    /// Since when the backlog (more than one chunk) has not shrunk, and its size then.
    growing_since: Option<(Instant, u64)>,
    last_error: Option<String>,
}

/// One topic's uploads.
pub struct TopicUploads {
    topic: String,
    dir: PathBuf,
    committed: Arc<AtomicU64>,
    targets: Vec<Target>,
    keep_local: Option<KeepLocal>,
    /// Local chunk files below this index are gone (retention).
    dropped_below: u64,
}

fn position_name(bucket: &str, path: &S3Path, endpoint: Option<&str>) -> String {
    let mut id = Sha256::new();
    for part in [bucket, &path.prefix, endpoint.unwrap_or("")] {
        id.update(part.as_bytes());
        id.update([0]);
    }
    format!("upload-{}.pos", &hex::encode(id.finalize())[..16])
}

fn read_position(path: &Path) -> Result<u64, OutboxError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| OutboxError::Position {
            path: path.display().to_string(),
            reason: format!("{:?} is not a chunk index", text.trim()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(OutboxError::Position {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// The uploads of every topic that has S3 outputs (opened buckets, read positions).
pub fn open(config: &AgentConfig, spools: &[TopicSpool]) -> Result<Vec<TopicUploads>, OutboxError> {
    let mut all = Vec::new();
    for (topic, spool) in config.topics.iter().zip(spools) {
        if topic.uploads.is_empty() {
            continue;
        }
        let mut targets = Vec::new();
        for output in &topic.uploads {
            let fail = |source| OutboxError::Store {
                topic: topic.topic.clone(),
                output: output.name.clone(),
                source,
            };
            let credentials = match &output.credentials_file {
                Some(file) => Some(Credentials::from_file(file).map_err(fail)?),
                None => Credentials::from_env().map_err(fail)?,
            };
            let settings = S3Settings {
                region: output.region.clone(),
                endpoint: output.endpoint.clone(),
                credentials,
            };
            let patience = Patience {
                retries: 2,
                timeout: Duration::from_secs(30),
            };
            let bucket = S3Bucket::open(&output.path.bucket, &settings, patience).map_err(fail)?;
            let position_file = topic.spool.join(position_name(
                &output.path.bucket,
                &output.path,
                output.endpoint.as_deref(),
            ));
            let next = read_position(&position_file)?;
            targets.push(Target {
                name: output.name.clone(),
                bucket,
                path: output.path.clone(),
                position_file,
                next,
                manifest_at: None,
                backlog_bytes: 0,
                sized_upto: next,
                backoff: BACKOFF_MIN,
                retry_at: Instant::now(),
                failing_since: None,
                growing_since: None,
                last_error: None,
            });
        }
        all.push(TopicUploads {
            topic: topic.topic.clone(),
            dir: topic.output.clone(),
            committed: spool.committed(),
            targets,
            keep_local: topic.keep_local,
            dropped_below: 0,
        });
    }
    Ok(all)
}

/// What one attempt did.
enum Step {
    Idle,
    Progress,
}

/// Uploads until `stop`; then, once `finish` is set (the writer has committed its last
/// chunks), for at most [`FINISH_GRACE`] more, until every output has caught up.
pub fn run(
    mut topics: Vec<TopicUploads>,
    metrics: Arc<Metrics>,
    stop: &AtomicBool,
    finish: &AtomicBool,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "uploads cannot start");
            return;
        }
    };
    let mut finishing_until: Option<Instant> = None;
    loop {
        let mut progressed = false;
        for topic in topics.iter_mut() {
            let committed = topic.committed.load(Ordering::Acquire);
            for target in topic.targets.iter_mut() {
                if Instant::now() < target.retry_at {
                    continue;
                }
                match runtime.block_on(step(&topic.topic, &topic.dir, committed, target, &metrics))
                {
                    Ok(Step::Progress) => {
                        progressed = true;
                        target.backoff = BACKOFF_MIN;
                        target.failing_since = None;
                        target.last_error = None;
                    }
                    Ok(Step::Idle) => {}
                    Err(e) => {
                        metrics
                            .upload_failures
                            .get_or_create(&metrics::upload(&topic.topic, &target.name))
                            .inc();
                        let message = e.to_string();
                        if target.last_error.as_deref() != Some(message.as_str()) {
                            tracing::warn!(topic = %topic.topic, output = %target.name, to = %target.path, error = %message, "upload failed; retrying with backoff");
                        }
                        target.last_error = Some(message);
                        target.failing_since.get_or_insert_with(Instant::now);
                        target.retry_at = Instant::now() + target.backoff;
                        target.backoff = (target.backoff * 2).min(BACKOFF_MAX);
                    }
                }
                let backlog = committed.saturating_sub(target.next);
                let labels = metrics::upload(&topic.topic, &target.name);
                metrics
                    .upload_backlog
                    .get_or_create(&labels)
                    .set(backlog as i64);
                measure_backlog(&topic.dir, committed, target);
                metrics
                    .upload_backlog_bytes
                    .get_or_create(&labels)
                    .set(target.backlog_bytes as i64);
                if backlog == 0 {
                    target.failing_since = None;
                }
                target.growing_since = growing(target.growing_since, backlog, Instant::now());
            }
            if progressed {
                retain(topic, committed);
            }
        }
        metrics.set_uploads_behind(behind(&topics));
        if stop.load(Ordering::Relaxed) && finish.load(Ordering::Relaxed) {
            let until = *finishing_until.get_or_insert_with(|| Instant::now() + FINISH_GRACE);
            if caught_up(&topics) || Instant::now() >= until {
                if !caught_up(&topics) {
                    tracing::warn!("stopping with uploads behind: they resume at the next start");
                }
                return;
            }
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The backlog's "not shrinking since" mark after a look at `backlog`: cleared at one
/// chunk or less, moved whenever the backlog shrinks below where the mark was set.
fn growing(mark: Option<(Instant, u64)>, backlog: u64, now: Instant) -> Option<(Instant, u64)> {
    match mark {
        _ if backlog <= 1 => None,
        Some((_, then)) if backlog < then => Some((now, backlog)),
        None => Some((now, backlog)),
        kept => kept,
    }
}

/// Adds the sizes of chunks committed since the last look to the target's backlog.
fn measure_backlog(dir: &Path, committed: u64, target: &mut Target) {
    while target.sized_upto < committed {
        let index = target.sized_upto;
        for name in [format!("chunk-{index}.bin"), format!("chunk-{index}.json")] {
            if let Ok(meta) = std::fs::metadata(dir.join(name)) {
                target.backlog_bytes += meta.len();
            }
        }
        target.sized_upto += 1;
    }
}

fn caught_up(topics: &[TopicUploads]) -> bool {
    topics.iter().all(|t| {
        let committed = t.committed.load(Ordering::Acquire);
        t.targets
            .iter()
            .all(|x| x.next >= committed && (committed == 0 || x.manifest_at == Some(committed)))
    })
}

/// Why `/health` says degraded, if it does: uploads that fail with a backlog, or a
/// backlog that keeps growing.
fn behind(topics: &[TopicUploads]) -> Option<String> {
    topics.iter().find_map(|t| {
        t.targets.iter().find_map(|x| {
            let backlog = t.committed.load(Ordering::Acquire).saturating_sub(x.next);
            if let Some(since) = x.failing_since.filter(|s| s.elapsed() >= STALLED_AFTER) {
                return Some(format!(
                    "degraded: uploads of {} to {} are {backlog} chunks behind and failing for {} s ({})",
                    t.topic,
                    x.path,
                    since.elapsed().as_secs(),
                    x.last_error.as_deref().unwrap_or("")
                ));
            }
            let (since, _) = x.growing_since.filter(|(s, _)| s.elapsed() >= GROWING_AFTER)?;
            Some(format!(
                "degraded: uploads of {} to {} are {backlog} chunks behind, not catching up for {} s",
                t.topic,
                x.path,
                since.elapsed().as_secs()
            ))
        })
    })
}

/// One object up, or the manifest, or nothing to do.
async fn step(
    topic: &str,
    dir: &Path,
    committed: u64,
    target: &mut Target,
    metrics: &Metrics,
) -> Result<Step, StoreError> {
    if target.next < committed {
        let index = target.next;
        let mut bytes = 0u64;
        for name in [format!("chunk-{index}.bin"), format!("chunk-{index}.json")] {
            let local = dir.join(&name);
            let body = match tokio::fs::read(&local).await {
                Ok(b) => Bytes::from(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Dropped by retention before this output was configured: nothing to
                    // send any more. Said once, then passed.
                    tracing::error!(topic, output = %target.name, %index, "chunk {name} is no longer on the local disk: this output will not have it");
                    continue;
                }
                Err(source) => {
                    return Err(StoreError::Io {
                        path: local.display().to_string(),
                        source,
                    })
                }
            };
            bytes += body.len() as u64;
            let key = target.path.key(&name);
            if target.bucket.put_once(&key, body).await? == PutOnce::AlreadyThere {
                tracing::info!(topic, output = %target.name, object = %target.path.uri(&name), "already uploaded (an upload before a restart)");
            }
        }
        // Both objects are up: the position moves (atomically, synced).
        stream::fsio::write_atomic(
            &target.position_file,
            format!("{}\n", index + 1).as_bytes(),
            Durability::Synced,
        )
        .map_err(|source| StoreError::Io {
            path: target.position_file.display().to_string(),
            source,
        })?;
        target.next = index + 1;
        if target.sized_upto > index {
            target.backlog_bytes = target.backlog_bytes.saturating_sub(bytes);
        } else {
            target.sized_upto = target.next;
        }
        let labels = metrics::upload(topic, &target.name);
        metrics.uploaded_chunks.get_or_create(&labels).inc();
        metrics.uploaded_bytes.get_or_create(&labels).inc_by(bytes);
        metrics
            .upload_last_success
            .get_or_create(&labels)
            .set(unix_now());
        return Ok(Step::Progress);
    }
    if committed > 0 && target.manifest_at != Some(committed) {
        // The head, only when it names exactly what is up.
        let Some(manifest) = layout::read_manifest(dir).map_err(|e| StoreError::Invalid {
            what: dir.join("manifest.json").display().to_string(),
            reason: e.to_string(),
        })?
        else {
            return Ok(Step::Idle);
        };
        if manifest.total_chunks != committed {
            return Ok(Step::Idle);
        }
        target
            .bucket
            .put(
                &target.path.key("manifest.json"),
                Bytes::from(manifest.to_file_text()),
                None,
            )
            .await?;
        target.manifest_at = Some(committed);
        return Ok(Step::Progress);
    }
    Ok(Step::Idle)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Deletes local chunks every output has, oldest first, beyond `keep_local`.
fn retain(topic: &mut TopicUploads, committed: u64) {
    let Some(keep) = topic.keep_local else {
        return;
    };
    // Uploaded everywhere, and not the newest chunk.
    let uploaded = topic.targets.iter().map(|t| t.next).min().unwrap_or(0);
    let removable_below = uploaded.min(committed.saturating_sub(1));
    if removable_below <= topic.dropped_below {
        return;
    }
    let Ok(entries) = std::fs::read_dir(&topic.dir) else {
        return;
    };
    let mut chunks: std::collections::BTreeMap<u64, (u64, Option<SystemTime>)> = Default::default();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(file) = name.to_str().and_then(layout::chunk_file) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        let slot = chunks.entry(file.index()).or_insert((0, None));
        slot.0 += meta.len();
        if matches!(file, ChunkFile::Ciphertext(_)) {
            slot.1 = meta.modified().ok();
        }
    }
    let mut total: u64 = chunks.values().map(|(size, _)| size).sum();
    let now = SystemTime::now();
    for (&index, &(size, modified)) in &chunks {
        if index >= removable_below {
            break;
        }
        let too_big = keep.max_bytes.is_some_and(|max| total > max);
        let too_old = keep.max_age_s.is_some_and(|max| {
            modified
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age.as_secs() >= max)
        });
        if !(too_big || too_old) {
            break;
        }
        for name in [format!("chunk-{index}.bin"), format!("chunk-{index}.json")] {
            let _ = std::fs::remove_file(topic.dir.join(name));
        }
        total = total.saturating_sub(size);
        topic.dropped_below = index + 1;
        tracing::debug!(topic = %topic.topic, index, "local copy dropped (uploaded everywhere)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_is_growing_until_it_shrinks_or_empties() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(
            growing(None, 1, t0),
            None,
            "one chunk in flight is no backlog"
        );
        let mark = growing(None, 3, t0);
        assert_eq!(mark, Some((t0, 3)));
        assert_eq!(growing(mark, 5, t1), mark, "growing: the mark stays");
        assert_eq!(growing(mark, 3, t1), mark, "not shrinking: the mark stays");
        assert_eq!(
            growing(mark, 2, t1),
            Some((t1, 2)),
            "shrinking: the mark moves"
        );
        assert_eq!(growing(mark, 0, t1), None);
    }
}
