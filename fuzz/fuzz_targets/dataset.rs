//! Dataset documents, proofs and the agent's chunk index: any bytes parse or fail cleanly;
//! a document that parses writes and reads back to itself, and its signature check answers
//! without panicking; proofs of any shape check (or fail) in O(log n) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stream::dataset::{self, index, tree, ConsistencyProof, DatasetDocument, InclusionProof};

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = DatasetDocument::from_json(data) {
        let _ = doc.verify_signature();
        let text = doc.to_file_text().expect("a parsed document writes");
        let again = DatasetDocument::from_json(text.as_bytes()).expect("and reads back");
        assert_eq!(again, doc);
        assert_eq!(again.signing_bytes(), doc.signing_bytes());
    }
    if let Ok(proof) = InclusionProof::from_json(data) {
        let path = dataset::proof::parse_hashes("auditPath", &proof.audit_path).expect("checked on reading");
        let _ = tree::verify_inclusion(&[0; 32], proof.leaf_index, proof.tree_size, &path, &[1; 32]);
    }
    if let Ok(proof) = ConsistencyProof::from_json(data) {
        let hashes = dataset::proof::parse_hashes("proof", &proof.proof).expect("checked on reading");
        let _ = tree::verify_consistency(proof.old_tree_size, proof.new_tree_size, &[0; 32], &[1; 32], &hashes);
    }
    let _ = index::line_head(data);
    let _ = index::span_of_lines(data);
    // Raw sizes and indices with a path cut from the input.
    if data.len() >= 16 {
        let (a, b) = (u64::from_le_bytes(data[..8].try_into().unwrap()), u64::from_le_bytes(data[8..16].try_into().unwrap()));
        let path: Vec<tree::Hash> = data[16..].chunks_exact(32).map(|c| c.try_into().unwrap()).collect();
        let _ = tree::verify_inclusion(&[0; 32], a, b, &path, &[1; 32]);
        let _ = tree::verify_consistency(a, b, &[0; 32], &[1; 32], &path);
    }
});
