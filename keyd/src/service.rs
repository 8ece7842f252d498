//! The gRPC service: every request is authorized (SO_PEERCRED against the policy),
//! bounded, checked against the key's one purpose, executed by the backend, and audited.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use keyd_proto::v1;
use keyd_proto::v1::keyd_server::Keyd;
use sha2::{Digest, Sha256};
use stream::json::{self, PyNumber, Value};
use stream::{hexenc, package, sealed};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status, Streaming};

use crate::audit::{AuditLog, Record};
use crate::backend::Backend;
use crate::guard::SequenceGuard;
use crate::policy::{Operation, Policy};

/// A recipient of every chunk key.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub id: String,
    pub recipient_type: String,
    pub public_key_hex: String,
    pub public_key: [u8; 32],
}

/// Everything the service needs; shared by all connections.
pub struct KeydService {
    backend: Arc<dyn Backend>,
    policy: Policy,
    guard: Mutex<SequenceGuard>,
    audit: Mutex<AuditLog>,
    did: String,
    address: String,
    identity_key_id: String,
    chain_key_id: String,
    /// Configured recipients, then the machine itself.
    recipients: Vec<Recipient>,
    max_batch: usize,
}

/// The caller, from the socket's peer credentials.
#[derive(Debug, Clone, Copy, Default)]
struct Caller {
    uid: Option<u32>,
    gid: Option<u32>,
    pid: Option<i32>,
    /// TCP callers: SHA-256 of their client certificate (DER).
    cert: Option<[u8; 32]>,
}

pub struct ServiceConfig {
    pub policy: Policy,
    pub guard: SequenceGuard,
    pub audit: AuditLog,
    pub identity_key_id: Option<String>,
    pub chain_key_id: Option<String>,
    pub recipients: Vec<Recipient>,
    pub max_batch: usize,
}

impl KeydService {
    pub fn new(backend: Arc<dyn Backend>, config: ServiceConfig) -> Self {
        let address = package::address_of(&backend.identity_public());
        let did = package::did_of_address(&address);
        let mut recipients = config.recipients;
        let machine = backend.box_public();
        recipients.push(Recipient {
            id: "machine-1".into(),
            recipient_type: "machine".into(),
            public_key_hex: hex::encode(machine),
            public_key: machine,
        });
        KeydService {
            identity_key_id: config
                .identity_key_id
                .unwrap_or_else(|| format!("{did}#keys-1")),
            chain_key_id: config
                .chain_key_id
                .unwrap_or_else(|| format!("{did}#keys-1")),
            backend,
            policy: config.policy,
            guard: Mutex::new(config.guard),
            audit: Mutex::new(config.audit),
            address: format!("0x{}", hex::encode(address)),
            did,
            recipients,
            max_batch: config.max_batch,
        }
    }

    pub fn did(&self) -> &str {
        &self.did
    }

    /// Flushes the audit log (at shutdown).
    pub fn sync_audit(&self) {
        if let Ok(log) = self.audit.lock() {
            let _ = log.sync();
        }
    }

