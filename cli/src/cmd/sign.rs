//! `peaqos stream sign`: captured messages → field rules → signed data packages.
//!
//! Lines are read in bounded blocks; each block is cut into batches signed in parallel
//! (one field-encryption and one signing call per batch, as keyd will want), and written
//! in input order. The output appears only when the run succeeds (atomic rename).

use std::io::{BufRead, BufWriter, Write};

use rayon::prelude::*;
use serde_json::json;
use stream::keys::IdentityKey;
use stream::local::{LocalFieldEncryptor, LocalPackageSigner};
use stream::rules::load_map_file;
use stream::sign::{sign_batch, UnsignedMessage};

use crate::cli::SignArgs;
use crate::output::{check, input, CliError, CliResult, Output};

const BATCH: usize = 256;

/// An input line number and its output line, or why it has none.
type LineResult = (usize, Result<String, String>);

pub fn run(args: SignArgs, out: &Output) -> CliResult {
    let rules = load_map_file(&args.map).map_err(input)?;
    let identity = IdentityKey::from_secret(&super::read_key(
        &args.signing_key_file,
        "a secp256k1 private key",
    )?)
    .map_err(input)?;
    let signer = LocalPackageSigner::with_did(identity, &args.did)
        .map_err(|e| input(format!("--did: {e}")))?;
    let encryptor =
        LocalFieldEncryptor::new(&super::read_key(&args.field_key_file, "an AES-256 key")?);
    if args.key_id.trim().is_empty() {
        return Err(CliError::Input("--key-id must not be empty".into()));
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(check)?;

    let source = std::fs::File::open(&args.input)
        .map_err(|e| input(format!("cannot open --input {}: {e}", args.input.display())))?;
    let dir = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let temp_path = dir.join(format!(".peaqos-sign-{}.tmp", std::process::id()));
    let temp = std::fs::File::create(&temp_path)
        .map_err(|e| input(format!("cannot write in {}: {e}", dir.display())))?;
    let guard = RemoveOnDrop(Some(temp_path.clone()));
    let mut writer = BufWriter::with_capacity(1 << 20, temp);

    let mut lines = std::io::BufReader::with_capacity(1 << 20, source)
        .lines()
        .enumerate();
    let (mut signed, mut failed) = (0usize, 0usize);
    loop {
        // A block: enough batches to keep every worker busy, bounded in memory. Lines are
        // parsed in the workers, not here: this loop only reads.
        let mut block: Vec<(usize, String)> = Vec::with_capacity(BATCH * jobs * 4);
        for (i, line) in lines.by_ref() {
            let number = i + 1;
            let line =
                line.map_err(|e| input(format!("{} line {number}: {e}", args.input.display())))?;
            if line.trim().is_empty() {
                continue;
            }
            block.push((number, line));
            if block.len() == BATCH * jobs * 4 {
                break;
            }
        }
        if block.is_empty() {
            break;
        }
        let results: Vec<Vec<LineResult>> = pool.install(|| {
            block
                .par_chunks(BATCH)
                .map(|batch| sign_lines(batch, &rules, &signer, &encryptor, &args.key_id))
                .collect::<Result<Vec<_>, CliError>>()
        })?;
        for (number, result) in results.into_iter().flatten() {
            let text = match result {
                Ok(text) => {
                    signed += 1;
                    text
                }
                Err(reason) if args.keep_going => {
                    failed += 1;
                    out.say(format!("line {number}: {reason}"));
                    json!({"line": number, "error": reason}).to_string()
                }
                Err(reason) => {
                    return Err(CliError::Check(format!(
                        "{} line {number}: {reason}",
                        args.input.display()
                    )));
                }
            };
            writer
                .write_all(text.as_bytes())
                .and_then(|()| writer.write_all(b"\n"))
                .map_err(|e| input(format!("writing output: {e}")))?;
        }
    }
    let file = writer
        .into_inner()
        .map_err(|e| input(format!("writing output: {}", e.error())))?;
    file.sync_all()
        .map_err(|e| input(format!("writing output: {e}")))?;
    std::fs::rename(&temp_path, &args.output)
        .map_err(|e| input(format!("cannot write {}: {e}", args.output.display())))?;
    drop(guard);
    out.say(format!(
        "Signed {signed} packages to {}{}",
        args.output.display(),
        if failed > 0 {
            format!(", {failed} lines failed")
        } else {
            String::new()
        }
    ));
    if failed > 0 {
        return Err(CliError::Check(format!(
            "{failed} lines could not be signed (see the \"error\" lines in the output)"
        )));
    }
    Ok(())
}

fn sign_lines(
    lines: &[(usize, String)],
    rules: &stream::rules::TopicRules,
    signer: &LocalPackageSigner,
    encryptor: &LocalFieldEncryptor,
    key_id: &str,
) -> Result<Vec<LineResult>, CliError> {
    // Parsed messages move into the batch; a line that does not parse keeps its error.
    let mut messages = Vec::with_capacity(lines.len());
    let mut parse_errors: Vec<Option<String>> = Vec::with_capacity(lines.len());
    for (_, line) in lines {
        match UnsignedMessage::from_json(line) {
            Ok(message) => {
                messages.push(message);
                parse_errors.push(None);
            }
            Err(e) => parse_errors.push(Some(e.to_string())),
        }
    }
    let mut packages = sign_batch(&messages, |t| rules.for_topic(t), signer, encryptor, key_id)
        .map_err(check)?
        .into_iter();
    Ok(lines
        .iter()
        .zip(parse_errors)
        .map(|((number, _), parse_error)| {
            let result = match parse_error {
                Some(e) => Err(e),
                None => match packages.next() {
                    Some(Ok(package)) => package.to_json_line().map_err(|e| e.to_string()),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("no result from the signer".to_string()),
                },
            };
            (*number, result)
        })
        .collect())
}

/// Removes the temporary output unless the run got as far as renaming it.
struct RemoveOnDrop(Option<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}
