//! Datasets over a real chain of signed packages: built, signed, checked, and refused when
//! anything in them or their chunks is changed.

use stream::chain::{seal_chunk, ChainOutput, ChainWriter, ChunkEnvelope};
use stream::dataset::index::{span_of_lines, PackageSpan};
use stream::dataset::leaf::chunk_leaf;
use stream::dataset::{self, DatasetBuilder, DatasetDocument, DatasetFailure, RangeCheck};
use stream::keys::{BoxKey, ChainKey, IdentityKey, Secret32};
use stream::local::{LocalChunkKeys, LocalChunkSigner, RecipientSpec};
use stream::package::{self, PackageParts};
use stream::signer::ChunkKeySource;

struct Chain {
    envelopes: Vec<ChunkEnvelope>,
    bins: Vec<Vec<u8>>,
    plaintexts: Vec<Vec<u8>>,
    identity: IdentityKey,
    machine: BoxKey,
}

impl ChainOutput for Chain {
    fn write_chunk(
        &mut self,
        envelope: &ChunkEnvelope,
        ciphertext: &[u8],
    ) -> Result<(), stream::layout::LayoutError> {
        self.envelopes.push(envelope.clone());
        self.bins.push(ciphertext.to_vec());
        Ok(())
    }
    fn write_manifest(
        &mut self,
        _: &stream::layout::Manifest,
    ) -> Result<(), stream::layout::LayoutError> {
        Ok(())
    }
}

/// `chunks` chunks of 3 signed packages each, one second apart.
fn chain(chunks: usize) -> Chain {
    let identity = IdentityKey::from_secret(&Secret32::from_bytes([7; 32])).unwrap();
    let did = identity.did();
    let machine = BoxKey::from_secret(&Secret32::from_bytes([3; 32]));
    let signer = LocalChunkSigner::new(
        ChainKey::from_secret(&Secret32::from_bytes([4; 32])),
        did.clone(),
        format!("{did}#keys-1"),
    );
    let source = LocalChunkKeys::new(vec![RecipientSpec::new(
        "machine-1",
        "machine",
        &machine.public_key_hex(),
    )
    .unwrap()]);
    let mut writer = ChainWriter::new(&did, 1 << 20);
    let mut out = Chain {
        envelopes: vec![],
        bins: vec![],
        plaintexts: vec![],
        identity,
        machine,
    };
    let mut seq = 0u64;
    for _ in 0..chunks {
        let mut plaintext = Vec::new();
        for _ in 0..3 {
            let timestamp = format!("\"2026-12-01T10:{:02}:{:02}.000001Z\"", seq / 60, seq % 60);
            let sequence = seq.to_string();
            let parts = PackageParts {
                did: &did,
                timestamp: &timestamp,
                schema_version: "\"1\"",
                sequence_number: &sequence,
                payload: "{\"x\":1}",
            };
            let signature = package::sign_eip191(out.identity.signing_key(), &parts.envelope());
            plaintext.extend_from_slice(
                parts
                    .line(&package::signature_hex(&signature), Some("k"))
                    .as_bytes(),
            );
            plaintext.push(b'\n');
            seq += 1;
        }
        out.plaintexts.push(plaintext.clone());
        writer.absorb(&plaintext);
        let key = source.new_chunk_keys(1).unwrap().pop().unwrap();
        let sealed = seal_chunk(plaintext, key, &signer, writer.next_index()).unwrap();
        writer.append(sealed, &mut out).unwrap();
    }
    out
}

fn sign(chain: &Chain, doc: DatasetDocument) -> DatasetDocument {
    let signature =
        package::sign_eip191(chain.identity.signing_key(), &doc.signing_bytes().unwrap());
    let key_id = format!("{}#keys-1", doc.machine_did);
    doc.signed(&key_id, &signature)
}

fn build(chain: &Chain, from: u64, to: u64) -> DatasetDocument {
    let mut builder = DatasetBuilder::new(from, &chain.identity.did());
    for i in from..=to {
        let span = span_of_lines(&chain.plaintexts[i as usize]).unwrap();
        builder
            .push(&chain.envelopes[i as usize], Some(&span))
            .unwrap();
    }
    sign(
        chain,
        builder
            .finish("/imu", "2026-12-01T12:00:00Z".into())
            .unwrap(),
    )
}

/// Checks `doc` against chunks `from..=to` of `envelopes`, decrypting with the machine key.
fn verify(
    chain: &Chain,
    doc: &DatasetDocument,
    envelopes: &[ChunkEnvelope],
    bins: &[Vec<u8>],
) -> Result<(), DatasetFailure> {
    dataset::check_document(doc)?;
    let mut options = dataset::chain_options(doc)?;
    options.recipient = Some(&chain.machine);
    let mut check = RangeCheck::new(doc, &options);
    for chunk in envelopes
        .iter()
        .filter(|c| c.index >= doc.first_index && c.index <= doc.last_index)
    {
        let mut read = |i: u64| Ok(bins.get(i as usize).cloned());
        let plaintext = check.chunk(chunk, &mut read)?.expect("decrypted");
        dataset::check_packages(doc, chunk.index, &plaintext)?;
    }
    check.finish().map(|_| ())
}

