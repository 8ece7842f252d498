//! A typed keyd client over a Unix socket.
//!
//! [`connect_channel`] gives an async tonic channel (for the agent); [`KeydClient`] wraps it
//! with its own small runtime and implements the `stream` signing traits, so synchronous
//! callers (the CLI, its worker threads) sign through keyd as they would in process.

use std::path::{Path, PathBuf};

use stream::access::{BuyerAccessEntry, BuyerIdentity};
use stream::chain::{ChunkEnvelope, KeyRecipient};
use stream::keys::Secret32;
use stream::signer::*;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::v1;
use crate::v1::keyd_client::KeydClient as Raw;

/// Why keyd could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to keyd at {path}: {reason}")]
    Connect { path: String, reason: String },
    #[error("keyd: {0}")]
    Status(String),
    #[error("cannot start the client runtime: {0}")]
    Runtime(String),
}

/// An async channel to keyd's Unix socket.
pub async fn connect_channel(path: &Path) -> Result<Channel, ClientError> {
    let socket: PathBuf = path.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    Endpoint::try_from("http://keyd.invalid")
        .map_err(|e| ClientError::Connect {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| ClientError::Connect {
            path: path.display().to_string(),
            reason: source_chain(&e),
        })
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut current = e.source();
    while let Some(source) = current {
        text.push_str(": ");
        text.push_str(&source.to_string());
        current = source.source();
    }
    text
}

/// Turns keyd's status into a signer error that keeps keyd's message (the codes are
/// keyd's API: `proto/keyd.proto`). Only what may succeed later is retryable.
fn status_error(status: tonic::Status) -> SignerError {
    use tonic::Code;
    let message = status.message().to_string();
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => SignerError::Denied(message),
        Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange => {
            SignerError::Refused(message)
        }
        Code::FailedPrecondition if message.contains("sequence number") => {
            SignerError::Sequence(message)
        }
        Code::FailedPrecondition => SignerError::Refused(message),
        _ => SignerError::Unavailable(format!("{:?}: {message}", status.code())),
    }
}

/// A blocking keyd client implementing the `stream` signing traits.
pub struct KeydClient {
    runtime: tokio::runtime::Runtime,
    raw: Raw<Channel>,
    identity: v1::IdentityResponse,
    chunk_signer: ChunkSignerIdentity,
}

impl std::fmt::Debug for KeydClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeydClient")
            .field("did", &self.identity.did)
            .finish_non_exhaustive()
    }
}

impl KeydClient {
    /// Connects to keyd's socket and reads its identity.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keyd-client")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Runtime(e.to_string()))?;
        let channel = runtime.block_on(connect_channel(path))?;
        let mut raw = Raw::new(channel).max_decoding_message_size(64 << 20);
        let identity = runtime
            .block_on(raw.identity(v1::IdentityRequest {}))
            .map_err(|s| ClientError::Status(s.message().to_string()))?
            .into_inner();
        let chunk_signer = ChunkSignerIdentity {
            machine_did: identity.did.clone(),
            key_id: identity.chain_key_id.clone(),
            public_key_hex: identity.chain_public_key_hex.clone(),
        };
        Ok(KeydClient {
            runtime,
            raw,
            identity,
            chunk_signer,
        })
    }

    /// keyd's identity, as read at connect time.
    pub fn identity(&self) -> &v1::IdentityResponse {
        &self.identity
    }

    /// Where keyd will continue the sequence now.
    pub fn next_sequence_number(&self) -> Result<u64, SignerError> {
        Ok(self
            .call(v1::IdentityRequest {}, |mut raw, r| async move {
                raw.identity(r).await
            })?
            .next_sequence_number)
    }

    /// One blocking call on a clone of the channel, keyd's status mapped to a signer error.
    fn call<Req, Resp, Fut>(
        &self,
        request: Req,
        method: impl FnOnce(Raw<Channel>, Req) -> Fut,
    ) -> Result<Resp, SignerError>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.runtime
            .block_on(method(self.raw.clone(), request))
            .map(tonic::Response::into_inner)
            .map_err(status_error)
    }
}

fn fixed<const N: usize>(bytes: Vec<u8>, what: &str) -> Result<[u8; N], SignerError> {
    bytes.try_into().map_err(|_| {
        SignerError::Unavailable(format!("keyd returned a {what} of the wrong length"))
    })
}

fn count_check(got: usize, want: usize) -> Result<(), SignerError> {
    if got == want {
        Ok(())
    } else {
        Err(SignerError::Unavailable(format!(
            "keyd answered {got} items for {want}"
        )))
    }
}

fn recipient_from(r: v1::KeyRecipient) -> KeyRecipient {
    KeyRecipient {
        recipient_id: r.recipient_id,
        recipient_type: r.recipient_type,
        algorithm: r.algorithm,
        public_key_hex: r.public_key_hex,
        wrapped_key_hex: r.wrapped_key_hex,
    }
}

