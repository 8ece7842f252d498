//! The outbox: every committed chunk of a topic to each of its outputs (S3 buckets, NATS
//! JetStream feeds), on a thread of its own (the capture and signing paths never wait for
//! it).
//!
//! The outbox is the published directory itself plus, per output, a position file in the
//! spool (`upload-<id>.pos` or `feed-<id>.pos`: the next chunk index to send, written
//! atomically once the output has the chunk). Only committed chunks are read (below the
//! spool's commit count), and committed chunk files never change, so after `kill -9`, an
//! outage or a full disk the output resumes from the position and sends the same bytes.
//! S3: an object already there with those bytes counts as uploaded, one with other bytes is
//! never overwritten (a conflict, reported). NATS: a chunk is one message with
//! `Nats-Msg-Id` = its `chunkId`, so JetStream drops a re-send; the position moves only
//! once JetStream acknowledged it, and on connecting the last chunk on the subject moves it
//! on (a re-send after the duplicate window is not sent at all). `manifest.json`, the
//! chain's head, goes out only when every chunk it names is out.
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

use crate::config::{AgentConfig, KeepLocal, NatsOutput};
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

/// Why sending to an output failed (retried with backoff).
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Feed(#[from] feed::FeedError),
    /// The NATS client is reconnecting: looked at again soon, at no cost.
    #[error("{0}: disconnected; the client is reconnecting")]
    Disconnected(String),
}

/// How long the outbox waits, when it has nothing to send, before it looks again.
const IDLE_POLL: Duration = Duration::from_millis(20);
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

/// Where an output's chunks go.
enum Sink {
    S3 { bucket: S3Bucket, path: S3Path },
    Nats(Box<NatsSink>),
}

/// A NATS output: connected on first use, reconnecting on its own after.
struct NatsSink {
    output: NatsOutput,
    connection: Option<(feed::Connection, feed::FeedStream)>,
    /// The chain's subject, from its envelopes' `machineDid` and the topic.
    subject: Option<String>,
    /// Whether the position was compared with the subject's last chunk since connecting.
    head_checked: bool,
}

struct Target {
    name: String,
    sink: Sink,
    /// Where it goes, for logs and `/health`.
    place: String,
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

impl Target {
    /// An output resuming at `next` (its position file's).
    fn new(name: &str, sink: Sink, place: String, position_file: PathBuf, next: u64) -> Self {
        Target {
            name: name.to_string(),
            sink,
            place,
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
        }
    }
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

fn feed_position_name(output: &NatsOutput) -> String {
    let mut id = Sha256::new();
    for part in [
        output.url.as_str(),
        &output.stream.name,
        &output.stream.subject_prefix,
    ] {
        id.update(part.as_bytes());
        id.update([0]);
    }
    format!("feed-{}.pos", &hex::encode(id.finalize())[..16])
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
        if topic.uploads.is_empty() && topic.feeds.is_empty() {
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
            let sink = Sink::S3 {
                bucket,
                path: output.path.clone(),
            };
            let place = output.path.to_string();
            targets.push(Target::new(&output.name, sink, place, position_file, next));
        }
        for output in &topic.feeds {
            let position_file = topic.spool.join(feed_position_name(output));
            let next = read_position(&position_file)?;
            let sink = Sink::Nats(Box::new(NatsSink {
                output: output.clone(),
                connection: None,
                subject: None,
                head_checked: false,
            }));
            let place = format!(
                "nats {} stream {}",
                feed::connect::shown_urls(&output.url),
                output.stream.name
            );
            targets.push(Target::new(&output.name, sink, place, position_file, next));
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
    // One worker: the NATS clients' connection tasks (pings, reconnects) run between steps.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
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
                            tracing::warn!(topic = %topic.topic, output = %target.name, to = %target.place, error = %message, "sending failed; retrying with backoff");
                        }
                        target.last_error = Some(message);
                        target.failing_since.get_or_insert_with(Instant::now);
                        if matches!(e, SendError::Disconnected(_)) {
                            target.retry_at = Instant::now() + BACKOFF_MIN;
                        } else {
                            target.retry_at = Instant::now() + target.backoff;
                            target.backoff = (target.backoff * 2).min(BACKOFF_MAX);
                        }
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
                if let Sink::Nats(nats) = &target.sink {
                    let (reconnects, connected) = nats.connection_state().unwrap_or((0, false));
                    metrics
                        .feed_reconnects
                        .get_or_create(&labels)
                        .set(reconnects as i64);
                    metrics
                        .feed_connected
                        .get_or_create(&labels)
                        .set(i64::from(connected));
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
            // A look costs a few atomic loads when nothing is new; a live feed's lag is
            // mostly this wait.
            std::thread::sleep(IDLE_POLL);
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
                    x.place,
                    since.elapsed().as_secs(),
                    x.last_error.as_deref().unwrap_or("")
                ));
            }
            let (since, _) = x.growing_since.filter(|(s, _)| s.elapsed() >= GROWING_AFTER)?;
            Some(format!(
                "degraded: uploads of {} to {} are {backlog} chunks behind, not catching up for {} s",
                t.topic,
                x.place,
                since.elapsed().as_secs()
            ))
        })
    })
}

