//! Chain verification: the reference's checks, in its order, then the ones it misses
//! (FORMATS.md §4): signer pinned to an expected DID and key, one signer for the whole
//! chain, the manifest's `totalChunks`, and, given a recipient key, every chunk
//! decrypted and checked and the manifest's `sourceHash`.

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use super::decrypt::{self, DecryptError};
use super::envelope::ChunkEnvelope;
use crate::hexenc;
use crate::keys::BoxKey;

/// What the verifier should insist on beyond the reference's checks.
#[derive(Default)]
pub struct VerifyOptions<'a> {
    /// Every chunk's `signature.machineDid` must equal this.
    pub expect_did: Option<&'a str>,
    /// Every chunk must be signed by this Ed25519 public key.
    pub expect_public_key: Option<[u8; 32]>,
    /// The manifest's `totalChunks`.
    pub expect_total_chunks: Option<u64>,
    /// Decrypt and check every chunk as this recipient.
    pub recipient: Option<&'a BoxKey>,
    /// With a recipient: the manifest's `sourceHash` to compare with the decrypted data.
    pub expect_source_hash: Option<&'a str>,
}

/// The first failed check and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainFailure {
    /// There are no chunks.
    #[error("chain is empty")]
    Empty,
    /// The chunk at a position does not carry that position as its `index` (a gap or a
    /// duplicate).
    #[error("chunk {index}: index is not sequential (found index {found} at position {index})")]
    IndexNotSequential {
        /// The position in the sorted chain: the index expected.
        index: u64,
        /// The `index` the chunk carries.
        found: u64,
    },
    /// Chunk 0 names a `previousChunkId`.
    #[error("chunk 0: first chunk must have a null previousChunkId")]
    FirstHasPrevious,
    /// `previousChunkId` is not the `chunkId` of the chunk before.
    #[error("chunk {index}: previousChunkId does not match the preceding chunkId")]
    PreviousMismatch {
        /// The chunk's index.
        index: u64,
    },
    /// The chunk's ciphertext (`chunk-{index}.bin`) is not there.
    #[error("chunk {index}: ciphertext chunk-{index}.bin is missing")]
    MissingCiphertext {
        /// The chunk's index.
        index: u64,
    },
    /// `encryptedDataHash` is not the sha256 of the ciphertext.
    #[error("chunk {index}: encryptedDataHash does not match the ciphertext")]
    HashMismatch {
        /// The chunk's index.
        index: u64,
    },
    /// `chunkId` does not recompute from `previousChunkId`, `encryptedDataHash` and `index`.
    #[error("chunk {index}: chunkId does not match its linkage fields")]
    ChunkIdMismatch {
        /// The chunk's index.
        index: u64,
    },
    /// The signature's `machineDid` or `keyId` is empty (or only whitespace).
    #[error("chunk {index}: signature identity fields (machineDid, keyId) are empty")]
    SignatureIdentity {
        /// The chunk's index.
        index: u64,
    },
    /// The signature's `publicKeyHex` or `value` is malformed, or the Ed25519 signature does
    /// not verify over `encryptedDataHash`.
    #[error("chunk {index}: Ed25519 signature does not verify")]
    SignatureInvalid {
        /// The chunk's index.
        index: u64,
    },
    /// The signature's `machineDid` is not [`VerifyOptions::expect_did`].
    #[error("chunk {index}: signer machineDid {found:?} is not the expected {expected:?}")]
    UnexpectedDid {
        /// The chunk's index.
        index: u64,
        /// The chunk's `machineDid`.
        found: String,
        /// The DID expected.
        expected: String,
    },
    /// The chunk is signed by another key than [`VerifyOptions::expect_public_key`].
    #[error("chunk {index}: signed by public key {found}, not the expected {expected}")]
    UnexpectedKey {
        /// The chunk's index.
        index: u64,
        /// The chunk's signing key, as hex.
        found: String,
        /// The key expected, as hex.
        expected: String,
    },
    /// The chunk's `publicKeyHex` is not chunk 0's: a chain has one signer.
    #[error("chunk {index}: signer changed mid-chain (public key {found}, chunk 0 used {first})")]
    SignerChanged {
        /// The chunk's index.
        index: u64,
        /// This chunk's `publicKeyHex`.
        found: String,
        /// Chunk 0's `publicKeyHex`.
        first: String,
    },
    /// The chain does not have the manifest's `totalChunks` chunks (a dropped last chunk, or
    /// extra ones).
    #[error("totalChunks: the manifest says {expected} chunks, the chain has {found} (chunk {index} onwards missing or extra)")]
    TotalChunks {
        /// The first index missing or extra: the smaller of the two counts.
        index: u64,
        /// The manifest's `totalChunks`.
        expected: u64,
        /// The number of chunks in the chain.
        found: u64,
    },
    /// No `keyRecipients` entry of the chunk is sealed to [`VerifyOptions::recipient`].
    #[error("chunk {index}: no key recipient is sealed to the given recipient key")]
    NoRecipient {
        /// The chunk's index.
        index: u64,
    },
    /// The chunk could not be opened as the recipient.
    #[error("chunk {index}: {source}")]
    Decrypt {
        /// The chunk's index.
        index: u64,
        /// The check that failed.
        #[source]
        source: DecryptError,
    },
    /// The decrypted data does not hash to [`VerifyOptions::expect_source_hash`].
    #[error("sourceHash: the decrypted data hashes to {found}, the manifest says {expected}")]
    SourceHash {
        /// The manifest's `sourceHash`.
        expected: String,
        /// `0x` + sha256 hex of the decrypted data.
        found: String,
    },
    /// The ciphertext could not be read.
    #[error("chunk {index}: cannot read ciphertext: {reason}")]
    Read {
        /// The chunk's index.
        index: u64,
        /// The reader's error message.
        reason: String,
    },
}