    fn caller<T>(request: &Request<T>) -> Caller {
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred);
        let cert = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| Sha256::digest(c.as_ref()).into()));
        Caller {
            uid: cred.map(|c| c.uid()),
            gid: cred.map(|c| c.gid()),
            pid: cred.and_then(|c| c.pid()),
            cert,
        }
    }

    fn audit(
        &self,
        caller: Caller,
        op: Operation,
        key: &str,
        batch: usize,
        result: &str,
        started: Instant,
    ) {
        let cert = caller.cert.map(hex::encode);
        let record = Record {
            time: stream::layout::utc_now_iso8601(),
            uid: caller.uid,
            gid: caller.gid,
            pid: caller.pid,
            client_cert: cert.as_deref(),
            op: op.name(),
            key,
            batch,
            result,
            latency_us: started.elapsed().as_micros() as u64,
        };
        match self.audit.lock() {
            Ok(mut log) => {
                if let Err(e) = log.append(&record) {
                    tracing::error!("cannot write the audit log: {e}");
                }
            }
            Err(_) => tracing::error!("the audit log lock is poisoned"),
        }
    }

    /// Authorizes, bounds, runs and audits one request.
    fn run<T>(
        &self,
        caller: Caller,
        op: Operation,
        key: &str,
        batch: usize,
        work: impl FnOnce() -> Result<T, Status>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let allowed = match (caller.uid, caller.gid, caller.cert) {
            (Some(uid), Some(gid), _) => self.policy.allows(uid, gid, op),
            (_, _, Some(cert)) => self.policy.allows_cert(&hex::encode(cert), op),
            _ => false,
        };
        if !allowed {
            self.audit(caller, op, key, batch, "denied", started);
            let who = match (caller.uid, caller.gid, caller.cert) {
                (Some(uid), Some(gid), _) => format!("uid {uid} gid {gid}"),
                (_, _, Some(cert)) => format!("client certificate sha256:{}", hex::encode(cert)),
                _ => "an unidentified caller".into(),
            };
            return Err(Status::permission_denied(format!(
                "{who} may not {} (policy)",
                op.name()
            )));
        }
        let result = if batch > self.max_batch {
            Err(Status::resource_exhausted(format!(
                "batch of {batch} is larger than max_batch {}",
                self.max_batch
            )))
        } else {
            work()
        };
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        };
        self.audit(caller, op, key, batch, &outcome, started);
        result
    }

    fn identity_response(&self) -> v1::IdentityResponse {
        let info = self.backend.info();
        let next = self.guard.lock().map(|g| g.next()).unwrap_or(u64::MAX);
        v1::IdentityResponse {
            did: self.did.clone(),
            address: self.address.clone(),
            identity_public_key_hex: hex::encode(
                self.backend
                    .identity_public()
                    .to_encoded_point(false)
                    .as_bytes(),
            ),
            identity_key_id: self.identity_key_id.clone(),
            chain_public_key_hex: hex::encode(self.backend.chain_public()),
            chain_key_id: self.chain_key_id.clone(),
            machine_box_public_key_hex: hex::encode(self.backend.box_public()),
            backend: info.class.into(),
            backend_detail: info.detail.into(),
            recipients: self
                .recipients
                .iter()
                .map(|r| v1::Recipient {
                    recipient_id: r.id.clone(),
                    recipient_type: r.recipient_type.clone(),
                    public_key_hex: r.public_key_hex.clone(),
                })
                .collect(),
            next_sequence_number: next,
        }
    }

    /// Signs a batch of envelopes: each must be a canonical envelope of this DID; the
    /// sequence numbers must pass the guard, which persists before any signature leaves.
    fn sign_packages_batch(&self, envelopes: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, Status> {
        let numbers = parallel_map(envelopes, |i, e| {
            check_envelope(e, &self.did)
                .map_err(|reason| Status::invalid_argument(format!("envelope {i}: {reason}")))
        })?;
        {
            let mut guard = self
                .guard
                .lock()
                .map_err(|_| Status::internal("sequence guard lock poisoned"))?;
            guard.admit(&numbers).map_err(|e| match e {
                crate::guard::GuardError::Persist { .. } => Status::unavailable(e.to_string()),
                _ => Status::failed_precondition(e.to_string()),
            })?;
        }
        parallel_map(envelopes, |_, e| {
            self.backend
                .sign_secp256k1_prehash(&package::eip191_hash(e))
                .map(|s| s.to_vec())
                .map_err(|e| Status::unavailable(e.to_string()))
        })
    }

    fn sign_chunk_hashes_batch(&self, hashes: &[String]) -> Result<Vec<Vec<u8>>, Status> {
        for (i, h) in hashes.iter().enumerate() {
            if !hexenc::is_0x_sha256_lower(h) {
                return Err(Status::invalid_argument(format!(
                    "hash {i}: the chain key signs only \"0x\" + 64 lowercase hex digits"
                )));
            }
        }
        parallel_map(hashes, |_, h| {
            self.backend
                .sign_ed25519(h.as_bytes())
                .map(|s| s.to_vec())
                .map_err(|e| Status::unavailable(e.to_string()))
        })
    }

    /// Fresh keys from the backend's randomness mixed with the OS's, sealed to every recipient.
    fn new_chunk_keys_batch(&self, count: usize) -> Result<Vec<v1::ChunkKey>, Status> {
        (0..count)
            .map(|_| {
                let mut device = zeroize::Zeroizing::new([0u8; 32]);
                let mut os = zeroize::Zeroizing::new([0u8; 32]);
                self.backend
                    .random(&mut *device)
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                getrandom::getrandom(&mut *os)
                    .map_err(|_| Status::unavailable("the OS random number generator failed"))?;
                let mut mix = Sha256::new();
                mix.update(*device);
                mix.update(*os);
                let key = stream::keys::Secret32::from_bytes(mix.finalize().into());
                let recipients = self
                    .recipients
                    .iter()
                    .map(|r| {
                        let wrapped = sealed::seal_key(&key, &r.public_key)
                            .map_err(|e| Status::unavailable(e.to_string()))?;
                        Ok(v1::KeyRecipient {
                            recipient_id: r.id.clone(),
                            recipient_type: r.recipient_type.clone(),
                            algorithm: stream::chain::RECIPIENT_ALGORITHM.into(),
                            public_key_hex: r.public_key_hex.clone(),
                            wrapped_key_hex: hex::encode(wrapped),
                        })
                    })
                    .collect::<Result<Vec<_>, Status>>()?;
                Ok(v1::ChunkKey {
                    key: key.expose().to_vec(),
                    key_commitment: hexenc::key_commitment(key.expose()),
                    recipients,
                })
            })
            .collect()
    }

    /// Opens each chunk key with the machine's box key (DH inside the backend), checks its
    /// commitment and seals it to the buyer.
    fn grant_batch(&self, request: &v1::GrantRequest) -> Result<Vec<v1::BuyerAccessEntry>, Status> {
        let buyer = stream::access::BuyerIdentity::new(
            &request.buyer_recipient_id,
            &request.buyer_public_key_hex,
        )
        .map_err(|e| Status::invalid_argument(format!("buyer_public_key_hex: {}", e.reason)))?;
        if buyer.recipient_id.is_empty() {
            return Err(Status::invalid_argument(
                "buyer_recipient_id must not be empty",
            ));
        }
        let machine = self.backend.box_public();
        request
            .chunk_envelopes
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let chunk = stream::chain::ChunkEnvelope::from_json(bytes)
                    .map_err(|e| Status::invalid_argument(format!("chunk {i}: {e}")))?;
                let entry = stream::chain::recipient_for(&chunk, &machine).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "chunk {i} (index {}): no key recipient is sealed to this machine",
                        chunk.index
                    ))
                })?;
                let wrapped = hexenc::decode("wrappedKeyHex", &entry.wrapped_key_hex)
                    .map_err(|e| Status::invalid_argument(format!("chunk {i}: {e}")))?;
                let key = sealed::open_key_with(&wrapped, &machine, |epk| self.backend.x25519(epk))
                    .map_err(|e| Status::unavailable(e.to_string()))?
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "chunk {i} (index {}): the machine's wrapped key does not open",
                            chunk.index
                        ))
                    })?;
                if hexenc::key_commitment(key.expose()) != chunk.encryption.key_commitment {
                    return Err(Status::invalid_argument(format!(
                        "chunk {i} (index {}): the opened key does not match keyCommitment",
                        chunk.index
                    )));
                }
                let wrapped = sealed::seal_key(&key, &buyer.public_key)
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                Ok(v1::BuyerAccessEntry {
                    chunk_id: chunk.chunk_id.clone(),
                    buyer: Some(v1::KeyRecipient {
                        recipient_id: buyer.recipient_id.clone(),
                        recipient_type: "buyer".into(),
                        algorithm: stream::chain::RECIPIENT_ALGORITHM.into(),
                        public_key_hex: buyer.public_key_hex.clone(),
                        wrapped_key_hex: hex::encode(wrapped),
                    }),
                })
            })
            .collect()
    }

    fn encrypt_fields_batch(&self, plaintexts: &[Vec<u8>]) -> Result<Vec<String>, Status> {
        plaintexts
            .iter()
            .map(|p| {
                let mut iv = [0u8; 12];
                getrandom::getrandom(&mut iv)
                    .map_err(|_| Status::unavailable("the OS random number generator failed"))?;
                let sealed = self
                    .backend
                    .aes_gcm_encrypt(&iv, p)
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                let mut packed = Vec::with_capacity(12 + sealed.len());
                packed.extend_from_slice(&iv);
                packed.extend_from_slice(&sealed);
                Ok(base64::engine::general_purpose::STANDARD.encode(packed))
            })
            .collect()
    }
}

