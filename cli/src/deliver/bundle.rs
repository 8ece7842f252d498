//! An order's bundle: every file `consume --download-url` needs, flat, by name — the chain's
//! `manifest.json` (with a `files` list added: the bundle form the reference's consume reads
//! first), each `chunk-N.json` and `chunk-N.bin`, and the buyer's access files
//! (camelCase, as `grant` writes them and `consume` reads them).
//!
//! Ciphertexts are not copied into the bundle: each is a reference to where the chain keeps
//! it (a local file or an S3 object), read when the bundle is zipped or served.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use store::S3Bucket;
use stream::json::{self, Layout, Value};
use stream::layout::{self, ChunkFile};

use crate::output::{input, CliError};

/// Where one file's bytes are.
#[derive(Debug, Clone)]
pub enum Blob {
    /// Held in memory (envelopes, the manifest, access files).
    Bytes(Bytes),
    /// A local file of this size.
    File(PathBuf, u64),
    /// An S3 object of this size.
    S3 {
        /// The bucket.
        bucket: S3Bucket,
        /// The object key.
        key: String,
        /// Its size.
        size: u64,
    },
}

impl Blob {
    /// The size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Blob::Bytes(b) => b.len() as u64,
            Blob::File(_, size) | Blob::S3 { size, .. } => *size,
        }
    }
}

/// One file of a bundle.
#[derive(Debug, Clone)]
pub struct BundleFile {
    /// Its flat name (`chunk-3.bin`, `<buyer key>-1.json`).
    pub name: String,
    /// Its bytes.
    pub blob: Blob,
}

/// Every file of an order, `manifest.json` first.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The files.
    pub files: Vec<BundleFile>,
}

impl Bundle {
    /// The bytes, in all.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.blob.size()).sum()
    }

    /// A file by name.
    pub fn get(&self, name: &str) -> Option<&BundleFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// Where the chain's ciphertexts are read from.
pub enum Ciphertexts<'a> {
    /// The published directory.
    Dir(&'a Path),
    /// The chain's S3 prefix: `(key, size)` of every object listed there.
    S3 {
        /// The bucket.
        bucket: &'a S3Bucket,
        /// Its key prefix.
        prefix: &'a str,
        /// The listing.
        listed: &'a [(String, u64)],
    },
}

/// Puts together the bundle of a chain whose envelopes and manifest are in `envelopes_dir`,
/// with the buyer's access files `access` (name, text).
pub fn assemble(
    envelopes_dir: &Path,
    ciphertexts: Ciphertexts<'_>,
    access: Vec<(String, String)>,
) -> Result<Bundle, CliError> {
    let manifest_path = envelopes_dir.join("manifest.json");
    let manifest_bytes = std::fs::read(&manifest_path).map_err(|e| {
        input(format!(
            "{}: {e} (a chain is delivered with its manifest)",
            manifest_path.display()
        ))
    })?;
    let mut manifest = json::parse_slice(&manifest_bytes)
        .map_err(|e| input(format!("{}: {e}", manifest_path.display())))?;

    let chunks = layout::read_chunks(envelopes_dir).map_err(input)?;
    let mut files = Vec::with_capacity(2 * chunks.len() + access.len() + 1);
    for chunk in &chunks {
        let index = chunk.index;
        let json_name = format!("chunk-{index}.json");
        let text = std::fs::read(envelopes_dir.join(&json_name))
            .map_err(|e| input(format!("{json_name}: {e}")))?;
        let bin_name = format!("chunk-{index}.bin");
        let blob = match &ciphertexts {
            Ciphertexts::Dir(dir) => {
                let path = dir.join(&bin_name);
                let size = std::fs::metadata(&path)
                    .map_err(|e| input(format!("{}: {e}", path.display())))?
                    .len();
                Blob::File(path, size)
            }
            Ciphertexts::S3 {
                bucket,
                prefix,
                listed,
            } => {
                let key = format!("{prefix}{bin_name}");
                let size = listed
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, size)| *size)
                    .ok_or_else(|| input(format!("s3://{}/{key} is missing", bucket.name())))?;
                Blob::S3 {
                    bucket: (*bucket).clone(),
                    key,
                    size,
                }
            }
        };
        files.push(BundleFile {
            name: json_name,
            blob: Blob::Bytes(Bytes::from(text)),
        });
        files.push(BundleFile {
            name: bin_name,
            blob,
        });
    }
    for (name, text) in access {
        if layout::chunk_file(&name).is_some() || name == "manifest.json" {
            return Err(CliError::Check(format!(
                "access file name {name} collides with a chain file"
            )));
        }
        files.push(BundleFile {
            name,
            blob: Blob::Bytes(Bytes::from(text)),
        });
    }
    let names: Vec<Value> = files
        .iter()
        .map(|f| Value::String(f.name.clone()))
        .collect();
    let Some(map) = manifest.as_object_mut() else {
        return Err(input(format!(
            "{}: not a JSON object",
            manifest_path.display()
        )));
    };
    map.insert("files".into(), Value::Array(names));
    let mut text = json::python_dumps(&manifest, Layout::Indent2)
        .map_err(|e| input(format!("{}: {e}", manifest_path.display())))?;
    text.push('\n');
    files.insert(
        0,
        BundleFile {
            name: "manifest.json".into(),
            blob: Blob::Bytes(Bytes::from(text)),
        },
    );
    Ok(Bundle { files })
}

/// Whether `name` may be a file of a bundle (the reference's consume takes only these).
pub fn is_bundle_name(name: &str) -> bool {
    let Some(stem) = name
        .strip_suffix(".json")
        .or_else(|| name.strip_suffix(".bin"))
    else {
        return false;
    };
    !stem.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The kind of a bundle file, as the reference's consume sorts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `manifest.json` and `chunk-N.json`.
    Chain,
    /// `*.bin`.
    Data,
    /// Any other `*.json`: a buyer access file.
    Access,
}

/// How the reference's consume sorts `name`.
pub fn kind_of(name: &str) -> Kind {
    if name == "manifest.json" || matches!(layout::chunk_file(name), Some(ChunkFile::Envelope(_))) {
        Kind::Chain
    } else if name.ends_with(".bin") {
        Kind::Data
    } else {
        Kind::Access
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_the_reference_takes_them() {
        for ok in ["manifest.json", "chunk-0.bin", "aa-1.json", "a_b.c.json"] {
            assert!(is_bundle_name(ok), "{ok}");
        }
        for bad in [
            "../x.json",
            "a/b.json",
            ".json",
            "x.txt",
            "",
            "chunk-1.bin/",
        ] {
            assert!(!is_bundle_name(bad), "{bad}");
        }
        assert_eq!(kind_of("chunk-2.json"), Kind::Chain);
        assert_eq!(kind_of("chunk-2.bin"), Kind::Data);
        assert_eq!(kind_of("ab12-1.json"), Kind::Access);
    }
}
