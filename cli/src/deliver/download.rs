//! `consume --download-url`: an order's bundle fetched into a work directory, in the two
//! forms the reference's consume reads, with its limits:
//! - `GET {url}/manifest.json` (query kept; at most 8 MiB): a JSON object with `files` →
//!   `GET {url}/{name}` for each (names `[A-Za-z0-9._-]+.(json|bin)`, at most 10,000 files,
//!   2 GiB in all), the query kept on each;
//! - a 403 or 404 there, or a manifest without `files` → `GET {url}` as a ZIP (at most
//!   10,000 members, 512 MiB each, 2 GiB in all, sizes counted as they are read, not as
//!   the archive declares them).
//!
//! Files land sorted as the reference sorts them: `manifest.json` and `chunk-N.json` in
//! `chunks/`, `*.bin` in `data/`, other `*.json` (access files) in `access/`. A URL's query
//! (a token, a signature) is never printed.

use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;

use super::bundle::{is_bundle_name, kind_of, Kind};
use super::web::{join_path, redact};
use crate::output::{input, CliError};

const MAX_MANIFEST_BYTES: u64 = 8 * 1024 * 1024;
const MAX_TOTAL_BYTES: u64 = 2 * 1024 * 1024 * 1024;
const MAX_MEMBER_BYTES: u64 = 512 * 1024 * 1024;
const MAX_FILES: usize = 10_000;
const TIMEOUT: Duration = Duration::from_secs(60);

/// The three directories a downloaded bundle is sorted into.
pub struct Sorted {
    /// `manifest.json` and the envelopes.
    pub chunks: PathBuf,
    /// The ciphertexts.
    pub data: PathBuf,
    /// The access files.
    pub access: PathBuf,
}

impl Sorted {
    fn make(root: &Path) -> Result<Sorted, CliError> {
        let sorted = Sorted {
            chunks: root.join("chunks"),
            data: root.join("data"),
            access: root.join("access"),
        };
        for dir in [&sorted.chunks, &sorted.data, &sorted.access] {
            std::fs::create_dir_all(dir)
                .map_err(|e| input(format!("cannot create {}: {e}", dir.display())))?;
        }
        Ok(sorted)
    }

    fn place(&self, name: &str) -> PathBuf {
        match kind_of(name) {
            Kind::Chain => self.chunks.join(name),
            Kind::Data => self.data.join(name),
            Kind::Access => self.access.join(name),
        }
    }
}

fn network(what: String) -> CliError {
    CliError::Network(what)
}

/// Fetches the bundle at `url` into `root` (an empty directory); `say` hears progress.
pub async fn download_bundle(
    client: &reqwest::Client,
    url: &reqwest::Url,
    root: &Path,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Sorted, CliError> {
    let sorted = Sorted::make(root)?;
    let manifest_url = join_path(url, "manifest.json");
    let response = client
        .get(manifest_url)
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| network(format!("download failed: {}", e.without_url())))?;
    let status = response.status();
    let listing = if status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND {
        None
    } else if !status.is_success() {
        return Err(network(format!(
            "download failed: HTTP {} fetching manifest.json",
            status.as_u16()
        )));
    } else {
        let raw = read_capped(response, MAX_MANIFEST_BYTES, "manifest.json").await?;
        let value: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|e| network(format!("manifest.json is not valid JSON: {e}")))?;
        match value.get("files") {
            None => None,
            Some(files) => Some((raw, files_of(files)?)),
        }
    };
    match listing {
        Some((raw, files)) => {
            write_new(&sorted.chunks.join("manifest.json"), &raw)?;
            let mut budget = MAX_TOTAL_BYTES;
            for name in files {
                say(&format!("Downloading {name}..."));
                let response = get_ok(client, &join_path(url, &name), &name).await?;
                let target = sorted.place(&name);
                let written = stream_to_file(response, &target, budget, &name).await?;
                budget -= written;
            }
        }
        None => {
            say("No file listing at the URL; downloading it as a ZIP...");
            let response = get_ok(client, url, "the package").await?;
            let temp = tempfile::Builder::new()
                .prefix("peaqos-package-")
                .suffix(".zip")
                .tempfile_in(root)
                .map_err(|e| input(format!("cannot make a temporary file: {e}")))?;
            let mut out = temp
                .as_file()
                .try_clone()
                .map_err(|e| input(format!("cannot write the package: {e}")))?;
            stream_into(
                response,
                &mut out,
                temp.path(),
                MAX_TOTAL_BYTES,
                "the package",
            )
            .await?;
            let file = temp
                .reopen()
                .map_err(|e| input(format!("cannot reopen the package: {e}")))?;
            let sorted_ref = &sorted;
            tokio::task::block_in_place(|| extract_zip(file, sorted_ref))?;
        }
    }
    Ok(sorted)
}

