//! One S3 bucket through `object_store`: puts (one request below 8 MiB, multipart above,
//! as boto3 does), gets, listings and presigned GET URLs.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{
    Attribute, Attributes, ClientOptions, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};
use tokio::io::AsyncReadExt;

use crate::settings::S3Settings;
use crate::StoreError;

/// Objects at or above this size go up in parts of this size (boto3's default threshold).
pub const MULTIPART_THRESHOLD: usize = 8 * 1024 * 1024;

/// Retries for one request: a few, quickly (callers that must not give up keep their own
/// queue: the agent's outbox).
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// Retries of a failed request.
    pub retries: usize,
    /// The longest one request may take, retries included.
    pub timeout: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Patience {
            retries: 5,
            timeout: Duration::from_secs(120),
        }
    }
}

/// What [`S3Bucket::put_once`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOnce {
    /// The object was not there and now is.
    Created,
    /// The object was already there with the same bytes (an upload before a crash).
    AlreadyThere,
}

/// A bucket of an S3-compatible service.
#[derive(Debug, Clone)]
pub struct S3Bucket {
    store: Arc<AmazonS3>,
    bucket: String,
}

fn s3_error<'k>(
    op: &'static str,
    key: &'k str,
) -> impl FnOnce(object_store::Error) -> StoreError + 'k {
    move |source| StoreError::S3 {
        op,
        key: key.to_string(),
        source: Box::new(source),
    }
}

