//! Baselines for `scripts/bench`, measured single-threaded in the same run as the
//! commands they are compared with. Prints one JSON object on stdout.
//!
//! - `aead_sha_mbps`: XChaCha20-Poly1305 over 256 KiB chunks plus the three SHA-256 passes
//!   the format requires per byte (plaintext hash, ciphertext hash, source hash): the
//!   primitive limit of `publish` on one core.
//! - `aead_mbps`, `sha256_mbps`: each primitive alone.
//! - `seal_chunk_mbps`: our whole per-chunk work (key, 3 sealed boxes, AEAD, 2 hashes,
//!   Ed25519 signature) on one core.
//! - `eip191_signs_per_s`: k256 EIP-191 signatures over a 300-byte envelope, in process.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use stream::chain::{seal_chunk, CHUNK_ALGORITHM};
use stream::keys::{BoxKey, ChainKey, IdentityKey, Secret32};
use stream::local::{LocalChunkKeys, LocalChunkSigner, RecipientSpec};
use stream::signer::ChunkKeySource;

const CHUNK: usize = 262_144;
const MIN_TIME: Duration = Duration::from_millis(1500);

/// Runs `f` (which processes `bytes` bytes) until MIN_TIME has passed; returns MB/s.
fn rate(bytes: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < MIN_TIME {
        f();
        n += 1;
    }
    (n as f64 * bytes as f64) / start.elapsed().as_secs_f64() / 1e6
}

fn signer_sign(signer: &LocalChunkSigner) -> [u8; 64] {
    use stream::signer::ChunkHashSigner;
    signer
        .sign_chunks(&[stream::signer::ChunkToSign {
            encrypted_data_hash:
                "0x5df6e0e2761359d30a8275058e299fcc0381534545f55cf43e41983f5d4c9456",
            key_commitment:
                "sha256:5df6e0e2761359d30a8275058e299fcc0381534545f55cf43e41983f5d4c9456",
        }])
        .unwrap()[0]
}

fn main() {
    let mut data = vec![0x5au8; CHUNK];
    let cipher = XChaCha20Poly1305::new(&[7u8; 32].into());
    let nonce = XNonce::from([9u8; 24]);

    let aead_sha = rate(CHUNK, || {
        let mut source = Sha256::new();
        source.update(&data);
        let plain_hash = Sha256::digest(&data);
        let tag = cipher
            .encrypt_in_place_detached(&nonce, b"", &mut data)
            .unwrap();
        let mut h = Sha256::new();
        h.update(&data);
        h.update(tag);
        black_box((plain_hash, h.finalize(), source.finalize()));
    });
    let aead = rate(CHUNK, || {
        black_box(
            cipher
                .encrypt_in_place_detached(&nonce, b"", &mut data)
                .unwrap(),
        );
    });
    let sha = rate(CHUNK, || {
        black_box(Sha256::digest(&data));
    });

    let boxes: Vec<RecipientSpec> = ["owner", "operator", "machine"]
        .iter()
        .enumerate()
        .map(|(i, role)| {
            let public =
                BoxKey::from_secret(&Secret32::from_bytes([i as u8 + 1; 32])).public_key_hex();
            RecipientSpec::new(&format!("{role}-1"), role, &public).unwrap()
        })
        .collect();
    let keys = LocalChunkKeys::new(boxes);
    let signer = LocalChunkSigner::new(
        ChainKey::from_secret(&Secret32::from_bytes([4; 32])),
        "did:peaq:0x00".into(),
        "k".into(),
    );
    let seal = rate(CHUNK, || {
        let key = keys.new_chunk_keys(1).unwrap().pop().unwrap();
        black_box(seal_chunk(data.clone(), key, &signer, 0).unwrap());
    });

    let recipient = BoxKey::from_secret(&Secret32::from_bytes([6; 32])).box_public_key();
    let chunk_key = Secret32::from_bytes([8; 32]);
    let seal_us = 1.0
        / rate(1, || {
            black_box(stream::sealed::seal_key(&chunk_key, &recipient).unwrap());
        });
    let sign_us = 1.0
        / rate(1, || {
            black_box(signer_sign(&signer));
        });

    let identity = IdentityKey::from_secret(&Secret32::from_bytes([5; 32])).unwrap();
    let envelope = vec![b'x'; 300];
    let signs = rate(1, || {
        black_box(stream::package::sign_eip191(
            identity.signing_key(),
            &envelope,
        ));
    }) * 1e6;

    println!(
        "{{\"chunk_bytes\":{CHUNK},\"cipher\":\"{CHUNK_ALGORITHM}\",\"aead_sha_mbps\":{aead_sha:.1},\"aead_mbps\":{aead:.1},\"sha256_mbps\":{sha:.1},\"seal_chunk_mbps\":{seal:.1},\"eip191_signs_per_s\":{signs:.0},\"seal_key_us\":{seal_us:.1},\"ed25519_sign_us\":{sign_us:.1}}}"
    );
}