impl PackageSigner for KeydClient {
    fn did(&self) -> &str {
        &self.identity.did
    }
    fn sign_envelopes(&self, envelopes: &[&[u8]]) -> Result<Vec<[u8; 65]>, SignerError> {
        let request = v1::SignPackagesRequest {
            envelopes: envelopes.iter().map(|e| e.to_vec()).collect(),
        };
        let signatures = self
            .call(
                request,
                |mut raw, r| async move { raw.sign_packages(r).await },
            )?
            .signatures;
        count_check(signatures.len(), envelopes.len())?;
        signatures
            .into_iter()
            .map(|s| fixed::<65>(s, "package signature"))
            .collect()
    }
}

impl ChunkHashSigner for KeydClient {
    fn chunk_signer(&self) -> &ChunkSignerIdentity {
        &self.chunk_signer
    }
    fn sign_chunks(&self, chunks: &[ChunkToSign<'_>]) -> Result<Vec<[u8; 64]>, SignerError> {
        let request = v1::SignChunkHashesRequest {
            hashes: chunks
                .iter()
                .map(|c| c.encrypted_data_hash.to_string())
                .collect(),
            key_commitments: chunks
                .iter()
                .map(|c| c.key_commitment.to_string())
                .collect(),
        };
        let signatures = self
            .call(request, |mut raw, r| async move {
                raw.sign_chunk_hashes(r).await
            })?
            .signatures;
        count_check(signatures.len(), chunks.len())?;
        signatures
            .into_iter()
            .map(|s| fixed::<64>(s, "chunk signature"))
            .collect()
    }
}

impl ChunkKeySource for KeydClient {
    fn new_chunk_keys(&self, count: usize) -> Result<Vec<ChunkKey>, SignerError> {
        let count32 = u32::try_from(count)
            .map_err(|_| SignerError::Refused("too many chunk keys at once".into()))?;
        let keys = self
            .call(
                v1::NewChunkKeysRequest { count: count32 },
                |mut raw, r| async move { raw.new_chunk_keys(r).await },
            )?
            .keys;
        count_check(keys.len(), count)?;
        keys.into_iter()
            .map(|mut k| {
                let bytes = zeroize::Zeroizing::new(std::mem::take(&mut k.key));
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    SignerError::Unavailable("keyd returned a chunk key of the wrong length".into())
                })?;
                Ok(ChunkKey {
                    key: Secret32::from_bytes(key),
                    commitment: std::mem::take(&mut k.key_commitment),
                    recipients: std::mem::take(&mut k.recipients)
                        .into_iter()
                        .map(recipient_from)
                        .collect(),
                })
            })
            .collect()
    }
}

impl DatasetSigner for KeydClient {
    fn key_id(&self) -> &str {
        &self.identity.identity_key_id
    }
    fn sign_dataset(&self, document: &[u8]) -> Result<[u8; 65], SignerError> {
        let request = v1::SignDatasetRequest {
            document: document.to_vec(),
        };
        let response = self.call(
            request,
            |mut raw, r| async move { raw.sign_dataset(r).await },
        )?;
        fixed::<65>(response.signature, "dataset signature")
    }
}

impl ChunkKeyGranter for KeydClient {
    fn grant(
        &self,
        chunks: &[ChunkEnvelope],
        buyer: &BuyerIdentity,
    ) -> Result<Vec<BuyerAccessEntry>, SignerError> {
        let envelopes = chunks
            .iter()
            .map(|c| serde_json::to_vec(c).map_err(|e| SignerError::Unavailable(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let request = v1::GrantRequest {
            chunk_envelopes: envelopes,
            buyer_recipient_id: buyer.recipient_id.clone(),
            buyer_public_key_hex: buyer.public_key_hex.clone(),
        };
        let entries = self
            .call(request, |mut raw, r| async move { raw.grant(r).await })?
            .entries;
        count_check(entries.len(), chunks.len())?;
        entries
            .into_iter()
            .map(|e| {
                Ok(BuyerAccessEntry {
                    chunk_id: e.chunk_id,
                    buyer: recipient_from(e.buyer.ok_or_else(|| {
                        SignerError::Unavailable("keyd returned an entry without a buyer".into())
                    })?),
                })
            })
            .collect()
    }
}

impl FieldEncryptor for KeydClient {
    fn encrypt_fields(&self, plaintexts: &[&[u8]]) -> Result<Vec<String>, SignerError> {
        let request = v1::EncryptFieldsRequest {
            plaintexts: plaintexts.iter().map(|p| p.to_vec()).collect(),
        };
        let ciphertexts = self
            .call(
                request,
                |mut raw, r| async move { raw.encrypt_fields(r).await },
            )?
            .ciphertexts;
        count_check(ciphertexts.len(), plaintexts.len())?;
        Ok(ciphertexts)
    }
}
