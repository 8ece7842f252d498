//! keyd signatures over the Unix socket (software backend), each next to the in-process
//! k256 rate of the same operation measured in the same run. Prints one JSON object.
//! Run by scripts/bench (or `cargo bench -p keyd --bench socket`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use keyd_proto::v1;
use stream::json::{self, Value};
use stream::package;
use stream::signer::PackageSigner;

const BATCH: usize = 256;

fn envelopes(did: &str, from: u64, count: usize) -> Vec<Vec<u8>> {
    (0..count as u64)
        .map(|i| {
            let payload = json::parse(&format!(
                r#"{{"seq":{},"temp":21.5,"unit":"C","imu":[0.01,-0.002,9.81]}}"#,
                from + i
            ))
            .unwrap();
            json::canonical_bytes(&package::envelope(
                did,
                &"2026-11-22T10:00:00Z".into(),
                &"1".into(),
                &Value::from(from + i),
                &payload,
            ))
            .unwrap()
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6
}

/// PKCS#11 on SoftHSM: batched signatures through keyd, and the same token signing
/// directly through cryptoki with two sessions on two threads. `None` without SoftHSM.
fn pkcs11() -> Option<(f64, f64)> {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;

    let daemon = common::Daemon::start_pkcs11()?;
    // No other thread exists yet in this process: setting the environment is safe here.
    for (key, value) in daemon.env() {
        std::env::set_var(key, value);
    }
    let module = Pkcs11::new("/usr/lib/softhsm/libsofthsm2.so").unwrap();
    module
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = module
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| module.get_token_info(*s).unwrap().label().trim_end() == "keyd-test")
        .unwrap();
    let pin = cryptoki::types::AuthPin::from("24681357".to_string());
    let digest = [7u8; 32];
    let per_thread = 600;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            let module = &module;
            let pin = &pin;
            scope.spawn(move || {
                let session = module.open_rw_session(slot).unwrap();
                let _ = session.login(UserType::User, Some(pin));
                let key = session
                    .find_objects(&[
                        Attribute::Label(b"keyd-identity".to_vec()),
                        Attribute::Class(ObjectClass::PRIVATE_KEY),
                    ])
                    .unwrap()[0];
                for _ in 0..per_thread {
                    std::hint::black_box(session.sign(&Mechanism::Ecdsa, key, &digest).unwrap());
                }
            });
        }
    });
    let direct = (2 * per_thread) as f64 / start.elapsed().as_secs_f64();

    Some((direct, batched_rate(&daemon, 6)))
}

/// Signatures per second through keyd, `batches` calls of BATCH envelopes.
fn batched_rate(daemon: &common::Daemon, batches: usize) -> f64 {
    let client = daemon.client();
    let did = client.did().to_string();
    let total = batches * BATCH;
    let all = envelopes(&did, client.next_sequence_number().unwrap(), total);
    let start = Instant::now();
    for chunk in all.chunks(BATCH) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        client.sign_envelopes(&refs).unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// Batched signatures through keyd with keys unsealed from a fresh swtpm. `None` without swtpm.
fn tpm() -> Option<f64> {
    Some(batched_rate(&common::Daemon::start_tpm()?, 40))
}

/// What keyd's fail-closed records cost a request, in process: an audit append (HMAC +
/// write), an audit fsync with its checkpoint, a ledger record (one chunk pair, one write).
/// Microseconds each.
fn durable_costs() -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let key = stream::keys::Secret32::from_bytes([3; 32]);
    let mut log = keyd::audit::AuditLog::open(
        &dir.path().join("audit.jsonl"),
        &dir.path().join("audit.checkpoint"),
        &key,
    )
    .unwrap();
    let record = keyd::audit::Record {
        time: "2026-12-01T10:00:00.000000Z".into(),
        uid: Some(1000),
        gid: Some(1000),
        pid: Some(4242),
        client_cert: None,
        op: "sign_packages",
        key: "identity",
        batch: 1,
        result: "ok",
        latency_us: 120,
        detail: None,
    }
    .to_json();
    let n = 20_000;
    let start = Instant::now();
    for _ in 0..n {
        log.append(&record).unwrap();
    }
    let append_us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    let syncs = 100;
    let start = Instant::now();
    for _ in 0..syncs {
        log.append(&record).unwrap();
        log.sync().unwrap();
    }
    let sync_us = start.elapsed().as_secs_f64() * 1e6 / syncs as f64 - append_us;
    let mut ledger =
        keyd::ledger::Ledger::open(&dir.path().join("signed-chunks"), &[7; 20]).unwrap();
    let start = Instant::now();
    for i in 0..n as u32 {
        let mut hash = [0u8; 32];
        hash[..4].copy_from_slice(&i.to_be_bytes());
        ledger.record(&[(hash, [9; 32])]).unwrap();
    }
    let ledger_us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    (append_us, sync_us, ledger_us)
}

