//! The pipeline (signer and writer threads) against a keyd that fails, stalls, restarts and
//! refuses: a fault a real keyd cannot produce on demand, so a fake one here, with real
//! keys (every package and chain still verifies).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edge_agent::backlog::{Backlog, Captured};
use edge_agent::config::AgentConfig;
use edge_agent::metrics::Metrics;
use edge_agent::pipeline::{self, Keyd};
use edge_agent::spool::TopicSpool;
use stream::access::{BuyerAccessEntry, BuyerIdentity};
use stream::chain::ChunkEnvelope;
use stream::json::{self, Value};
use stream::keys::{BoxKey, ChainKey, IdentityKey, Secret32};
use stream::local::{
    LocalChunkKeys, LocalChunkSigner, LocalFieldEncryptor, LocalPackageSigner, RecipientSpec,
};
use stream::signer::*;

/// What the fake keyd does to the next calls.
#[derive(Debug, Default)]
struct Faults {
    /// Sign calls that fail as unreachable, one in this many (0: none).
    fail_every: usize,
    /// Every call waits this long first.
    stall: Duration,
    /// Calls are denied by the policy while set.
    deny: bool,
}

struct FakeKeyd {
    packages: LocalPackageSigner,
    chunks: LocalChunkSigner,
    keys: LocalChunkKeys,
    fields: LocalFieldEncryptor,
    machine: BoxKey,
    /// The guard: the lowest number keyd signs next.
    next: AtomicU64,
    calls: AtomicUsize,
    faults: Mutex<Faults>,
}

impl FakeKeyd {
    fn new() -> FakeKeyd {
        let identity = IdentityKey::from_secret(&Secret32::from_bytes([1; 32])).unwrap();
        let did = identity.did();
        let machine = BoxKey::from_secret(&Secret32::from_bytes([2; 32]));
        FakeKeyd {
            chunks: LocalChunkSigner::new(
                ChainKey::from_secret(&Secret32::from_bytes([3; 32])),
                did.clone(),
                format!("{did}#keys-1"),
            ),
            packages: LocalPackageSigner::new(identity),
            keys: LocalChunkKeys::new(vec![RecipientSpec::new(
                "machine-1",
                "machine",
                &machine.public_key_hex(),
            )
            .unwrap()]),
            fields: LocalFieldEncryptor::new(&Secret32::from_bytes([4; 32])),
            machine,
            next: AtomicU64::new(0),
            calls: AtomicUsize::new(0),
            faults: Mutex::new(Faults::default()),
        }
    }

    /// Applies the faults to one call.
    fn gate(&self, counts: bool) -> Result<(), SignerError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let (stall, deny, every) = {
            let f = self.faults.lock().unwrap();
            (f.stall, f.deny, f.fail_every)
        };
        std::thread::sleep(stall);
        if deny {
            return Err(SignerError::Denied(
                "uid 65534 may not sign_packages (policy)".into(),
            ));
        }
        if counts && every > 0 && n.is_multiple_of(every) {
            return Err(SignerError::Unavailable(
                "Unavailable: keyd restarting".into(),
            ));
        }
        Ok(())
    }

    /// keyd restarts: it continues above a reserved ceiling, skipping numbers.
    fn restart(&self) {
        self.next.fetch_add(4096, Ordering::SeqCst);
    }
}

impl PackageSigner for FakeKeyd {
    fn did(&self) -> &str {
        self.packages.did()
    }
    fn sign_envelopes(&self, envelopes: &[&[u8]]) -> Result<Vec<[u8; 65]>, SignerError> {
        self.gate(true)?;
        // The sequence guard: every number above the last signed, the batch as a whole.
        let mut floor = self.next.load(Ordering::SeqCst);
        for e in envelopes {
            let doc = json::parse_slice(e).unwrap();
            let n = doc["sequenceNumber"].as_u64().unwrap();
            if n < floor {
                return Err(SignerError::Sequence(format!(
                    "item 0: sequence number {n} is not above {}",
                    floor.saturating_sub(1)
                )));
            }
            floor = n + 1;
        }
        self.next.store(floor, Ordering::SeqCst);
        self.packages.sign_envelopes(envelopes)
    }
}

