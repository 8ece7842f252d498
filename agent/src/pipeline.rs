//! From queued messages to published chunks, on two threads:
//!
//! * the signer takes batches from the [`Backlog`], applies the field rules, numbers the
//!   envelopes (one sequence for the machine's DID, across topics), and has keyd encrypt the
//!   marked fields and sign every envelope in one call each;
//! * the writer appends the signed packages to their topics' spools, makes them durable
//!   (accepted), and closes chunks at their bounds through keyd.
//!
//! While keyd is down, both retry with exponential backoff; the queue in front of the signer
//! takes the load meanwhile. When keyd refuses (its policy denies the agent, a request does
//! not fit a key's purpose), that is reported as a refusal (log, metric, `/health`) and
//! retried at the longest backoff, until the operator mends it: nothing accepted is dropped.
//! A sequence number keyd will not sign is renumbered from where keyd says it continues.
//!
//! A full disk pauses the writer the same way ([`DiskPause`]): the write that failed is
//! undone and retried with backoff, `/health` says why, the queue in front takes the load and
//! then its overflow policy (counted), and the writer goes on by itself once a write succeeds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::Number;
use stream::sign::{rule_messages, sign_ruled, MessageError, PackageLine, UnsignedMessage};
use stream::signer::{
    ChunkHashSigner, ChunkKeySource, DatasetSigner, FieldEncryptor, PackageSigner, SignerError,
};

use crate::backlog::Backlog;
use crate::config::{AgentConfig, SpoolFsync};
use crate::import::journal::Journal;
use crate::listing::Lister;
use crate::metrics::{self, KeydOutcome, Metrics};
use crate::spool::{SpoolError, TopicSpool};

/// Everything keyd does for the agent.
pub trait Keyd:
    PackageSigner + FieldEncryptor + ChunkKeySource + ChunkHashSigner + DatasetSigner
{
    /// The lowest sequence number keyd will sign now.
    fn next_sequence_number(&self) -> Result<u64, SignerError>;
    /// `signingKeyId` of the packages.
    fn signing_key_id(&self) -> String;
}

impl Keyd for keyd_proto::client::KeydClient {
    fn next_sequence_number(&self) -> Result<u64, SignerError> {
        keyd_proto::client::KeydClient::next_sequence_number(self)
    }
    fn signing_key_id(&self) -> String {
        self.identity().identity_key_id.clone()
    }
}

/// Exponential backoff between retries of a failed keyd call.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max_ms: u64) -> Self {
        Backoff {
            next: Duration::from_millis(50),
            max: Duration::from_millis(max_ms),
        }
    }
    /// Sleeps for the current delay (in short steps, returning early on `stop`), then doubles it.
    pub fn wait(&mut self, stop: &AtomicBool) {
        let until = Instant::now() + self.next;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
        }
        self.next = (self.next * 2).min(self.max);
    }
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(50);
    }
    /// The next wait is the longest (after a refusal: nothing changes quickly).
    pub fn to_max(&mut self) {
        self.next = self.max;
    }
}

/// The writer's state while the disk is full.
#[derive(Debug)]
pub struct DiskPause {
    backoff: Backoff,
    paused: bool,
}

impl DiskPause {
    pub fn new(max_ms: u64) -> Self {
        DiskPause {
            backoff: Backoff::new(max_ms),
            paused: false,
        }
    }

    /// After a write that found the disk full: reports it, waits. Returns whether to give up
    /// (stopping).
    fn wait(
        &mut self,
        error: &dyn std::fmt::Display,
        metrics: &Metrics,
        stop: &AtomicBool,
    ) -> bool {
        metrics.disk_full_retries.inc();
        if !self.paused {
            self.paused = true;
            tracing::error!(error = %error, "the disk is full: not accepting; retrying writes until there is room");
            metrics.set_disk_full(Some(error.to_string()));
        }
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        self.backoff.wait(stop);
        false
    }

    /// After a write that succeeded.
    fn resumed(&mut self, metrics: &Metrics) {
        if self.paused {
            self.paused = false;
            self.backoff.reset();
            tracing::info!("the disk takes writes again: accepting");
            metrics.set_disk_full(None);
        }
    }

