//! The `ImagePeer` service: this node's images for the other nodes. Who may call it is the
//! daemon's business (mutual TLS with the cluster CA, see `src/daemon/peers.rs`); this serves
//! the store as it is, and the caller verifies every byte.

use std::io::Read;
use std::pin::Pin;

use futures::Stream;
use shoal_proto::image_peer_server::{ImagePeer, ImagePeerServer};
use shoal_proto::{PeerBlobChunk, PeerBlobRequest, PeerImage, PeerImageRequest};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::super::store::ImageStore;

/// Bytes per blob chunk.
const CHUNK: usize = 256 << 10;
/// Chunks in flight per blob.
const CHANNEL_DEPTH: usize = 8;

/// Serves one image store to the other nodes.
#[derive(Clone, Debug)]
pub struct ImagePeerService {
    store: ImageStore,
}

impl ImagePeerService {
    pub fn new(store: ImageStore) -> ImagePeerService {
        ImagePeerService { store }
    }

    pub fn into_server(self) -> ImagePeerServer<ImagePeerService> {
        // The answer to GetImage carries a manifest and a config, each up to 4 MiB.
        ImagePeerServer::new(self).max_encoding_message_size(16 << 20)
    }
}

type BlobStream = Pin<Box<dyn Stream<Item = Result<PeerBlobChunk, Status>> + Send>>;

#[tonic::async_trait]
impl ImagePeer for ImagePeerService {
    async fn get_image(
        &self,
        request: Request<PeerImageRequest>,
    ) -> Result<Response<PeerImage>, Status> {
        let reference = request.into_inner().reference;
        let store = self.store.clone();
        let described = tokio::task::spawn_blocking(move || store.describe_for_peer(&reference))
            .await
            .map_err(|e| Status::internal(format!("looking up the image crashed: {e}")))?
            .map_err(Status::from)?;
        Ok(Response::new(PeerImage {
            id: described.id,
            manifest: described.manifest,
            config: described.config,
        }))
    }

    type GetBlobStream = BlobStream;

    async fn get_blob(
        &self,
        request: Request<PeerBlobRequest>,
    ) -> Result<Response<BlobStream>, Status> {
        let digest = request.into_inner().digest;
        let store = self.store.clone();
        let (mut file, _size) = tokio::task::spawn_blocking(move || store.open_blob(&digest))
            .await
            .map_err(|e| Status::internal(format!("opening the blob crashed: {e}")))?
            .map_err(Status::from)?;
        let (tx, rx) = mpsc::channel::<Result<PeerBlobChunk, Status>>(CHANNEL_DEPTH);
        tokio::task::spawn_blocking(move || loop {
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(PeerBlobChunk { data: buf })).is_err() {
                        return; // the caller went away
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::internal(format!(
                        "reading the blob failed: {e}"
                    ))));
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
