//! Spool recovery after a crash: whatever a torn write left in the state slots, the open
//! chunk and the output directory, opening the spool recovers or refuses with an error,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

const DID: &str = "did:peaq:0x00000000000000000000000000000000000000aa";

fuzz_target!(|data: &[u8]| {
    // The input, cut in four: state-0, state-1, open.jsonl, chunk-0.json.
    let quarter = data.len() / 4;
    let parts = [&data[..quarter], &data[quarter..2 * quarter], &data[2 * quarter..3 * quarter], &data[3 * quarter..]];
    let Ok(dir) = tempfile::tempdir() else { return };
    let (spool, out) = (dir.path().join("spool"), dir.path().join("out"));
    for d in [&spool, &out] {
        if std::fs::create_dir_all(d).is_err() {
            return;
        }
    }
    let files = [spool.join("state-0"), spool.join("state-1"), spool.join("open.jsonl"), out.join("chunk-0.json")];
    for (file, bytes) in files.iter().zip(parts) {
        if !bytes.is_empty() && std::fs::write(file, bytes).is_err() {
            return;
        }
    }
    let _ = edge_agent::spool::TopicSpool::open(&spool, &out, DID, 1024, None);
});
