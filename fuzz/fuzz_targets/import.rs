//! `edge-agent import`'s parsers: whatever bytes a bag file or an import journal holds,
//! reading them ends in messages or an error naming the file, never a panic (and no record
//! above the reader's limit is buffered).
#![no_main]

use edge_agent::import::bag::{Bag, BagError, Flow};
use edge_agent::import::journal::Journal;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let bag = dir.path().join("bag.mcap");
    if std::fs::write(&bag, data).is_err() {
        return;
    }
    if let Ok(bag) = Bag::open(&bag) {
        let _ = bag.read::<BagError>(
            |_, m| {
                let _ = (m.topic.len(), m.type_name.len(), m.data.len(), m.log_time_ns);
                Ok(Flow::Continue)
            },
            |_| {},
        );
    }
    let journal = dir.path().join("import.journal");
    if std::fs::write(&journal, data).is_err() {
        return;
    }
    let _ = Journal::open(&journal, "bag", 1836, &["/a".to_string(), "/b".to_string()]);
});
