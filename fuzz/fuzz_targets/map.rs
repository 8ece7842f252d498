//! Data Event Maps: any text is a map or an error naming file, line and key; never a panic
//! (the agent's reader and the field rules' reader).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = stream::rules::parse_map(text, "fuzz.yaml");
    if let Err(e) = edge_agent::config::AgentConfig::parse(text, std::path::Path::new("/fuzz/map.yaml")) {
        let _ = e.to_string();
    }
});
