//! Building a dataset from its chunks and checking one: against its chunks (and their
//! packages), and its proofs. Every failure names the check (`check`) and, where there is
//! one, the chunk.

use super::document::{hash_hex, parse_hash, DatasetDocument, DATASET_SCHEMA_VERSION};
use super::index::{for_each_line, parse_package, timestamp_of, PackageSpan};
use super::leaf::chunk_leaf;
use super::proof::{
    hashes_hex, parse_hashes, ConsistencyProof, InclusionProof, CONSISTENCY_SCHEMA_VERSION,
    INCLUSION_SCHEMA_VERSION,
};
use super::tree::{self, Hash, RootBuilder};
use super::DatasetError;
use crate::chain::{ChainCheck, ChainFailure, ChunkEnvelope, SignatureVerdict, VerifyOptions};
use crate::hexenc;

/// A failed dataset check: which (`check`), on which chunk, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DatasetFailure {
    /// A short name of the check, for machine output: `document`, `datasetSignature`,
    /// `missing`, `firstChunkId`, `lastChunkId`, `lastIndex`, `merkleRoot`, `package`,
    /// `packageDid`, `timeRange`, `proof`, `auditPath`, `consistency`, or a chain check's
    /// name (`index`, `previousChunkId`, `chunkId`, `signature`, `signerKey`,
    /// `expectedDid`, `keyCommitment`, …); the commands add `envelope` (not an envelope) and
    /// `access` (no buyer access for a chunk).
    pub check: &'static str,
    /// The chunk the failure is about, when there is one.
    pub index: Option<u64>,
    /// One line saying what failed.
    pub message: String,
}

impl DatasetFailure {
    fn new(check: &'static str, index: Option<u64>, message: impl Into<String>) -> Self {
        DatasetFailure {
            check,
            index,
            message: message.into(),
        }
    }
}

impl From<ChainFailure> for DatasetFailure {
    fn from(f: ChainFailure) -> Self {
        DatasetFailure::new(f.check(), f.index(), f.to_string())
    }
}

impl From<DatasetError> for DatasetFailure {
    fn from(e: DatasetError) -> Self {
        let check = match e {
            DatasetError::Unsigned | DatasetError::Signature(_) => "datasetSignature",
            _ => "document",
        };
        DatasetFailure::new(check, None, format!("dataset: {e}"))
    }
}

/// The chain expectations a dataset sets: its DID and chain key.
pub fn chain_options(doc: &DatasetDocument) -> Result<VerifyOptions<'_>, DatasetFailure> {
    Ok(VerifyOptions {
        expect_did: Some(&doc.machine_did),
        expect_public_key: Some(
            hexenc::decode_array::<32>("chainPublicKeyHex", &doc.chain_public_key_hex).map_err(
                |e| DatasetError::Field {
                    field: "chainPublicKeyHex",
                    reason: e.reason.to_string(),
                },
            )?,
        ),
        ..VerifyOptions::default()
    })
}

/// The document's shape and signature: it is a dataset, and `machineDid` signed it.
pub fn check_document(doc: &DatasetDocument) -> Result<(), DatasetFailure> {
    doc.check_shape()?;
    doc.verify_signature()?;
    Ok(())
}

static NO_EXPECTATIONS: VerifyOptions<'static> = VerifyOptions {
    expect_did: None,
    expect_public_key: None,
    expect_total_chunks: None,
    recipient: None,
    expect_source_hash: None,
};

/// Builds a dataset over contiguous chunks of one chain: each envelope is checked as a
/// chain link (index, `previousChunkId`, `chunkId`, Ed25519 signature, one signer, the
/// machine's DID) and becomes a leaf; memory stays O(log n).
pub struct DatasetBuilder {
    check: ChainCheck<'static>,
    tree: RootBuilder,
    machine_did: String,
    first: Option<(u64, String, String)>,
    last_chunk_id: Option<String>,
    /// The packages' span while every chunk so far had one.
    span: Option<PackageSpan>,
}

impl DatasetBuilder {
    /// A dataset of `machine_did`'s chain starting at chunk `first_index`.
    pub fn new(first_index: u64, machine_did: &str) -> Self {
        DatasetBuilder {
            check: ChainCheck::new(&NO_EXPECTATIONS, first_index),
            tree: RootBuilder::default(),
            machine_did: machine_did.into(),
            first: None,
            last_chunk_id: None,
            span: Some(PackageSpan::default()),
        }
    }

