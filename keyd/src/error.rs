//! Why a request got no result, and the one place where that becomes a gRPC status.
//!
//! The codes are keyd's API (`keyd.proto`): a caller retries `UNAVAILABLE` only.

use tonic::{Code, Status};

use crate::backend::BackendError;
use crate::guard::GuardError;

/// A request keyd refused or could not serve. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The policy does not allow this caller this operation.
    #[error("{who} may not {operation} (policy)")]
    Denied {
        who: String,
        operation: &'static str,
    },
    /// An item does not fit the key's purpose (or the request is malformed).
    #[error("{0}")]
    Invalid(String),
    /// The sequence guard refused the batch.
    #[error(transparent)]
    Sequence(#[from] GuardError),
    /// keyd never signed this chunk: it re-wraps keys only for chunks it signed.
    #[error("{0}")]
    NotSigned(String),
    /// Too many items, or too many bytes.
    #[error("{0}")]
    TooLarge(String),
    /// The token, TPM or key file failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The same, reached through `stream`'s provider traits.
    #[error(transparent)]
    Provider(#[from] stream::provider::ProviderError),
    /// keyd's own durable record (audit log, chunk ledger) could not be written: no result
    /// leaves keyd without it.
    #[error("{0}; the request was not answered")]
    Unrecorded(String),
    /// A bug or a broken invariant (a worker thread panicked).
    #[error("{0}")]
    Internal(String),
}

impl RequestError {
    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            RequestError::Denied { .. } => Code::PermissionDenied,
            RequestError::Invalid(_) => Code::InvalidArgument,
            RequestError::Sequence(e) if e.is_retryable() => Code::Unavailable,
            RequestError::Sequence(_) | RequestError::NotSigned(_) => Code::FailedPrecondition,
            RequestError::TooLarge(_) => Code::ResourceExhausted,
            RequestError::Backend(_) | RequestError::Provider(_) | RequestError::Unrecorded(_) => {
                Code::Unavailable
            }
            RequestError::Internal(_) => Code::Internal,
        }
    }

    /// How the audit log records the outcome.
    pub fn audit_result(&self) -> String {
        format!("{:?}: {self}", self.code())
    }
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}
