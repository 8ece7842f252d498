//! Embeds the standard `.msg` definitions shipped in `interfaces/` into the binary.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    // Read at run time: a build script binary reused from another checkout must not
    // look in that checkout.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest_dir).join("interfaces");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut entries = Vec::new();
    for package in std::fs::read_dir(&root).expect("agent/interfaces exists") {
        let package = package.expect("readable").path();
        let msg_dir = package.join("msg");
        println!("cargo:rerun-if-changed={}", msg_dir.display());
        for file in std::fs::read_dir(&msg_dir).expect("each package has msg/") {
            let file = file.expect("readable").path();
            if file.extension().and_then(|e| e.to_str()) == Some("msg") {
                let pkg = package.file_name().unwrap().to_string_lossy().into_owned();
                let name = file.file_stem().unwrap().to_string_lossy().into_owned();
                entries.push((format!("{pkg}/{name}"), file));
            }
        }
    }
    entries.sort();
    let mut code = String::from("/// `(package/Name, .msg text)` of every shipped definition.\npub static SHIPPED: &[(&str, &str)] = &[\n");
    for (name, path) in entries {
        writeln!(
            code,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    code.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("shipped_interfaces.rs");
    std::fs::write(out, code).unwrap();
}
