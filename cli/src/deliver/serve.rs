//! `--delivery http`: the seller serves the order's bundle itself.
//!
//! `GET /orders/{order}/manifest.json?token=T` lists the files (`files`), then
//! `GET /orders/{order}/{name}?token=T` each one, as the reference's
//! `consume --download-url https://host/orders/{order}?token=T` fetches them (it keeps the
//! query on every fetch). The token is a per-order capability (256 random bits, compared
//! in constant time) that expires; ciphertexts stream from where the chain keeps them
//! (a local file or S3), never copied per buyer. With a certificate and key, over TLS
//! (rustls).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::bundle::{Blob, Bundle};
use crate::output::{input, CliError};

/// When the server stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Until {
    /// Once every file of the bundle has been sent in full (or the token expired).
    Complete,
    /// When the token expires.
    Expiry,
}

/// How the bundle is served.
pub struct ServeOptions<'a> {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The URL the buyer reaches this server at (default: from `listen`).
    pub public_url: Option<&'a str>,
    /// A PEM certificate chain and private key: serve HTTPS.
    pub tls: Option<(&'a Path, &'a Path)>,
    /// How long the token is good for.
    pub expiry: Duration,
    /// When to stop.
    pub until: Until,
}

/// How serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every file was sent in full at least once.
    Delivered,
    /// The token expired first.
    Expired,
}

struct Order {
    id: String,
    token: [u8; 32],
    expires: Instant,
    bundle: Bundle,
    /// Files not yet sent in full.
    pending: Mutex<BTreeSet<String>>,
    all_sent: Notify,
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// A fresh capability token.
pub fn new_token() -> Result<[u8; 32], CliError> {
    let mut token = [0u8; 32];
    getrandom::getrandom(&mut token)
        .map_err(|e| input(format!("no randomness for the order token: {e}")))?;
    Ok(token)
}

/// Serves `bundle` for `order_id` until `options.until`; `ready` hears the download URL
/// (a bearer credential: give it to the buyer only) once the server listens.
pub async fn serve(
    bundle: Bundle,
    order_id: &str,
    token: [u8; 32],
    options: ServeOptions<'_>,
    ready: impl FnOnce(&str),
) -> Result<Ended, CliError> {
    let tls = options
        .tls
        .map(|(cert, key)| acceptor(cert, key))
        .transpose()?;
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|e| input(format!("--listen {}: {e}", options.listen)))?;
    let bound = listener
        .local_addr()
        .map_err(|e| input(format!("--listen {}: {e}", options.listen)))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base = options
        .public_url
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("{scheme}://{bound}"));
    let url = format!("{base}/orders/{order_id}?token={}", hex::encode(token));

    let order = Arc::new(Order {
        id: order_id.to_string(),
        token,
        expires: Instant::now() + options.expiry,
        pending: Mutex::new(bundle.files.iter().map(|f| f.name.clone()).collect()),
        bundle,
        all_sent: Notify::new(),
    });
    let router = Router::new()
        .route("/orders/{order}/{name}", get(file))
        .with_state(Arc::clone(&order));
    ready(&url);

    let expired = tokio::time::sleep_until(order.expires.into());
    tokio::pin!(expired);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut expired => return Ok(Ended::Expired),
            () = order.all_sent.notified(), if options.until == Until::Complete => {
                // Let the last response finish on its connection.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok(Ended::Delivered);
            }
        };
        let Ok((stream, _peer)) = accepted else {
            // Out of descriptors or a reset before accept: wait a little, keep serving.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            }
        });
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, CliError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    store::bucket::install_tls_provider();
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| input(format!("--tls-cert {}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| input(format!("--tls-key {}: {e}", key.display())))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| input(format!("--tls-cert/--tls-key: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn refuse(status: StatusCode, why: &'static str) -> Response {
    (status, why).into_response()
}

async fn file(
    State(order): State<Arc<Order>>,
    UrlPath((order_id, name)): UrlPath<(String, String)>,
    Query(query): Query<TokenQuery>,
) -> Response {
    if order_id != order.id {
        return refuse(StatusCode::NOT_FOUND, "no such order\n");
    }
    let given = query
        .token
        .as_deref()
        .and_then(|t| hex::decode(t).ok())
        .unwrap_or_default();
    if given.len() != 32 || !bool::from(given.as_slice().ct_eq(&order.token)) {
        return refuse(StatusCode::FORBIDDEN, "wrong or missing token\n");
    }
    if Instant::now() >= order.expires {
        return refuse(StatusCode::FORBIDDEN, "this download link has expired\n");
    }
    let Some(file) = order.bundle.get(&name) else {
        return refuse(StatusCode::NOT_FOUND, "no such file in this order\n");
    };
    let content_type = if name.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let size = file.blob.size();
    let done = {
        let order = Arc::clone(&order);
        let name = name.clone();
        move || {
            let mut pending = order.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.remove(&name) && pending.is_empty() {
                order.all_sent.notify_one();
            }
        }
    };
    let body = match &file.blob {
        Blob::Bytes(bytes) => {
            done();
            Body::from(bytes.clone())
        }
        Blob::File(path, _) => match tokio::fs::File::open(path).await {
            Ok(handle) => body_then(
                tokio_util::io::ReaderStream::new(handle).map_err(std::io::Error::other),
                size,
                done,
            ),
            Err(_) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "cannot read\n"),
        },
        Blob::S3 { bucket, key, .. } => match bucket.get_stream(key).await {
            Ok(Some((_, stream))) => body_then(stream.map_err(std::io::Error::other), size, done),
            _ => return refuse(StatusCode::BAD_GATEWAY, "cannot read from storage\n"),
        },
    };
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        body,
    )
        .into_response()
}

/// A body from `stream` that calls `done` once its last byte (of `size`) has been handed
/// over. Counted, not waited for as the stream's end: with a Content-Length, hyper stops
/// polling a body as soon as it has that many bytes.
fn body_then<S>(stream: S, size: u64, done: impl FnOnce() + Send + 'static) -> Body
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let mut done = Some(done);
    let mut sent = 0u64;
    if size == 0 {
        if let Some(done) = done.take() {
            done();
        }
    }
    Body::from_stream(stream.inspect(move |part| {
        if let Ok(part) = part {
            sent += part.len() as u64;
            if sent >= size {
                if let Some(done) = done.take() {
                    done();
                }
            }
        }
    }))
}
