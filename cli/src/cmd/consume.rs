//! `peaqos stream consume`: verify, decrypt and reassemble a purchased chain.
//!
//! Beyond the reference: the manifest's `totalChunks` and `sourceHash` are checked when a
//! manifest is present, the signer can be pinned, and the output is written atomically
//! (a failed run leaves no partial file).

use std::io::Write;

use serde_json::json;
use sha2::{Digest, Sha256};
use stream::access::read_access_dir;
use stream::chain::{self, verify_chain, VerifyOptions};
use stream::fsio::{AtomicFile, Durability};
use stream::hexenc;
use stream::layout;

use crate::cli::ConsumeArgs;
use crate::output::{check, input, print_json, CliError, CliResult, Output};

pub fn run(args: ConsumeArgs, out: &Output) -> CliResult {
    if args.download_url.is_some() || args.work_dir.is_some() || args.keep_files {
        return Err(CliError::Input(
            "--download-url is not supported by this build; download the package and pass --chunk-dir, --access-dir and --data-dir".into(),
        ));
    }
    let need =
        |dir: &Option<std::path::PathBuf>, flag: &str| -> Result<std::path::PathBuf, CliError> {
            let dir = dir
                .clone()
                .ok_or_else(|| CliError::Input(format!("{flag} is required")))?;
            if !dir.is_dir() {
                return Err(CliError::Input(format!(
                    "{flag} directory does not exist: {}",
                    dir.display()
                )));
            }
            Ok(dir)
        };
    let chunk_dir = need(&args.chunk_dir, "--chunk-dir")?;
    let access_dir = need(&args.access_dir, "--access-dir")?;
    let data_dir = need(&args.data_dir, "--data-dir")?;
    let buyer_id = args.buyer_id.trim();
    if buyer_id.is_empty() {
        return Err(CliError::Input("--buyer-id must not be empty".into()));
    }
    if args.output.is_dir() {
        return Err(CliError::Input(format!(
            "--output must be a file path, not a directory: {}",
            args.output.display()
        )));
    }
    let buyer_key = super::read_box_key(&args.buyer_private_key_file, "an X25519 private key")?;
    let expect_public_key = args
        .expect_public_key
        .as_deref()
        .map(|k| super::parse_ed25519_public("--expect-public-key", k))
        .transpose()?;

    let chunks = layout::read_chunks(&chunk_dir).map_err(input)?;
    let access = read_access_dir(&access_dir, buyer_id).map_err(input)?;
    let manifest = layout::read_manifest(&chunk_dir).map_err(input)?;
    let read_bin =
        |index: u64| layout::read_ciphertext(&data_dir, index).map_err(|e| e.to_string());

    let verified = !args.skip_verify;
    if verified {
        let options = VerifyOptions {
            expect_did: args.expect_did.as_deref(),
            expect_public_key,
            expect_total_chunks: manifest.as_ref().map(|m| m.total_chunks),
            ..VerifyOptions::default()
        };
        let report = verify_chain(&chunks, read_bin, &options, |_, _| {})
            .map_err(|f| check(format!("chain verification failed: {f}")))?;
        if !args.json {
            out.say(format!(
                "Verifying chain... \u{2713} {} chunks valid.",
                report.total_chunks
            ));
        }
    }

    let parent = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| input(format!("cannot create {}: {e}", parent.display())))?;
    let mut temp = AtomicFile::create(&args.output, Durability::Synced)
        .map_err(|e| input(format!("cannot write {}: {e}", args.output.display())))?;
    let mut source = Sha256::new();
    let mut total_bytes = 0u64;
    let bar = out.progress(chunks.len() as u64, false, !args.json);
    for chunk in &chunks {
        let index = chunk.index;
        let entry = access.get(&chunk.chunk_id).ok_or_else(|| {
            check(format!(
                "chunk {index}: no buyer access for {} ({})",
                buyer_id, chunk.chunk_id
            ))
        })?;
        let data = read_bin(index).map_err(input)?.ok_or_else(|| {
            check(format!(
                "chunk {index}: missing encrypted data chunk-{index}.bin"
            ))
        })?;
        let plaintext = chain::decrypt_chunk(chunk, entry, &buyer_key, &data)
            .map_err(|e| check(format!("chunk {index}: {e}")))?;
        source.update(&plaintext);
        total_bytes += plaintext.len() as u64;
        temp.write_all(&plaintext)
            .map_err(|e| input(format!("writing {}: {e}", args.output.display())))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let source_hash = hexenc::digest_0x(&source.finalize());
    if let Some(manifest) = &manifest {
        if verified && manifest.source_hash != source_hash {
            return Err(check(format!(
                "sourceHash: the reassembled data hashes to {source_hash}, the manifest says {}",
                manifest.source_hash
            )));
        }
    }
    temp.commit()
        .map_err(|e| input(format!("cannot write {}: {e}", args.output.display())))?;

    let manifest_hash = manifest
        .as_ref()
        .map(|m| m.source_hash.clone())
        .unwrap_or_default();
    if args.json {
        print_json(&json!({
            "output": args.output.display().to_string(),
            "totalBytes": total_bytes,
            "chunkCount": chunks.len(),
            "sourceHash": manifest_hash,
            "buyerId": buyer_id,
            "verified": verified,
        }));
    } else {
        out.say("");
        out.say(format!(
            "Reassembled {total_bytes} bytes to {}",
            args.output.display()
        ));
        out.say("");
        out.say(format!("  Source Hash:  {manifest_hash}"));
        out.say(format!("  Chunks:       {}", chunks.len()));
        out.say(format!("  Buyer ID:     {buyer_id}"));
    }
    Ok(())
}