    /// Adds the next chunk with the span of its packages (`None`: not known, or not
    /// packages; the dataset then has no `timeRange`).
    pub fn push(
        &mut self,
        chunk: &ChunkEnvelope,
        span: Option<&PackageSpan>,
    ) -> Result<(), DatasetFailure> {
        self.push_checked(chunk, span, &SignatureVerdict::of(chunk))
    }

    /// [`Self::push`] with the chunk's signature checked already (see [`SignatureVerdict`]).
    pub fn push_checked(
        &mut self,
        chunk: &ChunkEnvelope,
        span: Option<&PackageSpan>,
        verdict: &SignatureVerdict,
    ) -> Result<(), DatasetFailure> {
        self.check.envelope_checked(chunk, verdict)?;
        let signer = &chunk.signature;
        if !signer.machine_did.eq_ignore_ascii_case(&self.machine_did) {
            return Err(DatasetFailure::new(
                "expectedDid",
                Some(chunk.index),
                format!(
                    "chunk {}: signed as {}, but the dataset is signed by {}",
                    chunk.index, signer.machine_did, self.machine_did
                ),
            ));
        }
        if self.first.is_none() {
            let key = signer.public_key_hex.to_ascii_lowercase();
            self.first = Some((chunk.index, chunk.chunk_id.clone(), key));
        }
        self.tree.push(chunk_leaf(chunk));
        self.last_chunk_id = Some(chunk.chunk_id.clone());
        self.span = match (self.span.take(), span) {
            (Some(mut all), Some(span)) if span.packages() > 0 => {
                if let Some(entry) = span.entry(chunk.index, &chunk.chunk_id) {
                    all.add_entry(&entry).map_err(|reason| {
                        DatasetFailure::new(
                            "package",
                            Some(chunk.index),
                            format!("chunk {}: {reason}", chunk.index),
                        )
                    })?;
                }
                Some(all)
            }
            _ => None,
        };
        Ok(())
    }

    /// The chunks added so far.
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// The unsigned document.
    pub fn finish(
        self,
        topic: &str,
        created_at: String,
    ) -> Result<DatasetDocument, DatasetFailure> {
        let (first_index, first_chunk_id, key) = self
            .first
            .ok_or_else(|| DatasetFailure::new("missing", None, "the dataset has no chunk"))?;
        let size = self.tree.size();
        Ok(DatasetDocument {
            schema_version: DATASET_SCHEMA_VERSION.into(),
            machine_did: self.machine_did,
            topic: topic.into(),
            first_index,
            last_index: first_index + size - 1,
            tree_size: size,
            merkle_root: hash_hex(&self.tree.root()),
            first_chunk_id,
            last_chunk_id: self.last_chunk_id.unwrap_or_default(),
            time_range: self.span.and_then(|s| s.time_range()),
            chain_public_key_hex: key,
            created_at,
            title: None,
            description: None,
            terms: None,
            signature: None,
        })
    }
}

/// Checks a dataset's chunks, in order, against its document: the chain links and signer
/// (as [`crate::chain::verify_chain`] does, from `firstIndex`), `firstChunkId`,
/// `lastChunkId`, every chunk present, and the root recomputed.
pub struct RangeCheck<'a> {
    doc: &'a DatasetDocument,
    chain: ChainCheck<'a>,
    tree: RootBuilder,
    last_chunk_id: Option<String>,
}

impl<'a> RangeCheck<'a> {
    /// `options` from [`chain_options`] (with a recipient, to decrypt as well).
    pub fn new(doc: &'a DatasetDocument, options: &'a VerifyOptions<'a>) -> Self {
        RangeCheck {
            doc,
            chain: ChainCheck::new(options, doc.first_index),
            tree: RootBuilder::default(),
            last_chunk_id: None,
        }
    }

    /// The next chunk index expected.
    pub fn next_index(&self) -> u64 {
        self.doc.first_index.saturating_add(self.tree.size())
    }

