//! `peaqos dataset build`: a signed dataset over a range of a published chain.

use std::collections::BTreeMap;
use std::path::Path;

use stream::chain::{self, ChunkEnvelope};
use stream::dataset::document::instant;
use stream::dataset::index::{read_index, span_of_lines, ChunkIndexEntry, PackageSpan};
use stream::dataset::DatasetBuilder;
use stream::keys::{BoxKey, IdentityKey};
use stream::layout;
use stream::signer::DatasetSigner;

use super::read::for_each_envelope;
use super::{failed, read_envelope, read_file, write_file};
use crate::cli::DatasetBuildArgs;
use crate::output::{check, input, print_json, CliError, CliResult, Output};
use crate::s3::LocalChain;
use store::fetch::Fetch;

/// Where the packages' times come from.
enum Spans {
    /// The agent's `index.jsonl`.
    Index(BTreeMap<u64, ChunkIndexEntry>),
    /// Decrypting each chunk as a recipient.
    Decrypt(BoxKey),
    /// Nowhere: the dataset has no `timeRange`.
    None,
}

impl Spans {
    fn of(&self, dir: &Path, chunk: &ChunkEnvelope) -> Result<Option<PackageSpan>, CliError> {
        let index = chunk.index;
        match self {
            Spans::None => Ok(None),
            Spans::Index(entries) => match entries.get(&index) {
                None => Ok(None),
                Some(entry) if entry.chunk_id != chunk.chunk_id => Err(check(format!(
                    "{}: the line of chunk {index} names chunkId {}, but chunk-{index}.json is {}",
                    dir.join(stream::dataset::index::INDEX_FILE).display(),
                    entry.chunk_id,
                    chunk.chunk_id
                ))),
                Some(entry) => {
                    let mut span = PackageSpan::default();
                    span.add_entry(entry)
                        .map_err(|e| check(format!("index.jsonl, chunk {index}: {e}")))?;
                    Ok(Some(span))
                }
            },
            Spans::Decrypt(key) => {
                let data = layout::read_ciphertext(dir, index)
                    .map_err(input)?
                    .ok_or_else(|| input(format!("chunk {index}: chunk-{index}.bin is missing (needed to read the packages' times)")))?;
                let entry = chain::recipient_for(chunk, &key.public_key()).ok_or_else(|| {
                    check(format!(
                        "chunk {index}: no key recipient is sealed to --recipient-key-file"
                    ))
                })?;
                let plaintext = chain::decrypt_chunk(chunk, entry, key, &data)
                    .map_err(|e| check(format!("chunk {index}: {e}")))?;
                // A chunk that is not whole package lines (a file's bytes) has no span.
                Ok(span_of_lines(&plaintext).ok())
            }
        }
    }
}

/// The chunk indices present in `dir`, sorted; at least one.
fn indices(dir: &Path) -> Result<Vec<u64>, CliError> {
    let found = layout::envelope_indices(dir).map_err(|e| input(format!("--chunk-dir: {e}")))?;
    if found.is_empty() {
        return Err(input(format!(
            "--chunk-dir {}: no chunk-*.json",
            dir.display()
        )));
    }
    Ok(found)
}

fn signer(args: &DatasetBuildArgs) -> Result<Box<dyn DatasetSigner>, CliError> {
    match &args.keyd {
        Some(socket) => {
            if args.signing_key_file.is_some() || args.key_id.is_some() {
                return Err(CliError::Input(
                    "--signing-key-file and --key-id cannot be used with --keyd: keyd signs with the machine's identity key".into(),
                ));
            }
            let client = super::super::connect_keyd(socket)?;
            if let Some(did) = &args.did {
                if !did.eq_ignore_ascii_case(stream::signer::PackageSigner::did(&client)) {
                    return Err(CliError::Input(format!(
                        "--did {did} is not keyd's DID {}",
                        stream::signer::PackageSigner::did(&client)
                    )));
                }
            }
            Ok(Box::new(client))
        }
        None => {
            let file = super::super::required(&args.signing_key_file, "--signing-key-file")?;
            let did = super::super::required(&args.did, "--did")?;
            let key = IdentityKey::from_secret(&super::super::read_key(
                &file,
                "a secp256k1 private key",
            )?)
            .map_err(input)?;
            let mut local = stream::local::LocalPackageSigner::with_did(key, &did)
                .map_err(|e| input(format!("--did: {e}")))?;
            if let Some(id) = &args.key_id {
                local = local.with_key_id(id);
            }
            Ok(Box::new(local))
        }
    }
}

