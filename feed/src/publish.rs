//! The publishing side: the stream (created if absent), a chunk or manifest published and
//! acknowledged by JetStream, and chunks larger than the server takes in one message sent
//! through the stream's object store.

use async_nats::jetstream::{self, object_store, stream, Context};
use async_nats::Client;
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::message::{self, ChunkMessage, Ciphertext, FeedMessage};
use crate::subject;
use crate::FeedError;

/// Room kept in a message for its headers, within the server's `max_payload`.
const HEADER_ROOM: usize = 1024;

/// The stream a feed is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Its name (`PEAQ_STREAM`).
    pub name: String,
    /// The subjects it holds: `<subject_prefix>.>`.
    pub subject_prefix: String,
    /// Copies in a cluster (1 on a single server).
    pub replicas: usize,
}

impl StreamSpec {
    /// The object store bucket of the stream's large chunks.
    pub fn object_bucket(&self) -> String {
        format!("{}_CIPHERTEXT", self.name)
    }
}

/// What JetStream said to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// The message's sequence number in the stream.
    pub sequence: u64,
    /// JetStream had it already (a re-send within its duplicate window).
    pub duplicate: bool,
    /// The ciphertext went through the object store.
    pub via_object_store: bool,
}

/// The last chunk a subject holds, as its last message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The index of the last chunk.
    pub index: u64,
    /// Its `chunkId`.
    pub chunk_id: String,
    /// Its envelope, when the last message is the chunk itself (not a manifest): nothing
    /// in it is checked here.
    pub envelope: Option<::stream::chain::ChunkEnvelope>,
}

/// An open stream.
pub struct FeedStream {
    js: Context,
    spec: StreamSpec,
    objects: Option<object_store::ObjectStore>,
    max_payload: usize,
}

/// Checks a stream name: JetStream's rules (no `.`, `*`, `>`, space or path separator).
pub fn check_stream_name(what: &str, name: &str) -> Result<(), FeedError> {
    if name.is_empty()
        || name.chars().any(|c| {
            c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_control()
        })
    {
        return Err(FeedError::Setting {
            what: what.into(),
            reason: format!(
                "{name:?} is not a JetStream stream name (no '.', '*', '>', '/' or spaces)"
            ),
        });
    }
    Ok(())
}