#[test]
fn a_built_dataset_verifies_and_round_trips() {
    let chain = chain(8);
    let doc = build(&chain, 2, 6);
    assert_eq!((doc.first_index, doc.last_index, doc.tree_size), (2, 6, 5));
    let range = doc.time_range.clone().unwrap();
    assert_eq!(
        (range.from.as_str(), range.to.as_str()),
        ("2026-12-01T10:00:06.000001Z", "2026-12-01T10:00:20.000001Z")
    );
    let text = doc.to_file_text().unwrap();
    let read = DatasetDocument::from_json(text.as_bytes()).unwrap();
    assert_eq!(read, doc);
    verify(&chain, &read, &chain.envelopes, &chain.bins).unwrap();
    // The root is MTH over the leaves.
    let leaves: Vec<_> = chain.envelopes[2..=6].iter().map(chunk_leaf).collect();
    assert_eq!(doc.root().unwrap(), dataset::tree::root(&leaves));
}

fn failure(result: Result<(), DatasetFailure>) -> &'static str {
    result.expect_err("must be refused").check
}

#[test]
fn tampering_is_refused_and_named() {
    let chain = chain(8);
    let doc = build(&chain, 2, 6);
    // The document: root or range edited after signing.
    let mut edited = doc.clone();
    edited.merkle_root = format!("0x{}", "11".repeat(32));
    assert_eq!(
        failure(verify(&chain, &edited, &chain.envelopes, &chain.bins)),
        "datasetSignature"
    );
    let mut edited = doc.clone();
    edited.last_index = 5;
    edited.tree_size = 4;
    assert_eq!(
        failure(verify(&chain, &edited, &chain.envelopes, &chain.bins)),
        "datasetSignature"
    );
    // Re-signed by another key.
    let mut foreign = doc.clone();
    let other = IdentityKey::from_secret(&Secret32::from_bytes([9; 32])).unwrap();
    let signature = package::sign_eip191(other.signing_key(), &foreign.signing_bytes().unwrap());
    foreign = foreign.signed("x", &signature);
    assert_eq!(
        failure(verify(&chain, &foreign, &chain.envelopes, &chain.bins)),
        "datasetSignature"
    );
    // A root that the machine signed but the chunks do not give.
    let mut wrong = doc.clone();
    wrong.merkle_root = format!("0x{}", "22".repeat(32));
    let wrong = sign(&chain, wrong);
    assert_eq!(
        failure(verify(&chain, &wrong, &chain.envelopes, &chain.bins)),
        "merkleRoot"
    );
    // A chunk dropped, reordered, its key swapped, its ciphertext edited.
    let mut dropped = chain.envelopes.clone();
    dropped.remove(4);
    assert_eq!(
        failure(verify(&chain, &doc, &dropped, &chain.bins)),
        "index"
    );
    let mut reordered = chain.envelopes.clone();
    reordered.swap(3, 4);
    assert_eq!(
        failure(verify(&chain, &doc, &reordered, &chain.bins)),
        "index"
    );
    let mut swapped = chain.envelopes.clone();
    swapped[3].encryption = chain.envelopes[5].encryption.clone();
    assert_eq!(
        failure(verify(&chain, &doc, &swapped, &chain.bins)),
        "decrypt"
    );
    // Without decrypting, a swapped key commitment still changes the leaf.
    let mut swapped = chain.envelopes.clone();
    swapped[3].encryption.key_commitment = chain.envelopes[5].encryption.key_commitment.clone();
    let options = dataset::chain_options(&doc).unwrap();
    let mut check = RangeCheck::new(&doc, &options);
    for chunk in &swapped[2..=6] {
        check.envelope(chunk).unwrap();
    }
    assert_eq!(check.finish().unwrap_err().check, "merkleRoot");
    let mut bins = chain.bins.clone();
    bins[5][0] ^= 1;
    assert_eq!(
        failure(verify(&chain, &doc, &chain.envelopes, &bins)),
        "encryptedDataHash"
    );
    let short: Vec<_> = chain.envelopes[..6].to_vec();
    assert_eq!(
        failure(verify(&chain, &doc, &short, &chain.bins)),
        "missing"
    );
    // A time range the packages do not fall in.
    let mut narrow = doc.clone();
    narrow.time_range.as_mut().unwrap().to = "2026-12-01T10:00:10Z".into();
    let narrow = sign(&chain, narrow);
    assert_eq!(
        failure(verify(&chain, &narrow, &chain.envelopes, &chain.bins)),
        "timeRange"
    );
}

