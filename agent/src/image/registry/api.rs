//! The `Registry` gRPC service (registry.proto), on the node's local socket: pulls and pushes
//! run in the daemon, their progress is streamed back as they go.

use std::pin::Pin;

use shoal_proto::registry_server::{Registry as RegistryService, RegistryServer};
use shoal_proto::{LoginRequest, LoginResponse, PullRequest, PushRequest, RegistryProgress};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::progress::Progress;
use super::session::Credentials;
use super::Registry;

type ProgressStream = Pin<Box<dyn Stream<Item = Result<RegistryProgress, Status>> + Send>>;

#[derive(Clone, Debug)]
pub struct RegistryApi {
    registry: Registry,
}

impl RegistryApi {
    pub fn new(registry: Registry) -> RegistryApi {
        RegistryApi { registry }
    }

    pub fn into_server(self) -> RegistryServer<RegistryApi> {
        RegistryServer::new(self)
    }
}

/// Runs `work` in its own task, streaming its progress, then its error if it fails. The work
/// goes on if the client leaves (a pull half done is finished, as Docker's daemon does).
fn stream_progress<F, Fut>(work: F) -> ProgressStream
where
    F: FnOnce(Progress) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Status>> + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<RegistryProgress>();
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Result<RegistryProgress, Status>>();
    tokio::spawn(async move {
        let forward = {
            let out_tx = out_tx.clone();
            tokio::spawn(async move {
                while let Some(p) = rx.recv().await {
                    if out_tx.send(Ok(p)).is_err() {
                        // Keep draining so the work never blocks on a gone client.
                        while rx.recv().await.is_some() {}
                        return;
                    }
                }
            })
        };
        let result = work(Progress::to(tx)).await;
        let _ = forward.await;
        if let Err(status) = result {
            let _ = out_tx.send(Err(status));
        }
    });
    Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(out_rx))
}

#[tonic::async_trait]
impl RegistryService for RegistryApi {
    type PullStream = ProgressStream;
    type PushStream = ProgressStream;

    async fn pull(
        &self,
        request: Request<PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let r = request.into_inner();
        let registry = self.registry.clone();
        Ok(Response::new(stream_progress(move |progress| async move {
            let credentials = Credentials::from(r.credentials);
            registry
                .pull(&r.reference, &credentials, r.insecure, &progress)
                .await
                .map(|_| ())
                .map_err(Status::from)
        })))
    }

    async fn push(
        &self,
        request: Request<PushRequest>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let r = request.into_inner();
        let registry = self.registry.clone();
        Ok(Response::new(stream_progress(move |progress| async move {
            let credentials = Credentials::from(r.credentials);
            registry
                .push(&r.reference, &credentials, r.insecure, &progress)
                .await
                .map(|_| ())
                .map_err(Status::from)
        })))
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let r = request.into_inner();
        let credentials = Credentials::from(r.credentials);
        if credentials.username.is_empty() {
            return Err(Status::invalid_argument(
                "login needs a user name (-u USER) and a password",
            ));
        }
        let message = self
            .registry
            .login(&r.server, &credentials, r.insecure)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(LoginResponse { message }))
    }
}
