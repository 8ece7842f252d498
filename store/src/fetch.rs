//! A chain in S3 brought into a local directory, so every command that reads a published
//! directory reads one in S3 the same way. Only `manifest.json`, `chunk-N.json` and (when
//! asked) `chunk-N.bin` directly under the prefix are taken: no other name reaches the disk.

use std::path::Path;

use futures::{StreamExt, TryStreamExt};
use stream::layout::{self, ChunkFile, Durability};

use crate::bucket::S3Bucket;
use crate::location::S3Path;
use crate::StoreError;

/// What to bring down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// `manifest.json` and the `chunk-N.json` envelopes (enough to grant).
    Envelopes,
    /// Those and every `chunk-N.bin` (to verify or decrypt).
    Everything,
}

/// What a fetch brought down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// Envelopes written.
    pub envelopes: u64,
    /// Files written, in all.
    pub files: u64,
    /// Bytes written, in all.
    pub bytes: u64,
}

/// Downloads the chain at `path` into `dest` (an existing directory), a few objects at once.
pub async fn fetch_chain(
    bucket: &S3Bucket,
    path: &S3Path,
    dest: &Path,
    what: Fetch,
) -> Result<Fetched, StoreError> {
    let listed = bucket.list(&path.prefix).await?;
    let mut names = Vec::new();
    for (key, _) in listed {
        let Some(name) = key.strip_prefix(&path.prefix) else {
            continue;
        };
        if name.contains('/') {
            continue;
        }
        let wanted = match layout::chunk_file(name) {
            Some(ChunkFile::Envelope(_)) => true,
            Some(ChunkFile::Ciphertext(_)) => what == Fetch::Everything,
            None => name == "manifest.json",
        };
        if wanted {
            names.push(name.to_string());
        }
    }
    let envelopes = names
        .iter()
        .filter(|n| matches!(layout::chunk_file(n), Some(ChunkFile::Envelope(_))))
        .count() as u64;
    if envelopes == 0 {
        return Err(StoreError::Invalid {
            what: path.to_string(),
            reason: "no chunk-N.json envelopes under this prefix".into(),
        });
    }
    let files = names.len() as u64;
    let bytes = futures::stream::iter(names)
        .map(|name| async move {
            let key = path.key(&name);
            let body = bucket.get(&key).await?.ok_or_else(|| StoreError::Invalid {
                what: path.uri(&name),
                reason: "listed but gone when read".into(),
            })?;
            let target = dest.join(&name);
            stream::fsio::write_atomic(&target, &body, Durability::Atomic).map_err(|source| {
                StoreError::Io {
                    path: target.display().to_string(),
                    source,
                }
            })?;
            Ok::<u64, StoreError>(body.len() as u64)
        })
        .buffer_unordered(8)
        .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
        .await?;
    Ok(Fetched {
        envelopes,
        files,
        bytes,
    })
}