pub fn run(args: DatasetBuildArgs, out: &Output) -> CliResult {
    if args.topic.trim().is_empty() {
        return Err(CliError::Input("--topic must not be empty".into()));
    }
    // A chain in S3: its envelopes (and, to read the packages' times, its ciphertexts)
    // in a private temporary copy.
    let what = if args.recipient_key_file.is_some() {
        Fetch::Everything
    } else {
        Fetch::Envelopes
    };
    let chain = LocalChain::open("--chunk-dir", &args.chunk_dir, what, &args.s3_options)?;
    let dir = chain.dir();
    let terms = args
        .terms
        .as_deref()
        .map(|path| {
            let bytes = read_file(path, "--terms")?;
            let value = stream::json::parse_slice(&bytes)
                .map_err(|e| input(format!("--terms {}: {e}", path.display())))?;
            if !value.is_object() {
                return Err(input(format!(
                    "--terms {}: must be a JSON object",
                    path.display()
                )));
            }
            Ok(value)
        })
        .transpose()?;
    let spans = match (&args.recipient_key_file, read_index(dir).map_err(input)?) {
        (Some(file), _) => {
            Spans::Decrypt(super::super::read_box_key(file, "an X25519 private key")?)
        }
        (None, Some(entries)) => Spans::Index(entries),
        (None, None) => Spans::None,
    };
    let present = indices(dir)?;
    let (from, to) = match (&args.from_time, &args.to_time) {
        (Some(t1), Some(t2)) => by_time(dir, &spans, &present, t1, t2)?,
        _ => {
            let from = args.from_index.unwrap_or(0);
            let to = args.to_index.unwrap_or(*present.last().unwrap_or(&0));
            if from > to {
                return Err(CliError::Input(format!(
                    "--from-index {from} is after --to-index {to}"
                )));
            }
            (from, to)
        }
    };
    let signer = signer(&args)?;
    let did = stream::signer::PackageSigner::did(signer.as_ref()).to_string();
    let mut builder = DatasetBuilder::new(from, &did);
    let bar = out.progress((to - from).saturating_add(1), false, !args.json);
    for_each_envelope(dir, from, to, |index, checked| {
        let (chunk, verdict) = checked.ok_or_else(|| {
            input(format!(
                "chunk {index}: {} is missing",
                dir.join(format!("chunk-{index}.json")).display()
            ))
        })?;
        let span = spans.of(dir, &chunk)?;
        builder
            .push_checked(&chunk, span.as_ref(), &verdict)
            .map_err(|f| failed(false, "dataset build", f))?;
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    let mut doc = builder
        .finish(&args.topic, layout::utc_now_iso8601())
        .map_err(|f| failed(false, "dataset build", f))?;
    doc.title = args.title.clone();
    doc.description = args.description.clone();
    doc.terms = terms;
    doc.check_shape().map_err(input)?;
    let bytes = doc.signing_bytes().map_err(input)?;
    let signature = signer.sign_dataset(&bytes).map_err(check)?;
    let doc = doc.signed(signer.key_id(), &signature);
    doc.verify_signature().map_err(check)?;
    let text = doc.to_file_text().map_err(input)?;
    write_file(&args.output, text.as_bytes())?;
    if args.json {
        print_json(&serde_json::to_value(&doc).map_err(input)?);
    } else {
        out.say(format!(
            "Dataset of {} chunks ({}..={}) of {} written to {}",
            doc.tree_size,
            doc.first_index,
            doc.last_index,
            doc.topic,
            args.output.display()
        ));
        out.say(format!("  Merkle root:  {}", doc.merkle_root));
        out.say(format!("  Machine DID:  {}", doc.machine_did));
        match &doc.time_range {
            Some(range) => out.say(format!("  Time range:   {} .. {}", range.from, range.to)),
            None => out.say("  Time range:   none (no package times: not packages, or no index.jsonl or --recipient-key-file)"),
        }
    }
    Ok(())
}

/// The contiguous chunks whose packages all lie within `[t1, t2]`.
fn by_time(
    dir: &Path,
    spans: &Spans,
    present: &[u64],
    t1: &str,
    t2: &str,
) -> Result<(u64, u64), CliError> {
    let (from, to) = (
        instant(t1).ok_or_else(|| input(format!("--from-time {t1:?} is not an RFC 3339 time")))?,
        instant(t2).ok_or_else(|| input(format!("--to-time {t2:?} is not an RFC 3339 time")))?,
    );
    if matches!(spans, Spans::None) {
        return Err(CliError::Input(format!(
            "--from-time/--to-time need the packages' times: {} has no {}, and no --recipient-key-file was given",
            dir.display(),
            stream::dataset::index::INDEX_FILE
        )));
    }
    let mut inside: Vec<u64> = Vec::new();
    for &index in present {
        let Some(chunk) = read_envelope(dir, index)? else {
            continue;
        };
        let Some(range) = spans.of(dir, &chunk)?.and_then(|s| s.time_range()) else {
            continue;
        };
        let (Some(first), Some(last)) = (instant(&range.from), instant(&range.to)) else {
            continue;
        };
        if first >= from && last <= to {
            inside.push(index);
        }
    }
    let (Some(&first), Some(&last)) = (inside.first(), inside.last()) else {
        return Err(check(format!(
            "no chunk has all its packages between {t1} and {t2}"
        )));
    };
    if last - first + 1 != inside.len() as u64 {
        return Err(check(format!(
            "the chunks with packages between {t1} and {t2} are not contiguous ({} of chunks {first}..={last}): a dataset is one range",
            inside.len()
        )));
    }
    Ok((first, last))
}
