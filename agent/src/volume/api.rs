//! The `Volumes` gRPC service (served by the agent on its local socket) over a
//! [`VolumeStore`]. The store does file system work: every call runs on a blocking thread.

use std::sync::Arc;

use shoal_proto::volumes_server::{Volumes, VolumesServer};
use shoal_proto::{
    CreateVolumeRequest, GetVolumeRequest, ListVolumesRequest, ListVolumesResponse,
    PruneVolumesRequest, PruneVolumesResponse, RemoveVolumeRequest, RemoveVolumeResponse,
    VolumeResponse,
};
use tonic::{Request, Response, Status};

use super::{Volume, VolumeError, VolumeStore};

#[derive(Clone, Debug)]
pub struct VolumesApi {
    store: Arc<VolumeStore>,
}

impl VolumesApi {
    pub fn new(store: Arc<VolumeStore>) -> VolumesApi {
        VolumesApi { store }
    }

    pub fn into_server(self) -> VolumesServer<VolumesApi> {
        VolumesServer::new(self)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&VolumeStore) -> Result<T, VolumeError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("volume task failed: {e}")))?
            .map_err(status)
    }
}

fn status(e: VolumeError) -> Status {
    let text = e.to_string();
    match e {
        VolumeError::NotFound(_) => Status::not_found(text),
        VolumeError::InUse { .. } => Status::failed_precondition(text),
        VolumeError::InvalidName(_) | VolumeError::Unsupported { .. } => {
            Status::invalid_argument(text)
        }
        _ => Status::internal(text),
    }
}

/// The wire form of a volume, with its users.
fn wire(store: &VolumeStore, v: Volume) -> Result<shoal_proto::Volume, VolumeError> {
    Ok(shoal_proto::Volume {
        users: store.users(&v.name)?,
        driver: v.driver,
        mountpoint: v.mountpoint.display().to_string(),
        created_at: v.created_at as i64,
        labels: v.labels.into_iter().collect(),
        anonymous: v.anonymous,
        name: v.name,
    })
}

#[tonic::async_trait]
impl Volumes for VolumesApi {
    async fn create(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<VolumeResponse>, Status> {
        let r = request.into_inner();
        let volume = self
            .blocking(move |s| {
                let v = if r.name.is_empty() {
                    s.anonymous()?
                } else {
                    s.create(&r.name, r.labels.into_iter().collect())?
                };
                wire(s, v)
            })
            .await?;
        Ok(Response::new(VolumeResponse {
            volume: Some(volume),
        }))
    }

    async fn get(
        &self,
        request: Request<GetVolumeRequest>,
    ) -> Result<Response<VolumeResponse>, Status> {
        let name = request.into_inner().name;
        let volume = self.blocking(move |s| wire(s, s.get(&name)?)).await?;
        Ok(Response::new(VolumeResponse {
            volume: Some(volume),
        }))
    }

    async fn list(
        &self,
        _: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let volumes = self
            .blocking(|s| s.list()?.into_iter().map(|v| wire(s, v)).collect())
            .await?;
        Ok(Response::new(ListVolumesResponse { volumes }))
    }

    async fn remove(
        &self,
        request: Request<RemoveVolumeRequest>,
    ) -> Result<Response<RemoveVolumeResponse>, Status> {
        let r = request.into_inner();
        self.blocking(move |s| s.remove(&r.name, r.force)).await?;
        Ok(Response::new(RemoveVolumeResponse {}))
    }

    async fn prune(
        &self,
        _: Request<PruneVolumesRequest>,
    ) -> Result<Response<PruneVolumesResponse>, Status> {
        let removed = self.blocking(|s| s.prune()).await?;
        Ok(Response::new(PruneVolumesResponse { removed }))
    }
}