impl DatasetSigner for FakeKeyd {
    fn key_id(&self) -> &str {
        "fake#keys-1"
    }
    fn sign_dataset(&self, document: &[u8]) -> Result<[u8; 65], SignerError> {
        self.gate(false)?;
        self.packages.sign_dataset(document)
    }
}

impl FieldEncryptor for FakeKeyd {
    fn encrypt_fields(&self, plaintexts: &[&[u8]]) -> Result<Vec<String>, SignerError> {
        self.fields.encrypt_fields(plaintexts)
    }
}

impl ChunkKeySource for FakeKeyd {
    fn new_chunk_keys(&self, count: usize) -> Result<Vec<ChunkKey>, SignerError> {
        self.gate(false)?;
        self.keys.new_chunk_keys(count)
    }
}

impl ChunkHashSigner for FakeKeyd {
    fn chunk_signer(&self) -> &ChunkSignerIdentity {
        self.chunks.chunk_signer()
    }
    fn sign_chunks(&self, chunks: &[ChunkToSign<'_>]) -> Result<Vec<[u8; 64]>, SignerError> {
        self.chunks.sign_chunks(chunks)
    }
}

impl ChunkKeyGranter for FakeKeyd {
    fn grant(
        &self,
        _: &[ChunkEnvelope],
        _: &BuyerIdentity,
    ) -> Result<Vec<BuyerAccessEntry>, SignerError> {
        Err(SignerError::Denied("the agent may not grant".into()))
    }
}

impl Keyd for FakeKeyd {
    fn next_sequence_number(&self) -> Result<u64, SignerError> {
        self.gate(false)?;
        Ok(self.next.load(Ordering::SeqCst))
    }
    fn signing_key_id(&self) -> String {
        format!("{}#keys-1", self.did())
    }
}

struct Run {
    _dir: tempfile::TempDir,
    config: AgentConfig,
}

/// A map with one topic: chunks of at most `max_messages` packages.
fn run_config(max_messages: u64) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let map = format!(
        "keyd:\n  socket: {d}/keyd.sock\n  backoff_max_ms: 100\nspool_dir: {d}/spool\noutput_dir: {d}/out\nbatch:\n  max_messages: 16\n  max_delay_ms: 5\ntopics:\n  - topic: /count\n    type: std_msgs/msg/String\n    schema_version: \"1\"\n    chunk: {{ max_messages: {max_messages}, max_age_ms: 60000 }}\n"
    );
    let path = dir.path().join("map.yaml");
    std::fs::write(&path, map).unwrap();
    let config = AgentConfig::load(&path).unwrap();
    Run { _dir: dir, config }
}

