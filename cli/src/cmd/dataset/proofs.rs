//! `peaqos dataset prove | verify-proof | consistency | verify-consistency`.

use serde_json::json;
use stream::chain::ChunkEnvelope;
use stream::dataset::{self, ConsistencyProof, DatasetFailure, InclusionProof};

use super::{failed, range_leaves, read_document, read_envelope, read_file, write_or_print};
use crate::cli::{
    DatasetConsistencyArgs, DatasetProveArgs, DatasetVerifyConsistencyArgs, DatasetVerifyProofArgs,
};
use crate::output::{input, print_json, CliResult, Output};
use crate::s3::LocalChain;
use store::fetch::Fetch;

fn proof_failure(path: &std::path::Path, e: stream::dataset::DatasetError) -> DatasetFailure {
    DatasetFailure {
        check: "proof",
        index: None,
        message: format!("{}: {e}", path.display()),
    }
}

pub fn prove(args: DatasetProveArgs, out: &Output) -> CliResult {
    let fail = |f| failed(false, "dataset prove", f);
    let doc = read_document(&args.dataset).map_err(fail)?;
    let chain = LocalChain::open(
        "--chunk-dir",
        &args.chunk_dir,
        Fetch::Envelopes,
        &args.s3_options,
    )?;
    let chunk = read_envelope(chain.dir(), args.index)?
        .ok_or_else(|| fail(super::missing(chain.dir(), args.index)))?;
    let leaves = range_leaves(&doc, chain.dir()).map_err(fail)?;
    let proof = dataset::make_inclusion(&doc, &leaves, &chunk).map_err(fail)?;
    write_or_print(
        args.output.as_deref(),
        &proof.to_file_text().map_err(input)?,
    )?;
    if let Some(path) = &args.output {
        out.say(format!(
            "Inclusion proof of chunk {} (leaf {} of {}, {} hashes) written to {}",
            chunk.index,
            proof.leaf_index,
            proof.tree_size,
            proof.audit_path.len(),
            path.display()
        ));
    }
    Ok(())
}

pub fn verify_proof(args: DatasetVerifyProofArgs, out: &Output) -> CliResult {
    let fail = |f| failed(args.json, "proof verification", f);
    let doc = read_document(&args.dataset).map_err(fail)?;
    let proof = InclusionProof::from_json(&read_file(&args.proof, "--proof")?)
        .map_err(|e| fail(proof_failure(&args.proof, e)))?;
    let chunk = ChunkEnvelope::from_json(&read_file(&args.chunk, "--chunk")?)
        .map_err(|e| input(format!("{}: {e}", args.chunk.display())))?;
    dataset::check_inclusion(&doc, &proof, &chunk).map_err(fail)?;
    if args.json {
        print_json(
            &json!({"valid": true, "chunkIndex": chunk.index, "chunkId": chunk.chunk_id, "merkleRoot": doc.merkle_root}),
        );
    } else {
        out.say(format!(
            "\u{2713} chunk {} is leaf {} of dataset {} (root {}), signed by its chain key",
            chunk.index, proof.leaf_index, doc.topic, doc.merkle_root
        ));
    }
    Ok(())
}

pub fn consistency(args: DatasetConsistencyArgs, out: &Output) -> CliResult {
    let fail = |f| failed(false, "dataset consistency", f);
    let old = read_document(&args.old).map_err(fail)?;
    let new = read_document(&args.new).map_err(fail)?;
    let chain = LocalChain::open(
        "--chunk-dir",
        &args.chunk_dir,
        Fetch::Envelopes,
        &args.s3_options,
    )?;
    let leaves = range_leaves(&new, chain.dir()).map_err(fail)?;
    let proof = dataset::make_consistency(&old, &new, &leaves).map_err(fail)?;
    write_or_print(
        args.output.as_deref(),
        &proof.to_file_text().map_err(input)?,
    )?;
    if let Some(path) = &args.output {
        out.say(format!(
            "Consistency proof {} -> {} chunks ({} hashes) written to {}",
            proof.old_tree_size,
            proof.new_tree_size,
            proof.proof.len(),
            path.display()
        ));
    }
    Ok(())
}

pub fn verify_consistency(args: DatasetVerifyConsistencyArgs, out: &Output) -> CliResult {
    let fail = |f| failed(args.json, "consistency verification", f);
    let old = read_document(&args.old).map_err(fail)?;
    let new = read_document(&args.new).map_err(fail)?;
    let proof = ConsistencyProof::from_json(&read_file(&args.proof, "--proof")?)
        .map_err(|e| fail(proof_failure(&args.proof, e)))?;
    dataset::check_consistency(&old, &new, &proof).map_err(fail)?;
    if args.json {
        print_json(
            &json!({"valid": true, "oldTreeSize": old.tree_size, "newTreeSize": new.tree_size}),
        );
    } else {
        out.say(format!(
            "\u{2713} the dataset of {} chunks (root {}) is a prefix of the one of {} (root {})",
            old.tree_size, old.merkle_root, new.tree_size, new.merkle_root
        ));
    }
    Ok(())
}
