//! `peaqos dataset sample | verify-sample`: one chunk of a dataset for a buyer to inspect
//! before paying: the chunk, its data, access to it alone, and its inclusion proof.
//!
//! A sample directory holds `dataset.json`, `proof.json`, `chunks/chunk-N.json`,
//! `data/chunk-N.bin` and `access/` (one buyer access file, as `stream grant` writes them).

use std::path::Path;

use serde_json::json;
use stream::access::{pack_files, read_access_dir, BuyerIdentity, DEFAULT_MAX_FILE_SIZE};
use stream::chain::{self, ChainCheck};
use stream::dataset::{self, DatasetFailure, InclusionProof};
use stream::layout::{self, Durability};

use super::{failed, range_leaves, read_document, read_envelope, read_file, write_file};
use crate::cli::{DatasetSampleArgs, DatasetVerifySampleArgs};
use crate::output::{check, input, print_json, CliError, CliResult, Output};
use crate::s3::LocalChain;
use store::fetch::Fetch;

pub fn run(args: DatasetSampleArgs, out: &Output) -> CliResult {
    let fail = |f| failed(false, "dataset sample", f);
    let buyer_id = args.buyer_id.trim();
    if buyer_id.is_empty() {
        return Err(CliError::Input("--buyer-id must not be empty".into()));
    }
    let buyer = BuyerIdentity::new(buyer_id, &args.buyer_public_key)
        .map_err(|e| input(format!("--buyer-public-key: {}", e.reason)))?;
    let granter = super::super::granter(&args.keyd, &args.owner_private_key_file)?;
    let doc = read_document(&args.dataset).map_err(fail)?;
    let chain = LocalChain::open(
        "--chunk-dir",
        &args.chunk_dir,
        Fetch::Everything,
        &args.s3_options,
    )?;
    let chunk = read_envelope(chain.dir(), args.index)?
        .ok_or_else(|| fail(super::missing(chain.dir(), args.index)))?;
    let data = layout::read_ciphertext(chain.dir(), args.index)
        .map_err(input)?
        .ok_or_else(|| {
            input(format!(
                "chunk {}: chunk-{}.bin is missing",
                args.index, args.index
            ))
        })?;
    let leaves = range_leaves(&doc, chain.dir()).map_err(fail)?;
    let proof = dataset::make_inclusion(&doc, &leaves, &chunk).map_err(fail)?;
    let entries = granter
        .grant(std::slice::from_ref(&chunk), &buyer)
        .map_err(check)?;
    let files = pack_files(&buyer.public_key_hex, &entries, DEFAULT_MAX_FILE_SIZE);

    let dir = args.output_dir.as_path();
    let n = chunk.index;
    write_file(
        &dir.join("dataset.json"),
        doc.to_file_text().map_err(input)?.as_bytes(),
    )?;
    write_file(
        &dir.join("chunks").join(format!("chunk-{n}.json")),
        chunk.to_file_text().map_err(input)?.as_bytes(),
    )?;
    write_file(&dir.join("data").join(format!("chunk-{n}.bin")), &data)?;
    std::fs::create_dir_all(dir.join("access")).map_err(|e| {
        input(format!(
            "cannot create {}: {e}",
            dir.join("access").display()
        ))
    })?;
    for file in &files {
        layout::write_atomic(
            &dir.join("access"),
            &file.file_name,
            file.text.as_bytes(),
            Durability::Synced,
        )
        .map_err(input)?;
    }
    write_file(
        &dir.join("proof.json"),
        proof.to_file_text().map_err(input)?.as_bytes(),
    )?;
    out.say(format!(
        "Sample of dataset {} for {buyer_id}: chunk {n} (leaf {} of {}) written to {}",
        doc.topic,
        proof.leaf_index,
        proof.tree_size,
        dir.display()
    ));
    Ok(())
}

/// The one `chunk-N.json` in `dir`.
fn only_chunk(dir: &Path) -> Result<u64, CliError> {
    let indices = layout::envelope_indices(dir).map_err(input)?;
    match indices.as_slice() {
        [one] => Ok(*one),
        _ => Err(input(format!(
            "{}: a sample holds exactly one chunk-N.json, found {}",
            dir.display(),
            indices.len()
        ))),
    }
}

pub fn verify(args: DatasetVerifySampleArgs, out: &Output) -> CliResult {
    let fail = |f| failed(args.json, "sample verification", f);
    let dir = args.sample_dir.as_path();
    let buyer_key = super::super::read_box_key(&args.buyer_key_file, "an X25519 private key")?;
    let doc = read_document(&dir.join("dataset.json")).map_err(fail)?;
    let proof_path = dir.join("proof.json");
    let proof =
        InclusionProof::from_json(&read_file(&proof_path, "the sample's proof")?).map_err(|e| {
            fail(DatasetFailure {
                check: "proof",
                index: None,
                message: format!("{}: {e}", proof_path.display()),
            })
        })?;
    let chunks = dir.join("chunks");
    let index = only_chunk(&chunks)?;
    let chunk =
        read_envelope(&chunks, index)?.ok_or_else(|| fail(super::missing(&chunks, index)))?;
    dataset::check_inclusion(&doc, &proof, &chunk).map_err(fail)?;
    // The ciphertext is the one the signed envelope names.
    let options = dataset::chain_options(&doc).map_err(fail)?;
    let data_dir = dir.join("data");
    let mut data = None;
    let mut read = |i: u64| {
        let bytes = layout::read_ciphertext(&data_dir, i).map_err(|e| e.to_string())?;
        data.clone_from(&bytes);
        Ok(bytes)
    };
    ChainCheck::new(&options, index)
        .chunk(&chunk, &mut read)
        .map_err(|f| fail(f.into()))?;
    let data = data.unwrap_or_default();
    let access = read_access_dir(&dir.join("access"), args.buyer_id.trim()).map_err(input)?;
    let entry = access.get(&chunk.chunk_id).ok_or_else(|| {
        fail(DatasetFailure {
            check: "access",
            index: Some(index),
            message: format!(
                "chunk {index}: the sample holds no access for {}",
                args.buyer_id
            ),
        })
    })?;
    let plaintext = chain::decrypt_chunk(&chunk, entry, &buyer_key, &data)
        .map_err(|e| fail(chain::ChainFailure::Decrypt { index, source: e }.into()))?;
    let packages = dataset::check_packages(&doc, index, &plaintext).map_err(fail)?;
    if let Some(output) = &args.output {
        write_file(output, &plaintext)?;
    }
    if args.json {
        print_json(&json!({
            "valid": true,
            "chunkIndex": index,
            "merkleRoot": doc.merkle_root,
            "plaintextBytes": plaintext.len(),
            "packages": doc.time_range.as_ref().map(|_| packages),
        }));
    } else {
        let mut line = format!(
            "\u{2713} sample chunk {index} of dataset {} verified: in the tree (root {}), signed, decrypted ({} bytes)",
            doc.topic,
            doc.merkle_root,
            plaintext.len()
        );
        if doc.time_range.is_some() {
            line.push_str(&format!(
                ", {packages} packages from {} in the time range",
                doc.machine_did
            ));
        }
        out.say(line);
    }
    Ok(())
}
