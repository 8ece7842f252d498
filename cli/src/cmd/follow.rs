//! `peaqos stream follow`: a machine's topic (or a fleet's) live from NATS JetStream. Each
//! chunk is verified as `stream verify` would (hash, chunkId, link, signature, one signer,
//! the subject's machine, a pinned key), written durably into the published layout, and
//! only then acknowledged; a gap, a fork or a foreign signer stops it (exit 1, named).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::jetstream::AckKind;
use feed::follow::{consumer, ConsumerSpec};
use feed::message::{self, Ciphertext, FeedMessage};
use feed::subject::{self, ChainSubject};
use feed::{Accepted, FeedSettings, FeedStream, FollowedChain, Refusal, StreamSpec};
use futures::StreamExt;
use serde_json::json;

use crate::cli::FollowArgs;
use crate::output::{input, CliError, CliResult, Output};

/// How long the server, the stream and the consumer are each waited for, and the backoff.
const SETUP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);
const SETUP_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(250);
const SETUP_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);

pub fn run(args: FollowArgs, out: &Output) -> CliResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Input(format!("cannot start the NATS client: {e}")))?;
    runtime.block_on(follow(args, out))
}

/// What became of one message.
enum Outcome {
    Done(Accepted),
    Refused(Refusal),
    /// The object store could not be read: nothing acknowledged, the message comes again.
    Unavailable(String),
}

fn network(e: impl std::fmt::Display) -> CliError {
    CliError::Network(e.to_string())
}

/// Where `--follow-all` keeps a chain: `<output-dir>/<address>/<topic tokens>`.
fn chain_dir(root: &Path, chain: &ChainSubject) -> PathBuf {
    root.join(&chain.address).join(&chain.topic_tokens)
}

fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

async fn follow(args: FollowArgs, out: &Output) -> CliResult {
    let pinned = args
        .expect_public_key
        .as_deref()
        .map(|k| super::parse_ed25519_public("--expect-public-key", k))
        .transpose()?;
    subject::check_prefix("--subject-prefix", &args.subject_prefix).map_err(input)?;
    feed::publish::check_stream_name("--stream", &args.stream).map_err(input)?;
    let prefix = args.subject_prefix.clone();
    let mut chains: HashMap<String, FollowedChain> = HashMap::new();
    let filter = if args.follow_all {
        let address = args
            .did
            .as_deref()
            .map(subject::did_address)
            .transpose()
            .map_err(input)?;
        subject::wildcard(&prefix, address.as_deref())
    } else {
        let (Some(did), Some(topic)) = (&args.did, &args.topic) else {
            return Err(CliError::Input(
                "--did and --topic are required without --follow-all".into(),
            ));
        };
        let chain = ChainSubject::new(&prefix, did, topic).map_err(input)?;
        let opened = FollowedChain::open(chain.clone(), &args.output_dir, pinned, args.from_start)
            .map_err(input)?;
        chains.insert(chain.subject(), opened);
        chain.subject()
    };
    // The stream from its start when the directory decides where to begin (it has chunks,
    // or must start at chunk 0); else from each subject's newest message.
    let deliver_all = args.from_start
        || if args.follow_all {
            has_entries(&args.output_dir)
        } else {
            chains.values().any(|c| c.next().is_some())
        };
    let settings = FeedSettings {
        urls: args.nats.clone(),
        credentials: args.credentials.clone(),
        name: "peaqos stream follow".into(),
    };
    // A server not up yet (started beside the follower, restarting): tried again.
    let connection =
        with_setup_patience(out, || feed::connect::connect(&settings, "--nats")).await?;
    let spec = StreamSpec {
        name: args.stream.clone(),
        subject_prefix: prefix.clone(),
        replicas: 1,
    };
    let consumer_spec = ConsumerSpec {
        filter: filter.clone(),
        durable: args.durable.clone(),
        deliver_all,
    };
    // A cluster electing a leader (a node just died), a stream not made yet: tried again.
    let (client, spec, consumer_spec) = (&connection.client, &spec, &consumer_spec);
    let (mut stream, mut messages) = with_setup_patience(out, || async move {
        let stream = FeedStream::open(client, spec, false).await?;
        let messages = consumer(&stream, consumer_spec).await?;
        Ok((stream, messages))
    })
    .await?;
    out.say(format!(
        "following {filter} on {} into {}",
        feed::connect::shown_urls(&args.nats),
        args.output_dir.display()
    ));

    let mut stop = Box::pin(stopped());
    loop {
        let next = tokio::select! {
            next = messages.next() => next,
            _ = &mut stop => return Ok(()),
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                // The server away (missed heartbeats), a leader change: the consumer
                // carries on once it is back.
                warn(out, &format!("consumer: {e}"));
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                continue;
            }
            None => {
                return Err(CliError::Network(
                    "the consumer was closed by the server".into(),
                ))
            }
        };
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let subject_text = message.subject.to_string();
        if !chains.contains_key(&subject_text) {
            let Some(chain) = ChainSubject::parse(&prefix, &subject_text) else {
                let refusal = Refusal::Message {
                    subject: subject_text,
                    sequence,
                    reason: "is not <prefix>.<DID address>.<topic>".into(),
                };
                refuse(out, &message, refusal, args.skip_forged).await?;
                continue;
            };
            let dir = chain_dir(&args.output_dir, &chain);
            let opened =
                FollowedChain::open(chain, &dir, pinned, args.from_start).map_err(input)?;
            chains.insert(subject_text.clone(), opened);
        }
        let chain = chains.get_mut(&subject_text).expect("inserted above");
        match handle(&mut stream, chain, &message, sequence).await {
            Outcome::Done(accepted) => {
                if let Err(e) = message.double_ack().await {
                    // Delivered again later, and then a duplicate: nothing is lost.
                    warn(out, &format!("acknowledgement of message {sequence}: {e}"));
                }
                report(out, args.json, chain, accepted);
            }
            Outcome::Refused(refusal) => refuse(out, &message, refusal, args.skip_forged).await?,
            Outcome::Unavailable(reason) => {
                warn(out, &reason);
                let _ = message
                    .ack_with(AckKind::Nak(Some(std::time::Duration::from_secs(1))))
                    .await;
            }
        }
    }
}

