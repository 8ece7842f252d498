//! The gRPC face of [`KeydService`]: each method takes the caller the gate identified,
//! runs the service's operation off the async workers when the batch is large, and maps
//! the error to a status in one place ([`crate::error`]).

use std::pin::Pin;
use std::sync::Arc;

use keyd_proto::v1;
use keyd_proto::v1::keyd_server::Keyd;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::parallel::offload;
use super::{Caller, KeydService};
use crate::error::RequestError;

/// The gRPC service.
#[derive(Clone)]
pub struct KeydApi(pub Arc<KeydService>);

/// The caller the gate put on the request; none (no gate in front) is nobody.
fn caller_of<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_default()
}

/// Runs `op` on the service with the request's caller and body, `items` deciding whether
/// it runs inline or on the blocking pool.
async fn call<Req, T, R>(
    service: &Arc<KeydService>,
    request: Request<Req>,
    items: impl FnOnce(&Req) -> usize,
    op: impl FnOnce(&KeydService, &Caller, Req) -> Result<T, RequestError> + Send + 'static,
    respond: impl FnOnce(T) -> R,
) -> Result<Response<R>, Status>
where
    Req: Send + 'static,
    T: Send + 'static,
{
    let caller = caller_of(&request);
    let body = request.into_inner();
    let n = items(&body);
    let service = Arc::clone(service);
    offload(n, move || op(&service, &caller, body))
        .await
        .map(|value| Response::new(respond(value)))
        .map_err(Status::from)
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<v1::SignPackagesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Keyd for KeydApi {
    async fn identity(
        &self,
        request: Request<v1::IdentityRequest>,
    ) -> Result<Response<v1::IdentityResponse>, Status> {
        call(&self.0, request, |_| 0, |s, c, _| s.identity(c), |r| r).await
    }

    async fn sign_packages(
        &self,
        request: Request<v1::SignPackagesRequest>,
    ) -> Result<Response<v1::SignPackagesResponse>, Status> {
        call(
            &self.0,
            request,
            |r| r.envelopes.len(),
            |s, c, r| s.sign_packages(c, &r.envelopes),
            |signatures| v1::SignPackagesResponse { signatures },
        )
        .await
    }

    type SignPackagesStreamStream = ResponseStream;

    async fn sign_packages_stream(
        &self,
        request: Request<Streaming<v1::SignPackagesRequest>>,
    ) -> Result<Response<Self::SignPackagesStreamStream>, Status> {
        let caller = caller_of(&request);
        let service = Arc::clone(&self.0);
        let mut incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(batch) = incoming.next().await {
                let result = match batch {
                    Ok(batch) => {
                        let service = Arc::clone(&service);
                        let caller = caller.clone();
                        offload(batch.envelopes.len(), move || {
                            service.sign_packages(&caller, &batch.envelopes)
                        })
                        .await
                        .map(|signatures| v1::SignPackagesResponse { signatures })
                        .map_err(Status::from)
                    }
                    Err(status) => Err(status),
                };
                let stop = result.is_err();
                if tx.send(result).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn sign_chunk_hashes(
        &self,
        request: Request<v1::SignChunkHashesRequest>,
    ) -> Result<Response<v1::SignChunkHashesResponse>, Status> {
        call(
            &self.0,
            request,
            |r| r.hashes.len(),
            |s, c, r| s.sign_chunk_hashes(c, &r.hashes, &r.key_commitments),
            |signatures| v1::SignChunkHashesResponse { signatures },
        )
        .await
    }

    async fn new_chunk_keys(
        &self,
        request: Request<v1::NewChunkKeysRequest>,
    ) -> Result<Response<v1::NewChunkKeysResponse>, Status> {
        call(
            &self.0,
            request,
            |r| r.count as usize,
            |s, c, r| s.new_chunk_keys(c, r.count as usize),
            |keys| v1::NewChunkKeysResponse { keys },
        )
        .await
    }

    async fn grant(
        &self,
        request: Request<v1::GrantRequest>,
    ) -> Result<Response<v1::GrantResponse>, Status> {
        call(
            &self.0,
            request,
            |r| r.chunk_envelopes.len(),
            |s, c, r| s.grant(c, &r),
            |entries| v1::GrantResponse { entries },
        )
        .await
    }

    async fn sign_dataset(
        &self,
        request: Request<v1::SignDatasetRequest>,
    ) -> Result<Response<v1::SignDatasetResponse>, Status> {
        call(
            &self.0,
            request,
            |_| 1,
            |s, c, r| s.sign_dataset(c, &r.document),
            |(signature, key_id)| v1::SignDatasetResponse { signature, key_id },
        )
        .await
    }

    async fn encrypt_fields(
        &self,
        request: Request<v1::EncryptFieldsRequest>,
    ) -> Result<Response<v1::EncryptFieldsResponse>, Status> {
        call(
            &self.0,
            request,
            |r| r.plaintexts.len(),
            |s, c, r| s.encrypt_fields(c, &r.plaintexts),
            |ciphertexts| v1::EncryptFieldsResponse { ciphertexts },
        )
        .await
    }
}
