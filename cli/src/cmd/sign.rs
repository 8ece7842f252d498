//! `peaqos stream sign`: captured messages → field rules → signed data packages.
//!
//! Lines are read in bounded blocks; each block is cut into batches signed in parallel
//! (one field-encryption and one signing call per batch, as keyd will want), and written
//! in input order. The output appears only when the run succeeds (atomic rename).

use std::io::{BufRead, BufWriter, Write};

use rayon::prelude::*;
use serde_json::json;
use stream::fsio::{AtomicFile, Durability};
use stream::keys::IdentityKey;
use stream::local::{LocalFieldEncryptor, LocalPackageSigner};
use stream::rules::load_map_file;
use stream::sign::{sign_batch, UnsignedMessage};
use stream::signer::{FieldEncryptor, PackageSigner};

use crate::cli::SignArgs;
use crate::output::{check, input, CliError, CliResult, Output};

const BATCH: usize = 256;

/// An input line number and its output line, or why it has none.
type LineResult = (usize, Result<String, String>);

pub fn run(args: SignArgs, out: &Output) -> CliResult {
    let rules = load_map_file(&args.map).map_err(input)?;
    let keyd;
    let local_signer;
    let local_encryptor;
    let (signer, encryptor, key_id, jobs): (
        &dyn PackageSigner,
        &dyn FieldEncryptor,
        String,
        usize,
    ) = match &args.keyd {
        Some(socket) => {
            if args.signing_key_file.is_some() || args.field_key_file.is_some() {
                return Err(CliError::Input("--signing-key-file and --field-key-file cannot be used with --keyd: the keys are keyd's".into()));
            }
            keyd = super::connect_keyd(socket)?;
            if let Some(did) = args.did.as_deref().filter(|d| *d != keyd.did()) {
                return Err(CliError::Input(format!(
                    "--did {did} is not keyd's DID {}",
                    keyd.did()
                )));
            }
            let key_id = args
                .key_id
                .clone()
                .unwrap_or_else(|| keyd.identity().identity_key_id.clone());
            // keyd's sequence guard needs the batches in input order: one at a time.
            (&keyd, &keyd, key_id, 1)
        }
        None => {
            let identity_file = super::required(&args.signing_key_file, "--signing-key-file")?;
            let identity = IdentityKey::from_secret(&super::read_key(
                &identity_file,
                "a secp256k1 private key",
            )?)
            .map_err(input)?;
            let did = super::required(&args.did, "--did")?;
            local_signer = LocalPackageSigner::with_did(identity, &did)
                .map_err(|e| input(format!("--did: {e}")))?;
            let field_file = super::required(&args.field_key_file, "--field-key-file")?;
            local_encryptor =
                LocalFieldEncryptor::new(&super::read_key(&field_file, "an AES-256 key")?);
            let key_id = super::required(&args.key_id, "--key-id")?;
            let jobs = args
                .jobs
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
                .max(1);
            (&local_signer, &local_encryptor, key_id, jobs)
        }
    };
    if key_id.trim().is_empty() {
        return Err(CliError::Input("--key-id must not be empty".into()));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(check)?;

    let source = std::fs::File::open(&args.input)
        .map_err(|e| input(format!("cannot open --input {}: {e}", args.input.display())))?;
    let temp = AtomicFile::create(&args.output, Durability::Synced)
        .map_err(|e| input(format!("cannot write {}: {e}", args.output.display())))?;
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
        let sign =
            |batch: &[(usize, String)]| sign_lines(batch, &rules, signer, encryptor, &key_id);
        let results: Vec<Vec<LineResult>> = if jobs == 1 {
            // In input order, one batch after the other (what keyd's sequence guard needs).
            block
                .chunks(BATCH)
                .map(sign)
                .collect::<Result<_, CliError>>()?
        } else {
            pool.install(|| {
                block
                    .par_chunks(BATCH)
                    .map(sign)
                    .collect::<Result<_, CliError>>()
            })?
        };
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
    writer
        .into_inner()
        .map_err(|e| input(format!("writing output: {}", e.error())))?
        .commit()
        .map_err(|e| input(format!("cannot write {}: {e}", args.output.display())))?;
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
    signer: &dyn PackageSigner,
    encryptor: &dyn FieldEncryptor,
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
                    Some(Ok(line)) => Ok(line.into_string()),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("no result from the signer".to_string()),
                },
            };
            (*number, result)
        })
        .collect())
}
