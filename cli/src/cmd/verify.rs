//! `peaqos stream verify`: the reference's chain checks plus the ones it misses.

use serde_json::json;
use stream::chain::{verify_chain, ChainFailure, VerifyOptions};
use stream::layout;

use store::fetch::Fetch;

use crate::cli::VerifyArgs;
use crate::output::{input, print_json, CliError, CliResult, Output};
use crate::s3::LocalChain;

pub fn run(args: VerifyArgs, out: &Output) -> CliResult {
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
    let keys = Pinned {
        expect_public_key,
        recipient: recipient.as_ref(),
    };
    // s3://bucket/prefix: a private local copy (ciphertexts too unless --data-dir says
    // where they are).
    let data = args
        .data_dir
        .as_deref()
        .map(|d| LocalChain::open("--data-dir", d, Fetch::Everything, &args.s3_options))
        .transpose()?;
    let what = if data.is_some() {
        Fetch::Envelopes
    } else {
        Fetch::Everything
    };
    let chain = LocalChain::open("--chunk-dir", &args.chunk_dir, what, &args.s3_options)?;
    let chunk_dir = chain.dir();
    let chains = published_below(chunk_dir);
    if data.is_some() || chains.is_empty() {
        let data_dir = data.as_ref().map_or(chunk_dir, |d| d.dir());
        return match verify_one(&args, &keys, chunk_dir, data_dir, out)? {
            Ok(report) => {
                if args.json {
                    print_json(&report);
                } else {
                    out.say(summary(&report, None));
                }
                Ok(())
            }
            Err(failure) => fail(&args, failure),
        };
    }
    // A directory of published directories (the edge agent's output: one per topic).
    let mut reports = serde_json::Map::new();
    let mut first_failure = None;
    for dir in &chains {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match verify_one(&args, &keys, dir, dir, out)? {
            Ok(report) => {
                if !args.json {
                    out.say(summary(&report, Some(&name)));
                }
                reports.insert(name, report);
            }
            Err(failure) => {
                if !args.json {
                    out.say(format!("{name}: {}", failure.0));
                }
                reports.insert(
                    name.clone(),
                    json!({"valid": false, "check": failure.1, "index": failure.2, "reason": failure.0}),
                );
                first_failure.get_or_insert((
                    format!("{name}: {}", failure.0),
                    failure.1,
                    failure.2,
                ));
            }
        }
    }
    if args.json {
        print_json(&json!({"valid": first_failure.is_none(), "chains": reports}));
    }
    match first_failure {
        None => Ok(()),
        Some((line, _, _)) => Err(CliError::Check(line)),
    }
}

struct Pinned<'a> {
    expect_public_key: Option<[u8; 32]>,
    recipient: Option<&'a stream::keys::BoxKey>,
}

/// A failed check: the line to print, the check's name, the chunk index.
type Failure = (String, &'static str, Option<u64>);

/// Subdirectories of `dir` holding a published chain, sorted; none if `dir` holds one itself.
fn published_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    if dir.join("manifest.json").exists() {
        return Vec::new();
    }
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("manifest.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn summary(report: &serde_json::Value, name: Option<&str>) -> String {
    let mut line = match name {
        Some(name) => format!("{name}: "),
        None => String::new(),
    };
    line.push_str(&format!("\u{2713} {} chunks valid", report["totalChunks"]));
    if report["decrypted"] == json!(true) {
        line.push_str(", decrypted, sourceHash matches");
    }
    if report["signerPinned"] != json!(true) {
        line.push_str(" (signer not pinned: pass --expect-public-key to reject re-signed chains)");
    }
    line
}

/// Verifies one published directory: the report as JSON, or the failed check.
fn verify_one(
    args: &VerifyArgs,
    keys: &Pinned<'_>,
    chunk_dir: &std::path::Path,
    data_dir: &std::path::Path,
    out: &Output,
) -> Result<Result<serde_json::Value, Failure>, CliError> {
    let chunks = layout::read_chunks(chunk_dir).map_err(input)?;
    let manifest = layout::read_manifest(chunk_dir).map_err(input)?;
    if manifest.is_none() {
        out.say("warning: no manifest.json: a dropped last chunk cannot be detected");
    }
    if let (Some(expected), Some(m)) = (args.expect_did.as_deref(), manifest.as_ref()) {
        if m.machine_did != expected {
            return Ok(Err((
                format!(
                    "manifest: machineDid {:?} is not the expected {expected:?}",
                    m.machine_did
                ),
                "expectedDid",
                None,
            )));
        }
    }
    let options = VerifyOptions {
        expect_did: args.expect_did.as_deref(),
        expect_public_key: keys.expect_public_key,
        expect_total_chunks: manifest.as_ref().map(|m| m.total_chunks),
        recipient: keys.recipient,
        expect_source_hash: manifest.as_ref().map(|m| m.source_hash.as_str()),
    };
    let bar = out.progress(chunks.len() as u64, false, !args.json);
    let result = verify_chain(
        &chunks,
        |index| {
            bar.inc(1);
            layout::read_ciphertext(data_dir, index).map_err(|e| e.to_string())
        },
        &options,
        |_, _| {},
    );
    bar.finish_and_clear();
    Ok(match result {
        Ok(report) => Ok(json!({
            "valid": true,
            "totalChunks": report.total_chunks,
            "decrypted": report.source_hash.is_some(),
            "sourceHash": report.source_hash,
            "plaintextBytes": report.plaintext_bytes,
            "signerPinned": options.expect_public_key.is_some(),
        })),
        Err(failure) => Err((failure_line(&failure), failure.check(), failure.index())),
    })
}

fn failure_line(failure: &ChainFailure) -> String {
    format!("verification failed [{}]: {failure}", failure.check())
}

fn fail(args: &VerifyArgs, (line, check, index): Failure) -> CliResult {
    if args.json {
        print_json(&json!({"valid": false, "check": check, "index": index, "reason": line}));
    }
    Err(CliError::Check(line))
}
