//! The following side: a consumer of the stream, and per chain a directory that holds only
//! chunks that passed every check a published directory gets (hash, `chunkId`, link to
//! the chunk before, signature, one signer, the subject's machine, a pinned key), each
//! written durably before its message is acknowledged.
//!
//! The directory is the follower's position: after a crash it is verified again and the
//! follower resumes after its last chunk; a chunk it already has arrives again as a
//! duplicate and is acknowledged (when it is the same chunk) or refused as a fork.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use stream::chain::{ChainCheck, ChainFailure, ChunkEnvelope, SignatureVerdict, VerifyOptions};
use stream::layout::{self, Durability, LayoutError};

use crate::message::ChunkMessage;
use crate::publish::FeedStream;
use crate::subject::ChainSubject;
use crate::FeedError;

/// Why a message was not written; the follower stops on it (exit 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A chunk arrived after a missing one.
    #[error("{subject}: gap: chunk {found} arrived, but chunk {expected} is missing")]
    Gap {
        /// The chain.
        subject: String,
        /// The chunk the directory needs next.
        expected: u64,
        /// The chunk that came.
        found: u64,
    },
    /// The chain's own signer signed another chunk where the directory has one, or one
    /// that does not link to the chunk before it.
    #[error("{subject}: fork at chunk {index}: {reason}")]
    Fork {
        /// The chain.
        subject: String,
        /// Where.
        index: u64,
        /// What differs.
        reason: String,
    },
    /// A chunk that fails a check: not signed by the chain's signer (or the pinned key),
    /// or whose hash, `chunkId` or signature is wrong: forged, or damaged.
    #[error("{subject}: chunk {index} refused ({check}): {failure}")]
    Foreign {
        /// The chain.
        subject: String,
        /// Its index.
        index: u64,
        /// The failed check's name.
        check: &'static str,
        /// What failed.
        failure: String,
    },
    /// A chunk whose `signature.machineDid` is not the subject's machine.
    #[error("{subject}: chunk {index} refused (machineDid): signed as {did}, which is not this subject's machine")]
    WrongMachine {
        /// The chain.
        subject: String,
        /// Its index.
        index: u64,
        /// The DID it names.
        did: String,
    },
    /// A message that is not a chunk or manifest of the feed.
    #[error("{subject}: message {sequence} refused: {reason}")]
    Message {
        /// Where it came.
        subject: String,
        /// Its stream sequence number.
        sequence: u64,
        /// Why it cannot be read.
        reason: String,
    },
    /// A file could not be written (nothing is acknowledged).
    #[error("{path}: {reason}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl Refusal {
    /// Whether the message is one nobody should see again (forged or unreadable): the
    /// follower terminates it before stopping, so that a durable consumer moves past it.
    /// A gap, a fork or a write failure leave the message to be delivered again.
    pub fn is_forged(&self) -> bool {
        matches!(
            self,
            Refusal::Foreign { .. } | Refusal::WrongMachine { .. } | Refusal::Message { .. }
        )
    }
}

/// What a message did to the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Chunk `i` verified and written.
    Written(u64),
    /// Chunk `i` is already there, identical.
    Duplicate(u64),
    /// `manifest.json` written, naming this many chunks.
    Manifest(u64),
    /// A manifest that does not name exactly the chunks on disk (older, or ahead): kept
    /// out; the next one will.
    ManifestSkipped(u64),
}

/// One chain being followed into a directory.
pub struct FollowedChain {
    subject: ChainSubject,
    dir: PathBuf,
    /// The pinned signer, or the one of the directory's first chunk.
    signer: Option<[u8; 32]>,
    pinned: Option<[u8; 32]>,
    /// The index the directory needs next, and the `chunkId` of the one before; `None`
    /// while the directory is empty.
    head: Option<(u64, String)>,
    first: Option<u64>,
    from_start: bool,
}