impl FeedStream {
    /// Opens the stream; a publisher (`create`) creates it if absent (file storage,
    /// `spec.replicas` copies). The stream must hold the feed's subjects.
    pub async fn open(client: &Client, spec: &StreamSpec, create: bool) -> Result<Self, FeedError> {
        check_stream_name("stream", &spec.name)?;
        subject::check_prefix("subject_prefix", &spec.subject_prefix)?;
        let js = jetstream::new(client.clone());
        let wanted = subject::wildcard(&spec.subject_prefix, None);
        let found = if create {
            js.get_or_create_stream(stream::Config {
                name: spec.name.clone(),
                subjects: vec![wanted.clone()],
                storage: stream::StorageType::File,
                num_replicas: spec.replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| FeedError::nats(format!("stream {}", spec.name), e))
        } else {
            js.get_stream(&spec.name)
                .await
                .map_err(|e| FeedError::nats(format!("stream {}", spec.name), e))
        };
        let mut stream = found?;
        let info = stream
            .info()
            .await
            .map_err(|e| FeedError::nats(format!("stream {}", spec.name), e))?;
        if !info
            .config
            .subjects
            .iter()
            .any(|s| s == &wanted || s == ">")
        {
            return Err(FeedError::Setting {
                what: format!("stream {}", spec.name),
                reason: format!(
                    "exists and holds {:?}, not {wanted:?}: name another stream or add the subjects to it",
                    info.config.subjects
                ),
            });
        }
        Ok(FeedStream {
            js,
            spec: spec.clone(),
            objects: None,
            max_payload: client.server_info().max_payload,
        })
    }

    /// The stream's description.
    pub fn spec(&self) -> &StreamSpec {
        &self.spec
    }

    /// The JetStream context.
    pub fn context(&self) -> &Context {
        &self.js
    }

    /// The largest message the server takes, as it said when we connected.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    async fn objects(&mut self, create: bool) -> Result<&object_store::ObjectStore, FeedError> {
        if self.objects.is_none() {
            let bucket = self.spec.object_bucket();
            let store = match self.js.get_object_store(&bucket).await {
                Ok(store) => store,
                Err(e) if !create => {
                    return Err(FeedError::nats(format!("object store {bucket}"), e))
                }
                Err(_) => self
                    .js
                    .create_object_store(object_store::Config {
                        bucket: bucket.clone(),
                        description: Some("peaq chunk ciphertexts larger than max_payload".into()),
                        storage: stream::StorageType::File,
                        num_replicas: self.spec.replicas.max(1),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| FeedError::nats(format!("object store {bucket}"), e))?,
            };
            self.objects = Some(store);
        }
        Ok(self.objects.as_ref().expect("set above"))
    }

    /// Publishes one chunk (`chunk-{i}.json` and `chunk-{i}.bin`, byte for byte) and waits
    /// for JetStream's acknowledgement.
    pub async fn publish_chunk(
        &mut self,
        subject: &str,
        envelope_bytes: Bytes,
        ciphertext: Bytes,
    ) -> Result<Acked, FeedError> {
        let mut chunk = ChunkMessage::from_files(envelope_bytes, Ciphertext::Inline(Bytes::new()))?;
        let inline =
            chunk.envelope_bytes.len() + ciphertext.len() + HEADER_ROOM <= self.max_payload;
        if inline {
            chunk.ciphertext = Ciphertext::Inline(ciphertext);
        } else {
            if chunk.envelope_bytes.len() + HEADER_ROOM > self.max_payload {
                return Err(FeedError::Setting {
                    what: format!("chunk {} on {subject}", chunk.envelope.index),
                    reason: format!(
                        "its envelope alone is more than the server's max_payload of {} bytes",
                        self.max_payload
                    ),
                });
            }
            let name = message::object_name(subject, &chunk.envelope);
            let mut reader: &[u8] = &ciphertext;
            let meta = object_store::ObjectMetadata {
                name: name.clone(),
                // Its pieces fit the server's messages too (128 KiB unless smaller).
                chunk_size: Some((self.max_payload - HEADER_ROOM).min(128 * 1024)),
                ..Default::default()
            };
            self.objects(true)
                .await?
                .put(meta, &mut reader)
                .await
                .map_err(|e| FeedError::nats(format!("object {name}"), e))?;
            chunk.ciphertext = Ciphertext::Object(name);
        }
        let (headers, body) = chunk.encode();
        let ack = self.send(subject, headers, body).await?;
        Ok(Acked {
            via_object_store: !inline,
            ..ack
        })
    }

    /// Publishes `manifest.json` (naming `head_chunk_id` as its last chunk), acknowledged.
    pub async fn publish_manifest(
        &mut self,
        subject: &str,
        text: &[u8],
        head_chunk_id: &str,
    ) -> Result<Acked, FeedError> {
        let (headers, body) = message::encode_manifest(text, head_chunk_id);
        self.send(subject, headers, body).await
    }

    async fn send(
        &self,
        subject: &str,
        headers: async_nats::HeaderMap,
        body: Bytes,
    ) -> Result<Acked, FeedError> {
        let ack = self
            .js
            .publish_with_headers(subject.to_string(), headers, body)
            .await
            .map_err(|e| FeedError::nats(format!("publish on {subject}"), e))?
            .await
            .map_err(|e| FeedError::nats(format!("acknowledgement on {subject}"), e))?;
        if ack.stream != self.spec.name {
            return Err(FeedError::Setting {
                what: subject.to_string(),
                reason: format!("went to stream {}, not {}", ack.stream, self.spec.name),
            });
        }
        Ok(Acked {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
            via_object_store: false,
        })
    }

    /// The last chunk `subject` holds (from its last message, a chunk or a manifest), if
    /// any: where a publisher that lost its position resumes.
    pub async fn head(&self, subject: &str) -> Result<Option<Head>, FeedError> {
        let stream = self
            .js
            .get_stream_no_info(&self.spec.name)
            .await
            .map_err(|e| FeedError::nats(format!("stream {}", self.spec.name), e))?;
        let last = match stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => m,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok(None)
            }
            Err(e) => return Err(FeedError::nats(format!("last message on {subject}"), e)),
        };
        Ok(match message::decode(Some(&last.headers), &last.payload)? {
            FeedMessage::Chunk(c) => Some(Head {
                index: c.envelope.index,
                chunk_id: c.envelope.chunk_id.clone(),
                envelope: Some(c.envelope),
            }),
            FeedMessage::Manifest {
                manifest,
                head_chunk_id,
                ..
            } => manifest.total_chunks.checked_sub(1).map(|index| Head {
                index,
                chunk_id: head_chunk_id,
                envelope: None,
            }),
        })
    }

    /// A ciphertext from the object store.
    pub async fn fetch_object(&mut self, name: &str) -> Result<Vec<u8>, FeedError> {
        let mut object = self
            .objects(false)
            .await?
            .get(name)
            .await
            .map_err(|e| FeedError::nats(format!("object {name}"), e))?;
        let mut data = Vec::new();
        object
            .read_to_end(&mut data)
            .await
            .map_err(|e| FeedError::nats(format!("object {name}"), e))?;
        Ok(data)
    }
}
