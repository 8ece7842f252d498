//! The live feed: a machine's chains on NATS JetStream, verified link by link by whoever
//! follows them.
//!
//! The modules follow the data: [`subject`] (where a machine's topic is published) and
//! [`connect`] (servers, credentials, reconnects) → [`message`] (one chunk or one manifest
//! as a JetStream message, byte for byte the files of the published directory) →
//! [`publish`] (the agent's side: the stream, acknowledged publishes, the object store for
//! chunks larger than the server takes) and [`follow`] (the buyer's side: a consumer, and a
//! directory that only ever holds verified chunks). No key is ever here: a chain is
//! ciphertext, envelopes and a manifest.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod connect;
pub mod follow;
pub mod message;
pub mod publish;
pub mod subject;

pub use connect::{Connection, FeedSettings};
pub use follow::{Accepted, FollowedChain, Refusal};
pub use message::{ChunkMessage, FeedMessage, MessageError};
pub use publish::{FeedStream, StreamSpec};
pub use subject::ChainSubject;

/// What went wrong talking to NATS, or with what it sent; names the server, stream,
/// subject or file.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// A setting that cannot be used (a URL, a prefix, a stream name).
    #[error("{what}: {reason}")]
    Setting {
        /// The flag or map key.
        what: String,
        /// Why.
        reason: String,
    },
    /// A credentials file that cannot be read or used (never shows its content).
    #[error("NATS credentials file {path}: {reason}")]
    Credentials {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The servers cannot be reached or refused a request.
    #[error("NATS {what}: {reason}")]
    Nats {
        /// What was asked (connect, the stream, a publish, ...).
        what: String,
        /// The client's or the server's answer.
        reason: String,
    },
    /// A message that is not a chunk or manifest of this feed.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// A local file.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl FeedError {
    pub(crate) fn nats(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        FeedError::Nats {
            what: what.into(),
            reason: e.to_string(),
        }
    }
}
