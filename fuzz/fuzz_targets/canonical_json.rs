//! Canonical JSON: any bytes parse or fail cleanly; what parses writes canonically without
//! panicking, and writing is idempotent (canonical of canonical is itself).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = stream::json::parse_slice(data) else {
        return;
    };
    let _ = stream::json::python_dumps(&value, stream::json::Layout::Indent2);
    if let Ok(text) = stream::json::canonical(&value) {
        let again = stream::json::parse(&text).expect("canonical JSON parses");
        assert_eq!(stream::json::canonical(&again).expect("and is canonical"), text);
    }
});
