//! Request parsing and envelope validation: arbitrary bytes as keyd's protobuf requests,
//! every envelope through the identity key's purpose check, every chunk hash and commitment
//! through the chain key's, every chunk envelope through the grant parser, every dataset
//! document through the identity key's dataset check. Nothing may panic, and an accepted envelope must be exactly the
//! canonical form of what it parses to.
#![no_main]

use keyd_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const DID: &str = "did:peaq:0x00000000000000000000000000000000000000aa";

fn check(envelope: &[u8]) {
    if let Ok(_sequence) = keyd::service::purpose::check_envelope(envelope, DID) {
        let value = stream::json::parse_slice(envelope).expect("accepted envelopes parse");
        assert_eq!(stream::json::canonical_bytes(&value).expect("and are canonical"), envelope);
    }
}

fn check_dataset(document: &[u8]) {
    let key = "ab".repeat(32);
    if keyd::service::purpose::check_dataset(document, DID, &key).is_ok() {
        let doc = stream::dataset::DatasetDocument::from_json(document).expect("accepted datasets parse");
        assert_eq!(doc.signing_bytes().expect("and serialize"), document, "accepted datasets are canonical");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check_dataset(data);
    if let Ok(request) = v1::SignDatasetRequest::decode(data) {
        check_dataset(&request.document);
    }
    if let Ok(request) = v1::SignPackagesRequest::decode(data) {
        request.envelopes.iter().for_each(|e| check(e));
    }
    if let Ok(request) = v1::GrantRequest::decode(data) {
        for envelope in &request.chunk_envelopes {
            let _ = stream::chain::ChunkEnvelope::from_json(envelope);
        }
        let _ = stream::access::BuyerIdentity::new(&request.buyer_recipient_id, &request.buyer_public_key_hex);
    }
    if let Ok(request) = v1::SignChunkHashesRequest::decode(data) {
        for (hash, commitment) in request.hashes.iter().zip(&request.key_commitments) {
            if let Ok(pair) = keyd::service::purpose::chunk_pair(hash, commitment) {
                assert_eq!(format!("0x{}", hex::encode(pair.0)), *hash);
            }
        }
    }
});
