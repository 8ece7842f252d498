//! Building chunk chains: seal each chunk (parallelizable), then link them in order.

use std::io::Read;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use super::envelope::*;
use crate::hexenc;
use crate::signer::{ChunkHashSigner, ChunkKey, ChunkToSign, SignerError};

/// A chunk that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The chunk signer failed, or returned no signature.
    #[error("chunk {index}: {source}")]
    Signer {
        /// The index the chunk was sealed for.
        index: u64,
        /// The signer's error.
        #[source]
        source: SignerError,
    },
    /// XChaCha20-Poly1305 encryption failed.
    #[error("chunk {index}: encryption failed")]
    Encrypt {
        /// The index the chunk was sealed for.
        index: u64,
    },
    /// The operating system's random number generator failed (the chunk nonce).
    #[error("the operating system's random number generator failed")]
    Randomness,
    /// Reading the input failed.
    #[error("reading input: {0}")]
    Read(#[from] std::io::Error),
}

/// A chunk encrypted, hashed and signed, not yet linked into the chain.
#[derive(Debug)]
pub struct SealedChunk {
    /// ciphertext ‖ tag: the `chunk-i.bin` content.
    pub ciphertext: Vec<u8>,
    /// `encryptedDataHash`: `0x` + sha256 hex of the ciphertext.
    pub encrypted_data_hash: String,
    /// `plaintextHash`: `0x` + sha256 hex of the plaintext.
    pub plaintext_hash: String,
    /// The fresh 24-byte nonce, as bare hex (`encryption.nonce`).
    pub nonce_hex: String,
    /// `keyCommitment`: `sha256:` + sha256 hex of the chunk key.
    pub key_commitment: String,
    /// The chunk key sealed to each recipient (`keyRecipients`).
    pub recipients: Vec<KeyRecipient>,
    /// The Ed25519 signature over `encryptedDataHash`, with the signer's identity.
    pub signature: ChunkSignature,
}

/// Encrypts the plaintext in `buffer` in place under `key` with a fresh random nonce, hashes both sides,
/// and signs the ciphertext hash. `index` is only used to name failures. The chunk key is
/// dropped (and zeroized) before this returns.
pub fn seal_chunk(
    mut buffer: Vec<u8>,
    key: ChunkKey,
    signer: &dyn ChunkHashSigner,
    index: u64,
) -> Result<SealedChunk, BuildError> {
    let plaintext_hash = hexenc::digest_0x(&Sha256::digest(&buffer));
    let mut nonce = [0u8; 24];
    getrandom::getrandom(&mut nonce).map_err(|_| BuildError::Randomness)?;
    let cipher = XChaCha20Poly1305::new(key.key.expose().into());
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), b"", &mut buffer)
        .map_err(|_| BuildError::Encrypt { index })?;
    drop(cipher);
    buffer.extend_from_slice(&tag);
    let encrypted_data_hash = hexenc::digest_0x(&Sha256::digest(&buffer));
    let value = signer
        .sign_chunks(&[ChunkToSign {
            encrypted_data_hash: &encrypted_data_hash,
            key_commitment: &key.commitment,
        }])
        .map_err(|source| BuildError::Signer { index, source })?
        .pop()
        .ok_or(BuildError::Signer {
            index,
            source: SignerError::Unavailable("no signature returned".into()),
        })?;
    let identity = signer.chunk_signer();
    let ChunkKey {
        key: _,
        commitment,
        recipients,
    } = key;
    Ok(SealedChunk {
        ciphertext: buffer,
        encrypted_data_hash,
        plaintext_hash,
        nonce_hex: hex::encode(nonce),
        key_commitment: commitment,
        recipients,
        signature: ChunkSignature {
            algorithm: SIGNATURE_ALGORITHM.into(),
            machine_did: identity.machine_did.clone(),
            key_id: identity.key_id.clone(),
            public_key_hex: identity.public_key_hex.clone(),
            value: hex::encode(value),
        },
    })
}

/// Links sealed chunks into a chain: indices and `chunkId`s, each naming the one before.
#[derive(Debug, Clone, Default)]
pub struct ChainLinker {
    previous: Option<String>,
    next_index: u64,
}

impl ChainLinker {
    /// A new chain, starting at index 0.
    pub fn new() -> Self {
        Self::default()
    }
    /// Continues a chain whose last chunk has id `previous` and index `next_index - 1`.
    pub fn resume(previous: Option<String>, next_index: u64) -> Self {
        ChainLinker {
            previous,
            next_index,
        }
    }
    /// The index the next linked chunk gets.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }
    /// The `chunkId` of the last linked chunk; `None` before the first.
    pub fn previous_chunk_id(&self) -> Option<&str> {
        self.previous.as_deref()
    }

    /// Gives `sealed` the next index; returns its envelope and its ciphertext.
    pub fn link(&mut self, sealed: SealedChunk) -> (ChunkEnvelope, Vec<u8>) {
        let index = self.next_index;
        let chunk_id =
            hexenc::chunk_id(self.previous.as_deref(), &sealed.encrypted_data_hash, index);
        let envelope = ChunkEnvelope {
            schema_version: CHUNK_SCHEMA_VERSION.into(),
            chunk_id: chunk_id.clone(),
            previous_chunk_id: self.previous.replace(chunk_id),
            index,
            encrypted_data_hash: sealed.encrypted_data_hash,
            plaintext_hash: sealed.plaintext_hash,
            storage_ref: None,
            encryption: ChunkEncryption {
                algorithm: CHUNK_ALGORITHM.into(),
                nonce: sealed.nonce_hex,
                key_commitment: sealed.key_commitment,
                key_recipients: sealed.recipients,
            },
            signature: sealed.signature,
        };
        self.next_index += 1;
        (envelope, sealed.ciphertext)
    }
}

/// Reads a byte stream as `chunk_size` slices, one at a time (memory bounded). An empty
/// input gives one empty chunk. (The chain writer hashes the plaintexts for `sourceHash`.)
pub struct ChunkReader<R> {
    input: R,
    chunk_size: usize,
    produced: u64,
    done: bool,
}

impl<R: Read> ChunkReader<R> {
    /// Reads `input` in slices of `chunk_size` bytes.
    ///
    /// # Panics
    ///
    /// If `chunk_size` is 0.
    pub fn new(input: R, chunk_size: usize) -> Self {
        assert!(chunk_size > 0, "chunk size must be positive");
        ChunkReader {
            input,
            chunk_size,
            produced: 0,
            done: false,
        }
    }

    /// The next slice, or `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, std::io::Error> {
        let mut buffer = Vec::new();
        Ok(self.fill_chunk(&mut buffer)?.then_some(buffer))
    }

    /// Reads the next slice into `buffer` (cleared first, its allocation reused, with room
    /// for the 16-byte tag); `false` at the end.
    pub fn fill_chunk(&mut self, buffer: &mut Vec<u8>) -> Result<bool, std::io::Error> {
        buffer.clear();
        if self.done {
            return Ok(false);
        }
        buffer.reserve_exact(self.chunk_size + 16);
        (&mut self.input)
            .take(self.chunk_size as u64)
            .read_to_end(buffer)?;
        if buffer.len() < self.chunk_size {
            self.done = true;
            if buffer.is_empty() && self.produced > 0 {
                return Ok(false);
            }
        }
        self.produced += 1;
        Ok(true)
    }
}
