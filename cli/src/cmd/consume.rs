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

use std::path::{Path, PathBuf};

use store::fetch::Fetch;

use crate::cli::ConsumeArgs;
use crate::output::{check, input, print_json, CliError, CliResult, Output};
use crate::s3::LocalChain;

pub fn run(args: ConsumeArgs, out: &Output) -> CliResult {
    // What can be checked here is checked before anything is downloaded.
    let buyer_id = args.buyer_id.trim().to_string();
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
    let keys = Keys {
        buyer_id: &buyer_id,
        buyer_key: &buyer_key,
        expect_public_key,
    };
    if let Some(url) = &args.download_url {
        return from_url(&args, url, &keys, out);
    }
    let need = |dir: &Option<PathBuf>, flag: &str| -> Result<PathBuf, CliError> {
        dir.clone()
            .ok_or_else(|| CliError::Input(format!("{flag} is required (or --download-url)")))
    };
    let chunks = LocalChain::open(
        "--chunk-dir",
        &need(&args.chunk_dir, "--chunk-dir")?,
        Fetch::Envelopes,
        &args.s3_options,
    )?;
    let data = LocalChain::open(
        "--data-dir",
        &need(&args.data_dir, "--data-dir")?,
        Fetch::Everything,
        &args.s3_options,
    )?;
    let access_dir = need(&args.access_dir, "--access-dir")?;
    for (dir, flag) in [
        (chunks.dir(), "--chunk-dir"),
        (data.dir(), "--data-dir"),
        (access_dir.as_path(), "--access-dir"),
    ] {
        if !dir.is_dir() {
            return Err(CliError::Input(format!(
                "{flag} directory does not exist: {}",
                dir.display()
            )));
        }
    }
    consume(&args, &keys, chunks.dir(), &access_dir, data.dir(), out)
}

/// The buyer and what it expects.
struct Keys<'a> {
    buyer_id: &'a str,
    buyer_key: &'a stream::keys::BoxKey,
    expect_public_key: Option<[u8; 32]>,
}

/// `--download-url`: the bundle into a work directory, then the same checks and decryption.
fn from_url(args: &ConsumeArgs, url: &str, keys: &Keys<'_>, out: &Output) -> CliResult {
    let parsed = reqwest::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| {
            CliError::Input("--download-url must start with http:// or https://".into())
        })?;
    // The bundle goes into a directory of its own, inside --work-dir or a temporary one:
    // nothing that was in --work-dir before is read, replaced or removed.
    let (work, created) = match &args.work_dir {
        Some(dir) => {
            let created = !dir.exists();
            std::fs::create_dir_all(dir)
                .map_err(|e| input(format!("cannot use --work-dir {}: {e}", dir.display())))?;
            (dir.clone(), created)
        }
        None => (std::env::temp_dir(), false),
    };
    let package = tempfile::Builder::new()
        .prefix("peaqos-package-")
        .tempdir_in(&work)
        .map_err(|e| input(format!("cannot use work directory {}: {e}", work.display())))?
        .keep();
    let outcome = (|| {
        out.say(format!(
            "Downloading release package from {}...",
            crate::deliver::web::redact(&parsed)
        ));
        let runtime = crate::s3::runtime()?;
        let client = crate::deliver::web::client()?;
        let sorted = runtime.block_on(crate::deliver::download::download_bundle(
            &client,
            &parsed,
            &package,
            &|line| out.say(line),
        ))?;
        consume(
            args,
            keys,
            &sorted.chunks,
            &sorted.access,
            &sorted.data,
            out,
        )
    })();
    match &outcome {
        Err(_) if !args.keep_files => out.say(format!(
            "Downloaded files preserved for debugging in: {}",
            package.display()
        )),
        Err(_) => {}
        Ok(()) if args.keep_files => {
            out.say(format!("Downloaded files kept in: {}", package.display()))
        }
        Ok(()) => {
            let inside = args
                .output
                .canonicalize()
                .ok()
                .zip(package.canonicalize().ok())
                .is_some_and(|(o, p)| o.starts_with(p));
            let removed = if inside {
                // The output is inside the package: every downloaded file goes, it stays.
                ["chunks", "data", "access"]
                    .iter()
                    .map(|d| package.join(d))
                    .filter(|d| !args.output.starts_with(d))
                    .try_for_each(std::fs::remove_dir_all)
            } else if created && args.work_dir.is_some() {
                std::fs::remove_dir_all(&work)
            } else {
                std::fs::remove_dir_all(&package)
            };
            if let Err(e) = removed {
                out.say(format!(
                    "warning: could not remove the downloaded files in {}: {e}",
                    package.display()
                ));
            }
        }
    }
    outcome
}

/// Verifies, decrypts and reassembles the chain in `chunk_dir` / `data_dir` with the access
/// files in `access_dir`.
fn consume(
    args: &ConsumeArgs,
    keys: &Keys<'_>,
    chunk_dir: &Path,
    access_dir: &Path,
    data_dir: &Path,
    out: &Output,
) -> CliResult {
    let buyer_id = keys.buyer_id;
    let buyer_key = keys.buyer_key;
    let expect_public_key = keys.expect_public_key;
    let chunks = layout::read_chunks(chunk_dir).map_err(input)?;
    let access = read_access_dir(access_dir, buyer_id).map_err(input)?;
    let manifest = layout::read_manifest(chunk_dir).map_err(input)?;
    let read_bin = |index: u64| layout::read_ciphertext(data_dir, index).map_err(|e| e.to_string());

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
        let plaintext = chain::decrypt_chunk(chunk, entry, buyer_key, &data)
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