    fn leaf(&mut self, chunk: &ChunkEnvelope) -> Result<(), DatasetFailure> {
        if chunk.index > self.doc.last_index {
            return Err(DatasetFailure::new(
                "lastIndex",
                Some(chunk.index),
                format!(
                    "chunk {} is past the dataset's lastIndex {}",
                    chunk.index, self.doc.last_index
                ),
            ));
        }
        if chunk.index == self.doc.first_index && chunk.chunk_id != self.doc.first_chunk_id {
            return Err(DatasetFailure::new(
                "firstChunkId",
                Some(chunk.index),
                format!(
                    "chunk {}: chunkId {} is not the dataset's firstChunkId {}",
                    chunk.index, chunk.chunk_id, self.doc.first_chunk_id
                ),
            ));
        }
        self.tree.push(chunk_leaf(chunk));
        self.last_chunk_id = Some(chunk.chunk_id.clone());
        Ok(())
    }

    /// Checks the next chunk's envelope only.
    pub fn envelope(&mut self, chunk: &ChunkEnvelope) -> Result<(), DatasetFailure> {
        self.chain.envelope(chunk)?;
        self.leaf(chunk)
    }

    /// [`Self::envelope`] with the chunk's signature checked already (see [`SignatureVerdict`]).
    pub fn envelope_checked(
        &mut self,
        chunk: &ChunkEnvelope,
        verdict: &SignatureVerdict,
    ) -> Result<(), DatasetFailure> {
        self.chain.envelope_checked(chunk, verdict)?;
        self.leaf(chunk)
    }

    /// Checks the next chunk with its ciphertext; with a recipient in the options, returns
    /// its plaintext.
    pub fn chunk(
        &mut self,
        chunk: &ChunkEnvelope,
        ciphertext: &mut crate::chain::ReadCiphertext<'_>,
    ) -> Result<Option<Vec<u8>>, DatasetFailure> {
        let plaintext = self.chain.chunk(chunk, ciphertext)?;
        self.leaf(chunk)?;
        Ok(plaintext)
    }

    /// The end: every chunk there, the last one the listed one, the root the listed one.
    pub fn finish(self) -> Result<Hash, DatasetFailure> {
        let next = self.next_index();
        if next <= self.doc.last_index {
            return Err(DatasetFailure::new(
                "missing",
                Some(next),
                format!(
                    "chunk {next}: missing (the dataset lists chunks {}..={})",
                    self.doc.first_index, self.doc.last_index
                ),
            ));
        }
        if self.last_chunk_id.as_deref() != Some(self.doc.last_chunk_id.as_str()) {
            return Err(DatasetFailure::new(
                "lastChunkId",
                Some(self.doc.last_index),
                format!(
                    "chunk {}: chunkId {} is not the dataset's lastChunkId {}",
                    self.doc.last_index,
                    self.last_chunk_id.unwrap_or_default(),
                    self.doc.last_chunk_id
                ),
            ));
        }
        let root = self.tree.root();
        if hash_hex(&root) != self.doc.merkle_root {
            return Err(DatasetFailure::new(
                "merkleRoot",
                None,
                format!(
                    "merkleRoot: the chunks give {}, the dataset lists {}",
                    hash_hex(&root),
                    self.doc.merkle_root
                ),
            ));
        }
        Ok(root)
    }
}

/// Checks a decrypted chunk of a dataset with a `timeRange`: whole lines, each a package
/// whose signature verifies, from `machineDid`, with a timestamp in the range. Returns the
/// number of packages.
pub fn check_packages(
    doc: &DatasetDocument,
    index: u64,
    plaintext: &[u8],
) -> Result<u64, DatasetFailure> {
    let Some(range) = &doc.time_range else {
        return Ok(0);
    };
    let mut count = 0;
    let fail = |check, line: usize, reason: String| {
        DatasetFailure::new(
            check,
            Some(index),
            format!("chunk {index}: package on line {line}: {reason}"),
        )
    };
    for_each_line(plaintext, |line, text| {
        let package =
            parse_package(text).map_err(|r| super::index::SpanError { line, reason: r })?;
        package.verify().map_err(|e| super::index::SpanError {
            line,
            reason: format!("signature: {e}"),
        })?;
        if !package.did.eq_ignore_ascii_case(&doc.machine_did) {
            return Err(super::index::SpanError {
                line,
                reason: format!("from {}, not machineDid {}", package.did, doc.machine_did),
            });
        }
        let timestamp =
            timestamp_of(&package).map_err(|reason| super::index::SpanError { line, reason })?;
        match range.contains(&timestamp) {
            Some(true) => {}
            Some(false) => {
                return Err(super::index::SpanError {
                    line,
                    reason: format!(
                        "timestamp {timestamp} is outside timeRange {}..{}",
                        range.from, range.to
                    ),
                })
            }
            None => {
                return Err(super::index::SpanError {
                    line,
                    reason: format!("timestamp {timestamp:?} is not an RFC 3339 time"),
                })
            }
        }
        count += 1;
        Ok(())
    })
    .map_err(|e| {
        let check = if e.reason.contains("outside timeRange") {
            "timeRange"
        } else if e.reason.starts_with("from ") {
            "packageDid"
        } else {
            "package"
        };
        fail(check, e.line, e.reason)
    })?;
    Ok(count)
}