/// One chunk out, or the manifest, or nothing to do.
async fn step(
    topic: &str,
    dir: &Path,
    committed: u64,
    target: &mut Target,
    metrics: &Metrics,
) -> Result<Step, SendError> {
    if let Sink::Nats(nats) = &mut target.sink {
        // Connected (and the stream made) from the start: a wrong URL, credentials or
        // stream shows at once, and followers find the stream before the first chunk.
        nats.stream().await?;
        if let Some(moved) = nats.check_head(topic, dir, committed, target.next).await? {
            write_position(&target.position_file, moved)?;
            target.next = moved;
            target.backlog_bytes = 0;
            target.sized_upto = moved;
            return Ok(Step::Progress);
        }
    }
    if target.next < committed {
        let index = target.next;
        let bytes = match read_chunk(dir, index).await? {
            Some((envelope, ciphertext)) => {
                let bytes = (envelope.len() + ciphertext.len()) as u64;
                send_chunk(topic, target, index, envelope, ciphertext, metrics).await?;
                bytes
            }
            None => {
                // Dropped by retention before this output was configured: nothing to
                // send any more. Said once, then passed.
                tracing::error!(topic, output = %target.name, %index, "chunk {index} is no longer on the local disk: this output will not have it");
                0
            }
        };
        write_position(&target.position_file, index + 1)?;
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
        // The head, only when it names exactly what is out.
        let path = dir.join("manifest.json");
        let text = match tokio::fs::read(&path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Step::Idle),
            Err(source) => return Err(io_error(&path, source)),
        };
        let manifest =
            layout::Manifest::from_json(&text).map_err(|reason| StoreError::Invalid {
                what: path.display().to_string(),
                reason,
            })?;
        if manifest.total_chunks != committed {
            return Ok(Step::Idle);
        }
        match &mut target.sink {
            Sink::S3 { bucket, path } => {
                bucket
                    .put(
                        &path.key("manifest.json"),
                        Bytes::from(manifest.to_file_text()),
                        None,
                    )
                    .await?;
            }
            Sink::Nats(nats) => {
                let head = dir.join(format!("chunk-{}.json", committed - 1));
                let envelope = tokio::fs::read(&head)
                    .await
                    .map_err(|source| io_error(&head, source))?;
                nats.publish_manifest(topic, &envelope, &text).await?;
            }
        }
        target.manifest_at = Some(committed);
        return Ok(Step::Progress);
    }
    Ok(Step::Idle)
}

