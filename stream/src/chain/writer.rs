//! The chain writer: the one place where sealed chunks become a published chain.
//!
//! It owns the order of things: each chunk's plaintext goes into the running `sourceHash`
//! ([`ChainWriter::absorb`], in chain order, before the chunk is sealed in place), each
//! sealed chunk is linked to the one before (index, `chunkId`) and handed to the output
//! ([`ChainWriter::append`]), and the manifest follows ([`ChainWriter::write_manifest`]).
//! Its state ([`ChainState`]: next index, previous chunk id, the saved `sourceHash`) can be
//! saved and resumed, so a writer restarted after a crash continues the same chain.
//!
//! Where the chain goes is a [`ChainOutput`]: the published directory ([`DirOutput`]) is one;
//! object stores and live feeds are others.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::build::{ChainLinker, SealedChunk};
use super::envelope::ChunkEnvelope;
use super::source::{SavedSourceHash, SourceHasher};
use crate::layout::{self, Durability, LayoutError, Manifest};

/// Where a writer stands: enough to continue the chain after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainState {
    /// The index the next chunk gets.
    pub next_index: u64,
    /// The id of the last chunk written (`None` before the first).
    pub previous_chunk_id: Option<String>,
    /// The running `sourceHash` over every plaintext so far.
    pub source: SavedSourceHash,
}

impl Default for ChainState {
    fn default() -> Self {
        ChainState {
            next_index: 0,
            previous_chunk_id: None,
            source: SourceHasher::default().save(),
        }
    }
}

/// A state that cannot be resumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a chain writer state: the saved sourceHash is malformed")]
pub struct StateError;

/// Something a committed chain goes to.
pub trait ChainOutput {
    /// A chunk, in chain order, once linked: its envelope and its ciphertext.
    fn write_chunk(
        &mut self,
        envelope: &ChunkEnvelope,
        ciphertext: &[u8],
    ) -> Result<(), LayoutError>;
    /// The manifest of the chain so far.
    fn write_manifest(&mut self, manifest: &Manifest) -> Result<(), LayoutError>;
}

/// The published directory: `chunk-{i}.bin` then `chunk-{i}.json`, then `manifest.json`,
/// each written atomically (and fsynced with [`Durability::Synced`]).
#[derive(Debug, Clone)]
pub struct DirOutput {
    dir: PathBuf,
    chunks: Durability,
    manifest: Durability,
}

impl DirOutput {
    /// Chunks and manifest written with `durability`.
    pub fn new(dir: &Path, durability: Durability) -> Self {
        DirOutput {
            dir: dir.to_path_buf(),
            chunks: durability,
            manifest: durability,
        }
    }

    /// Chunks and manifest with their own durability (a writer whose commit point lies
    /// between the two may sync the chunks and not the manifest, which it can rebuild).
    pub fn with(dir: &Path, chunks: Durability, manifest: Durability) -> Self {
        DirOutput {
            dir: dir.to_path_buf(),
            chunks,
            manifest,
        }
    }

    /// The published directory written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl ChainOutput for DirOutput {
    fn write_chunk(
        &mut self,
        envelope: &ChunkEnvelope,
        ciphertext: &[u8],
    ) -> Result<(), LayoutError> {
        layout::write_chunk(&self.dir, envelope, ciphertext, self.chunks)
    }
    fn write_manifest(&mut self, manifest: &Manifest) -> Result<(), LayoutError> {
        layout::write_manifest(&self.dir, manifest, self.manifest).map(|_| ())
    }
}

/// Links sealed chunks into a chain and writes it to an output, keeping `sourceHash`.
#[derive(Debug, Clone)]
pub struct ChainWriter {
    linker: ChainLinker,
    source: SourceHasher,
    machine_did: String,
    chunk_size: u64,
}

/// A chunk the writer wrote.
#[derive(Debug)]
pub struct Written {
    /// The chunk's envelope, as written (`chunk-{i}.json`).
    pub envelope: ChunkEnvelope,
    /// The ciphertext buffer, handed back for reuse.
    pub buffer: Vec<u8>,
}

impl ChainWriter {
    /// A new chain of `machine_did`, whose manifest names `chunk_size`.
    pub fn new(machine_did: &str, chunk_size: u64) -> Self {
        Self::resume(&ChainState::default(), machine_did, chunk_size)
            .expect("the default state is valid")
    }

    /// Continues a chain from a saved state.
    pub fn resume(
        state: &ChainState,
        machine_did: &str,
        chunk_size: u64,
    ) -> Result<Self, StateError> {
        Ok(ChainWriter {
            linker: ChainLinker::resume(state.previous_chunk_id.clone(), state.next_index),
            source: SourceHasher::restore(&state.source).ok_or(StateError)?,
            machine_did: machine_did.to_string(),
            chunk_size,
        })
    }

