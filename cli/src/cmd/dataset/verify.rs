//! `peaqos dataset verify`: the document's signature, every chunk of its range and the root;
//! with the buyer's access, every package.

use serde_json::json;
use stream::access::read_access_dir;
use stream::chain;
use stream::dataset::{self, DatasetFailure, RangeCheck};
use stream::layout;

use super::{failed, missing, read_document, read_envelope};
use crate::cli::DatasetVerifyArgs;
use crate::output::{input, print_json, CliResult, Output};
use crate::s3::LocalChain;
use store::fetch::Fetch;

pub fn run(args: DatasetVerifyArgs, out: &Output) -> CliResult {
    let fail = |f: DatasetFailure| failed(args.json, "dataset verification", f);
    let buyer = match (&args.access_dir, &args.buyer_key_file, &args.buyer_id) {
        (Some(access), Some(key), Some(id)) => Some((
            read_access_dir(access, id.trim()).map_err(input)?,
            super::super::read_box_key(key, "an X25519 private key")?,
        )),
        _ => None,
    };
    let doc = read_document(&args.dataset).map_err(fail)?;
    // Chains in S3: private temporary copies of what the checks read.
    let data = args
        .data_dir
        .as_deref()
        .map(|d| LocalChain::open("--data-dir", d, Fetch::Everything, &args.s3_options))
        .transpose()?;
    let what = if args.envelopes_only || data.is_some() {
        Fetch::Envelopes
    } else {
        Fetch::Everything
    };
    let chain = LocalChain::open("--chunk-dir", &args.chunk_dir, what, &args.s3_options)?;
    let chunk_dir = chain.dir();
    let data_dir = data.as_ref().map_or(chunk_dir, |d| d.dir());
    let options = dataset::chain_options(&doc).map_err(fail)?;
    let mut check = RangeCheck::new(&doc, &options);
    let mut packages = 0u64;
    let bar = out.progress(doc.tree_size, false, !args.json);
    if args.envelopes_only {
        super::read::for_each_envelope(
            chunk_dir,
            doc.first_index,
            doc.last_index,
            |index, checked| {
                let (chunk, verdict) = checked.ok_or_else(|| fail(missing(chunk_dir, index)))?;
                check.envelope_checked(&chunk, &verdict).map_err(fail)?;
                bar.inc(1);
                Ok(())
            },
        )?;
    }
    for index in (doc.first_index..=doc.last_index).filter(|_| !args.envelopes_only) {
        let chunk =
            read_envelope(chunk_dir, index)?.ok_or_else(|| fail(missing(chunk_dir, index)))?;
        let mut data = None;
        let mut read = |i: u64| {
            let bytes = layout::read_ciphertext(data_dir, i).map_err(|e| e.to_string())?;
            data.clone_from(&bytes);
            Ok(bytes)
        };
        check.chunk(&chunk, &mut read).map_err(fail)?;
        if let (Some((access, key)), Some(data)) = (&buyer, data) {
            let entry = access.get(&chunk.chunk_id).ok_or_else(|| {
                fail(DatasetFailure {
                    check: "access",
                    index: Some(index),
                    message: format!(
                        "chunk {index}: no buyer access for {} ({})",
                        args.buyer_id.as_deref().unwrap_or(""),
                        chunk.chunk_id
                    ),
                })
            })?;
            let plaintext = chain::decrypt_chunk(&chunk, entry, key, &data).map_err(|e| {
                fail(DatasetFailure::from(chain::ChainFailure::Decrypt {
                    index,
                    source: e,
                }))
            })?;
            packages += dataset::check_packages(&doc, index, &plaintext).map_err(fail)?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    check.finish().map_err(fail)?;
    let decrypted = buyer.is_some() && !args.envelopes_only;
    if args.json {
        print_json(&json!({
            "valid": true,
            "topic": doc.topic,
            "machineDid": doc.machine_did,
            "firstIndex": doc.first_index,
            "lastIndex": doc.last_index,
            "treeSize": doc.tree_size,
            "merkleRoot": doc.merkle_root,
            "ciphertextsChecked": !args.envelopes_only,
            "decrypted": decrypted,
            "packages": if decrypted && doc.time_range.is_some() { Some(packages) } else { None },
        }));
    } else {
        let mut line = format!(
            "\u{2713} dataset {} valid: {} chunks ({}..={}), root {}, signed by {}",
            doc.topic,
            doc.tree_size,
            doc.first_index,
            doc.last_index,
            doc.merkle_root,
            doc.machine_did
        );
        if args.envelopes_only {
            line.push_str(" (envelopes only)");
        }
        if decrypted && doc.time_range.is_some() {
            line.push_str(&format!(
                "; {packages} packages verified, all in the time range"
            ));
        } else if decrypted {
            line.push_str("; every chunk decrypted");
        }
        out.say(line);
    }
    Ok(())
}
