//! Chunk chains (docs/formats.md §4): envelopes, sealing, the chain writer, verification,
//! decryption.

mod build;
mod decrypt;
mod envelope;
mod source;
mod verify;
mod writer;

pub use build::{seal_chunk, BuildError, ChainLinker, ChunkReader, SealedChunk};
pub use decrypt::{decrypt_chunk, decrypt_with_key, recipient_for, unwrap_chunk_key, DecryptError};
pub use envelope::*;
pub use source::{SavedSourceHash, SourceHasher};
pub use verify::{
    verify_chain, ChainCheck, ChainFailure, ChainReport, ReadCiphertext, SignatureVerdict,
    VerifyOptions,
};
pub use writer::{ChainOutput, ChainState, ChainWriter, DirOutput, StateError, Written};
