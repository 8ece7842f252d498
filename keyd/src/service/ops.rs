//! The operations: each checks its items against the key's one purpose, then has the
//! backend do the work. Called through [`KeydService::handle`], which authorizes, bounds and
//! audits them.

use keyd_proto::v1;
use stream::signer::ChunkKeySource;

use super::parallel::parallel_map;
use super::purpose;
use super::{lock, Caller, KeydService};
use crate::audit::{DatasetRecord, Detail, GrantRecord};
use crate::error::RequestError;
use crate::ledger::Pair;
use crate::policy::Operation;

/// The key an operation uses, as the audit log names it.
pub fn key_of(op: Operation) -> &'static str {
    match op {
        Operation::Identity => "-",
        Operation::SignPackages | Operation::SignDataset => "identity",
        Operation::SignChunkHashes => "chain",
        Operation::NewChunkKeys | Operation::Grant => "machine-box",
        Operation::EncryptFields => "fields",
    }
}

/// What an operation gave away, for its audit record: a grant's buyer and chunks, or the
/// dataset a signature lists.
pub enum Granted {
    Grant {
        buyer_id: String,
        buyer_public_key_hex: String,
        chunk_ids: Vec<String>,
    },
    Dataset(purpose::ListedDataset),
}

impl Granted {
    pub fn record(&self) -> Detail<'_> {
        match self {
            Granted::Grant {
                buyer_id,
                buyer_public_key_hex,
                chunk_ids,
            } => Detail::Grant(GrantRecord {
                buyer_id,
                buyer_public_key_hex,
                chunk_ids: chunk_ids.iter().map(String::as_str).collect(),
            }),
            Granted::Dataset(d) => Detail::Dataset(DatasetRecord {
                topic: &d.topic,
                first_index: d.first_index,
                last_index: d.last_index,
                merkle_root: &d.merkle_root,
            }),
        }
    }
}

type Done<T> = Result<(T, Option<Granted>), RequestError>;

fn done<T>(value: T) -> Done<T> {
    Ok((value, None))
}

impl KeydService {
    pub fn identity(&self, caller: &Caller) -> Result<v1::IdentityResponse, RequestError> {
        self.handle(caller, Operation::Identity, 0, || {
            let next = lock(&self.guard, "sequence guard")?.next();
            let info = self.backend.info();
            done(v1::IdentityResponse {
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
                machine_box_public_key_hex: self.backend.box_public().to_hex(),
                backend: info.class.into(),
                backend_detail: info.detail.into(),
                recipients: self
                    .chunk_keys
                    .recipients()
                    .iter()
                    .map(|r| v1::Recipient {
                        recipient_id: r.recipient_id.clone(),
                        recipient_type: r.recipient_type.clone(),
                        public_key_hex: r.public_key_hex.clone(),
                    })
                    .collect(),
                next_sequence_number: next,
            })
        })
    }