impl ChainFailure {
    /// A short name of the failed check, for machine output.
    pub fn check(&self) -> &'static str {
        match self {
            ChainFailure::Empty => "empty",
            ChainFailure::IndexNotSequential { .. } => "index",
            ChainFailure::FirstHasPrevious | ChainFailure::PreviousMismatch { .. } => {
                "previousChunkId"
            }
            ChainFailure::MissingCiphertext { .. } | ChainFailure::Read { .. } => "ciphertext",
            ChainFailure::HashMismatch { .. } => "encryptedDataHash",
            ChainFailure::ChunkIdMismatch { .. } => "chunkId",
            ChainFailure::SignatureIdentity { .. } | ChainFailure::SignatureInvalid { .. } => {
                "signature"
            }
            ChainFailure::UnexpectedDid { .. } => "expectedDid",
            ChainFailure::UnexpectedKey { .. } | ChainFailure::SignerChanged { .. } => "signerKey",
            ChainFailure::TotalChunks { .. } => "totalChunks",
            ChainFailure::NoRecipient { .. } => "recipient",
            ChainFailure::Decrypt { source, .. } => match source {
                DecryptError::Unwrap | DecryptError::WrappedKeyHex(_) => "wrappedKey",
                DecryptError::KeyCommitment => "keyCommitment",
                DecryptError::Nonce(_) => "nonce",
                DecryptError::Ciphertext => "decrypt",
                DecryptError::PlaintextHash => "plaintextHash",
            },
            ChainFailure::SourceHash { .. } => "sourceHash",
        }
    }

    /// The chunk index the failure is about, when there is one.
    pub fn index(&self) -> Option<u64> {
        match self {
            ChainFailure::Empty | ChainFailure::FirstHasPrevious => Some(0),
            ChainFailure::SourceHash { .. } => None,
            ChainFailure::IndexNotSequential { index, .. }
            | ChainFailure::PreviousMismatch { index }
            | ChainFailure::MissingCiphertext { index }
            | ChainFailure::HashMismatch { index }
            | ChainFailure::ChunkIdMismatch { index }
            | ChainFailure::SignatureIdentity { index }
            | ChainFailure::SignatureInvalid { index }
            | ChainFailure::UnexpectedDid { index, .. }
            | ChainFailure::UnexpectedKey { index, .. }
            | ChainFailure::SignerChanged { index, .. }
            | ChainFailure::TotalChunks { index, .. }
            | ChainFailure::NoRecipient { index }
            | ChainFailure::Decrypt { index, .. }
            | ChainFailure::Read { index, .. } => Some(*index),
        }
    }
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// The number of chunks verified.
    pub total_chunks: u64,
    /// Set when the chunks were decrypted: sha256 of the reassembled plaintext.
    pub source_hash: Option<String>,
    /// Set when the chunks were decrypted: the length of the reassembled plaintext.
    pub plaintext_bytes: Option<u64>,
}

/// Verifies `chunks` (sorted by index) reading each ciphertext through `ciphertext(index)`,
/// one at a time, so memory stays bounded by one chunk. With a recipient, each decrypted
/// plaintext is passed to `plaintext` in order.
pub fn verify_chain(
    chunks: &[ChunkEnvelope],
    mut ciphertext: impl FnMut(u64) -> Result<Option<Vec<u8>>, String>,
    options: &VerifyOptions<'_>,
    mut plaintext: impl FnMut(u64, &[u8]),
) -> Result<ChainReport, ChainFailure> {
    let mut check = ChainCheck::new(options, 0);
    for chunk in chunks {
        if let Some(opened) = check.chunk(chunk, &mut ciphertext)? {
            plaintext(chunk.index, &opened);
        }
    }
    check.finish()
}

