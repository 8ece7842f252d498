//! Generates the tonic client and server from proto/keyd.proto with the protoc shipped by
//! the `protoc-bin-vendored` crate, so no system protoc is needed; also writes the file
//! descriptor set that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("keyd_descriptor.bin"))
        // ChunkKey carries a plaintext chunk key: its Debug is written by hand, redacted.
        .skip_debug(["keyd.v1.ChunkKey"])
        .compile_protos(&["proto/keyd.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/keyd.proto");
    Ok(())
}