/// Installs ring as rustls's provider for the process (once; later calls do nothing).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Whether the connection to `endpoint` protects a body without SigV4's payload hash:
/// HTTPS (AWS's default endpoint included), or plain HTTP to a loopback address.
fn integrity_without_signature(endpoint: Option<&str>) -> bool {
    let Some(endpoint) = endpoint else {
        return true;
    };
    if endpoint.starts_with("https://") {
        return true;
    }
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl S3Bucket {
    /// The bucket `bucket` as `settings` reach it.
    pub fn open(
        bucket: &str,
        settings: &S3Settings,
        patience: Patience,
    ) -> Result<S3Bucket, StoreError> {
        install_tls_provider();
        let credentials = settings.credentials.as_ref().ok_or_else(|| {
            StoreError::Credentials(
                "no S3 credentials found: set PEAQOS_S3_ACCESS_KEY_ID and PEAQOS_S3_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)".into(),
            )
        })?;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(settings.region.as_deref().unwrap_or("us-east-1"))
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(credentials.secret())
            // The body's SHA-256 in the signature only where nothing else protects it:
            // TLS does, and loopback has no one in between (it costs a hash of every byte
            // on both sides).
            .with_unsigned_payload(integrity_without_signature(settings.endpoint.as_deref()))
            .with_retry(RetryConfig {
                max_retries: patience.retries,
                retry_timeout: patience.timeout,
                ..RetryConfig::default()
            })
            // No Content-Type unless one is asked for, as the reference uploads.
            .with_client_options(ClientOptions::new().with_timeout(patience.timeout));
        if let Some(token) = credentials.token() {
            builder = builder.with_token(token);
        }
        match settings.endpoint.as_deref() {
            // A custom endpoint: path style, plain HTTP allowed when asked for.
            Some(endpoint) => {
                builder = builder
                    .with_endpoint(endpoint)
                    .with_virtual_hosted_style_request(false)
                    .with_allow_http(endpoint.starts_with("http://"));
            }
            None => builder = builder.with_virtual_hosted_style_request(true),
        }
        let store = builder
            .build()
            .map_err(|e| StoreError::Settings(e.to_string()))?;
        Ok(S3Bucket {
            store: Arc::new(store),
            bucket: bucket.to_string(),
        })
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.bucket
    }

    fn path(key: &str) -> Result<Path, StoreError> {
        Path::parse(key).map_err(|e| StoreError::Key {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    /// Puts `bytes` at `key`, with a Content-Type when given.
    pub async fn put(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: Option<&str>,
    ) -> Result<(), StoreError> {
        let path = Self::path(key)?;
        let mut attributes = Attributes::new();
        if let Some(ct) = content_type {
            attributes.insert(Attribute::ContentType, ct.to_string().into());
        }
        if bytes.len() < MULTIPART_THRESHOLD {
            let options = PutOptions {
                attributes,
                ..PutOptions::default()
            };
            self.store
                .put_opts(&path, PutPayload::from_bytes(bytes), options)
                .await
                .map_err(s3_error("put", key))?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart_opts(
                &path,
                object_store::PutMultipartOptions {
                    attributes,
                    ..Default::default()
                },
            )
            .await
            .map_err(s3_error("start a multipart upload of", key))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_THRESHOLD);
        writer.put(bytes);
        writer
            .finish()
            .await
            .map_err(s3_error("finish the multipart upload of", key))?;
        Ok(())
    }

    /// Puts a local file at `key`, reading it in parts when it is large; `progress` hears
    /// the bytes sent so far.
    pub async fn put_file(
        &self,
        key: &str,
        file: &FsPath,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: file.display().to_string(),
            source,
        };
        let mut handle = tokio::fs::File::open(file).await.map_err(io)?;
        let size = handle.metadata().await.map_err(io)?.len();
        if size < MULTIPART_THRESHOLD as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            handle.read_to_end(&mut bytes).await.map_err(io)?;
            let sent = bytes.len() as u64;
            self.put(key, Bytes::from(bytes), None).await?;
            progress(sent);
            return Ok(());
        }
        let path = Self::path(key)?;
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(s3_error("start a multipart upload of", key))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_THRESHOLD);
        let mut sent = 0u64;
        let mut buffer = vec![0u8; MULTIPART_THRESHOLD];
        loop {
            let mut filled = 0;
            while filled < buffer.len() {
                let n = handle.read(&mut buffer[filled..]).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            // At most a few parts in flight: memory stays bounded for any file size.
            writer
                .wait_for_capacity(4)
                .await
                .map_err(s3_error("upload a part of", key))?;
            writer.write(&buffer[..filled]);
            sent += filled as u64;
            progress(sent);
        }
        writer
            .finish()
            .await
            .map_err(s3_error("finish the multipart upload of", key))?;
        Ok(())
    }

    /// Puts `bytes` at `key` unless an object is there: the same bytes are taken as an
    /// earlier upload of this object; other bytes are refused ([`StoreError::Conflict`]),
    /// so a name never gets different bytes.
    pub async fn put_once(&self, key: &str, bytes: Bytes) -> Result<PutOnce, StoreError> {
        match self.get(key).await? {
            None => {
                self.put(key, bytes, None).await?;
                Ok(PutOnce::Created)
            }
            Some(existing) if existing == bytes => Ok(PutOnce::AlreadyThere),
            Some(_) => Err(StoreError::Conflict {
                key: format!("s3://{}/{key}", self.bucket),
            }),
        }
    }

    /// The object at `key`, `None` if there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = Self::path(key)?;
        match self.store.get(&path).await {
            Ok(result) => result
                .bytes()
                .await
                .map(Some)
                .map_err(s3_error("read", key)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error("get", key)(e)),
        }
    }

    /// The object at `key` as a stream of parts with its size, `None` if there is none.
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> Result<Option<(u64, BoxStream<'static, Result<Bytes, StoreError>>)>, StoreError> {
        let path = Self::path(key)?;
        match self.store.get(&path).await {
            Ok(result) => {
                let size = result.meta.size;
                let owned = key.to_string();
                let stream = result
                    .into_stream()
                    .map_err(move |e| s3_error("read", &owned)(e))
                    .boxed();
                Ok(Some((size, stream)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error("get", key)(e)),
        }
    }

    /// Every key under `prefix` with its size.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let trimmed = prefix.trim_end_matches('/');
        let path = if trimmed.is_empty() {
            None
        } else {
            Some(Self::path(trimmed)?)
        };
        self.store
            .list(path.as_ref())
            .map_ok(|meta| (meta.location.to_string(), meta.size))
            .try_collect()
            .await
            .map_err(s3_error("list", prefix))
    }

    /// Deletes `key` (no error if it is not there).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = Self::path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_error("delete", key)(e)),
        }
    }

    /// A presigned GET URL for `key`, valid for `expiry`.
    pub async fn presign_get(&self, key: &str, expiry: Duration) -> Result<String, StoreError> {
        let path = Self::path(key)?;
        self.store
            .signed_url(Method::GET, &path, expiry)
            .await
            .map(|url| url.to_string())
            .map_err(s3_error("presign", key))
    }
}

#[cfg(test)]
mod tests {
    use super::integrity_without_signature as unsigned;

    #[test]
    fn the_payload_is_signed_unless_tls_or_loopback_protects_it() {
        assert!(unsigned(None));
        assert!(unsigned(Some("https://s3.example.com")));
        assert!(unsigned(Some("http://127.0.0.1:3900")));
        assert!(unsigned(Some("http://[::1]:3900/")));
        assert!(unsigned(Some("http://localhost:3900")));
        assert!(!unsigned(Some("http://10.0.0.5:3900")));
        assert!(!unsigned(Some("http://minio.lan:9000")));
        assert!(!unsigned(Some("http://127.0.0.1.evil.example:80")));
    }
}