/// Reads chunk `index`'s ciphertext: `None` when it is not there, `Err` with a reason when
/// it cannot be read.
pub type ReadCiphertext<'r> = dyn FnMut(u64) -> Result<Option<Vec<u8>>, String> + 'r;

/// The checks of [`verify_chain`], one chunk at a time, for a chain or a contiguous part of
/// one (a dataset's range): feed the chunks in order to [`ChainCheck::chunk`] (or
/// [`ChainCheck::envelope`], which reads no ciphertext), then call [`ChainCheck::finish`].
pub struct ChainCheck<'a> {
    options: &'a VerifyOptions<'a>,
    recipient_public: Option<[u8; 32]>,
    start: u64,
    next: u64,
    previous: Option<String>,
    first_key: Option<([u8; 32], String)>,
    source: Sha256,
    plaintext_bytes: u64,
}

impl<'a> ChainCheck<'a> {
    /// Checks chunks from index `start` on. From 0, the first chunk must have a null
    /// `previousChunkId`; from anywhere else, one that is not null (the chunk before it is
    /// not checked).
    pub fn new(options: &'a VerifyOptions<'a>, start: u64) -> Self {
        ChainCheck {
            options,
            recipient_public: options.recipient.map(BoxKey::public_key),
            start,
            next: start,
            previous: None,
            first_key: None,
            source: Sha256::new(),
            plaintext_bytes: 0,
        }
    }

    /// Checks the next chunk with its ciphertext (read through `ciphertext(index)`); with a
    /// recipient, decrypts it and returns the plaintext.
    pub fn chunk(
        &mut self,
        chunk: &ChunkEnvelope,
        ciphertext: &mut ReadCiphertext<'_>,
    ) -> Result<Option<Vec<u8>>, ChainFailure> {
        self.step(chunk, Some(ciphertext))
    }

    /// Checks the next chunk's envelope alone: linkage, `chunkId`, signature and signer,
    /// but not its ciphertext.
    pub fn envelope(&mut self, chunk: &ChunkEnvelope) -> Result<(), ChainFailure> {
        self.step(chunk, None).map(|_| ())
    }

    /// The number of chunks checked so far.
    pub fn checked(&self) -> u64 {
        self.next - self.start
    }

    /// [`Self::envelope`] with the chunk's Ed25519 signature already checked (on another
    /// thread: it is most of the cost of an envelope).
    pub fn envelope_checked(
        &mut self,
        chunk: &ChunkEnvelope,
        verdict: &SignatureVerdict,
    ) -> Result<(), ChainFailure> {
        self.step_with(chunk, None, Some(verdict)).map(|_| ())
    }

    fn step(
        &mut self,
        chunk: &ChunkEnvelope,
        ciphertext: Option<&mut ReadCiphertext<'_>>,
    ) -> Result<Option<Vec<u8>>, ChainFailure> {
        self.step_with(chunk, ciphertext, None)
    }

    fn step_with(
        &mut self,
        chunk: &ChunkEnvelope,
        ciphertext: Option<&mut ReadCiphertext<'_>>,
        verdict: Option<&SignatureVerdict>,
    ) -> Result<Option<Vec<u8>>, ChainFailure> {
        let options = self.options;
        let index = self.next;
        if chunk.index != index {
            return Err(ChainFailure::IndexNotSequential {
                index,
                found: chunk.index,
            });
        }
        if index == 0 {
            if chunk.previous_chunk_id.is_some() {
                return Err(ChainFailure::FirstHasPrevious);
            }
        } else if index == self.start {
            if chunk.previous_chunk_id.is_none() {
                return Err(ChainFailure::PreviousMismatch { index });
            }
        } else if chunk.previous_chunk_id != self.previous {
            return Err(ChainFailure::PreviousMismatch { index });
        }
        let data = match ciphertext {
            Some(read) => {
                let data = read(index)
                    .map_err(|reason| ChainFailure::Read { index, reason })?
                    .ok_or(ChainFailure::MissingCiphertext { index })?;
                if chunk.encrypted_data_hash != hexenc::digest_0x(&Sha256::digest(&data)) {
                    return Err(ChainFailure::HashMismatch { index });
                }
                Some(data)
            }
            None => None,
        };
        if chunk.chunk_id
            != hexenc::chunk_id(
                chunk.previous_chunk_id.as_deref(),
                &chunk.encrypted_data_hash,
                index,
            )
        {
            return Err(ChainFailure::ChunkIdMismatch { index });
        }
        let signature = &chunk.signature;
        if signature.machine_did.trim().is_empty() || signature.key_id.trim().is_empty() {
            return Err(ChainFailure::SignatureIdentity { index });
        }
        let verdict = match verdict {
            Some(v) if v.matches(chunk) => v.clone(),
            _ => SignatureVerdict::of(chunk),
        };
        let public_key = verdict
            .public_key
            .filter(|_| verdict.valid)
            .ok_or(ChainFailure::SignatureInvalid { index })?;
        // Beyond the reference.
        if let Some(expected) = options.expect_did {
            // DIDs name an address, which compares case-insensitively.
            if !signature.machine_did.eq_ignore_ascii_case(expected) {
                return Err(ChainFailure::UnexpectedDid {
                    index,
                    found: signature.machine_did.clone(),
                    expected: expected.to_string(),
                });
            }
        }
        if let Some(expected) = options.expect_public_key {
            if public_key != expected {
                return Err(ChainFailure::UnexpectedKey {
                    index,
                    found: hex::encode(public_key),
                    expected: hex::encode(expected),
                });
            }
        }
        // One signer for the chain: the same key, however its hex is spelled.
        match &self.first_key {
            None => self.first_key = Some((public_key, signature.public_key_hex.clone())),
            Some((first, first_hex)) if *first != public_key => {
                return Err(ChainFailure::SignerChanged {
                    index,
                    found: signature.public_key_hex.clone(),
                    first: first_hex.clone(),
                })
            }
            Some(_) => {}
        }
        let mut opened = None;
        if let (Some(key), Some(public), Some(data)) = (
            options.recipient,
            self.recipient_public.as_ref(),
            data.as_deref(),
        ) {
            let entry =
                decrypt::recipient_for(chunk, public).ok_or(ChainFailure::NoRecipient { index })?;
            let plaintext = decrypt::decrypt_chunk(chunk, entry, key, data)
                .map_err(|source| ChainFailure::Decrypt { index, source })?;
            self.source.update(&plaintext);
            self.plaintext_bytes += plaintext.len() as u64;
            opened = Some(plaintext);
        }
        self.previous = Some(chunk.chunk_id.clone());
        self.next += 1;
        Ok(opened)
    }