/// The identity key's purpose: canonical JSON of exactly
/// `{did, timestamp, schemaVersion, sequenceNumber, payload}` with keyd's own DID, string
/// timestamp and schema version, and a non-negative integer sequence number. Returns it.
pub fn check_envelope(bytes: &[u8], did: &str) -> Result<u64, String> {
    let value = json::parse_slice(bytes).map_err(|_| "not JSON".to_string())?;
    let Value::Object(map) = &value else {
        return Err("not a JSON object".into());
    };
    const KEYS: [&str; 5] = [
        "did",
        "payload",
        "schemaVersion",
        "sequenceNumber",
        "timestamp",
    ];
    let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != KEYS {
        return Err(format!("must hold exactly the keys {KEYS:?}"));
    }
    if json::canonical_bytes(&value).ok().as_deref() != Some(bytes) {
        return Err("not in canonical form".into());
    }
    if map["did"].as_str() != Some(did) {
        return Err(format!("did is not this machine's DID {did}"));
    }
    if !map["timestamp"].is_string() || !map["schemaVersion"].is_string() {
        return Err("timestamp and schemaVersion must be strings".into());
    }
    match &map["sequenceNumber"] {
        Value::Number(n) => match json::py_number(n) {
            PyNumber::Int(text) if !text.starts_with('-') => text
                .parse::<u64>()
                .map_err(|_| "sequenceNumber does not fit in 64 bits".to_string()),
            _ => Err("sequenceNumber must be a non-negative integer".into()),
        },
        _ => Err("sequenceNumber must be a non-negative integer".into()),
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<v1::SignPackagesResponse, Status>> + Send>>;

/// Batches up to this size run on the async worker (a few signatures take less than a
/// thread hand-off); larger ones on the blocking pool.
const INLINE_MAX: usize = 4;

/// Runs a request's work inline when it is small, else off the async workers.
async fn offload<T: Send + 'static>(
    items: usize,
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    if items <= INLINE_MAX {
        f()
    } else {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|_| Status::internal("worker failed"))?
    }
}