/// Runs `attempt` until it succeeds, with backoff, for up to [`SETUP_PATIENCE`]; a bad
/// setting or credentials end it at once, as an input error.
async fn with_setup_patience<T, F, Fut>(out: &Output, mut attempt: F) -> Result<T, CliError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, feed::FeedError>>,
{
    let mut wait = SETUP_BACKOFF_MIN;
    let started = std::time::Instant::now();
    loop {
        match attempt().await {
            Ok(ready) => return Ok(ready),
            Err(e @ (feed::FeedError::Setting { .. } | feed::FeedError::Credentials { .. })) => {
                return Err(input(e))
            }
            Err(e) if started.elapsed() + wait > SETUP_PATIENCE => return Err(network(e)),
            Err(e) => {
                warn(
                    out,
                    &format!("{e}; trying again in {} ms", wait.as_millis()),
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(SETUP_BACKOFF_MAX);
            }
        }
    }
}

/// A refused message: forged ones are terminated (no one is given them again), then
/// skipped with `--skip-forged`; anything else stops the follower.
async fn refuse(
    out: &Output,
    message: &async_nats::jetstream::Message,
    refusal: Refusal,
    skip_forged: bool,
) -> CliResult {
    if !refusal.is_forged() {
        return Err(CliError::Check(refusal.to_string()));
    }
    if let Err(e) = message.double_ack_with(AckKind::Term).await {
        warn(out, &format!("terminating a refused message: {e}"));
    }
    if skip_forged {
        out.say(format!("refused and skipped: {refusal}"));
        return Ok(());
    }
    Err(CliError::Check(refusal.to_string()))
}

async fn handle(
    stream: &mut FeedStream,
    chain: &mut FollowedChain,
    message: &async_nats::jetstream::Message,
    sequence: u64,
) -> Outcome {
    let decoded = match message::decode(message.headers.as_ref(), &message.payload) {
        Ok(decoded) => decoded,
        Err(e) => {
            return Outcome::Refused(Refusal::Message {
                subject: chain.subject().subject(),
                sequence,
                reason: e.to_string(),
            })
        }
    };
    let result = match decoded {
        FeedMessage::Chunk(chunk) => {
            let fetched;
            let ciphertext: &[u8] = match &chunk.ciphertext {
                Ciphertext::Inline(data) => data,
                Ciphertext::Object(name) => match stream.fetch_object(name).await {
                    Ok(data) => {
                        fetched = data;
                        &fetched
                    }
                    Err(e) => return Outcome::Unavailable(e.to_string()),
                },
            };
            chain.accept_chunk(&chunk, ciphertext)
        }
        FeedMessage::Manifest {
            manifest,
            bytes,
            head_chunk_id,
        } => chain.accept_manifest(&manifest, &bytes, &head_chunk_id),
    };
    match result {
        Ok(accepted) => Outcome::Done(accepted),
        Err(refusal) => Outcome::Refused(refusal),
    }
}

fn report(out: &Output, json: bool, chain: &FollowedChain, accepted: Accepted) {
    let subject = chain.subject().subject();
    let (event, index) = match accepted {
        Accepted::Written(i) => ("written", i),
        Accepted::Duplicate(i) => ("duplicate", i),
        Accepted::Manifest(n) => ("manifest", n),
        Accepted::ManifestSkipped(n) => ("manifest-skipped", n),
    };
    if json {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        println!(
            "{}",
            json!({"event": event, "subject": subject, "index": index, "dir": chain.dir().display().to_string(), "atMicros": at})
        );
    }
    match accepted {
        Accepted::Written(i) => out.say(format!("chunk {i} of {subject} verified and written")),
        Accepted::Manifest(n) => out.say(format!("manifest of {subject}: {n} chunks")),
        Accepted::Duplicate(_) | Accepted::ManifestSkipped(_) => {}
    }
}

fn warn(out: &Output, line: &str) {
    out.say(format!("warning: {line}"));
}

/// SIGINT or SIGTERM: stop after the message in hand.
async fn stopped() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