fn io_error(path: &Path, source: std::io::Error) -> SendError {
    SendError::Store(StoreError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The position moves (atomically, synced).
fn write_position(path: &Path, next: u64) -> Result<(), SendError> {
    stream::fsio::write_atomic(path, format!("{next}\n").as_bytes(), Durability::Synced)
        .map_err(|source| io_error(path, source))
}

/// A committed chunk's two files, `None` when they are gone (retention).
async fn read_chunk(dir: &Path, index: u64) -> Result<Option<(Bytes, Bytes)>, SendError> {
    let mut files = Vec::with_capacity(2);
    for name in [format!("chunk-{index}.json"), format!("chunk-{index}.bin")] {
        let path = dir.join(name);
        match tokio::fs::read(&path).await {
            Ok(b) => files.push(Bytes::from(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io_error(&path, source)),
        }
    }
    let ciphertext = files.pop().unwrap_or_default();
    let envelope = files.pop().unwrap_or_default();
    Ok(Some((envelope, ciphertext)))
}

/// Sends one chunk: to S3, its two objects (ciphertext first); to NATS, one message,
/// acknowledged.
async fn send_chunk(
    topic: &str,
    target: &mut Target,
    index: u64,
    envelope: Bytes,
    ciphertext: Bytes,
    metrics: &Metrics,
) -> Result<(), SendError> {
    match &mut target.sink {
        Sink::S3 { bucket, path } => {
            for (name, body) in [
                (format!("chunk-{index}.bin"), ciphertext),
                (format!("chunk-{index}.json"), envelope),
            ] {
                if bucket.put_once(&path.key(&name), body).await? == PutOnce::AlreadyThere {
                    tracing::info!(topic, output = %target.name, object = %path.uri(&name), "already uploaded (an upload before a restart)");
                }
            }
        }
        Sink::Nats(nats) => {
            let acked = nats.publish_chunk(topic, envelope, ciphertext).await?;
            let labels = metrics::upload(topic, &target.name);
            if acked.duplicate {
                metrics.feed_duplicates.get_or_create(&labels).inc();
                tracing::info!(topic, output = %target.name, index, "JetStream had this chunk already (a send before a restart)");
            }
            if acked.via_object_store {
                metrics.feed_via_object_store.get_or_create(&labels).inc();
            }
        }
    }
    Ok(())
}

/// Whether `head` is a chunk validly signed by the key that signed `ours` (not a
/// manifest: no one signs those; the agent sends one only once its position is past it).
fn signed_like(
    head: Option<&stream::chain::ChunkEnvelope>,
    ours: &stream::chain::ChunkEnvelope,
) -> bool {
    let Some(head) = head else {
        return false;
    };
    let verdict = stream::chain::SignatureVerdict::of(head);
    let key = stream::chain::SignatureVerdict::of(ours).public_key();
    verdict.valid() && verdict.public_key().is_some() && verdict.public_key() == key
}

impl NatsSink {
    /// The stream, connecting first if need be.
    async fn stream(&mut self) -> Result<&mut feed::FeedStream, SendError> {
        if self.connection.is_none() {
            let settings = feed::FeedSettings {
                urls: self.output.url.clone(),
                credentials: self.output.credentials.clone(),
                name: "edge-agent".into(),
            };
            let connection =
                feed::connect::connect(&settings, &format!("{}.url", self.output.name)).await?;
            let stream =
                feed::FeedStream::open(&connection.client, &self.output.stream, true).await?;
            self.connection = Some((connection, stream));
            self.head_checked = false;
        }
        let (connection, stream) = self.connection.as_mut().expect("connected above");
        // Away: nothing is handed to the client, which would hold it until it is back (a
        // copy per retry); the chunk stays on disk and is sent once the client reconnects.
        if !connection.is_connected() {
            return Err(SendError::Disconnected(feed::connect::shown_urls(
                &self.output.url,
            )));
        }
        Ok(stream)
    }

    /// The chain's subject, from an envelope's `machineDid`.
    fn subject(&mut self, topic: &str, envelope: &[u8]) -> Result<String, SendError> {
        if let Some(subject) = &self.subject {
            return Ok(subject.clone());
        }
        let envelope = stream::chain::ChunkEnvelope::from_json(envelope)
            .map_err(|e| feed::FeedError::from(feed::MessageError::Envelope(e.to_string())))?;
        let subject = feed::ChainSubject::new(
            &self.output.stream.subject_prefix,
            &envelope.signature.machine_did,
            topic,
        )?
        .subject();
        self.subject = Some(subject.clone());
        Ok(subject)
    }

    /// Once per connection: compares the position with the subject's last chunk. `Some`
    /// moves the position: on, when the stream has chunks the position does not count (a
    /// crash between JetStream's acknowledgement and the position's write), or back, when
    /// the stream lost chunks it had (recreated, or a server lost its disk) that are still
    /// on the local disk. A subject whose last chunk is not ours is refused (another chain
    /// publishes there).
    async fn check_head(
        &mut self,
        topic: &str,
        dir: &Path,
        committed: u64,
        next: u64,
    ) -> Result<Option<u64>, SendError> {
        if self.head_checked || committed == 0 {
            return Ok(None);
        }
        let newest = dir.join(format!("chunk-{}.json", committed - 1));
        let envelope = tokio::fs::read(&newest)
            .await
            .map_err(|source| io_error(&newest, source))?;
        let subject = self.subject(topic, &envelope)?;
        let head = self.stream().await?.head(&subject).await?;
        let local_id = |index: u64| {
            let path = dir.join(format!("chunk-{index}.json"));
            std::fs::read(&path)
                .ok()
                .and_then(|b| stream::chain::ChunkEnvelope::from_json(&b).ok())
                .map(|e| e.chunk_id)
        };
        let ours = stream::chain::ChunkEnvelope::from_json(&envelope)
            .map_err(|e| feed::FeedError::from(feed::MessageError::Envelope(e.to_string())))?;
        let moved = match head {
            None if next > 0 && local_id(0).is_some() => {
                tracing::warn!(topic, output = %self.output.name, %subject, "the stream holds none of this chain: sending it again from chunk 0");
                Some(0)
            }
            None => None,
            // Anyone allowed to publish on the subject may have put something last: only a
            // chunk this machine's key signed says where its chain is.
            Some(head) if !signed_like(head.envelope.as_ref(), &ours) => {
                if local_id(head.index).as_deref() != Some(head.chunk_id.as_str()) {
                    tracing::warn!(topic, output = %self.output.name, %subject, index = head.index, "the subject's last message is not of this agent's chain: ignored (followers refuse it)");
                }
                None
            }
            Some(head) => {
                match local_id(head.index) {
                    Some(id) if id == head.chunk_id => {}
                    Some(id) => {
                        return Err(feed::FeedError::Setting {
                            what: subject.clone(),
                            reason: format!(
                                "holds another chain signed by this machine's key: its chunk {} is {}, this agent's is {id}; nothing more is sent there",
                                head.index, head.chunk_id
                            ),
                        }
                        .into())
                    }
                    None if head.index >= committed => {
                        return Err(feed::FeedError::Setting {
                            what: subject.clone(),
                            reason: format!(
                                "holds chunk {} signed by this machine's key, beyond the {committed} chunks this agent has (a spool restored or wiped?): nothing more is sent there",
                                head.index
                            ),
                        }
                        .into())
                    }
                    None => {}
                }
                let after = head.index + 1;
                if after > next {
                    tracing::info!(topic, output = %self.output.name, %subject, from = next, to = after, "the stream has chunks the position did not count (sent before a crash): moving on");
                    Some(after)
                } else if after < next && local_id(after).is_some() {
                    tracing::warn!(topic, output = %self.output.name, %subject, from = after, "the stream lost chunks it had: sending them again");
                    Some(after)
                } else {
                    None
                }
            }
        };
        self.head_checked = true;
        Ok(moved)
    }

    async fn publish_chunk(
        &mut self,
        topic: &str,
        envelope: Bytes,
        ciphertext: Bytes,
    ) -> Result<feed::publish::Acked, SendError> {
        let subject = self.subject(topic, &envelope)?;
        let stream = self.stream().await?;
        Ok(stream.publish_chunk(&subject, envelope, ciphertext).await?)
    }

    async fn publish_manifest(
        &mut self,
        topic: &str,
        head_envelope: &[u8],
        text: &[u8],
    ) -> Result<(), SendError> {
        let subject = self.subject(topic, head_envelope)?;
        let head = stream::chain::ChunkEnvelope::from_json(head_envelope)
            .map_err(|e| feed::FeedError::from(feed::MessageError::Envelope(e.to_string())))?;
        let stream = self.stream().await?;
        stream
            .publish_manifest(&subject, text, &head.chunk_id)
            .await?;
        Ok(())
    }

    /// Connection state for the metrics.
    fn connection_state(&self) -> Option<(u64, bool)> {
        self.connection
            .as_ref()
            .map(|(c, _)| (c.reconnects.load(Ordering::Relaxed), c.is_connected()))
    }
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