/// Batches at least this large are split across the cores.
const PARALLEL_MIN: usize = 64;

/// `f(index, item)` for every item, in order; large batches split across the cores.
/// The first error (by index) wins.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(usize, &T) -> Result<R, Status> + Sync,
) -> Result<Vec<R>, Status> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if items.len() < PARALLEL_MIN || threads == 1 {
        return items
            .iter()
            .enumerate()
            .map(|(i, item)| f(i, item))
            .collect();
    }
    let per = items.len().div_ceil(threads);
    let parts: Vec<Result<Vec<R>, Status>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per)
            .enumerate()
            .map(|(part, chunk)| {
                let f = &f;
                scope.spawn(move || {
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(i, item)| f(part * per + i, item))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Status::internal("a signing thread failed")))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// The gRPC face of [`KeydService`].
#[derive(Clone)]
pub struct KeydApi(pub Arc<KeydService>);

#[tonic::async_trait]
impl Keyd for KeydApi {
    async fn identity(
        &self,
        request: Request<v1::IdentityRequest>,
    ) -> Result<Response<v1::IdentityResponse>, Status> {
        let caller = KeydService::caller(&request);
        self.0
            .run(caller, Operation::Identity, "-", 0, || {
                Ok(self.0.identity_response())
            })
            .map(Response::new)
    }

    async fn sign_packages(
        &self,
        request: Request<v1::SignPackagesRequest>,
    ) -> Result<Response<v1::SignPackagesResponse>, Status> {
        let caller = KeydService::caller(&request);
        let envelopes = request.into_inner().envelopes;
        let service = Arc::clone(&self.0);
        offload(envelopes.len(), move || {
            let n = envelopes.len();
            service.run(caller, Operation::SignPackages, "identity", n, || {
                service.sign_packages_batch(&envelopes)
            })
        })
        .await
        .map(|signatures| Response::new(v1::SignPackagesResponse { signatures }))
    }

    type SignPackagesStreamStream = ResponseStream;

    async fn sign_packages_stream(
        &self,
        request: Request<Streaming<v1::SignPackagesRequest>>,
    ) -> Result<Response<Self::SignPackagesStreamStream>, Status> {
        let caller = KeydService::caller(&request);
        let service = Arc::clone(&self.0);
        let mut incoming = request.into_inner();
        let output = async_stream_of(move |tx| async move {
            while let Some(batch) = incoming.next().await {
                let result = match batch {
                    Ok(batch) => {
                        let service = Arc::clone(&service);
                        offload(batch.envelopes.len(), move || {
                            let n = batch.envelopes.len();
                            service.run(caller, Operation::SignPackages, "identity", n, || {
                                service.sign_packages_batch(&batch.envelopes)
                            })
                        })
                        .await
                        .map(|signatures| v1::SignPackagesResponse { signatures })
                    }
                    Err(status) => Err(status),
                };
                let stop = result.is_err();
                if tx.send(result).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(output))
    }

    async fn sign_chunk_hashes(
        &self,
        request: Request<v1::SignChunkHashesRequest>,
    ) -> Result<Response<v1::SignChunkHashesResponse>, Status> {
        let caller = KeydService::caller(&request);
        let hashes = request.into_inner().hashes;
        let service = Arc::clone(&self.0);
        offload(hashes.len(), move || {
            service.run(
                caller,
                Operation::SignChunkHashes,
                "chain",
                hashes.len(),
                || service.sign_chunk_hashes_batch(&hashes),
            )
        })
        .await
        .map(|signatures| Response::new(v1::SignChunkHashesResponse { signatures }))
    }

    async fn new_chunk_keys(
        &self,
        request: Request<v1::NewChunkKeysRequest>,
    ) -> Result<Response<v1::NewChunkKeysResponse>, Status> {
        let caller = KeydService::caller(&request);
        let count = request.into_inner().count as usize;
        let service = Arc::clone(&self.0);
        offload(count, move || {
            service.run(
                caller,
                Operation::NewChunkKeys,
                "machine-box",
                count,
                || service.new_chunk_keys_batch(count),
            )
        })
        .await
        .map(|keys| Response::new(v1::NewChunkKeysResponse { keys }))
    }

    async fn grant(
        &self,
        request: Request<v1::GrantRequest>,
    ) -> Result<Response<v1::GrantResponse>, Status> {
        let caller = KeydService::caller(&request);
        let request = request.into_inner();
        let service = Arc::clone(&self.0);
        offload(request.chunk_envelopes.len(), move || {
            let n = request.chunk_envelopes.len();
            service.run(caller, Operation::Grant, "machine-box", n, || {
                service.grant_batch(&request)
            })
        })
        .await
        .map(|entries| Response::new(v1::GrantResponse { entries }))
    }

    async fn encrypt_fields(
        &self,
        request: Request<v1::EncryptFieldsRequest>,
    ) -> Result<Response<v1::EncryptFieldsResponse>, Status> {
        let caller = KeydService::caller(&request);
        let plaintexts = request.into_inner().plaintexts;
        let service = Arc::clone(&self.0);
        offload(plaintexts.len(), move || {
            service.run(
                caller,
                Operation::EncryptFields,
                "fields",
                plaintexts.len(),
                || service.encrypt_fields_batch(&plaintexts),
            )
        })
        .await
        .map(|ciphertexts| Response::new(v1::EncryptFieldsResponse { ciphertexts }))
    }
}

/// A response stream fed by a task through a small channel (backpressure included).
fn async_stream_of<F, Fut>(producer: F) -> ResponseStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<v1::SignPackagesResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(producer(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::check_envelope;

    const DID: &str = "did:peaq:0x00000000000000000000000000000000000000aa";

    #[test]
    fn the_identity_key_signs_only_canonical_envelopes_of_its_did() {
        let good = format!(
            r#"{{"did":"{DID}","payload":{{"a":1}},"schemaVersion":"1","sequenceNumber":7,"timestamp":"t"}}"#
        );
        assert_eq!(check_envelope(good.as_bytes(), DID), Ok(7));
        let spaced = good.replace(',', ", ");
        assert!(check_envelope(spaced.as_bytes(), DID)
            .unwrap_err()
            .contains("canonical"));
        let foreign = good.replace("aa\"", "ab\"");
        assert!(check_envelope(foreign.as_bytes(), DID)
            .unwrap_err()
            .contains("DID"));
        let extra = good.replace("\"timestamp\"", "\"topic\":\"x\",\"timestamp\"");
        assert!(check_envelope(extra.as_bytes(), DID)
            .unwrap_err()
            .contains("exactly"));
        let float = good.replace(":7,", ":7.0,");
        assert!(check_envelope(float.as_bytes(), DID)
            .unwrap_err()
            .contains("integer"));
        assert!(check_envelope(&[0x19, 0x45, 0x74, 0x68], DID).is_err());
        let tx = br#"{"nonce":1,"to":"0x00","value":1000}"#;
        assert!(check_envelope(tx, DID).is_err());
    }
}
