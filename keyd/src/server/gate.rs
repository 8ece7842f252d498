//! The gate in front of the gRPC service: a request is authorized from its connection and
//! method alone, before its body is read, and its body is bounded per operation. A caller
//! the policy denies cannot make keyd decode anything.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame};
use sha2::{Digest, Sha256};
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;
use tower::{Layer, Service};

use crate::policy::Operation;
use crate::service::{Caller, KeydService};

/// Bytes a request body may hold, per operation.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Signing packages, encrypting fields, granting: the large ones.
    pub large: usize,
    /// Chunk hashes (about 150 bytes each).
    pub hashes: usize,
    /// Identity and chunk keys: a few bytes.
    pub small: usize,
    /// One dataset document: its fields, a title, a description and terms.
    pub document: usize,
}

impl BodyLimits {
    pub fn new(max_request_bytes: usize, max_batch: usize) -> Self {
        BodyLimits {
            large: max_request_bytes,
            hashes: max_batch.saturating_mul(192).saturating_add(4096),
            small: 1024,
            document: 64 * 1024,
        }
    }

    fn of(&self, op: Operation) -> usize {
        match op {
            Operation::Identity | Operation::NewChunkKeys => self.small,
            Operation::SignChunkHashes => self.hashes,
            Operation::SignDataset => self.document,
            Operation::SignPackages | Operation::EncryptFields | Operation::Grant => self.large,
        }
    }
}

/// Wraps the router.
#[derive(Clone)]
pub struct GateLayer {
    service: Arc<KeydService>,
    limits: BodyLimits,
}

impl GateLayer {
    pub fn new(service: Arc<KeydService>, limits: BodyLimits) -> Self {
        GateLayer { service, limits }
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;
    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            service: Arc::clone(&self.service),
            limits: self.limits,
        }
    }
}

/// The gate around one service.
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    service: Arc<KeydService>,
    limits: BodyLimits,
}

/// Who is on the other end: the Unix listener's [`Caller`], or a TCP caller's certificate.
fn caller_of(extensions: &http::Extensions) -> Caller {
    if let Some(caller) = extensions.get::<Caller>() {
        return caller.clone();
    }
    let cert = extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .and_then(|certs| certs.first().map(|c| Sha256::digest(c.as_ref()).into()));
    Caller {
        cert,
        ..Caller::default()
    }
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for Gate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let caller = caller_of(request.extensions());
        let path = request.uri().path().to_string();
        let mut request = request;
        if let Some(op) = Operation::of_grpc_path(&path) {
            if let Err(e) = self.service.authorize(&caller, op) {
                let response = Status::from(e).into_http();
                return Box::pin(async move { Ok(response) });
            }
            // The stream of batches is bounded per message (the decoder's limit), not in all.
            if !path.ends_with("/SignPackagesStream") {
                let limit = self.limits.of(op);
                request = request.map(|body| Body::new(Limited::new(body, limit, op)));
            }
        }
        request.extensions_mut().insert(caller);
        // The clone is ready only if polled: take the one that was (tower's pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move { inner.call(request).await })
    }
}

/// A request body that fails with RESOURCE_EXHAUSTED past `limit` bytes.
struct Limited {
    inner: Body,
    seen: usize,
    limit: usize,
    op: Operation,
}

impl Limited {
    fn new(inner: Body, limit: usize, op: Operation) -> Self {
        Limited {
            inner,
            seen: 0,
            limit,
            op,
        }
    }
}

impl HttpBody for Limited {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len());
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(Box::new(Status::resource_exhausted(
                            format!(
                                "a {} request may hold at most {} bytes",
                                this.op.name(),
                                this.limit
                            ),
                        )))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
