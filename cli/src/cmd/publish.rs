//! `peaqos stream publish`: chunk, encrypt and sign a file into a published directory.
//!
//! A bounded pipeline around the chain writer (`stream::chain::ChainWriter`): the reader
//! hands each chunk's plaintext to the writer for `sourceHash`, then to one sealing worker
//! per core; the writer thread links the sealed chunks in order and writes each to the
//! directory. A fixed pool of `4 × jobs` chunk buffers circulates reader → worker (encrypts
//! in place) → writer → reader, so memory is bounded by the chunk size, not the input size,
//! and nothing is allocated per chunk.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Mutex;

use crossbeam_channel::{bounded, unbounded};
use stream::chain::{seal_chunk, BuildError, ChainWriter, ChunkReader, DirOutput, SealedChunk};
use stream::keys::ChainKey;
use stream::layout::{self, Durability, Manifest};
use stream::local::{LocalChunkKeys, LocalChunkSigner, RecipientSpec};
use stream::signer::{ChunkHashSigner, ChunkKeySource};

use store::upload::{with_storage_ref, ChainUpload, StorageRefs};
use store::S3Path;
use stream::chain::{ChainOutput, ChunkEnvelope};
use stream::layout::LayoutError;

use crate::cli::PublishArgs;
use crate::output::{check, input, print_json, CliError, CliResult, Output};