fn write_error(path: &Path, e: impl std::fmt::Display) -> Refusal {
    Refusal::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl FollowedChain {
    /// Opens `dir` (created if absent) and verifies what it holds. `from_start`: an empty
    /// directory takes chunk 0 first (else, the first chunk that comes: a live start).
    pub fn open(
        subject: ChainSubject,
        dir: &Path,
        pinned: Option<[u8; 32]>,
        from_start: bool,
    ) -> Result<Self, FeedError> {
        let io = |e: &dyn std::fmt::Display| FeedError::Io {
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(&e))?;
        let mut chain = FollowedChain {
            subject,
            dir: dir.to_path_buf(),
            signer: pinned,
            pinned,
            head: None,
            first: None,
            from_start,
        };
        let chunks = match layout::read_chunks(dir) {
            Ok(chunks) => chunks,
            Err(LayoutError::NoChunks(_)) => return Ok(chain),
            Err(e) => return Err(io(&e)),
        };
        let (Some(first), Some(last)) = (chunks.first(), chunks.last()) else {
            return Ok(chain);
        };
        let options = VerifyOptions {
            expect_public_key: pinned,
            ..Default::default()
        };
        let mut check = ChainCheck::new(&options, first.index);
        let mut read = |i: u64| layout::read_ciphertext(dir, i).map_err(|e| e.to_string());
        for chunk in &chunks {
            check
                .chunk(chunk, &mut read)
                .map_err(|e| io(&format!("already holds a chain that does not verify: {e}")))?;
            if !chain.subject.is_machine(&chunk.signature.machine_did) {
                return Err(io(&format!(
                    "already holds chunks of {}, not of this subject's machine",
                    chunk.signature.machine_did
                )));
            }
        }
        chain.signer =
            Some(signer_of(first).ok_or_else(|| io(&"its first chunk has no valid signature"))?);
        chain.first = Some(first.index);
        chain.head = Some((last.index + 1, last.chunk_id.clone()));
        Ok(chain)
    }

    /// The chain's subject.
    pub fn subject(&self) -> &ChainSubject {
        &self.subject
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The index the directory needs next (`None` while empty).
    pub fn next(&self) -> Option<u64> {
        self.head.as_ref().map(|(n, _)| *n)
    }

    fn foreign(&self, index: u64, failure: &ChainFailure) -> Refusal {
        Refusal::Foreign {
            subject: self.subject.subject(),
            index,
            check: failure.check(),
            failure: failure.to_string(),
        }
    }

    /// Checks one chunk with its `ciphertext`, on its own: hash, `chunkId`, signature,
    /// signer, machine (chunk 0: no `previousChunkId`; the link to the chunk before is the
    /// caller's to check).
    fn check(&self, envelope: &ChunkEnvelope, ciphertext: &[u8]) -> Result<(), Refusal> {
        let index = envelope.index;
        if !self.subject.is_machine(&envelope.signature.machine_did) {
            return Err(Refusal::WrongMachine {
                subject: self.subject.subject(),
                index,
                did: envelope.signature.machine_did.clone(),
            });
        }
        let options = VerifyOptions {
            expect_public_key: self.signer,
            ..Default::default()
        };
        let mut check = ChainCheck::new(&options, index);
        let mut read = |_: u64| Ok(Some(ciphertext.to_vec()));
        check
            .chunk(envelope, &mut read)
            .map(|_| ())
            .map_err(|failure| match (&failure, self.pinned) {
                // No key pinned: another signer than the chain's first is foreign too.
                (ChainFailure::UnexpectedKey { .. }, None) => Refusal::Foreign {
                    subject: self.subject.subject(),
                    index,
                    check: "signerKey",
                    failure: format!(
                        "chunk {index}: signed by {}, not by the chain's signer {}",
                        envelope.signature.public_key_hex,
                        self.signer.map(hex::encode).unwrap_or_default()
                    ),
                },
                _ => self.foreign(index, &failure),
            })?;
        Ok(())
    }

    /// Takes a chunk: verified, then written (`.bin`, then `.json`, each synced), or
    /// recognized as one the directory has.
    pub fn accept_chunk(
        &mut self,
        chunk: &ChunkMessage,
        ciphertext: &[u8],
    ) -> Result<Accepted, Refusal> {
        let envelope = &chunk.envelope;
        let index = envelope.index;
        match &self.head {
            None => {
                if self.from_start && index != 0 {
                    return Err(Refusal::Gap {
                        subject: self.subject.subject(),
                        expected: 0,
                        found: index,
                    });
                }
                self.check(envelope, ciphertext)?;
            }
            Some((next, last_id)) => {
                if index > *next {
                    return Err(Refusal::Gap {
                        subject: self.subject.subject(),
                        expected: *next,
                        found: index,
                    });
                }
                if index < *next {
                    return self.duplicate(chunk, ciphertext);
                }
                // Checked before the link: a chunk that is not the signer's is foreign,
                // one of the signer's that does not link is a fork.
                self.check(envelope, ciphertext)?;
                if envelope.previous_chunk_id.as_deref() != Some(last_id.as_str()) {
                    return Err(Refusal::Fork {
                        subject: self.subject.subject(),
                        index,
                        reason: format!(
                            "its previousChunkId is {}, but chunk {} is {last_id}",
                            envelope.previous_chunk_id.as_deref().unwrap_or("null"),
                            index - 1
                        ),
                    });
                }
            }
        }
        let bin = self.dir.join(format!("chunk-{index}.bin"));
        let json = self.dir.join(format!("chunk-{index}.json"));
        stream::fsio::write_atomic(&bin, ciphertext, Durability::Synced)
            .map_err(|e| write_error(&bin, e))?;
        stream::fsio::write_atomic(&json, &chunk.envelope_bytes, Durability::Synced)
            .map_err(|e| write_error(&json, e))?;
        if self.signer.is_none() {
            self.signer = signer_of(envelope);
        }
        self.first.get_or_insert(index);
        self.head = Some((index + 1, envelope.chunk_id.clone()));
        Ok(Accepted::Written(index))
    }

    /// A chunk at an index the directory has: the same one (acknowledged), or a fork (the
    /// chain's signer signed two) or a forgery.
    fn duplicate(&self, chunk: &ChunkMessage, ciphertext: &[u8]) -> Result<Accepted, Refusal> {
        let index = chunk.envelope.index;
        if self.first.is_some_and(|f| index < f) {
            // Before where a live start began: not ours to keep.
            return Ok(Accepted::Duplicate(index));
        }
        let json = self.dir.join(format!("chunk-{index}.json"));
        let have = std::fs::read(&json).map_err(|e| write_error(&json, e))?;
        let have = ChunkEnvelope::from_json(&have).map_err(|e| write_error(&json, e))?;
        if have.chunk_id == chunk.envelope.chunk_id {
            return Ok(Accepted::Duplicate(index));
        }
        self.check(&chunk.envelope, ciphertext)?;
        Err(Refusal::Fork {
            subject: self.subject.subject(),
            index,
            reason: format!(
                "the chain's signer signed {} where this directory has {}",
                chunk.envelope.chunk_id, have.chunk_id
            ),
        })
    }

    /// Takes a manifest: written (synced) when it names exactly the chunks on disk and its
    /// head, else left out.
    pub fn accept_manifest(
        &mut self,
        manifest: &layout::Manifest,
        bytes: &[u8],
        head_chunk_id: &str,
    ) -> Result<Accepted, Refusal> {
        let total = manifest.total_chunks;
        let Some((next, last_id)) = &self.head else {
            return Ok(Accepted::ManifestSkipped(total));
        };
        if total != *next {
            return Ok(Accepted::ManifestSkipped(total));
        }
        if head_chunk_id != last_id || !self.subject.is_machine(&manifest.machine_did) {
            // No one signs a manifest: one that names other chunks is anyone's.
            return Err(Refusal::Foreign {
                subject: self.subject.subject(),
                index: total.saturating_sub(1),
                check: "manifest",
                failure: format!(
                    "a manifest of {} names {head_chunk_id} as chunk {}, this directory has {last_id}",
                    manifest.machine_did,
                    total.saturating_sub(1)
                ),
            });
        }
        let path = self.dir.join("manifest.json");
        stream::fsio::write_atomic(&path, bytes, Durability::Synced)
            .map_err(|e| write_error(&path, e))?;
        Ok(Accepted::Manifest(total))
    }
}

fn signer_of(envelope: &ChunkEnvelope) -> Option<[u8; 32]> {
    let verdict = SignatureVerdict::of(envelope);
    verdict.valid().then_some(verdict.public_key()).flatten()
}

/// Which messages a follower asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// A chain's subject, or a wildcard.
    pub filter: String,
    /// A durable consumer's name: the server remembers what was acknowledged.
    pub durable: Option<String>,
    /// Where a new consumer begins: the stream's first message (`All`), or each subject's
    /// last (`LastPerSubject`: a live start).
    pub deliver_all: bool,
}

/// How long an ephemeral consumer outlives a follower that went away.
const EPHEMERAL_IDLE: Duration = Duration::from_secs(300);

/// The consumer (created, or a durable one bound again; a durable one must filter the
/// same subjects).
pub async fn consumer(feed: &FeedStream, spec: &ConsumerSpec) -> Result<pull::Stream, FeedError> {
    let name = &feed.spec().name;
    let stream = feed
        .context()
        .get_stream(name)
        .await
        .map_err(|e| FeedError::nats(format!("stream {name}"), e))?;
    let config = pull::Config {
        durable_name: spec.durable.clone(),
        filter_subject: spec.filter.clone(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: if spec.deliver_all {
            DeliverPolicy::All
        } else {
            DeliverPolicy::LastPerSubject
        },
        inactive_threshold: if spec.durable.is_some() {
            Duration::ZERO
        } else {
            EPHEMERAL_IDLE
        },
        ..Default::default()
    };
    let consumer: async_nats::jetstream::consumer::PullConsumer = match &spec.durable {
        Some(durable) => {
            let mut found = stream
                .get_or_create_consumer(durable, config)
                .await
                .map_err(|e| FeedError::nats(format!("consumer {durable}"), e))?;
            let info = found
                .info()
                .await
                .map_err(|e| FeedError::nats(format!("consumer {durable}"), e))?;
            if info.config.filter_subject != spec.filter {
                return Err(FeedError::Setting {
                    what: format!("--durable {durable}"),
                    reason: format!(
                        "this consumer follows {:?}, not {:?}: name another",
                        info.config.filter_subject, spec.filter
                    ),
                });
            }
            found
        }
        None => stream
            .create_consumer(config)
            .await
            .map_err(|e| FeedError::nats("consumer", e))?,
    };
    consumer
        .stream()
        .max_messages_per_batch(16)
        .max_bytes_per_batch(32 << 20)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| FeedError::nats("consumer messages", e))
}