    /// The state to resume from.
    pub fn state(&self) -> ChainState {
        ChainState {
            next_index: self.linker.next_index(),
            previous_chunk_id: self.linker.previous_chunk_id().map(str::to_string),
            source: self.source.save(),
        }
    }

    /// The chunk size the manifest names.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// The index the next chunk gets (also the number of chunks written).
    pub fn next_index(&self) -> u64 {
        self.linker.next_index()
    }

    /// Adds the next chunk's plaintext to `sourceHash`: once per chunk, in chain order,
    /// before the chunk is sealed (sealing encrypts it in place).
    pub fn absorb(&mut self, plaintext: &[u8]) {
        self.source.update(plaintext);
    }

    /// Links `sealed` as the next chunk and writes it to `output`. On an error nothing is
    /// linked and the writer stays where it was: seal the chunk again and append that.
    pub fn append(
        &mut self,
        sealed: SealedChunk,
        output: &mut dyn ChainOutput,
    ) -> Result<Written, LayoutError> {
        let mut linker = self.linker.clone();
        let (envelope, ciphertext) = linker.link(sealed);
        output.write_chunk(&envelope, &ciphertext)?;
        self.linker = linker;
        Ok(Written {
            envelope,
            buffer: ciphertext,
        })
    }

    /// The manifest of the chain so far.
    pub fn manifest(&self) -> Manifest {
        Manifest::new(
            self.source.digest(),
            self.linker.next_index(),
            self.chunk_size,
            self.machine_did.clone(),
        )
    }

    /// Writes [`Self::manifest`] to `output`; returns it.
    pub fn write_manifest(&self, output: &mut dyn ChainOutput) -> Result<Manifest, LayoutError> {
        let manifest = self.manifest();
        output.write_manifest(&manifest)?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{seal_chunk, verify_chain, VerifyOptions};
    use crate::keys::{BoxKey, ChainKey, Secret32};
    use crate::local::{LocalChunkKeys, LocalChunkSigner, RecipientSpec};
    use crate::signer::ChunkKeySource;

    /// A chain written in two sessions (the state saved and resumed in between) is one
    /// chain, with one `sourceHash` over everything.
    #[test]
    fn a_resumed_writer_continues_the_same_chain() {
        let dir = tempfile::tempdir().unwrap();
        let machine = BoxKey::from_secret(&Secret32::from_bytes([3; 32]));
        let keys = LocalChunkKeys::new(vec![RecipientSpec::new(
            "machine-1",
            "machine",
            &machine.public_key_hex(),
        )
        .unwrap()]);
        let signer = LocalChunkSigner::new(
            ChainKey::from_secret(&Secret32::from_bytes([4; 32])),
            "did:peaq:0x01".into(),
            "k".into(),
        );
        let mut out = DirOutput::new(dir.path(), Durability::Atomic);
        let parts: [&[u8]; 3] = [b"one ", b"two ", b"three"];
        let mut writer = ChainWriter::new("did:peaq:0x01", 4);
        let mut saved: Option<String> = None;
        for (i, part) in parts.iter().enumerate() {
            if i == 2 {
                let state: ChainState = serde_json::from_str(&saved.take().unwrap()).unwrap();
                writer = ChainWriter::resume(&state, "did:peaq:0x01", 4).unwrap();
            }
            writer.absorb(part);
            let key = keys.new_chunk_keys(1).unwrap().pop().unwrap();
            let sealed = seal_chunk(part.to_vec(), key, &signer, i as u64).unwrap();
            writer.append(sealed, &mut out).unwrap();
            saved = Some(serde_json::to_string(&writer.state()).unwrap());
        }
        let manifest = writer.write_manifest(&mut out).unwrap();
        assert_eq!(manifest.total_chunks, 3);
        assert_eq!(
            manifest.source_hash,
            crate::hexenc::sha256_0x(b"one two three")
        );
        let chunks = layout::read_chunks(dir.path()).unwrap();
        let report = verify_chain(
            &chunks,
            |i| layout::read_ciphertext(dir.path(), i).map_err(|e| e.to_string()),
            &VerifyOptions {
                recipient: Some(&machine),
                expect_total_chunks: Some(3),
                expect_source_hash: Some(&manifest.source_hash),
                ..VerifyOptions::default()
            },
            |_, _| {},
        );
        assert!(report.is_ok(), "{report:?}");
    }
}
