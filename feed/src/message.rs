//! One chunk, or one manifest, as a JetStream message.
//!
//! A chunk: headers `Nats-Msg-Id` (its `chunkId`: JetStream drops a re-send),
//! `Peaq-Kind: chunk`, `Peaq-Chunk-Index`, `Peaq-Envelope-Bytes` (n); the body is the
//! bytes of `chunk-{i}.json` (n of them) followed by those of `chunk-{i}.bin`. A chunk
//! too large for the server's `max_payload` carries its envelope alone and
//! `Peaq-Ciphertext-Object`: the name of its ciphertext in the stream's object store.
//! A manifest: `Peaq-Kind: manifest`, `Peaq-Head-Chunk-Id` (the `chunkId` of its last
//! chunk), the bytes of `manifest.json` as the body.
//!
//! Nothing here is trusted: the follower checks every chunk as it checks a directory.

use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};
use stream::chain::ChunkEnvelope;
use stream::layout::Manifest;

/// `Nats-Msg-Id`: JetStream's de-duplication key.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// `chunk` or `manifest`.
pub const KIND: &str = "Peaq-Kind";
/// A chunk's index.
pub const CHUNK_INDEX: &str = "Peaq-Chunk-Index";
/// How many bytes of the body are the envelope.
pub const ENVELOPE_BYTES: &str = "Peaq-Envelope-Bytes";
/// The object store name of a chunk's ciphertext, when it is not in the body.
pub const CIPHERTEXT_OBJECT: &str = "Peaq-Ciphertext-Object";
/// A manifest's last chunk.
pub const HEAD_CHUNK_ID: &str = "Peaq-Head-Chunk-Id";

/// A message that is not a chunk or manifest of this feed; names the header or part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A header missing or unreadable.
    #[error("header {header}: {reason}")]
    Header {
        /// The header.
        header: &'static str,
        /// Why.
        reason: String,
    },
    /// The envelope in the body is not one.
    #[error("envelope: {0}")]
    Envelope(String),
    /// The manifest in the body is not one.
    #[error("manifest: {0}")]
    Manifest(String),
}

/// Where a chunk's ciphertext is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ciphertext {
    /// In the message.
    Inline(Bytes),
    /// In the object store, under this name.
    Object(String),
}

/// A chunk as sent: the exact bytes of its two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMessage {
    /// The parsed envelope.
    pub envelope: ChunkEnvelope,
    /// `chunk-{i}.json`, byte for byte.
    pub envelope_bytes: Bytes,
    /// `chunk-{i}.bin`, or where it is.
    pub ciphertext: Ciphertext,
}

/// A message of the feed (one at a time is decoded and handled: the size of the larger
/// variant costs nothing worth a box).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedMessage {
    /// A chunk.
    Chunk(ChunkMessage),
    /// A manifest: parsed, its file's bytes, and the `chunkId` of its last chunk.
    Manifest {
        /// The parsed manifest.
        manifest: Manifest,
        /// `manifest.json`, byte for byte.
        bytes: Bytes,
        /// The `chunkId` of chunk `totalChunks - 1`.
        head_chunk_id: String,
    },
}

/// The object store name of a chunk's ciphertext: unique per chain and chunk.
pub fn object_name(subject: &str, envelope: &ChunkEnvelope) -> String {
    format!(
        "{subject}/chunk-{}-{}.bin",
        envelope.index, envelope.chunk_id
    )
}

fn header(headers: &HeaderMap, name: &'static str) -> Result<String, MessageError> {
    headers
        .get(name)
        .map(|v| v.as_str().to_string())
        .ok_or(MessageError::Header {
            header: name,
            reason: "missing".into(),
        })
}

impl ChunkMessage {
    /// A chunk from its files' bytes.
    pub fn from_files(envelope_bytes: Bytes, ciphertext: Ciphertext) -> Result<Self, MessageError> {
        let envelope = ChunkEnvelope::from_json(&envelope_bytes)
            .map_err(|e| MessageError::Envelope(e.to_string()))?;
        // It becomes a header: visible ASCII only.
        if envelope.chunk_id.is_empty() || !envelope.chunk_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(MessageError::Envelope(
                "chunkId is not a hex digest (it cannot be a header)".into(),
            ));
        }
        Ok(ChunkMessage {
            envelope,
            envelope_bytes,
            ciphertext,
        })
    }

    /// Its headers and body.
    pub fn encode(&self) -> (HeaderMap, Bytes) {
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID, self.envelope.chunk_id.as_str());
        headers.insert(KIND, "chunk");
        headers.insert(CHUNK_INDEX, self.envelope.index.to_string().as_str());
        headers.insert(
            ENVELOPE_BYTES,
            self.envelope_bytes.len().to_string().as_str(),
        );
        let body = match &self.ciphertext {
            Ciphertext::Inline(data) => {
                let mut body = BytesMut::with_capacity(self.envelope_bytes.len() + data.len());
                body.put_slice(&self.envelope_bytes);
                body.put_slice(data);
                body.freeze()
            }
            Ciphertext::Object(name) => {
                headers.insert(CIPHERTEXT_OBJECT, name.as_str());
                self.envelope_bytes.clone()
            }
        };
        (headers, body)
    }
}

