//! Dataset costs for `scripts/bench-dataset`, each with a baseline measured in the same run.
//! Prints one JSON object on stdout.
//!
//! - `leaves_per_s`: a chunk envelope's leaf (its canonical leaf data, hashed), against
//!   `sha256_leaf_per_s`, SHA-256 alone over leaf data of the same length;
//! - `root_100k_ms`: the root over 100,000 leaf hashes in O(log n) memory ([`RootBuilder`]),
//!   against `sha256_100k_nodes_ms`, the 99,999 inner-node hashes alone;
//! - `inclusion_check_us` / `consistency_check_us` at 100,000 leaves (averaged over many
//!   leaves and sizes), against `sha256_path_us`, the path's hashes alone; and the proofs'
//!   sizes as JSON documents.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use stream::chain::{ChunkEncryption, ChunkEnvelope, ChunkSignature};
use stream::dataset::leaf::{chunk_leaf, leaf_data};
use stream::dataset::proof::hashes_hex;
use stream::dataset::tree::{self, Hash, RootBuilder};

const N: usize = 100_000;
const MIN_TIME: Duration = Duration::from_millis(1500);

/// Calls `f` until MIN_TIME has passed; returns seconds per call.
fn per_call(mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < MIN_TIME {
        f();
        n += 1;
    }
    start.elapsed().as_secs_f64() / n as f64
}

fn envelope(index: u64) -> ChunkEnvelope {
    let h = stream::hexenc::sha256_0x(&index.to_be_bytes());
    ChunkEnvelope {
        schema_version: stream::chain::CHUNK_SCHEMA_VERSION.into(),
        chunk_id: h.clone(),
        previous_chunk_id: None,
        index,
        encrypted_data_hash: h.clone(),
        plaintext_hash: h.clone(),
        storage_ref: None,
        encryption: ChunkEncryption {
            algorithm: "xchacha20-poly1305".into(),
            nonce: "00".repeat(24),
            key_commitment: h.replace("0x", "sha256:"),
            key_recipients: vec![],
        },
        signature: ChunkSignature {
            algorithm: "ed25519".into(),
            machine_did: "did:peaq:0x00".into(),
            key_id: "k".into(),
            public_key_hex: "00".repeat(32),
            value: "00".repeat(64),
        },
    }
}

fn main() {
    let chunk = envelope(123_456);
    let data = leaf_data(&chunk);
    let leaf = per_call(|| {
        black_box(chunk_leaf(black_box(&chunk)));
    });
    let sha_leaf = per_call(|| {
        black_box(Sha256::digest(black_box(&data)));
    });

    let leaves: Vec<Hash> = (0..N as u64).map(|i| chunk_leaf(&envelope(i))).collect();
    let root = tree::root(&leaves);
    let builder_time = per_call(|| {
        let mut b = RootBuilder::default();
        leaves.iter().for_each(|l| b.push(*l));
        assert_eq!(b.root(), root);
    });
    let nodes = per_call(|| {
        let mut h = [0u8; 32];
        for l in &leaves[1..] {
            h = tree::node_hash(&h, black_box(l));
        }
        black_box(h);
    });

    // Inclusion: paths of many leaves, checked in turn.
    let picks: Vec<usize> = (0..64).map(|i| (i * 1567 + 11) % N).collect();
    let paths: Vec<Vec<Hash>> = picks
        .iter()
        .map(|&i| tree::inclusion_path(&leaves, i).unwrap())
        .collect();
    let mut k = 0;
    let inclusion = per_call(|| {
        let i = k % picks.len();
        k += 1;
        assert!(tree::verify_inclusion(
            &leaves[picks[i]],
            picks[i] as u64,
            N as u64,
            &paths[i],
            &root
        ));
    });
    let longest = paths.iter().map(Vec::len).max().unwrap_or(0);
    let path_hashes = per_call(|| {
        let mut h = [1u8; 32];
        for _ in 0..longest {
            h = tree::node_hash(black_box(&h), &h);
        }
        black_box(h);
    });
    let inclusion_json = serde_json::json!({
        "schemaVersion": "peaq.stream.dataset.inclusion.v1",
        "merkleRoot": stream::hexenc::digest_0x(&root),
        "treeSize": N, "leafIndex": picks[0], "chunkIndex": picks[0],
        "chunkId": chunk.chunk_id, "leafHash": chunk.chunk_id,
        "auditPath": hashes_hex(&paths[0]),
    })
    .to_string()
    .len();

    // Consistency: from several older sizes to N.
    let olds: Vec<usize> = [1, 1000, 33_333, 65_536, 99_999].to_vec();
    let proofs: Vec<(usize, Hash, Vec<Hash>)> = olds
        .iter()
        .map(|&m| {
            (
                m,
                tree::root(&leaves[..m]),
                tree::consistency_path(&leaves, m).unwrap(),
            )
        })
        .collect();
    let mut k = 0;
    let consistency = per_call(|| {
        let (m, old_root, proof) = &proofs[k % proofs.len()];
        k += 1;
        assert!(tree::verify_consistency(
            *m as u64, N as u64, old_root, &root, proof
        ));
    });
    let consistency_hashes = proofs.iter().map(|p| p.2.len()).max().unwrap_or(0);

    let json = serde_json::json!({
        "leaves": N,
        "leaves_per_s": 1.0 / leaf,
        "sha256_leaf_per_s": 1.0 / sha_leaf,
        "root_100k_ms": builder_time * 1e3,
        "sha256_100k_nodes_ms": nodes * 1e3,
        "root_builder_stack": 64 - (N as u64).leading_zeros(),
        "inclusion_check_us": inclusion * 1e6,
        "inclusion_path_hashes": longest,
        "sha256_path_us": path_hashes * 1e6,
        "inclusion_proof_json_bytes": inclusion_json,
        "consistency_check_us": consistency * 1e6,
        "consistency_proof_hashes_max": consistency_hashes,
    });
    println!("{json}");
}
