//! Request parsing and envelope validation: arbitrary bytes as keyd's protobuf requests,
//! every envelope through the identity key's purpose check, every chunk hash and commitment
//! through the chain key's, every chunk envelope through the grant parser. Nothing may panic, and an accepted envelope must be exactly the
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

fuzz_target!(|data: &[u8]| {
    check(data);
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