/// Runs signer and writer over `count` messages, calling `during` once the first ones are
/// in; returns the published packages' (data, sequenceNumber) in chain order.
fn run(
    run: &Run,
    keyd: &FakeKeyd,
    count: usize,
    during: impl FnOnce(&FakeKeyd, &Metrics) + Send,
) -> Vec<(String, u64)> {
    let config = &run.config;
    let metrics = Metrics::new();
    let stop = AtomicBool::new(false);
    let backlog = Backlog::new(&config.spool_dir, config.queue, config.batch.max_messages).unwrap();
    let topic = &config.topics[0];
    let mut spools = vec![TopicSpool::open(
        &topic.spool,
        &topic.output,
        keyd.did(),
        topic.chunk.max_bytes,
        None,
    )
    .unwrap()];
    let (tx, rx) = crossbeam_channel::bounded(2);
    let mut during = Some(during);
    std::thread::scope(|scope| {
        let signer =
            scope.spawn(|| pipeline::run_signer(config, &backlog, keyd, &metrics, tx, &stop, None));
        let writer =
            scope.spawn(|| pipeline::run_writer(config, &mut spools, keyd, &metrics, rx, &stop));
        for i in 0..count {
            let mut fields = json::Map::new();
            fields.insert("data".into(), Value::String(format!("n={i:06}")));
            let size = edge_agent::backlog::item_size(&fields);
            backlog
                .push(Captured {
                    topic: 0,
                    captured_at: format!("t{i}"),
                    fields,
                    size,
                    origin: None,
                })
                .unwrap();
            if i == count / 3 {
                std::thread::sleep(Duration::from_millis(50));
                if let Some(during) = during.take() {
                    during(keyd, &metrics);
                }
            }
        }
        // Wait until the queue is drained, then stop as SIGTERM would.
        let started = Instant::now();
        while backlog.depth().messages > 0 && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        backlog.close();
        signer.join().unwrap().unwrap();
        writer.join().unwrap().unwrap();
    });
    // Read the chain back: verify it, decrypt it as the machine, parse every package.
    let out = &topic.output;
    let chunks = stream::layout::read_chunks(out).unwrap();
    let manifest = stream::layout::read_manifest(out).unwrap().unwrap();
    let max = topic.chunk.max_messages.unwrap() as usize;
    let mut plain = Vec::new();
    let mut largest = 0;
    stream::chain::verify_chain(
        &chunks,
        |i| stream::layout::read_ciphertext(out, i).map_err(|e| e.to_string()),
        &stream::chain::VerifyOptions {
            recipient: Some(&keyd.machine),
            expect_total_chunks: Some(manifest.total_chunks),
            expect_source_hash: Some(&manifest.source_hash),
            ..Default::default()
        },
        |_, p| {
            largest = largest.max(p.iter().filter(|b| **b == b'\n').count());
            plain.extend_from_slice(p)
        },
    )
    .unwrap();
    assert!(
        largest <= max,
        "a chunk of {largest} packages, past max_messages {max}"
    );
    let lines: Vec<&[u8]> = plain
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .map(|line| {
            let doc = json::parse_slice(line).unwrap();
            let package = stream::package::DataPackage::from_value(&doc).unwrap();
            package.verify().unwrap();
            (
                doc["payload"]["data"].as_str().unwrap().to_string(),
                doc["sequenceNumber"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn assert_exactly_once_in_order(published: &[(String, u64)], count: usize) {
    let data: Vec<String> = published.iter().map(|(d, _)| d.clone()).collect();
    let want: Vec<String> = (0..count).map(|i| format!("n={i:06}")).collect();
    assert_eq!(data, want, "every message once, in order");
    let sequences: Vec<u64> = published.iter().map(|(_, s)| *s).collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers strictly increase"
    );
}

#[test]
fn a_keyd_that_fails_and_stalls_loses_and_repeats_nothing() {
    let config = run_config(7);
    let keyd = FakeKeyd::new();
    keyd.faults.lock().unwrap().fail_every = 3;
    let published = run(&config, &keyd, 300, |keyd, _| {
        keyd.faults.lock().unwrap().stall = Duration::from_millis(20);
    });
    assert_exactly_once_in_order(&published, 300);
}

#[test]
fn after_a_keyd_restart_the_sequence_continues_where_keyd_says() {
    let config = run_config(10);
    let keyd = FakeKeyd::new();
    let published = run(&config, &keyd, 200, |keyd, _| keyd.restart());
    assert_exactly_once_in_order(&published, 200);
    let jumped = published.windows(2).any(|w| w[1].1 - w[0].1 >= 4096);
    assert!(jumped, "the agent renumbered above keyd's new floor");
}

#[test]
fn a_refusal_is_reported_as_one_and_nothing_is_dropped() {
    let config = run_config(10);
    let keyd = FakeKeyd::new();
    keyd.faults.lock().unwrap().deny = true;
    let published = run(&config, &keyd, 120, |keyd, metrics| {
        // Until keyd's refusal shows (before the first call, health says "unreachable").
        let started = Instant::now();
        let mut health = metrics.health();
        while !health.as_ref().is_err_and(|h| h.contains("refuses"))
            && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(10));
            health = metrics.health();
        }
        // The operator mends the policy; first, so that a failed assertion below cannot
        // leave the signer retrying forever.
        keyd.faults.lock().unwrap().deny = false;
        let health = health.unwrap_err();
        assert!(health.contains("refuses"), "{health}");
        assert!(metrics.render().contains("edge_agent_keyd_refusals_total"));
    });
    assert_exactly_once_in_order(&published, 120);
}
