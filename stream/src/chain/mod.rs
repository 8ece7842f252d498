//! Chunk chains (FORMATS.md §4): envelopes, building, verification, decryption.

mod build;
mod decrypt;
mod envelope;
mod verify;

pub use build::{seal_chunk, BuildError, ChainLinker, ChunkReader, SealedChunk};
pub use decrypt::{decrypt_chunk, decrypt_with_key, recipient_for, unwrap_chunk_key, DecryptError};
pub use envelope::*;
pub use verify::{verify_chain, ChainFailure, ChainReport, VerifyOptions};