/// A manifest's headers and body.
pub fn encode_manifest(text: &[u8], head_chunk_id: &str) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    let digest = hex::encode(Sha256::digest(text));
    headers.insert(
        MSG_ID,
        format!("manifest-{head_chunk_id}-{}", &digest[..16]).as_str(),
    );
    headers.insert(KIND, "manifest");
    headers.insert(HEAD_CHUNK_ID, head_chunk_id);
    (headers, Bytes::copy_from_slice(text))
}

/// Reads a message of the feed; every header is checked against the body it describes.
pub fn decode(headers: Option<&HeaderMap>, payload: &Bytes) -> Result<FeedMessage, MessageError> {
    let empty = HeaderMap::new();
    let headers = headers.unwrap_or(&empty);
    match header(headers, KIND)?.as_str() {
        "chunk" => {
            let index: u64 =
                header(headers, CHUNK_INDEX)?
                    .parse()
                    .map_err(|_| MessageError::Header {
                        header: CHUNK_INDEX,
                        reason: "is not a chunk index".into(),
                    })?;
            let length: usize =
                header(headers, ENVELOPE_BYTES)?
                    .parse()
                    .map_err(|_| MessageError::Header {
                        header: ENVELOPE_BYTES,
                        reason: "is not a length".into(),
                    })?;
            if length > payload.len() {
                return Err(MessageError::Header {
                    header: ENVELOPE_BYTES,
                    reason: format!(
                        "{length} is more than the {} bytes of the body",
                        payload.len()
                    ),
                });
            }
            let envelope_bytes = payload.slice(..length);
            let ciphertext = match headers.get(CIPHERTEXT_OBJECT) {
                Some(name) => {
                    if length != payload.len() {
                        return Err(MessageError::Header {
                            header: CIPHERTEXT_OBJECT,
                            reason: "names an object, but the body holds ciphertext too".into(),
                        });
                    }
                    Ciphertext::Object(name.as_str().to_string())
                }
                None => Ciphertext::Inline(payload.slice(length..)),
            };
            let chunk = ChunkMessage::from_files(envelope_bytes, ciphertext)?;
            if chunk.envelope.index != index {
                return Err(MessageError::Header {
                    header: CHUNK_INDEX,
                    reason: format!("says {index}, the envelope {}", chunk.envelope.index),
                });
            }
            if header(headers, MSG_ID)? != chunk.envelope.chunk_id {
                return Err(MessageError::Header {
                    header: MSG_ID,
                    reason: "is not the envelope's chunkId".into(),
                });
            }
            Ok(FeedMessage::Chunk(chunk))
        }
        "manifest" => {
            let manifest = Manifest::from_json(payload).map_err(MessageError::Manifest)?;
            Ok(FeedMessage::Manifest {
                manifest,
                bytes: payload.clone(),
                head_chunk_id: header(headers, HEAD_CHUNK_ID)?,
            })
        }
        other => Err(MessageError::Header {
            header: KIND,
            reason: format!("{other:?} is neither chunk nor manifest"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Bytes {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/vectors/chain/chunk-0.json");
        Bytes::from(std::fs::read(dir).expect("the reference chain's first envelope"))
    }

    #[test]
    fn a_chunk_encodes_and_decodes_to_itself_inline_or_by_object() {
        for ciphertext in [
            Ciphertext::Inline(Bytes::from_static(b"ciphertext")),
            Ciphertext::Object("s/chunk-0-0x.bin".into()),
        ] {
            let chunk = ChunkMessage::from_files(envelope(), ciphertext).unwrap();
            let (headers, body) = chunk.encode();
            assert_eq!(
                headers.get(MSG_ID).unwrap().as_str(),
                chunk.envelope.chunk_id
            );
            assert_eq!(decode(Some(&headers), &body), Ok(FeedMessage::Chunk(chunk)));
        }
    }

    #[test]
    fn headers_that_disagree_with_the_body_are_named() {
        let chunk =
            ChunkMessage::from_files(envelope(), Ciphertext::Inline(Bytes::from_static(b"x")))
                .unwrap();
        let (good, body) = chunk.encode();
        let with = |name: &'static str, value: &str| {
            let mut h = good.clone();
            h.insert(name, value);
            decode(Some(&h), &body).unwrap_err().to_string()
        };
        assert!(with(CHUNK_INDEX, "7").contains("Peaq-Chunk-Index: says 7"));
        assert!(with(CHUNK_INDEX, "x").contains("not a chunk index"));
        assert!(with(ENVELOPE_BYTES, "999999").contains("more than the"));
        assert!(with(MSG_ID, "0xother").contains("not the envelope's chunkId"));
        assert!(with(KIND, "photo").contains("neither chunk nor manifest"));
        assert!(with(CIPHERTEXT_OBJECT, "o").contains("holds ciphertext too"));
        assert!(with(ENVELOPE_BYTES, "3").starts_with("envelope:"));
        let e = decode(None, &body).unwrap_err().to_string();
        assert_eq!(e, "header Peaq-Kind: missing");
        let (manifest_headers, _) = encode_manifest(b"{}", "0x01");
        let e = decode(Some(&manifest_headers), &Bytes::from_static(b"{}"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("manifest:"), "{e}");
    }
}
