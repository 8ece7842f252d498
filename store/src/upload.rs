//! A chain to S3 as the reference's `publish --s3` leaves it: `{prefix}chunk-i.bin`,
//! `{prefix}chunk-i.json` with `"storageRef": "s3://bucket/{prefix}chunk-i.bin"`, and last
//! `{prefix}manifest.json` with `s3Bucket` and `s3Prefix` added. Chunks go up while later
//! ones are still being sealed, a few at a time; the manifest only once every chunk is up,
//! so a manifest in the bucket never names a chunk that is not there.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use stream::chain::{ChainOutput, ChunkEnvelope};
use stream::layout::{LayoutError, Manifest};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::bucket::S3Bucket;
use crate::location::S3Path;
use crate::StoreError;

/// The `storageRef` of chunk `index` under `path`.
pub fn storage_ref(path: &S3Path, index: u64) -> String {
    path.uri(&format!("chunk-{index}.bin"))
}

/// `envelope` with its `storageRef` pointing into `path`.
pub fn with_storage_ref(envelope: &ChunkEnvelope, path: &S3Path) -> ChunkEnvelope {
    let mut envelope = envelope.clone();
    envelope.storage_ref = Some(storage_ref(path, envelope.index));
    envelope
}

/// `manifest` with `s3Bucket` and `s3Prefix`.
pub fn with_s3_fields(manifest: &Manifest, path: &S3Path) -> Manifest {
    let mut manifest = manifest.clone();
    manifest.s3_bucket = Some(path.bucket.clone());
    manifest.s3_prefix = Some(path.prefix.clone());
    manifest
}

/// Uploads a chain chunk by chunk from synchronous code, on a Tokio runtime's workers.
pub struct ChainUpload {
    bucket: S3Bucket,
    path: S3Path,
    runtime: Handle,
    slots: Arc<Semaphore>,
    tasks: JoinSet<Result<u64, StoreError>>,
    failure: Arc<Mutex<Option<String>>>,
    uploaded: Arc<dyn Fn(u64) + Send + Sync>,
}

impl ChainUpload {
    /// Uploads to `path` in `bucket`, at most `in_flight` objects at once; `uploaded` hears
    /// the bytes of each object once it is up.
    pub fn new(
        bucket: S3Bucket,
        path: S3Path,
        runtime: Handle,
        in_flight: usize,
        uploaded: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Self {
        ChainUpload {
            bucket,
            path,
            runtime,
            slots: Arc::new(Semaphore::new(in_flight.max(1))),
            tasks: JoinSet::new(),
            failure: Arc::new(Mutex::new(None)),
            uploaded,
        }
    }

    /// The first upload that failed, if one did (then nothing more is started).
    fn failed(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    fn start(&mut self, name: String, bytes: Bytes) -> Result<(), StoreError> {
        if let Some(reason) = self.failed() {
            return Err(StoreError::Aborted(reason));
        }
        // Waits for a free slot: a slow bucket slows the publish instead of filling memory.
        let permit = self
            .runtime
            .block_on(Arc::clone(&self.slots).acquire_owned())
            .map_err(|_| StoreError::Aborted("the upload was closed".into()))?;
        let bucket = self.bucket.clone();
        let key = self.path.key(&name);
        let failure = Arc::clone(&self.failure);
        let uploaded = Arc::clone(&self.uploaded);
        self.tasks.spawn_on(
            async move {
                let _permit = permit;
                let size = bytes.len() as u64;
                match bucket.put(&key, bytes, None).await {
                    Ok(()) => {
                        uploaded(size);
                        Ok(size)
                    }
                    Err(e) => {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert_with(|| e.to_string());
                        }
                        Err(e)
                    }
                }
            },
            &self.runtime,
        );
        Ok(())
    }

    /// Starts uploading one chunk: its ciphertext and its envelope (which must already
    /// carry its `storageRef`, [`with_storage_ref`]).
    pub fn chunk(&mut self, envelope: &ChunkEnvelope, ciphertext: Bytes) -> Result<(), StoreError> {
        let index = envelope.index;
        let text = envelope.to_file_text().map_err(|e| StoreError::Invalid {
            what: format!("chunk-{index}.json"),
            reason: e.to_string(),
        })?;
        self.start(format!("chunk-{index}.bin"), ciphertext)?;
        self.start(format!("chunk-{index}.json"), Bytes::from(text))
    }

    /// Waits for every chunk, then uploads the manifest (which must already carry
    /// `s3Bucket` and `s3Prefix`, [`with_s3_fields`]).
    pub fn finish(mut self, manifest: &Manifest) -> Result<(), StoreError> {
        let runtime = self.runtime.clone();
        let mut first_error = None;
        runtime.block_on(async {
            while let Some(joined) = self.tasks.join_next().await {
                let result = joined.unwrap_or_else(|e| {
                    Err(StoreError::Aborted(format!("an upload task failed: {e}")))
                });
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
            }
        });
        if let Some(e) = first_error {
            return Err(e);
        }
        let text = Bytes::from(manifest.to_file_text());
        let size = text.len() as u64;
        runtime.block_on(self.bucket.put(&self.path.key("manifest.json"), text, None))?;
        (self.uploaded)(size);
        Ok(())
    }
}

/// A chain output (the published directory, say) whose envelopes carry their `storageRef`
/// into `path` and whose manifest carries `s3Bucket` and `s3Prefix`: what the reference's
/// directory holds after `publish --s3`. Without a path, a plain pass-through.
pub struct StorageRefs<O> {
    inner: O,
    path: Option<S3Path>,
}

impl<O> StorageRefs<O> {
    /// `inner`, pointing at `path` (none: unchanged).
    pub fn new(inner: O, path: Option<S3Path>) -> Self {
        StorageRefs { inner, path }
    }

    /// The output inside.
    pub fn inner(&self) -> &O {
        &self.inner
    }
}

impl<O: ChainOutput> ChainOutput for StorageRefs<O> {
    fn write_chunk(
        &mut self,
        envelope: &ChunkEnvelope,
        ciphertext: &[u8],
    ) -> Result<(), LayoutError> {
        match &self.path {
            Some(path) => self
                .inner
                .write_chunk(&with_storage_ref(envelope, path), ciphertext),
            None => self.inner.write_chunk(envelope, ciphertext),
        }
    }
    fn write_manifest(&mut self, manifest: &Manifest) -> Result<(), LayoutError> {
        match &self.path {
            Some(path) => self.inner.write_manifest(&with_s3_fields(manifest, path)),
            None => self.inner.write_manifest(manifest),
        }
    }
}
