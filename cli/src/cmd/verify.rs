//! `peaqos stream verify`: the reference's chain checks plus the ones it misses.

use serde_json::json;
use stream::chain::{verify_chain, ChainFailure, VerifyOptions};
use stream::layout;

use crate::cli::VerifyArgs;
use crate::output::{input, print_json, CliError, CliResult, Output};

pub fn run(args: VerifyArgs, out: &Output) -> CliResult {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| args.chunk_dir.clone());
    let expect_public_key = args
        .expect_public_key
        .as_deref()
        .map(|k| super::parse_ed25519_public("--expect-public-key", k))
        .transpose()?;
    let recipient = args
        .recipient_key_file
        .as_deref()
        .map(|p| super::read_box_key(p, "an X25519 private key"))
        .transpose()?;
    let chunks = layout::read_chunks(&args.chunk_dir).map_err(input)?;
    let manifest = layout::read_manifest(&args.chunk_dir).map_err(input)?;
    if manifest.is_none() {
        out.say("warning: no manifest.json: a dropped last chunk cannot be detected");
    }
    if let (Some(expected), Some(m)) = (args.expect_did.as_deref(), manifest.as_ref()) {
        if m.machine_did != expected {
            return fail(
                &args,
                format!(
                    "manifest: machineDid {:?} is not the expected {expected:?}",
                    m.machine_did
                ),
                "expectedDid",
                None,
            );
        }
    }
    let options = VerifyOptions {
        expect_did: args.expect_did.as_deref(),
        expect_public_key,
        expect_total_chunks: manifest.as_ref().map(|m| m.total_chunks),
        recipient: recipient.as_ref(),
        expect_source_hash: manifest.as_ref().map(|m| m.source_hash.as_str()),
    };
    let bar = out.progress(chunks.len() as u64, false, !args.json);
    let result = verify_chain(
        &chunks,
        |index| {
            bar.inc(1);
            layout::read_ciphertext(&data_dir, index).map_err(|e| e.to_string())
        },
        &options,
        |_, _| {},
    );
    bar.finish_and_clear();
    match result {
        Ok(report) => {
            let decrypted = report.source_hash.is_some();
            if args.json {
                print_json(&json!({
                    "valid": true,
                    "totalChunks": report.total_chunks,
                    "decrypted": decrypted,
                    "sourceHash": report.source_hash,
                    "plaintextBytes": report.plaintext_bytes,
                    "signerPinned": options.expect_public_key.is_some(),
                }));
            } else {
                let mut line = format!("\u{2713} {} chunks valid", report.total_chunks);
                if decrypted {
                    line.push_str(", decrypted, sourceHash matches");
                }
                if options.expect_public_key.is_none() {
                    line.push_str(
                        " (signer not pinned: pass --expect-public-key to reject re-signed chains)",
                    );
                }
                out.say(line);
            }
            Ok(())
        }
        Err(failure) => {
            let check = failure.check();
            let index = failure.index();
            fail(&args, failure_line(&failure), check, index)
        }
    }
}

fn failure_line(failure: &ChainFailure) -> String {
    format!("verification failed [{}]: {failure}", failure.check())
}

fn fail(args: &VerifyArgs, line: String, check: &str, index: Option<u64>) -> CliResult {
    if args.json {
        print_json(&json!({"valid": false, "check": check, "index": index, "reason": line}));
    }
    Err(CliError::Check(line))
}