    /// Runs `write` until it succeeds, while the disk is full; `None` if stopping meanwhile.
    pub fn retry<T, E: DiskFull + std::fmt::Display>(
        &mut self,
        metrics: &Metrics,
        stop: &AtomicBool,
        mut write: impl FnMut() -> Result<T, E>,
    ) -> Result<Option<T>, E> {
        loop {
            match write() {
                Ok(v) => {
                    self.resumed(metrics);
                    return Ok(Some(v));
                }
                Err(e) if e.is_disk_full() => {
                    if self.wait(&e, metrics, stop) {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// An error that may say only that the disk is full: nothing was committed, and the same
/// call succeeds once space returns.
pub trait DiskFull {
    fn is_disk_full(&self) -> bool;
}

impl DiskFull for SpoolError {
    fn is_disk_full(&self) -> bool {
        SpoolError::is_disk_full(self)
    }
}

impl DiskFull for crate::import::journal::JournalError {
    fn is_disk_full(&self) -> bool {
        crate::import::journal::JournalError::is_disk_full(self)
    }
}

/// The longest wait between writes to a full disk: space that returns is used soon.
pub const DISK_BACKOFF_MAX_MS: u64 = 2_000;

/// How a failed keyd call is retried: a refusal waits the longest, a sequence conflict not
/// at all (once), anything else with backoff. Returns whether to give up (stopping).
fn after_failure(
    error: &SignerError,
    what: &str,
    backoff: &mut Backoff,
    stop: &AtomicBool,
) -> bool {
    match error {
        SignerError::Sequence(_) => {
            tracing::info!(error = %error, "keyd continues the sequence elsewhere; renumbering");
        }
        e if e.is_retryable() => {
            tracing::warn!(error = %e, "keyd could not {what}; retrying");
        }
        e => {
            tracing::error!(error = %e, "keyd refuses to {what}; retrying at the longest backoff until that changes");
            backoff.to_max();
        }
    }
    if stop.load(Ordering::Relaxed) {
        return true;
    }
    if !matches!(error, SignerError::Sequence(_)) {
        backoff.wait(stop);
    }
    false
}

/// A signed batch on its way to the writer: (topic index, sequence number, package or why not).
type SignedBatch = Vec<(usize, u64, Result<PackageLine, MessageError>)>;

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Backlog(#[from] crate::backlog::BacklogError),
    #[error(transparent)]
    Journal(#[from] crate::import::journal::JournalError),
    #[error("a package could not be written: {0}")]
    Package(String),
}

/// Runs the signer until the backlog is closed and drained (or `stop` while keyd is down).
/// With `journal` (an import), every signed batch is recorded there before the writer gets it.
pub fn run_signer(
    config: &AgentConfig,
    backlog: &Backlog,
    keyd: &dyn Keyd,
    metrics: &Metrics,
    out: Sender<SignedBatch>,
    stop: &AtomicBool,
    journal: Option<&Journal>,
) -> Result<(), PipelineError> {
    let mut backoff = Backoff::new(config.keyd_backoff_max_ms);
    let mut disk = DiskPause::new(DISK_BACKOFF_MAX_MS);
    let signing_key_id = keyd.signing_key_id();
    let mut next_sequence: Option<u64> = None;
    let delay = Duration::from_millis(config.batch.max_delay_ms);
    loop {
        let batch = backlog.pop_batch(
            config.batch.max_messages,
            config.batch.max_bytes,
            delay,
            Duration::from_millis(200),
        )?;
        let depth = backlog.depth();
        metrics.queue_messages.set(depth.messages as i64);
        metrics.queue_memory_bytes.set(depth.memory_bytes as i64);
        metrics.queue_disk_bytes.set(depth.disk_bytes as i64);
        if batch.is_empty() {
            if backlog.is_closed() {
                return Ok(());
            }
            continue;
        }
        let topics: Vec<usize> = batch.iter().map(|c| c.topic).collect();
        let origins: Vec<u64> = batch.iter().filter_map(|c| c.origin).collect();
        let messages: Vec<UnsignedMessage> = batch
            .into_iter()
            .map(|c| {
                let topic = &config.topics[c.topic];
                UnsignedMessage {
                    topic: topic.topic.clone(),
                    fields: c.fields,
                    captured_at: c.captured_at,
                    sequence_number: Number::from(0u64),
                    schema_version: topic.schema_version.clone(),
                }
            })
            .collect();
        let rules_of = |name: &str| {
            config
                .topics
                .iter()
                .find(|t| t.topic == name)
                .map(|t| &t.rules)
        };
        // The rules run and each payload is made canonical once; a retry only re-signs.
        let mut ruled = rule_messages(messages, rules_of);
        let signed = loop {
            let first = match next_sequence {
                Some(n) => Ok(n),
                None => {
                    let started = Instant::now();
                    let r = keyd.next_sequence_number();
                    metrics.observe_keyd("identity", started.elapsed(), KeydOutcome::of(&r));
                    r
                }
            };
            let result = first.and_then(|first| {
                for (i, m) in ruled.iter_mut().enumerate() {
                    if let Ok(m) = m {
                        m.sequence_number = Number::from(first + i as u64);
                    }
                }
                let started = Instant::now();
                let r = sign_ruled(&ruled, keyd, keyd, &signing_key_id);
                metrics.observe_keyd("sign", started.elapsed(), KeydOutcome::of(&r));
                r.map(|packages| (first, packages))
            });
            match result {
                Ok((first, packages)) => {
                    next_sequence = Some(first + ruled.len() as u64);
                    backoff.reset();
                    break Some((first, packages));
                }
                Err(e) => {
                    // keyd may have signed before failing: ask again where to continue.
                    next_sequence = None;
                    if after_failure(&e, "sign", &mut backoff, stop) {
                        break None;
                    }
                }
            }
        };
        let Some((first, packages)) = signed else {
            tracing::warn!(
                lost = ruled.len(),
                "stopping while keyd is unreachable: queued messages were not signed"
            );
            return Ok(());
        };
        if let Some(journal) = journal {
            if origins.len() != packages.len() {
                return Err(PipelineError::Package(
                    "an imported message without its place in the bag".into(),
                ));
            }
            // A full disk pauses the import here, as it pauses the writer: the journal line
            // is undone and retried until there is room (or the import is stopped, when
            // nothing of the batch reached a spool and a resume signs it again).
            if disk
                .retry(metrics, stop, || journal.record(&origins, first))?
                .is_none()
            {
                tracing::warn!(
                    lost = origins.len(),
                    "stopping while the disk is full: signed messages were not journaled"
                );
                return Ok(());
            }
        }
        metrics
            .signed
            .inc_by(packages.iter().filter(|p| p.is_ok()).count() as u64);
        let batch: SignedBatch = topics
            .into_iter()
            .zip(packages)
            .enumerate()
            .map(|(i, (topic, p))| (topic, first + i as u64, p))
            .collect();
        if out.send(batch).is_err() {
            return Ok(()); // the writer stopped; its error is reported there
        }
    }
}

/// Runs the writer until the signer hangs up; then closes every open chunk (if keyd answers).
pub fn run_writer(
    config: &AgentConfig,
    spools: &mut [TopicSpool],
    keyd: &dyn Keyd,
    metrics: &Metrics,
    input: Receiver<SignedBatch>,
    stop: &AtomicBool,
) -> Result<(), PipelineError> {
    let fsync = config.spool_fsync == SpoolFsync::Batch;
    let mut backoff = Backoff::new(config.keyd_backoff_max_ms);
    let mut disk = DiskPause::new(DISK_BACKOFF_MAX_MS);
    let mut listers: Vec<Option<Lister>> = config
        .topics
        .iter()
        .map(|t| {
            t.datasets
                .as_ref()
                .map(|d| Lister::open(&t.topic, &t.output, d))
        })
        .collect();
    for (topic, spool) in config.topics.iter().zip(spools.iter()) {
        metrics
            .spool_packages
            .get_or_create(&metrics::topic(&topic.topic))
            .set(spool.open_packages() as i64);
    }
    let mut commit = |index: usize,
                      spool: &mut TopicSpool,
                      disk: &mut DiskPause,
                      give_up: bool|
     -> Result<bool, PipelineError> {
        let topic = &config.topics[index].topic;
        loop {
            let started = Instant::now();
            match spool.commit(keyd, keyd, fsync) {
                Ok(done) => {
                    metrics.observe_keyd("chunk", started.elapsed(), KeydOutcome::Ok);
                    backoff.reset();
                    disk.resumed(metrics);
                    if let Some(c) = done {
                        let labels = metrics::topic(topic);
                        metrics.chunks.get_or_create(&labels).inc();
                        metrics
                            .chunk_bytes
                            .get_or_create(&labels)
                            .inc_by(c.plaintext_bytes as u64);
                        metrics.spool_packages.get_or_create(&labels).set(0);
                        tracing::info!(topic = %topic, index = c.index, packages = c.packages, bytes = c.plaintext_bytes, "chunk published");
                    }
                    return Ok(true);
                }
                Err(
                    SpoolError::Keyd(e)
                    | SpoolError::Build(stream::chain::BuildError::Signer { source: e, .. }),
                ) => {
                    metrics.observe_keyd("chunk", started.elapsed(), KeydOutcome::of_error(&e));
                    tracing::warn!(topic = %topic, "keyd could not close the chunk");
                    if give_up || after_failure(&e, "close the chunk", &mut backoff, stop) {
                        return Ok(false);
                    }
                }
                Err(e) if e.is_disk_full() => {
                    if give_up || disk.wait(&e, metrics, stop) {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    loop {
        let batch = match input.recv_timeout(Duration::from_millis(50)) {
            Ok(batch) => Some(batch),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(batch) = batch {
            // Per topic: (first, last, count) of what this batch accepted.
            let mut accepted: Vec<Option<(u64, u64, u64)>> = vec![None; spools.len()];
            for (index, sequence, package) in batch {
                let topic = &config.topics[index];
                let package = match package {
                    Ok(p) => p,
                    Err(e) => {
                        metrics
                            .rejected
                            .get_or_create(&metrics::topic(&topic.topic))
                            .inc();
                        tracing::warn!(topic = %topic.topic, sequence, error = %e, "message rejected by the field rules");
                        continue;
                    }
                };
                let mut line = package.into_string();
                line.push('\n');
                let spool = &mut spools[index];
                if spool.full_before(&topic.chunk, line.len()) {
                    commit(index, spool, &mut disk, false)?;
                }
                spool.append(line.as_bytes());
                let a = accepted[index].get_or_insert((sequence, sequence, 0));
                a.1 = sequence;
                a.2 += 1;
            }
            for (index, a) in accepted.into_iter().enumerate() {
                let Some((first, last, count)) = a else {
                    continue;
                };
                let spool = &mut spools[index];
                let written = disk.retry(metrics, stop, || {
                    if fsync {
                        spool.sync()
                    } else {
                        spool.flush()
                    }
                })?;
                let topic = &config.topics[index].topic;
                if written.is_none() {
                    tracing::warn!(topic = %topic, first_sequence = first, last_sequence = last, "stopping while the disk is full: these signed packages were not accepted");
                    continue;
                }
                let labels = metrics::topic(topic);
                metrics.spooled.get_or_create(&labels).inc_by(count);
                metrics
                    .spool_packages
                    .get_or_create(&labels)
                    .set(spools[index].open_packages() as i64);
                tracing::debug!(topic = %topic, first_sequence = first, last_sequence = last, count, "spooled");
            }
        }
        let now = Instant::now();
        for (index, spool) in spools.iter_mut().enumerate() {
            if spool.expired(&config.topics[index].chunk, now) {
                commit(index, spool, &mut disk, false)?;
            }
            if spool.manifest_stale() {
                match spool.refresh_manifest() {
                    Err(e) if !e.is_disk_full() => return Err(e.into()),
                    _ => {}
                }
            }
        }
        for (index, lister) in listers.iter_mut().enumerate() {
            let Some(lister) = lister.as_mut().filter(|l| l.due(now)) else {
                continue;
            };
            let started = Instant::now();
            match lister.list(spools[index].next_index(), keyd) {
                Ok(_) => {}
                Err(crate::listing::ListError::Keyd(e)) => {
                    metrics.observe_keyd("dataset", started.elapsed(), KeydOutcome::of_error(&e));
                    tracing::warn!(topic = %config.topics[index].topic, error = %e, "keyd did not sign the dataset");
                    if e.is_retryable() {
                        lister.retry_in(Duration::from_secs(10));
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %config.topics[index].topic, error = %e, "dataset not listed");
                }
            }
        }
    }
    // Clean stop: publish what is open, unless keyd is gone (then it stays in the spool).
    for (index, spool) in spools.iter_mut().enumerate() {
        let topic = &config.topics[index].topic;
        if disk.retry(metrics, stop, || spool.sync())?.is_none() {
            tracing::warn!(topic = %topic, "the disk is full at stop: packages not yet made durable are lost, the rest stays in the spool");
            continue;
        }
        if !commit(index, spool, &mut disk, true)? {
            tracing::warn!(topic = %topic, packages = spool.open_packages(), "keyd unreachable or the disk full at stop: the open chunk stays in the spool for the next start");
        }
    }
    Ok(())
}