/// The inclusion proof of `chunk` in the dataset whose leaves are `leaves`.
pub fn make_inclusion(
    doc: &DatasetDocument,
    leaves: &[Hash],
    chunk: &ChunkEnvelope,
) -> Result<InclusionProof, DatasetFailure> {
    let position = chunk
        .index
        .checked_sub(doc.first_index)
        .filter(|p| *p < doc.tree_size)
        .ok_or_else(|| {
            DatasetFailure::new(
                "proof",
                Some(chunk.index),
                format!(
                    "chunk {} is not in the dataset (chunks {}..={})",
                    chunk.index, doc.first_index, doc.last_index
                ),
            )
        })?;
    let path = tree::inclusion_path(leaves, position as usize).ok_or_else(|| {
        DatasetFailure::new(
            "proof",
            Some(chunk.index),
            "the leaves do not cover the chunk",
        )
    })?;
    Ok(InclusionProof {
        schema_version: INCLUSION_SCHEMA_VERSION.into(),
        merkle_root: doc.merkle_root.clone(),
        tree_size: doc.tree_size,
        leaf_index: position,
        chunk_index: chunk.index,
        chunk_id: chunk.chunk_id.clone(),
        leaf_hash: hash_hex(&chunk_leaf(chunk)),
        audit_path: hashes_hex(&path),
    })
}

/// That `chunk` is in the dataset: the proof is for this dataset (root, size) and this chunk
/// (index, id, leaf), its audit path leads to the root, and the chunk's envelope is signed
/// by the dataset's chain key and DID.
pub fn check_inclusion(
    doc: &DatasetDocument,
    proof: &InclusionProof,
    chunk: &ChunkEnvelope,
) -> Result<(), DatasetFailure> {
    let index = Some(chunk.index);
    let mismatch = |what: &str, found: String, expected: String| {
        DatasetFailure::new(
            "proof",
            index,
            format!("proof: {what} is {found}, but {expected}"),
        )
    };
    if proof.merkle_root != doc.merkle_root {
        return Err(mismatch(
            "merkleRoot",
            proof.merkle_root.clone(),
            format!("the dataset's is {}", doc.merkle_root),
        ));
    }
    if proof.tree_size != doc.tree_size {
        return Err(mismatch(
            "treeSize",
            proof.tree_size.to_string(),
            format!("the dataset's is {}", doc.tree_size),
        ));
    }
    if proof.chunk_index != chunk.index {
        return Err(mismatch(
            "chunkIndex",
            proof.chunk_index.to_string(),
            format!("the chunk's index is {}", chunk.index),
        ));
    }
    if chunk.index < doc.first_index || chunk.index > doc.last_index {
        return Err(DatasetFailure::new(
            "proof",
            index,
            format!(
                "chunk {} is not in the dataset (chunks {}..={})",
                chunk.index, doc.first_index, doc.last_index
            ),
        ));
    }
    if proof.leaf_index != chunk.index - doc.first_index {
        return Err(mismatch(
            "leafIndex",
            proof.leaf_index.to_string(),
            format!(
                "chunk {} is leaf {}",
                chunk.index,
                chunk.index - doc.first_index
            ),
        ));
    }
    if proof.chunk_id != chunk.chunk_id {
        return Err(mismatch(
            "chunkId",
            proof.chunk_id.clone(),
            format!("the chunk's is {}", chunk.chunk_id),
        ));
    }
    let leaf = chunk_leaf(chunk);
    if proof.leaf_hash != hash_hex(&leaf) {
        return Err(mismatch(
            "leafHash",
            proof.leaf_hash.clone(),
            format!("the chunk's leaf is {}", hash_hex(&leaf)),
        ));
    }
    let path = parse_hashes("auditPath", &proof.audit_path)?;
    if !tree::verify_inclusion(&leaf, proof.leaf_index, doc.tree_size, &path, &doc.root()?) {
        return Err(DatasetFailure::new(
            "auditPath",
            index,
            format!(
                "chunk {}: the audit path does not lead to merkleRoot {}",
                chunk.index, doc.merkle_root
            ),
        ));
    }
    let options = chain_options(doc)?;
    ChainCheck::new(&options, chunk.index).envelope(chunk)?;
    Ok(())
}

