//! Where chains live besides a local directory: S3-compatible object storage.
//!
//! The data flows one way through the modules: [`location`] (what `s3://bucket/prefix`
//! means) and [`settings`] (region, endpoint, credentials) → [`bucket`] (one bucket through
//! `object_store`) → [`upload`] (a chain to S3 in the reference's layout) and [`fetch`]
//! (a chain in S3 to a local directory). No key of the chain is ever here: a chain is
//! ciphertext, envelopes and a manifest.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bucket;
pub mod fetch;
pub mod location;
pub mod settings;
pub mod upload;

pub use bucket::{Patience, PutOnce, S3Bucket};
pub use location::{ChainPlace, S3Path};
pub use settings::{Credentials, S3Settings};

/// What went wrong with a place, a setting, or a request; names the flag, file or key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An S3 path that cannot be used.
    #[error("{flag} {value}: {reason}")]
    Location {
        /// The flag or setting that gave it.
        flag: String,
        /// What it said.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// Credentials missing or half given.
    #[error("{0}")]
    Credentials(String),
    /// A credentials file that cannot be used (never shows its content).
    #[error("S3 credentials file {path}: {reason}")]
    CredentialsFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The client could not be set up (a bad endpoint URL, say).
    #[error("S3 settings: {0}")]
    Settings(String),
    /// An object key that S3 cannot take.
    #[error("S3 key {key}: {reason}")]
    Key {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A request that failed (after the client's retries).
    #[error("S3 {op} {key}: {source}")]
    S3 {
        /// What was being done.
        op: &'static str,
        /// The object key (or prefix).
        key: String,
        /// The client's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// An object already there with other bytes: a name never gets different bytes.
    #[error("{key} already exists with other bytes: refusing to overwrite it")]
    Conflict {
        /// The object.
        key: String,
    },
    /// A local file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A document that is not what it should be.
    #[error("{what}: {reason}")]
    Invalid {
        /// The document (an object or file name).
        what: String,
        /// Why.
        reason: String,
    },
    /// An upload stopped because an earlier one failed.
    #[error("upload stopped: {0}")]
    Aborted(String),
}

impl StoreError {
    /// Whether trying again later may succeed (the service unreachable or failing), as
    /// opposed to a request that will never succeed (bad settings, a conflict).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::S3 { source, .. } => !matches!(
                **source,
                object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::InvalidPath { .. }
            ),
            StoreError::Io { .. } | StoreError::Aborted(_) => true,
            _ => false,
        }
    }
}
