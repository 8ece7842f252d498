//! `--delivery s3`: the bundle as one ZIP object (stored, not compressed: ciphertext does
//! not compress) behind one presigned GET URL. The reference's `consume --download-url`
//! first asks for `…/manifest.json` under that URL, which a presigned URL does not cover
//! (403), and then takes the URL itself as a ZIP: that is the form it reads here.
//!
//! Cost: one object per order, about the chain's size (ciphertexts, envelopes, access
//! files), until it is deleted; a bucket lifecycle rule on the `orders/` prefix removes it
//! once its URL has expired.

use std::io::{Read, Write};
use std::time::Duration;

use store::{S3Bucket, S3Path};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::bundle::{Blob, Bundle};
use crate::output::{input, CliError};

/// Writes `bundle` as a stored ZIP into `file`, reading S3 ciphertexts on `runtime`.
pub fn write_zip(
    bundle: &Bundle,
    file: std::fs::File,
    runtime: &tokio::runtime::Runtime,
) -> Result<(), CliError> {
    let mut zip = ZipWriter::new(file);
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .large_file(bundle.size() > u32::MAX as u64 / 2)
        .unix_permissions(0o644);
    let zip_error = |e: zip::result::ZipError| input(format!("writing the bundle: {e}"));
    for file in &bundle.files {
        zip.start_file(&file.name, options).map_err(zip_error)?;
        match &file.blob {
            Blob::Bytes(bytes) => zip
                .write_all(bytes)
                .map_err(|e| input(format!("writing the bundle: {e}")))?,
            Blob::File(path, _) => {
                let mut source = std::fs::File::open(path)
                    .map_err(|e| input(format!("{}: {e}", path.display())))?;
                let mut buffer = vec![0u8; 1 << 20];
                loop {
                    let n = source
                        .read(&mut buffer)
                        .map_err(|e| input(format!("{}: {e}", path.display())))?;
                    if n == 0 {
                        break;
                    }
                    zip.write_all(&buffer[..n])
                        .map_err(|e| input(format!("writing the bundle: {e}")))?;
                }
            }
            Blob::S3 { bucket, key, .. } => {
                let bytes = runtime
                    .block_on(bucket.get(key))
                    .map_err(|e| CliError::Network(e.to_string()))?
                    .ok_or_else(|| {
                        CliError::Check(format!("s3://{}/{key} disappeared", bucket.name()))
                    })?;
                zip.write_all(&bytes)
                    .map_err(|e| input(format!("writing the bundle: {e}")))?;
            }
        }
    }
    zip.finish().map_err(zip_error)?;
    Ok(())
}

/// The delivered object: its key and its presigned URL.
pub struct Delivered {
    /// `s3://bucket/key` of the ZIP.
    pub object: String,
    /// The presigned GET URL (a bearer credential until it expires).
    pub url: String,
}

/// Zips `bundle`, uploads it to `{prefix}orders/{order_id}.zip` and presigns a GET.
pub fn deliver(
    bundle: &Bundle,
    bucket: &S3Bucket,
    path: &S3Path,
    order_id: &str,
    expiry: Duration,
    runtime: &tokio::runtime::Runtime,
) -> Result<Delivered, CliError> {
    let temp = tempfile::Builder::new()
        .prefix("peaqos-bundle-")
        .suffix(".zip")
        .tempfile()
        .map_err(|e| input(format!("cannot make a temporary file: {e}")))?;
    let file = temp
        .reopen()
        .map_err(|e| input(format!("cannot make a temporary file: {e}")))?;
    write_zip(bundle, file, runtime)?;
    let key = path.key(&format!("orders/{order_id}.zip"));
    let network = |e: store::StoreError| CliError::Network(format!("S3 delivery failed: {e}"));
    runtime
        .block_on(bucket.put_file(&key, temp.path(), &|_| {}))
        .map_err(network)?;
    let url = runtime
        .block_on(bucket.presign_get(&key, expiry))
        .map_err(network)?;
    Ok(Delivered {
        object: format!("s3://{}/{key}", bucket.name()),
        url,
    })
}