fn same_listing(old: &DatasetDocument, new: &DatasetDocument) -> Result<(), DatasetFailure> {
    let differ = |what: &str| {
        Err(DatasetFailure::new(
            "consistency",
            None,
            format!("consistency: the datasets' {what} differ: they are not of one chain from one chunk"),
        ))
    };
    if !old.machine_did.eq_ignore_ascii_case(&new.machine_did) {
        return differ("machineDid");
    }
    if old.chain_public_key_hex != new.chain_public_key_hex {
        return differ("chainPublicKeyHex");
    }
    if old.first_index != new.first_index {
        return differ("firstIndex");
    }
    if old.first_chunk_id != new.first_chunk_id {
        return differ("firstChunkId");
    }
    if old.tree_size > new.tree_size {
        return Err(DatasetFailure::new(
            "consistency",
            None,
            format!(
                "consistency: the old dataset ({} chunks) is larger than the new one ({})",
                old.tree_size, new.tree_size
            ),
        ));
    }
    Ok(())
}

/// The consistency proof from `old` to `new`, both of one chain from one chunk, with the
/// leaves of `new`.
pub fn make_consistency(
    old: &DatasetDocument,
    new: &DatasetDocument,
    new_leaves: &[Hash],
) -> Result<ConsistencyProof, DatasetFailure> {
    same_listing(old, new)?;
    let old_size = old.tree_size as usize;
    if tree::root(&new_leaves[..old_size.min(new_leaves.len())]) != old.root()? {
        return Err(DatasetFailure::new(
            "consistency",
            None,
            format!("consistency: the first {} chunks of the new dataset do not give the old merkleRoot {}", old.tree_size, old.merkle_root),
        ));
    }
    let proof = tree::consistency_path(new_leaves, old_size).ok_or_else(|| {
        DatasetFailure::new(
            "consistency",
            None,
            "consistency: the leaves do not cover the old dataset",
        )
    })?;
    Ok(ConsistencyProof {
        schema_version: CONSISTENCY_SCHEMA_VERSION.into(),
        first_index: new.first_index,
        old_tree_size: old.tree_size,
        old_merkle_root: old.merkle_root.clone(),
        new_tree_size: new.tree_size,
        new_merkle_root: new.merkle_root.clone(),
        proof: hashes_hex(&proof),
    })
}

/// That `new` extends `old`: one chain from one chunk, and the proof ties the two roots.
pub fn check_consistency(
    old: &DatasetDocument,
    new: &DatasetDocument,
    proof: &ConsistencyProof,
) -> Result<(), DatasetFailure> {
    same_listing(old, new)?;
    if proof.old_tree_size != old.tree_size
        || proof.new_tree_size != new.tree_size
        || proof.old_merkle_root != old.merkle_root
        || proof.new_merkle_root != new.merkle_root
        || proof.first_index != new.first_index
    {
        return Err(DatasetFailure::new(
            "proof",
            None,
            "proof: its sizes, roots or firstIndex are not those of the two datasets",
        ));
    }
    let hashes = parse_hashes("proof", &proof.proof)?;
    let (old_root, new_root) = (
        parse_hash("oldMerkleRoot", &old.merkle_root)?,
        parse_hash("newMerkleRoot", &new.merkle_root)?,
    );
    if !tree::verify_consistency(old.tree_size, new.tree_size, &old_root, &new_root, &hashes) {
        return Err(DatasetFailure::new(
            "consistency",
            None,
            format!("consistency: the proof does not show {} chunks with root {} as a prefix of {} with root {}", old.tree_size, old.merkle_root, new.tree_size, new.merkle_root),
        ));
    }
    Ok(())
}