#[test]
fn inclusion_and_consistency_proofs() {
    let chain = chain(9);
    let doc = build(&chain, 1, 7);
    let leaves: Vec<_> = chain.envelopes[1..=7].iter().map(chunk_leaf).collect();
    for chunk in &chain.envelopes[1..=7] {
        let proof = dataset::make_inclusion(&doc, &leaves, chunk).unwrap();
        let text = proof.to_file_text().unwrap();
        let proof = dataset::InclusionProof::from_json(text.as_bytes()).unwrap();
        dataset::check_inclusion(&doc, &proof, chunk).unwrap();
        // Another chunk, or the chunk with another key commitment, is not in it.
        let other = &chain.envelopes[if chunk.index == 7 {
            1
        } else {
            chunk.index as usize + 1
        }];
        assert_eq!(
            dataset::check_inclusion(&doc, &proof, other)
                .unwrap_err()
                .check,
            "proof"
        );
        let mut swapped = chunk.clone();
        swapped.encryption.key_commitment = chain.envelopes[8].encryption.key_commitment.clone();
        assert_eq!(
            dataset::check_inclusion(&doc, &proof, &swapped)
                .unwrap_err()
                .check,
            "proof"
        );
        let mut bad = proof.clone();
        if let Some(first) = bad.audit_path.first_mut() {
            *first = format!("0x{}", "33".repeat(32));
            assert_eq!(
                dataset::check_inclusion(&doc, &bad, chunk)
                    .unwrap_err()
                    .check,
                "auditPath"
            );
        }
    }
    assert!(dataset::make_inclusion(&doc, &leaves, &chain.envelopes[8]).is_err());

    let old = build(&chain, 1, 3);
    let new = build(&chain, 1, 8);
    let new_leaves: Vec<_> = chain.envelopes[1..=8].iter().map(chunk_leaf).collect();
    let proof = dataset::make_consistency(&old, &new, &new_leaves).unwrap();
    let proof =
        dataset::ConsistencyProof::from_json(proof.to_file_text().unwrap().as_bytes()).unwrap();
    dataset::check_consistency(&old, &new, &proof).unwrap();
    let elsewhere = build(&chain, 2, 8);
    assert_eq!(
        dataset::check_consistency(&old, &elsewhere, &proof)
            .unwrap_err()
            .check,
        "consistency"
    );
    let mut bad = proof.clone();
    bad.proof[0] = format!("0x{}", "44".repeat(32));
    assert_eq!(
        dataset::check_consistency(&old, &new, &bad)
            .unwrap_err()
            .check,
        "consistency"
    );
}

#[test]
fn a_chain_of_bytes_has_no_time_range_and_documents_are_strict() {
    let chain = chain(3);
    let mut builder = DatasetBuilder::new(0, &chain.identity.did());
    builder
        .push(&chain.envelopes[0], Some(&PackageSpan::default()))
        .unwrap();
    builder.push(&chain.envelopes[1], None).unwrap();
    let doc = sign(
        &chain,
        builder
            .finish("file", "2026-12-01T12:00:00Z".into())
            .unwrap(),
    );
    assert!(doc.time_range.is_none());
    verify(&chain, &doc, &chain.envelopes, &chain.bins).unwrap();
    // A builder of another DID refuses the chunks.
    let mut other = DatasetBuilder::new(0, "did:peaq:0x0000000000000000000000000000000000000001");
    assert_eq!(
        other.push(&chain.envelopes[0], None).unwrap_err().check,
        "expectedDid"
    );
    // Unknown fields, a wrong schema, a size that is not the range's: named.
    let mut value: serde_json::Value = serde_json::from_str(&doc.to_file_text().unwrap()).unwrap();
    value["price"] = 1.into();
    let err = DatasetDocument::from_value(value.clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("price"), "{err}");
    value.as_object_mut().unwrap().remove("price");
    value["treeSize"] = 3.into();
    let err = DatasetDocument::from_value(value.clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("treeSize"), "{err}");
    // A range of 2^64 chunks does not overflow.
    value["firstIndex"] = 0.into();
    value["lastIndex"] = u64::MAX.into();
    value["treeSize"] = 0.into();
    let err = DatasetDocument::from_value(value).unwrap_err().to_string();
    assert!(err.contains("2^64"), "{err}");
}

#[test]
fn a_signature_verdict_vouches_only_for_its_own_chunk() {
    use stream::chain::{ChainCheck, SignatureVerdict, VerifyOptions};
    let chain = chain(2);
    let good = SignatureVerdict::of(&chain.envelopes[0]);
    assert!(good.valid());
    let mut forged = chain.envelopes[0].clone();
    forged.signature.value = "00".repeat(64);
    let options = VerifyOptions::default();
    let err = ChainCheck::new(&options, 0)
        .envelope_checked(&forged, &good)
        .unwrap_err();
    assert_eq!(err.check(), "signature");
    ChainCheck::new(&options, 0)
        .envelope_checked(&chain.envelopes[0], &good)
        .unwrap();
}
