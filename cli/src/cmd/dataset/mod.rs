//! `peaqos dataset`: build and sign a dataset over a chain range, verify it, prove a chunk's
//! inclusion or two datasets' consistency, and hand out a sample (docs/datasets.md).

mod build;
mod proofs;
mod read;
mod sample;
mod verify;

use std::path::Path;

use serde_json::json;
use stream::chain::ChunkEnvelope;
use stream::dataset::tree::Hash;
use stream::dataset::{leaf::chunk_leaf, DatasetDocument, DatasetFailure, RangeCheck};

use crate::cli::DatasetCommand;
use crate::output::{input, print_json, CliError, CliResult, Output};

pub fn run(command: DatasetCommand, out: &Output) -> CliResult {
    match command {
        DatasetCommand::Build(a) => build::run(a, out),
        DatasetCommand::Verify(a) => verify::run(a, out),
        DatasetCommand::Prove(a) => proofs::prove(a, out),
        DatasetCommand::VerifyProof(a) => proofs::verify_proof(a, out),
        DatasetCommand::Consistency(a) => proofs::consistency(a, out),
        DatasetCommand::VerifyConsistency(a) => proofs::verify_consistency(a, out),
        DatasetCommand::Sample(a) => sample::run(a, out),
        DatasetCommand::VerifySample(a) => sample::verify(a, out),
    }
}

/// A file's bytes, naming the file when it cannot be read.
fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| input(format!("cannot read {what} {}: {e}", path.display())))
}

/// A dataset document, read and checked: its shape (a malformed document fails `document`,
/// named with the file) and its signature (`datasetSignature`). Every command that takes a
/// listing reads it here.
fn read_document(path: &Path) -> Result<DatasetDocument, DatasetFailure> {
    let bytes = std::fs::read(path).map_err(|e| DatasetFailure {
        check: "document",
        index: None,
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    let doc = DatasetDocument::from_json(&bytes).map_err(|e| DatasetFailure {
        check: "document",
        index: None,
        message: format!("{}: {e}", path.display()),
    })?;
    stream::dataset::check_document(&doc)?;
    Ok(doc)
}

/// `dir/chunk-{index}.json`, `None` when it is not there. One that is there but is not an
/// envelope fails the check `envelope` (the chain is damaged); one that cannot be read is an
/// input error.
fn read_envelope(dir: &Path, index: u64) -> Result<Option<ChunkEnvelope>, CliError> {
    let path = dir.join(format!("chunk-{index}.json"));
    match std::fs::read(&path) {
        Ok(bytes) => ChunkEnvelope::from_json(&bytes).map(Some).map_err(|e| {
            CliError::Check(format!(
                "chunk {index} failed [envelope]: {}: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(input(format!("cannot read {}: {e}", path.display()))),
    }
}

/// The leaves of `doc`'s range, from the envelopes in `dir`, each checked as a link of the
/// chain; the root must be the document's.
fn range_leaves(doc: &DatasetDocument, dir: &Path) -> Result<Vec<Hash>, DatasetFailure> {
    let options = stream::dataset::chain_options(doc)?;
    let mut check = RangeCheck::new(doc, &options);
    let mut leaves = Vec::with_capacity(doc.tree_size.min(1 << 24) as usize);
    let mut failure = None;
    let read = read::for_each_envelope(dir, doc.first_index, doc.last_index, |index, checked| {
        let outcome = match checked {
            None => Err(missing(dir, index)),
            Some((chunk, verdict)) => check
                .envelope_checked(&chunk, &verdict)
                .map(|()| chunk_leaf(&chunk)),
        };
        match outcome {
            Ok(leaf) => {
                leaves.push(leaf);
                Ok(())
            }
            Err(f) => {
                failure = Some(f);
                Err(CliError::Check("stopped at the first failure".into()))
            }
        }
    });
    if let Some(f) = failure {
        return Err(f);
    }
    read.map_err(|e| DatasetFailure {
        check: "envelope",
        index: None,
        message: e.to_string(),
    })?;
    check.finish()?;
    Ok(leaves)
}

fn missing(dir: &Path, index: u64) -> DatasetFailure {
    DatasetFailure {
        check: "missing",
        index: Some(index),
        message: format!(
            "chunk {index}: {} is missing",
            dir.join(format!("chunk-{index}.json")).display()
        ),
    }
}

/// A failed check as the command's error: one named line (and the JSON result with --json).
fn failed(json_out: bool, what: &str, failure: DatasetFailure) -> CliError {
    let line = format!("{what} failed [{}]: {}", failure.check, failure.message);
    if json_out {
        print_json(
            &json!({"valid": false, "check": failure.check, "index": failure.index, "reason": line}),
        );
    }
    CliError::Check(line)
}

/// Writes `text` to `path` atomically, or prints it when there is no path.
fn write_or_print(path: Option<&Path>, text: &str) -> CliResult {
    match path {
        Some(path) => write_file(path, text.as_bytes()),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// Writes `bytes` to `path` atomically (its directory created).
fn write_file(path: &Path, bytes: &[u8]) -> CliResult {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| input(format!("cannot create {}: {e}", parent.display())))?;
    stream::fsio::write_atomic(path, bytes, stream::fsio::Durability::Synced)
        .map_err(|e| input(format!("cannot write {}: {e}", path.display())))
}