pub fn run(args: PublishArgs, out: &Output) -> CliResult {
    // Parsed first: a malformed --s3 fails before any work.
    let s3_path = args
        .s3
        .as_deref()
        .map(|text| S3Path::parse("--s3", text).map_err(input))
        .transpose()?;
    if args.chunk_size == 0 {
        return Err(CliError::Input(
            "--chunk-size must be a positive integer".into(),
        ));
    }
    let keyd;
    let local_keys;
    let local_signer;
    let (keys, signer, machine_did): (&dyn ChunkKeySource, &dyn ChunkHashSigner, String) =
        match &args.keyd {
            Some(socket) => {
                keyd = super::connect_keyd(socket)?;
                for (given, flag) in [
                    (args.owner_public_key.is_some(), "--owner-public-key"),
                    (args.operator_public_key.is_some(), "--operator-public-key"),
                    (args.machine_public_key.is_some(), "--machine-public-key"),
                    (args.signing_key_file.is_some(), "--signing-key-file"),
                ] {
                    if given {
                        return Err(CliError::Input(format!("{flag} cannot be used with --keyd: keyd's own configuration names the keys")));
                    }
                }
                let did = keyd.identity().did.clone();
                if let Some(given) = args.machine_did.as_deref().filter(|d| *d != did) {
                    return Err(CliError::Input(format!(
                        "--machine-did {given} is not keyd's DID {did}"
                    )));
                }
                (&keyd, &keyd, did)
            }
            None => {
                let machine_did = super::required(&args.machine_did, "--machine-did")?;
                let machine_key_id = super::required(&args.machine_key_id, "--machine-key-id")?;
                if machine_did.trim().is_empty() {
                    return Err(CliError::Input("--machine-did must not be empty".into()));
                }
                if machine_key_id.trim().is_empty() {
                    return Err(CliError::Input("--machine-key-id must not be empty".into()));
                }
                let recipient = |id: &str,
                                 role: &str,
                                 value: &Option<String>,
                                 flag: &str|
                 -> Result<RecipientSpec, CliError> {
                    RecipientSpec::new(id, role, &super::required(value, flag)?)
                        .map_err(|e| input(format!("{flag}: {}", e.reason)))
                };
                local_keys = LocalChunkKeys::new(vec![
                    recipient(
                        "owner-1",
                        "owner",
                        &args.owner_public_key,
                        "--owner-public-key",
                    )?,
                    recipient(
                        "operator-1",
                        "operator",
                        &args.operator_public_key,
                        "--operator-public-key",
                    )?,
                    recipient(
                        "machine-1",
                        "machine",
                        &args.machine_public_key,
                        "--machine-public-key",
                    )?,
                ]);
                let signing_key_file =
                    super::required(&args.signing_key_file, "--signing-key-file")?;
                let chain_key = ChainKey::from_secret(&super::read_key(
                    &signing_key_file,
                    "an Ed25519 signing key",
                )?);
                local_signer =
                    LocalChunkSigner::new(chain_key, machine_did.clone(), machine_key_id);
                (&local_keys, &local_signer, machine_did)
            }
        };

    let file = File::open(&args.input)
        .map_err(|e| input(format!("cannot open --input {}: {e}", args.input.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| input(format!("{}: {e}", args.input.display())))?;
    if !meta.is_file() {
        return Err(input(format!(
            "--input {} is not a file",
            args.input.display()
        )));
    }
    let total_bytes = meta.len();
    let estimate = total_bytes.div_ceil(args.chunk_size as u64).max(1);
    out.say(format!(
        "Chunking {total_bytes} bytes into {estimate} chunks..."
    ));

    std::fs::create_dir_all(&args.output_dir)
        .map_err(|e| input(format!("cannot create {}: {e}", args.output_dir.display())))?;
    // A run that fails half way must never look complete: the manifest goes last.
    remove_if_present(&args.output_dir.join("manifest.json"))?;

    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let durability = if args.fsync {
        Durability::Synced
    } else {
        Durability::Atomic
    };
    let bar = out.progress(total_bytes, true, !args.json);
    let local = DirOutput::new(&args.output_dir, durability);
    let chain = ChainWriter::new(&machine_did, args.chunk_size as u64);
    let progress = |n| bar.inc(n);
    let manifest: Manifest = match &s3_path {
        None => {
            let mut output = local;
            let writer = publish_stream(file, chain, keys, signer, &mut output, jobs, &progress)?;
            remove_stale_chunks(&args.output_dir, writer.next_index())?;
            writer.write_manifest(&mut output).map_err(check)?
        }
        Some(path) => {
            let bucket = crate::s3::open(path, &args.s3_options)?;
            let runtime = crate::s3::runtime()?;
            // Counts objects: two per chunk and the manifest.
            let up_bar = out.progress(1, false, !args.json);
            let up = up_bar.clone();
            let mut output = S3Publish {
                local: StorageRefs::new(local, Some(path.clone())),
                upload: ChainUpload::new(
                    bucket,
                    path.clone(),
                    runtime.handle().clone(),
                    UPLOADS_IN_FLIGHT,
                    std::sync::Arc::new(move |_bytes| up.inc(1)),
                ),
                path: path.clone(),
                up_bar: up_bar.clone(),
            };
            out.say(format!("Uploading to {path} as chunks are sealed..."));
            let writer = publish_stream(file, chain, keys, signer, &mut output, jobs, &progress)?;
            remove_stale_chunks(&args.output_dir, writer.next_index())?;
            // The local manifest first (with s3Bucket and s3Prefix, as the reference leaves
            // it), then the bucket's, once every chunk is there.
            let manifest = writer.write_manifest(&mut output).map_err(check)?;
            let manifest = store::upload::with_s3_fields(&manifest, path);
            output
                .upload
                .finish(&manifest)
                .map_err(|e| CliError::Network(format!("S3 upload failed: {e}")))?;
            up_bar.finish_and_clear();
            manifest
        }
    };
    bar.finish_and_clear();
    let manifest_path = args.output_dir.join("manifest.json");

    if args.json {
        let mut value = serde_json::to_value(&manifest).map_err(check)?;
        if let (Some(path), Some(map)) = (&s3_path, value.as_object_mut()) {
            let chunks = (0..manifest.total_chunks)
                .map(|index| {
                    serde_json::json!({
                        "index": index,
                        "storageRef": store::upload::storage_ref(path, index),
                    })
                })
                .collect();
            map.insert("chunks".into(), serde_json::Value::Array(chunks));
        }
        print_json(&value);
    } else {
        say_summary(out, &args.output_dir, &manifest, s3_path.as_ref());
        println!("{}", manifest_path.display());
    }
    Ok(())
}

/// The human summary on stderr, as the reference prints it (and, with `--s3`, where each
/// file went).
fn say_summary(out: &Output, dir: &std::path::Path, manifest: &Manifest, s3: Option<&S3Path>) {
    out.say(format!(
        "\nPublished {} chunks to {}/\n",
        manifest.total_chunks,
        dir.display()
    ));
    if let Some(path) = s3 {
        out.say(format!(
            "Uploaded {} chunks to s3://{}/{}\n",
            manifest.total_chunks, path.bucket, path.prefix
        ));
    }
    out.say("  Schema:       peaq.stream.chunks.v1");
    out.say(format!("  Source Hash:  {}", manifest.source_hash));
    out.say(format!("  Chunk Size:   {} bytes", manifest.chunk_size));
    out.say(format!("  Machine DID:  {}", manifest.machine_did));
    if let Some(path) = s3 {
        out.say(format!("  S3 Bucket:    {}", path.bucket));
        out.say(format!("  S3 Prefix:    {}", path.prefix));
    }
    out.say("");
    out.say(if s3.is_some() {
        "  Files (local + S3):"
    } else {
        "  Files:"
    });
    for i in 0..manifest.total_chunks.min(20) {
        match s3 {
            Some(path) => out.say(format!(
                "    chunk-{i}.json  chunk-{i}.bin  → {}",
                store::upload::storage_ref(path, i)
            )),
            None => out.say(format!("    chunk-{i}.json  chunk-{i}.bin")),
        }
    }
    if manifest.total_chunks > 20 {
        out.say(format!(
            "    … and {} more chunk pairs",
            manifest.total_chunks - 20
        ));
    }
    match s3 {
        Some(path) => out.say(format!(
            "    manifest.json              → {}",
            path.uri("manifest.json")
        )),
        None => out.say("    manifest.json"),
    }
}

/// Chunks, seals, links and writes `input` to `output` with `jobs` sealing workers, through
/// `writer`; returns the writer (its manifest not yet written).
fn publish_stream(
    input_stream: impl std::io::Read + Send,
    writer: ChainWriter,
    keys: &dyn ChunkKeySource,
    signer: &dyn ChunkHashSigner,
    output: &mut (dyn stream::chain::ChainOutput + Send),
    jobs: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ChainWriter, CliError> {
    let chunk_size = writer.chunk_size() as usize;
    let max_in_flight = 4 * jobs;
    // The pool of chunk buffers: holding one is the right to put a chunk in flight.
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(max_in_flight);
    for _ in 0..max_in_flight {
        let _ = pool_tx.send(Vec::new());
    }
    let (work_tx, work_rx) = bounded::<(u64, Vec<u8>)>(2 * jobs);
    let (done_tx, done_rx) = unbounded::<(u64, Result<SealedChunk, BuildError>)>();
    // The reader adds plaintexts to sourceHash in order, the writer thread appends sealed
    // chunks in order: one writer, two in-order streams.
    let writer = Mutex::new(writer);

    let read = std::thread::scope(|scope| {
        for _ in 0..jobs {
            let work_rx = work_rx.clone();
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                for (index, plaintext) in work_rx {
                    let sealed = keys
                        .new_chunk_keys(1)
                        .map_err(|source| BuildError::Signer { index, source })
                        .and_then(|mut k| {
                            let key = k.pop().ok_or(BuildError::Signer {
                                index,
                                source: stream::signer::SignerError::Unavailable(
                                    "no chunk key returned".into(),
                                ),
                            })?;
                            seal_chunk(plaintext, key, signer, index)
                        });
                    if done_tx.send((index, sealed)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        drop(work_rx);

        let writer_ref = &writer;
        let writing = scope.spawn(move || -> Result<(), CliError> {
            let mut waiting: BTreeMap<u64, SealedChunk> = BTreeMap::new();
            for (index, sealed) in done_rx {
                waiting.insert(index, sealed.map_err(check)?);
                loop {
                    let mut w = writer_ref
                        .lock()
                        .map_err(|_| CliError::Check("the chain writer failed".into()))?;
                    let Some(sealed) = waiting.remove(&w.next_index()) else {
                        break;
                    };
                    let bytes = sealed.ciphertext.len() as u64 - 16;
                    let written = w.append(sealed, output).map_err(check)?;
                    drop(w);
                    progress(bytes);
                    // Back to the pool: the reader may put one more chunk in flight (once
                    // the reader is done, nobody takes it).
                    let _ = pool_tx.send(written.buffer);
                }
            }
            Ok(())
        });

        let mut reader = ChunkReader::new(input_stream, chunk_size);
        let mut read_error = None;
        let mut index = 0u64;
        while let Ok(mut buffer) = pool_rx.recv() {
            match reader.fill_chunk(&mut buffer) {
                Ok(true) => {
                    match writer.lock() {
                        Ok(mut w) => w.absorb(&buffer),
                        Err(_) => break,
                    }
                    if work_tx.send((index, buffer)).is_err() {
                        break;
                    }
                    index += 1;
                }
                Ok(false) => break,
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            }
        }
        drop(work_tx);
        drop(pool_rx);
        writing
            .join()
            .map_err(|_| CliError::Check("the chunk writer panicked".into()))??;
        if let Some(e) = read_error {
            return Err(input(format!("reading --input: {e}")));
        }
        Ok(index)
    })?;
    let writer = writer
        .into_inner()
        .map_err(|_| CliError::Check("the chain writer failed".into()))?;
    if writer.next_index() != read {
        return Err(CliError::Check(format!(
            "wrote {} of {read} chunks",
            writer.next_index()
        )));
    }
    Ok(writer)
}

/// Objects uploading at once during `publish --s3`.
const UPLOADS_IN_FLIGHT: usize = 8;

/// The published directory (envelopes with their storageRef) and the bucket, chunk by chunk.
struct S3Publish {
    local: StorageRefs<DirOutput>,
    upload: ChainUpload,
    path: S3Path,
    up_bar: indicatif::ProgressBar,
}

impl ChainOutput for S3Publish {
    fn write_chunk(
        &mut self,
        envelope: &ChunkEnvelope,
        ciphertext: &[u8],
    ) -> Result<(), LayoutError> {
        self.local.write_chunk(envelope, ciphertext)?;
        let envelope = with_storage_ref(envelope, &self.path);
        self.up_bar.inc_length(2);
        self.upload
            .chunk(&envelope, bytes::Bytes::copy_from_slice(ciphertext))
            .map_err(|e| LayoutError::Output {
                to: self.path.to_string(),
                reason: e.to_string(),
            })
    }
    fn write_manifest(&mut self, manifest: &Manifest) -> Result<(), LayoutError> {
        self.local.write_manifest(manifest)
    }
}

fn remove_if_present(path: &Path) -> Result<(), CliError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(input(format!("cannot remove {}: {e}", path.display()))),
    }
}

/// Removes chunk files of an earlier, longer publish into the same directory.
fn remove_stale_chunks(dir: &Path, total: u64) -> Result<(), CliError> {
    let entries = std::fs::read_dir(dir).map_err(|e| input(format!("{}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if layout::chunk_file(name).is_some_and(|f| f.index() >= total) {
            remove_if_present(&entry.path())?;
        }
    }
    Ok(())
}
