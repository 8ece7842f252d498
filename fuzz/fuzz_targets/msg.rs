//! `.msg` definitions: any text parses or fails with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = edge_agent::msg::parse::parse_msg("fuzz_msgs", text);
    }
});
