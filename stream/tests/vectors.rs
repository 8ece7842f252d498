//! Known-answer vectors made once with the reference implementation (`tests/vectors/`,
//! `scripts/make-vectors.py`): byte compatibility checked without Python.

use std::path::{Path, PathBuf};

use stream::access::{pack_files, read_access_dir, BuyerAccessEntry};
use stream::chain::{decrypt_chunk, verify_chain, ChunkEnvelope, VerifyOptions};
use stream::json::{self, Value};
use stream::keys::{read_secret_file, BoxKey, IdentityKey};
use stream::layout;
use stream::local::{LocalFieldEncryptor, LocalPackageSigner};
use stream::rules::parse_map;
use stream::sign::{sign_batch, UnsignedMessage};

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(vectors().join(name)).unwrap()
}

fn key(name: &str) -> stream::keys::Secret32 {
    read_secret_file(&vectors().join("keys").join(name), "a test key").unwrap()
}

#[test]
fn canonical_json_as_the_reference_writes_it() {
    let cases: Vec<Value> = serde_json::from_str(&read("canonical.json")).unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let input = json::parse(case["json"].as_str().unwrap()).unwrap();
        assert_eq!(
            json::canonical(&input).unwrap(),
            case["canonical"].as_str().unwrap(),
            "{}",
            case["json"]
        );
    }
}

#[test]
fn packages_as_the_reference_signs_them() {
    let rules = parse_map(&read("map.json"), "map.json").unwrap();
    let messages: Vec<UnsignedMessage> = read("messages.jsonl")
        .lines()
        .map(|l| UnsignedMessage::from_json(l).unwrap())
        .collect();
    let did = read("keys/identity.did").trim().to_string();
    let signer = LocalPackageSigner::with_did(
        IdentityKey::from_secret(&key("identity.key")).unwrap(),
        &did,
    )
    .unwrap();
    let fields = LocalFieldEncryptor::new(&key("field.key"));
    let ours = sign_batch(
        &messages,
        |t| rules.for_topic(t),
        &signer,
        &fields,
        &format!("{did}#keys-1"),
    )
    .unwrap();
    let theirs: Vec<Value> = read("packages.jsonl")
        .lines()
        .map(|l| json::parse(l).unwrap())
        .collect();
    assert_eq!(ours.len(), theirs.len());
    for (mine, theirs) in ours.into_iter().zip(theirs) {
        let mine = json::parse(mine.unwrap().as_str()).unwrap();
        // The same payload bytes and, deterministic (RFC 6979), the same signature.
        assert_eq!(
            json::canonical(&mine["payload"]).unwrap(),
            json::canonical(&theirs["payload"]).unwrap()
        );
        assert_eq!(mine["signature"], theirs["signature"]);
        assert_eq!(mine["did"], theirs["did"]);
    }
}

#[test]
fn a_reference_chain_verifies_decrypts_and_is_laid_out_as_we_write() {
    let dir = vectors().join("chain");
    let chunks = layout::read_chunks(&dir).unwrap();
    let manifest = layout::read_manifest(&dir).unwrap().unwrap();
    let owner = BoxKey::from_secret(&key("owner.key"));
    let chain_public = stream::keys::ChainKey::from_secret(&key("chain.key")).public_key_hex();
    let mut plain = Vec::new();
    verify_chain(
        &chunks,
        |i| layout::read_ciphertext(&dir, i).map_err(|e| e.to_string()),
        &VerifyOptions {
            expect_public_key: Some(hex::decode(&chain_public).unwrap().try_into().unwrap()),
            expect_total_chunks: Some(manifest.total_chunks),
            recipient: Some(&owner),
            expect_source_hash: Some(&manifest.source_hash),
            ..VerifyOptions::default()
        },
        |_, p| plain.extend_from_slice(p),
    )
    .unwrap();
    assert_eq!(
        plain,
        std::fs::read(vectors().join("chain-input.bin")).unwrap()
    );
    for chunk in &chunks {
        let file =
            std::fs::read_to_string(dir.join(format!("chunk-{}.json", chunk.index))).unwrap();
        assert_eq!(chunk.to_file_text().unwrap(), file, "chunk {}", chunk.index);
    }
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let ours = layout::Manifest {
        created_at: manifest.created_at.clone(),
        ..manifest
    };
    assert_eq!(ours.to_file_text(), text);
}

#[test]
fn reference_access_files_open_and_pack_as_we_pack_them() {
    let dir = vectors().join("chain");
    let chunks: Vec<ChunkEnvelope> = layout::read_chunks(&dir).unwrap();
    let access = read_access_dir(&vectors().join("access"), "buyer-1").unwrap();
    let buyer = BoxKey::from_secret(&key("buyer.key"));
    let mut plain = Vec::new();
    for chunk in &chunks {
        let entry = &access[&chunk.chunk_id];
        let ciphertext = layout::read_ciphertext(&dir, chunk.index).unwrap().unwrap();
        plain.extend(decrypt_chunk(chunk, entry, &buyer, &ciphertext).unwrap());
    }
    assert_eq!(
        plain,
        std::fs::read(vectors().join("chain-input.bin")).unwrap()
    );
    // The files, in order, from their entries: our packing gives the same bytes.
    let mut names: Vec<_> = std::fs::read_dir(vectors().join("access"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut entries: Vec<BuyerAccessEntry> = Vec::new();
    let mut texts = Vec::new();
    for name in &names {
        let text = std::fs::read_to_string(vectors().join("access").join(name)).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        for e in doc["entries"].as_array().unwrap() {
            entries.push(serde_json::from_value(e.clone()).unwrap());
        }
        texts.push((name.clone(), text));
    }
    let buyer_hex = read("keys/buyer.pub").trim().to_string();
    let files = pack_files(&buyer_hex, &entries, 1200);
    let ours: Vec<(String, String)> = files.into_iter().map(|f| (f.file_name, f.text)).collect();
    assert_eq!(ours, texts);
}