/// Unbatched calls from an async client on a current-thread runtime: (rate, p50 µs, p99 µs).
fn unbatched_async<F, Fut>(daemon: &common::Daemon, n: usize, mut call: F) -> (f64, f64, f64)
where
    F: FnMut(v1::keyd_client::KeydClient<tonic::transport::Channel>, usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    single.block_on(async {
        let channel = keyd_proto::client::connect_channel(&daemon.socket())
            .await
            .unwrap();
        let raw = v1::keyd_client::KeydClient::new(channel);
        let mut latencies = Vec::with_capacity(n);
        let start = Instant::now();
        for i in 0..n {
            let t = Instant::now();
            call(raw.clone(), i).await;
            latencies.push(t.elapsed());
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        latencies.sort();
        (
            rate,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
        )
    })
}

fn main() {
    let (audit_append_us, audit_sync_us, ledger_record_us) = durable_costs();
    // Chunk hashes, one per call: each records its pair in the ledger before answering.
    let (chunk_rate, chunk_p50, chunk_p99) = {
        let daemon = common::Daemon::start_default();
        unbatched_async(&daemon, 2000, |mut raw, i| async move {
            let hash = stream::hexenc::sha256_0x(&i.to_be_bytes());
            raw.sign_chunk_hashes(v1::SignChunkHashesRequest {
                hashes: vec![hash],
                key_commitments: vec![stream::hexenc::key_commitment(&[1; 32])],
            })
            .await
            .unwrap();
        })
    };
    // With audit_fsync_ms = 0: the audit log fsynced before every answer.
    let (fsync_rate, fsync_p50, fsync_p99) = {
        let daemon = common::Daemon::start_with(&common::Daemon::allow_all(), "audit_fsync_ms = 0");
        let did = daemon.client().did().to_string();
        let batch = envelopes(&did, 0, 500);
        unbatched_async(&daemon, batch.len(), |mut raw, i| {
            let envelope = batch[i].clone();
            async move {
                raw.sign_packages(v1::SignPackagesRequest {
                    envelopes: vec![envelope],
                })
                .await
                .unwrap();
            }
        })
    };
    let (pkcs11_direct, pkcs11_keyd) = pkcs11().unwrap_or((0.0, 0.0));
    let tpm_batched = tpm().unwrap_or(0.0);
    let daemon = common::Daemon::start_default();
    let client = daemon.client();
    let did = client.did().to_string();
    let mut next = client.next_sequence_number().unwrap();

    // In process: the same EIP-191 signatures with k256, one thread.
    let key = k256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
    let sample = envelopes(&did, 0, 8000);
    let start = Instant::now();
    for e in &sample {
        std::hint::black_box(package::sign_eip191(&key, e));
    }
    let in_process = sample.len() as f64 / start.elapsed().as_secs_f64();
    // ... and on every core, as keyd signs large batches.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for part in sample.chunks(sample.len().div_ceil(threads)) {
            let key = &key;
            scope.spawn(move || {
                for e in part {
                    std::hint::black_box(package::sign_eip191(key, e));
                }
            });
        }
    });
    let in_process_all = sample.len() as f64 / start.elapsed().as_secs_f64();

    // Unbatched: one envelope per call, latency of each.
    let n = 2000;
    let batch = envelopes(&did, next, n);
    next += n as u64;
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now();
    for e in &batch {
        let t = Instant::now();
        client.sign_envelopes(&[e.as_slice()]).unwrap();
        latencies.push(t.elapsed());
    }
    let unbatched = n as f64 / start.elapsed().as_secs_f64();
    latencies.sort();

    // Unbatched again, from an async client on a current-thread runtime (no hand-off
    // between the caller's thread and the client's runtime): keyd's own latency.
    let batch = envelopes(&did, next, n);
    next += n as u64;
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (async_rate, mut async_latencies) = single.block_on(async {
        let channel = keyd_proto::client::connect_channel(&daemon.socket())
            .await
            .unwrap();
        let mut raw = v1::keyd_client::KeydClient::new(channel);
        let mut latencies = Vec::with_capacity(n);
        let start = Instant::now();
        for e in &batch {
            let t = Instant::now();
            raw.sign_packages(v1::SignPackagesRequest {
                envelopes: vec![e.clone()],
            })
            .await
            .unwrap();
            latencies.push(t.elapsed());
        }
        (n as f64 / start.elapsed().as_secs_f64(), latencies)
    });
    async_latencies.sort();

    // Batched: BATCH envelopes per call.
    let total = 40 * BATCH;
    let all = envelopes(&did, next, total);
    next += total as u64;
    let mut batch_latencies = Vec::new();
    let start = Instant::now();
    for chunk in all.chunks(BATCH) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        let t = Instant::now();
        client.sign_envelopes(&refs).unwrap();
        batch_latencies.push(t.elapsed());
    }
    let batched = total as f64 / start.elapsed().as_secs_f64();
    batch_latencies.sort();

    // Streamed: batches pipelined on one bidirectional stream.
    let all = envelopes(&did, next, total);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let streamed = runtime.block_on(async {
        let channel = keyd_proto::client::connect_channel(&daemon.socket())
            .await
            .unwrap();
        let mut raw = v1::keyd_client::KeydClient::new(channel);
        let requests: Vec<v1::SignPackagesRequest> = all
            .chunks(BATCH)
            .map(|c| v1::SignPackagesRequest {
                envelopes: c.to_vec(),
            })
            .collect();
        let start = Instant::now();
        let mut responses = raw
            .sign_packages_stream(tokio_stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        let mut signed = 0;
        while let Some(r) = responses.message().await.unwrap() {
            signed += r.signatures.len();
        }
        assert_eq!(signed, total);
        total as f64 / start.elapsed().as_secs_f64()
    });

    println!(
        "{{\"cores\":{threads},\"in_process_per_s\":{in_process:.0},\"in_process_all_cores_per_s\":{in_process_all:.0},\"unbatched_per_s\":{unbatched:.0},\"unbatched_p50_us\":{:.0},\"unbatched_p99_us\":{:.0},\"unbatched_async_per_s\":{async_rate:.0},\"unbatched_async_p50_us\":{:.0},\"unbatched_async_p99_us\":{:.0},\"batched_per_s\":{batched:.0},\"batch_size\":{BATCH},\"batched_p50_us\":{:.0},\"batched_p99_us\":{:.0},\"streamed_per_s\":{streamed:.0},\"pkcs11_direct_two_sessions_per_s\":{pkcs11_direct:.0},\"pkcs11_batched_per_s\":{pkcs11_keyd:.0},\"tpm_batched_per_s\":{tpm_batched:.0},\"audit_append_us\":{audit_append_us:.2},\"audit_sync_us\":{audit_sync_us:.0},\"ledger_record_us\":{ledger_record_us:.2},\"chunk_hash_unbatched_per_s\":{chunk_rate:.0},\"chunk_hash_p50_us\":{chunk_p50:.0},\"chunk_hash_p99_us\":{chunk_p99:.0},\"fsync_each_unbatched_per_s\":{fsync_rate:.0},\"fsync_each_p50_us\":{fsync_p50:.0},\"fsync_each_p99_us\":{fsync_p99:.0}}}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&async_latencies, 0.5),
        percentile(&async_latencies, 0.99),
        percentile(&batch_latencies, 0.5),
        percentile(&batch_latencies, 0.99),
    );
}