fn files_of(files: &serde_json::Value) -> Result<Vec<String>, CliError> {
    let list = files
        .as_array()
        .ok_or_else(|| network("manifest.json 'files' field is not a list".into()))?;
    if list.len() > MAX_FILES {
        return Err(network(format!(
            "manifest.json lists too many files ({} > {MAX_FILES})",
            list.len()
        )));
    }
    let mut names = Vec::with_capacity(list.len());
    let mut seen = std::collections::BTreeSet::new();
    for entry in list {
        let name = entry
            .as_str()
            .ok_or_else(|| network("manifest.json 'files' entries must be strings".into()))?;
        if !is_bundle_name(name) {
            return Err(network(format!(
                "manifest.json lists an unsupported or unsafe file name: {name:?}"
            )));
        }
        // The manifest itself is already here; a second copy would replace it.
        if name == "manifest.json" || !seen.insert(name.to_string()) {
            continue;
        }
        names.push(name.to_string());
    }
    Ok(names)
}

async fn get_ok(
    client: &reqwest::Client,
    url: &reqwest::Url,
    what: &str,
) -> Result<reqwest::Response, CliError> {
    let response = client
        .get(url.clone())
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| network(format!("download failed: {}", e.without_url())))?;
    if !response.status().is_success() {
        return Err(network(format!(
            "download failed: HTTP {} from {} ({what})",
            response.status().as_u16(),
            redact(url)
        )));
    }
    Ok(response)
}

async fn read_capped(
    response: reqwest::Response,
    cap: u64,
    what: &str,
) -> Result<Vec<u8>, CliError> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(part) = stream.next().await {
        let part =
            part.map_err(|e| network(format!("download of {what} failed: {}", e.without_url())))?;
        if (body.len() + part.len()) as u64 > cap {
            return Err(network(format!(
                "{what} exceeds the {} MiB size limit",
                cap / (1024 * 1024)
            )));
        }
        body.extend_from_slice(&part);
    }
    Ok(body)
}

async fn stream_to_file(
    response: reqwest::Response,
    target: &Path,
    cap: u64,
    what: &str,
) -> Result<u64, CliError> {
    let mut file = create_new(target)?;
    stream_into(response, &mut file, target, cap, what).await
}

async fn stream_into(
    response: reqwest::Response,
    file: &mut std::fs::File,
    target: &Path,
    cap: u64,
    what: &str,
) -> Result<u64, CliError> {
    let mut written = 0u64;
    let mut stream = response.bytes_stream();
    while let Some(part) = stream.next().await {
        let part =
            part.map_err(|e| network(format!("download of {what} failed: {}", e.without_url())))?;
        written += part.len() as u64;
        if written > cap {
            return Err(network(format!(
                "{what} exceeds the package size limit ({cap} bytes left)"
            )));
        }
        file.write_all(&part)
            .map_err(|e| input(format!("writing {}: {e}", target.display())))?;
    }
    Ok(written)
}

fn create_new(target: &Path) -> Result<std::fs::File, CliError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                network(format!(
                    "the package holds {} twice",
                    target
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                ))
            } else {
                input(format!("cannot write {}: {e}", target.display()))
            }
        })
}

fn write_new(target: &Path, bytes: &[u8]) -> Result<(), CliError> {
    create_new(target)?
        .write_all(bytes)
        .map_err(|e| input(format!("writing {}: {e}", target.display())))
}

/// Extracts the members the reference's consume would use (flat names of bundle files,
/// wherever they sit in the archive), under the limits.
fn extract_zip(file: std::fs::File, sorted: &Sorted) -> Result<(), CliError> {
    let bad =
        |e: zip::result::ZipError| network(format!("the package is not a valid ZIP file: {e}"));
    let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
    if archive.len() > MAX_FILES {
        return Err(network(format!(
            "the package has too many entries ({} > {MAX_FILES})",
            archive.len()
        )));
    }
    let mut budget = MAX_TOTAL_BYTES;
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).map_err(bad)?;
        if member.is_dir() {
            continue;
        }
        let Some(name) = member
            .enclosed_name()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        else {
            return Err(network(format!(
                "archive member escapes the work directory: {:?}",
                member.name()
            )));
        };
        if !is_bundle_name(&name) {
            continue;
        }
        if member.size() > MAX_MEMBER_BYTES {
            return Err(network(format!(
                "archive member {name:?} is {} bytes, over the {} MiB per-file limit",
                member.size(),
                MAX_MEMBER_BYTES / (1024 * 1024)
            )));
        }
        let target = sorted.place(&name);
        let mut out = create_new(&target)?;
        let limit = MAX_MEMBER_BYTES.min(budget);
        // Counted as read: a member that lies about its size stops at the limit.
        let copied = std::io::copy(&mut (&mut member).take(limit + 1), &mut out)
            .map_err(|e| network(format!("extracting {name:?}: {e}")))?;
        if copied > limit {
            return Err(network(format!(
                "archive member {name:?} exceeds the extraction size limit (possible decompression bomb)"
            )));
        }
        budget -= copied;
    }
    Ok(())
}