    /// EIP-191 signatures over canonical envelopes of this DID; the sequence numbers pass
    /// the guard, which persists before any signature leaves.
    pub fn sign_packages(
        &self,
        caller: &Caller,
        envelopes: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>, RequestError> {
        self.handle(caller, Operation::SignPackages, envelopes.len(), || {
            let numbers = parallel_map(envelopes, |i, e| {
                purpose::check_envelope(e, &self.did)
                    .map_err(|reason| RequestError::Invalid(format!("envelope {i}: {reason}")))
            })?;
            lock(&self.guard, "sequence guard")?.admit(&numbers)?;
            done(parallel_map(envelopes, |_, e| {
                Ok(self
                    .backend
                    .sign_secp256k1_prehash(&stream::package::eip191_hash(e))?
                    .to_vec())
            })?)
        })
    }

    /// Ed25519 over each `encryptedDataHash`; each (hash, commitment) pair is recorded in
    /// the ledger before the signatures leave.
    pub fn sign_chunk_hashes(
        &self,
        caller: &Caller,
        hashes: &[String],
        commitments: &[String],
    ) -> Result<Vec<Vec<u8>>, RequestError> {
        self.handle(caller, Operation::SignChunkHashes, hashes.len(), || {
            if commitments.len() != hashes.len() {
                return Err(RequestError::Invalid(format!(
                    "{} hashes and {} key_commitments: each hash needs the keyCommitment of its chunk",
                    hashes.len(),
                    commitments.len()
                )));
            }
            let pairs = hashes
                .iter()
                .zip(commitments)
                .enumerate()
                .map(|(i, (h, c))| purpose::chunk_pair(h, c).map_err(|r| RequestError::Invalid(format!("hash {i}: {r}"))))
                .collect::<Result<Vec<Pair>, _>>()?;
            let signatures = parallel_map(hashes, |_, h| {
                Ok(self.backend.sign_ed25519(h.as_bytes())?.to_vec())
            })?;
            lock(&self.ledger, "chunk ledger")?
                .record(&pairs)
                .map_err(RequestError::Unrecorded)?;
            done(signatures)
        })
    }

    /// Fresh keys from the backend's randomness mixed with the OS's, sealed to every recipient.
    pub fn new_chunk_keys(
        &self,
        caller: &Caller,
        count: usize,
    ) -> Result<Vec<v1::ChunkKey>, RequestError> {
        self.handle(caller, Operation::NewChunkKeys, count, || {
            let keys = self.chunk_keys.new_chunk_keys(count).map_err(|e| {
                RequestError::Provider(stream::provider::ProviderError::Failed(e.to_string()))
            })?;
            done(
                keys.into_iter()
                    .map(|k| v1::ChunkKey {
                        key: k.key.expose().to_vec(),
                        key_commitment: k.commitment,
                        recipients: k.recipients.into_iter().map(key_recipient).collect(),
                    })
                    .collect(),
            )
        })
    }

    /// Opens each chunk key with the machine's box key (DH inside the backend), checks its
    /// commitment, and seals it to the buyer: only for chunks keyd signed with that key.
    pub fn grant(
        &self,
        caller: &Caller,
        request: &v1::GrantRequest,
    ) -> Result<Vec<v1::BuyerAccessEntry>, RequestError> {
        let n = request.chunk_envelopes.len();
        self.handle(caller, Operation::Grant, n, || {
            let buyer = stream::access::BuyerIdentity::new(
                &request.buyer_recipient_id,
                &request.buyer_public_key_hex,
            )
            .map_err(|e| RequestError::Invalid(format!("buyer_public_key_hex: {}", e.reason)))?;
            if buyer.recipient_id.is_empty() {
                return Err(RequestError::Invalid(
                    "buyer_recipient_id must not be empty".into(),
                ));
            }
            let chunks = request
                .chunk_envelopes
                .iter()
                .enumerate()
                .map(|(i, bytes)| {
                    stream::chain::ChunkEnvelope::from_json(bytes)
                        .map_err(|e| RequestError::Invalid(format!("chunk {i}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            {
                let ledger = lock(&self.ledger, "chunk ledger")?;
                for (i, chunk) in chunks.iter().enumerate() {
                    let pair = purpose::chunk_pair(
                        &chunk.encrypted_data_hash,
                        &chunk.encryption.key_commitment,
                    )
                    .map_err(|r| RequestError::Invalid(format!("chunk {i}: {r}")))?;
                    if !ledger.contains(&pair) {
                        return Err(RequestError::NotSigned(format!(
                            "chunk {i} (index {}): keyd never signed encryptedDataHash {} with keyCommitment {}; it re-wraps a key only for the chunk it was made for",
                            chunk.index, chunk.encrypted_data_hash, chunk.encryption.key_commitment
                        )));
                    }
                }
            }
            let entries = chunks
                .iter()
                .enumerate()
                .map(|(i, chunk)| {
                    let entry = stream::access::grant_entry(chunk, &self.provider, &buyer)
                        .map_err(|e| match e {
                            stream::access::GrantError::Provider { reason, .. } => {
                                RequestError::Provider(stream::provider::ProviderError::Failed(
                                    format!("chunk {i}: {reason}"),
                                ))
                            }
                            other => RequestError::Invalid(format!("chunk {i}: {other}")),
                        })?;
                    Ok(v1::BuyerAccessEntry {
                        chunk_id: entry.chunk_id,
                        buyer: Some(key_recipient(entry.buyer)),
                    })
                })
                .collect::<Result<Vec<_>, RequestError>>()?;
            let granted = Granted::Grant {
                buyer_id: buyer.recipient_id.clone(),
                buyer_public_key_hex: buyer.public_key_hex.clone(),
                chunk_ids: chunks.iter().map(|c| c.chunk_id.clone()).collect(),
            };
            Ok((entries, Some(granted)))
        })
    }

    /// EIP-191 over one canonical dataset document of this machine's chain (its DID and
    /// chain key, a well-formed root and range), audited with what it lists.
    pub fn sign_dataset(
        &self,
        caller: &Caller,
        document: &[u8],
    ) -> Result<(Vec<u8>, String), RequestError> {
        self.handle(caller, Operation::SignDataset, 1, || {
            let chain_key = hex::encode(self.backend.chain_public());
            let listed = purpose::check_dataset(document, &self.did, &chain_key)
                .map_err(|reason| RequestError::Invalid(format!("document: {reason}")))?;
            let signature = self
                .backend
                .sign_secp256k1_prehash(&stream::package::eip191_hash(document))?
                .to_vec();
            Ok((
                (signature, self.identity_key_id.clone()),
                Some(Granted::Dataset(listed)),
            ))
        })
    }

    /// AES-256-GCM with the field key: base64(iv ‖ ciphertext ‖ tag), the IV the backend used.
    pub fn encrypt_fields(
        &self,
        caller: &Caller,
        plaintexts: &[Vec<u8>],
    ) -> Result<Vec<String>, RequestError> {
        self.handle(caller, Operation::EncryptFields, plaintexts.len(), || {
            let sealed = plaintexts
                .iter()
                .map(|p| {
                    stream::local::encrypt_field(&self.provider, p).map_err(RequestError::from)
                })
                .collect::<Result<Vec<_>, RequestError>>()?;
            done(sealed)
        })
    }
}

fn key_recipient(r: stream::chain::KeyRecipient) -> v1::KeyRecipient {
    v1::KeyRecipient {
        recipient_id: r.recipient_id,
        recipient_type: r.recipient_type,
        algorithm: r.algorithm,
        public_key_hex: r.public_key_hex,
        wrapped_key_hex: r.wrapped_key_hex,
    }
}