    /// The end: the chunk count against the manifest's, and with a recipient the
    /// `sourceHash` (meaningful for a whole chain, from index 0).
    pub fn finish(self) -> Result<ChainReport, ChainFailure> {
        let total = self.checked();
        if total == 0 {
            return Err(ChainFailure::Empty);
        }
        if let Some(expected) = self.options.expect_total_chunks {
            if expected != total {
                return Err(ChainFailure::TotalChunks {
                    index: expected.min(total),
                    expected,
                    found: total,
                });
            }
        }
        let mut report = ChainReport {
            total_chunks: total,
            source_hash: None,
            plaintext_bytes: None,
        };
        if self.options.recipient.is_some() {
            let found = hexenc::digest_0x(&self.source.finalize());
            if let Some(expected) = self.options.expect_source_hash {
                if expected != found {
                    return Err(ChainFailure::SourceHash {
                        expected: expected.to_string(),
                        found,
                    });
                }
            }
            report.source_hash = Some(found);
            report.plaintext_bytes = Some(self.plaintext_bytes);
        }
        Ok(report)
    }
}

/// Whether a chunk's Ed25519 signature over its `encryptedDataHash` verifies with its
/// `publicKeyHex`: computed anywhere (a thread pool), used by [`ChainCheck::envelope_checked`],
/// which recomputes it unless it was made for exactly that hash, key and signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureVerdict {
    encrypted_data_hash: String,
    public_key_hex: String,
    value: String,
    public_key: Option<[u8; 32]>,
    valid: bool,
}

impl SignatureVerdict {
    /// Checks `chunk`'s signature.
    pub fn of(chunk: &ChunkEnvelope) -> Self {
        let signature = &chunk.signature;
        let public_key = hexenc::decode_array::<32>("publicKeyHex", &signature.public_key_hex).ok();
        let valid = public_key.is_some_and(|key| {
            ed25519_verifies(&key, &signature.value, &chunk.encrypted_data_hash)
        });
        SignatureVerdict {
            encrypted_data_hash: chunk.encrypted_data_hash.clone(),
            public_key_hex: signature.public_key_hex.clone(),
            value: signature.value.clone(),
            public_key,
            valid,
        }
    }

    /// Whether the signature verifies.
    pub fn valid(&self) -> bool {
        self.valid
    }

    /// The signer's public key, when its hex reads as one (valid signature or not).
    pub fn public_key(&self) -> Option<[u8; 32]> {
        self.public_key
    }

    fn matches(&self, chunk: &ChunkEnvelope) -> bool {
        self.encrypted_data_hash == chunk.encrypted_data_hash
            && self.public_key_hex == chunk.signature.public_key_hex
            && self.value == chunk.signature.value
    }
}

fn ed25519_verifies(public_key: &[u8; 32], signature_hex: &str, message: &str) -> bool {
    let Ok(signature) = hexenc::decode_array::<64>("value", signature_hex) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    key.verify_strict(message.as_bytes(), &Signature::from_bytes(&signature))
        .is_ok()
}
