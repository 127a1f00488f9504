//! The `Images` gRPC service (served by the agent on its local socket) over an [`ImageStore`].
//!
//! The store is synchronous (file system work); every call runs on a blocking thread. An
//! import streams: chunks go through a small bounded channel into a `Read` that the unpacker
//! consumes, so a tarball is never held in memory whole, and a client that sends faster than
//! the disk writes is slowed down by back-pressure.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::Arc;

use shoal_proto::images_server::{Images, ImagesServer};
use shoal_proto::{
    BootstrapRequest, Image, ImportChunk, ImportResponse, InspectImagesRequest, ListImagesRequest,
    ListImagesResponse, LoadImagesResponse, PruneImagesRequest, RemoveImagesRequest,
    RemoveImagesResponse, SaveChunk, SaveImagesRequest, TagImageRequest,
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::error::ImageError;
use super::reference::Reference;
use super::store::{ContainerUse, ImageStore, RemoveReport};
use crate::runtime::{ContainerStatus, Runtime};

/// Chunks buffered between the gRPC stream and the unpacker.
const CHANNEL_DEPTH: usize = 8;

/// Bytes per `SaveChunk`.
const SAVE_CHUNK: usize = 1 << 20;

/// The `Images` service.
#[derive(Clone)]
pub struct ImagesApi {
    store: ImageStore,
    /// The node's containers, so that an image a container uses is not removed.
    runtime: Option<Arc<Runtime>>,
}

impl std::fmt::Debug for ImagesApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImagesApi")
            .field("store", &self.store)
            .field("runtime", &self.runtime.is_some())
            .finish()
    }
}

impl ImagesApi {
    /// A service over `store`.
    pub fn new(store: ImageStore) -> ImagesApi {
        ImagesApi {
            store,
            runtime: None,
        }
    }

    /// Makes `rm` and `prune` aware of the node's containers: an image a container uses (even
    /// a stopped one) is kept, as in Docker.
    pub fn with_runtime(mut self, runtime: Arc<Runtime>) -> ImagesApi {
        self.runtime = Some(runtime);
        self
    }

    /// Which containers use which layers.
    fn users(runtime: &Option<Arc<Runtime>>) -> Result<Vec<ContainerUse>, ImageError> {
        let Some(runtime) = runtime else {
            return Ok(Vec::new());
        };
        let all = runtime.list().map_err(|e| ImageError::Io {
            action: "list the containers (to see which images they use) in",
            path: "the runtime".into(),
            source: io::Error::other(e.to_string()),
        })?;
        Ok(all
            .into_iter()
            .map(|c| ContainerUse {
                running: matches!(c.status, ContainerStatus::Running { .. }),
                name: c.name,
                layers: c.config.layers,
            })
            .collect())
    }

    /// The tonic server wrapper, ready for `Server::add_service`.
    pub fn into_server(self) -> ImagesServer<ImagesApi> {
        ImagesServer::new(self)
    }
}

#[tonic::async_trait]
impl Images for ImagesApi {
    async fn import(
        &self,
        request: Request<Streaming<ImportChunk>>,
    ) -> Result<Response<ImportResponse>, Status> {
        let image = import_stream(self.store.clone(), request.into_inner()).await?;
        Ok(Response::new(ImportResponse { image: Some(image) }))
    }

    async fn bootstrap(
        &self,
        request: Request<BootstrapRequest>,
    ) -> Result<Response<ImportResponse>, Status> {
        let what = request.into_inner().what;
        if what.trim() != "busybox" {
            return Err(Status::invalid_argument(format!(
                "cannot bootstrap `{what}`: only `busybox` is supported (built from the host's \
                 busybox-static)"
            )));
        }
        let store = self.store.clone();
        let image = blocking(move || store.bootstrap_busybox()).await?;
        Ok(Response::new(ImportResponse { image: Some(image) }))
    }

    async fn list(
        &self,
        _request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let store = self.store.clone();
        let images = blocking(move || store.list()).await?;
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn load(
        &self,
        request: Request<Streaming<ImportChunk>>,
    ) -> Result<Response<LoadImagesResponse>, Status> {
        let store = self.store.clone();
        let (images, messages) =
            feed_blocking(request.into_inner(), move |r| store.load(r)).await?;
        Ok(Response::new(LoadImagesResponse { images, messages }))
    }

    type SaveStream = Pin<Box<dyn Stream<Item = Result<SaveChunk, Status>> + Send>>;

    async fn save(
        &self,
        request: Request<SaveImagesRequest>,
    ) -> Result<Response<Self::SaveStream>, Status> {
        let images = request.into_inner().images;
        if images.is_empty() {
            return Err(Status::invalid_argument("name at least one image to save"));
        }
        // Fail before the stream starts if a name is wrong.
        let store = self.store.clone();
        let check = images.clone();
        blocking(move || {
            for r in &check {
                store.resolve(r)?;
            }
            Ok(())
        })
        .await?;
        let (tx, rx) = mpsc::channel::<Result<SaveChunk, Status>>(CHANNEL_DEPTH);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = ChunkWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(SAVE_CHUNK),
            };
            let result = store.save(&images, &mut w).and_then(|()| {
                w.send_buf().map_err(|e| ImageError::Io {
                    action: "stream the archive to",
                    path: "the client".into(),
                    source: e,
                })
            });
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(Status::from(e)));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn inspect(
        &self,
        request: Request<InspectImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let refs = request.into_inner().images;
        let store = self.store.clone();
        let images = blocking(move || {
            refs.iter()
                .map(|r| store.resolve(r).map(|i| i.image))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn tag(
        &self,
        request: Request<TagImageRequest>,
    ) -> Result<Response<ImportResponse>, Status> {
        let r = request.into_inner();
        let store = self.store.clone();
        let image = blocking(move || store.tag(&r.source, &r.target)).await?;
        Ok(Response::new(ImportResponse { image: Some(image) }))
    }

    async fn remove(
        &self,
        request: Request<RemoveImagesRequest>,
    ) -> Result<Response<RemoveImagesResponse>, Status> {
        let r = request.into_inner();
        let store = self.store.clone();
        let runtime = self.runtime.clone();
        let report = blocking(move || {
            let users = ImagesApi::users(&runtime)?;
            let mut all = RemoveReport::default();
            let mut errors = Vec::new();
            for image in &r.images {
                match store.remove_with(image, r.force, &users) {
                    Ok(rep) => {
                        all.untagged.extend(rep.untagged);
                        all.deleted.extend(rep.deleted);
                        all.layers.extend(rep.layers);
                        all.reclaimed += rep.reclaimed;
                    }
                    Err(e) => errors.push(e),
                }
            }
            // Like `docker rmi a b`: each is tried; the first error is reported after.
            match errors.into_iter().next() {
                Some(e) if all.untagged.is_empty() && all.deleted.is_empty() => Err(e),
                Some(e) => {
                    tracing::warn!(error = %e, "image rm: some images were not removed");
                    Ok((all, Some(e.to_string())))
                }
                None => Ok((all, None)),
            }
        })
        .await?;
        let (report, partial) = report;
        if let Some(msg) = partial {
            // The successful part is already done; report the failure with what happened.
            return Err(Status::failed_precondition(format!(
                "{msg} (other images were removed: {})",
                report
                    .untagged
                    .iter()
                    .chain(report.deleted.iter())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(Response::new(to_response(report)))
    }

    async fn prune(
        &self,
        request: Request<PruneImagesRequest>,
    ) -> Result<Response<RemoveImagesResponse>, Status> {
        let all = request.into_inner().all;
        let store = self.store.clone();
        let runtime = self.runtime.clone();
        let report = blocking(move || {
            let users = ImagesApi::users(&runtime)?;
            store.prune(all, &users)
        })
        .await?;
        Ok(Response::new(to_response(report)))
    }
}

fn to_response(r: RemoveReport) -> RemoveImagesResponse {
    RemoveImagesResponse {
        untagged: r.untagged,
        deleted: r.deleted.into_iter().chain(r.layers).collect(),
        reclaimed: r.reclaimed,
    }
}

/// A `Write` that sends 1 MiB `SaveChunk`s down a channel (from a blocking thread).
struct ChunkWriter {
    tx: mpsc::Sender<Result<SaveChunk, Status>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(SAVE_CHUNK));
        self.tx
            .blocking_send(Ok(SaveChunk { data }))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(SAVE_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= SAVE_CHUNK {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Feeds a stream of chunks to `f`, which reads them on a blocking thread.
async fn feed_blocking<S, T, F>(mut stream: S, f: F) -> Result<T, Status>
where
    S: Stream<Item = Result<ImportChunk, Status>> + Unpin,
    F: FnOnce(ChannelReader) -> Result<T, ImageError> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = mpsc::channel::<io::Result<Vec<u8>>>(CHANNEL_DEPTH);
    let worker = tokio::task::spawn_blocking(move || f(ChannelReader::new(rx)));
    loop {
        let data = match stream.next().await {
            None => break,
            Some(Ok(chunk)) => chunk.data,
            Some(Err(status)) => {
                let aborted = io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("the client's stream failed: {}", status.message()),
                );
                let _ = tx.send(Err(aborted)).await;
                break;
            }
        };
        if data.is_empty() {
            continue;
        }
        if tx.send(Ok(data)).await.is_err() {
            break;
        }
    }
    drop(tx);
    worker
        .await
        .map_err(|e| Status::internal(format!("the image store task failed: {e}")))?
        .map_err(Status::from)
}

/// The import, over any stream of chunks (the gRPC one, or a test's).
pub(crate) async fn import_stream<S>(store: ImageStore, mut stream: S) -> Result<Image, Status>
where
    S: Stream<Item = Result<ImportChunk, Status>> + Unpin,
{
    let first = match stream.next().await {
        Some(chunk) => chunk?,
        None => {
            return Err(Status::invalid_argument(
                "empty import stream: the first message must carry the image name",
            ))
        }
    };
    if first.name.is_empty() {
        return Err(Status::invalid_argument(
            "the first import message must carry the image name (name or name:tag)",
        ));
    }
    // Fail fast on a bad name, before any data is read.
    Reference::parse(&first.name).map_err(Status::from)?;

    let (tx, rx) = mpsc::channel::<io::Result<Vec<u8>>>(CHANNEL_DEPTH);
    let name = first.name;
    let importer =
        tokio::task::spawn_blocking(move || store.import_tar(&name, ChannelReader::new(rx)));
    let mut pending = Some(first.data);
    loop {
        let data = match pending.take() {
            Some(data) => data,
            None => match stream.next().await {
                None => break,
                Some(Ok(chunk)) => chunk.data,
                Some(Err(status)) => {
                    let aborted = io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("the client's stream failed: {}", status.message()),
                    );
                    let _ = tx.send(Err(aborted)).await;
                    break;
                }
            },
        };
        if data.is_empty() {
            continue;
        }
        if tx.send(Ok(data)).await.is_err() {
            // The importer stopped early (an error): its result says why.
            break;
        }
    }
    drop(tx);
    let result = importer
        .await
        .map_err(|e| Status::internal(format!("the import task failed: {e}")))?;
    result.map_err(Status::from)
}

/// A `Read` over the chunks of a channel; for a blocking thread.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<io::Result<Vec<u8>>>) -> ChannelReader {
        ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, ImageError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("the image store task failed: {e}")))?
        .map_err(Status::from)
}

impl From<ImageError> for Status {
    fn from(e: ImageError) -> Status {
        let msg = e.to_string();
        match e {
            ImageError::InvalidReference { .. }
            | ImageError::Ambiguous { .. }
            | ImageError::EmptyInput
            | ImageError::UnsupportedCompression { .. }
            | ImageError::BadArchive { .. }
            | ImageError::InvalidArchive { .. }
            | ImageError::UnsafeEntry { .. }
            | ImageError::LimitExceeded { .. } => Status::invalid_argument(msg),
            ImageError::NotFound { .. } => Status::not_found(msg),
            ImageError::Conflict { .. }
            | ImageError::InUse { .. }
            | ImageError::BusyboxMissing { .. }
            | ImageError::BusyboxUnusable { .. } => Status::failed_precondition(msg),
            ImageError::Corrupt { .. } => Status::data_loss(msg),
            ImageError::Unpack { .. } | ImageError::Io { .. } => Status::internal(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tests::{gzip, simple_rootfs_tar};
    use shoal_proto::images_client::ImagesClient;
    use tonic::Code;

    fn chunks(name: &str, data: &[u8], size: usize) -> Vec<Result<ImportChunk, Status>> {
        let mut out = vec![Ok(ImportChunk {
            name: name.into(),
            data: Vec::new(),
        })];
        out.extend(data.chunks(size).map(|c| {
            Ok(ImportChunk {
                name: String::new(),
                data: c.to_vec(),
            })
        }));
        out
    }

    #[tokio::test]
    async fn image_api_import_stream_in_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path().join("s")).expect("open");
        let tar = gzip(&simple_rootfs_tar());
        let image = import_stream(
            store.clone(),
            tokio_stream::iter(chunks("app:v1", &tar, 100)),
        )
        .await
        .expect("import");
        assert_eq!(image.tags, vec!["app:v1".to_string()]);
        assert_eq!(store.resolve("app:v1").expect("resolve").image.id, image.id);

        // Errors: no name, bad name, a failing client stream, garbage.
        let no_name = import_stream(store.clone(), tokio_stream::iter(chunks("", &tar, 100)))
            .await
            .expect_err("no name");
        assert_eq!(no_name.code(), Code::InvalidArgument);
        let bad = import_stream(store.clone(), tokio_stream::iter(chunks("Bad", &tar, 100)))
            .await
            .expect_err("bad name");
        assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
        let mut failing = chunks("app:v2", &tar[..tar.len() / 2], 100);
        failing.push(Err(Status::cancelled("client went away")));
        let aborted = import_stream(store.clone(), tokio_stream::iter(failing))
            .await
            .expect_err("aborted");
        assert!(
            aborted.message().contains("client went away"),
            "{aborted:?}"
        );
        let garbage = import_stream(
            store.clone(),
            tokio_stream::iter(chunks("app:v3", &[b'x'; 4096], 1000)),
        )
        .await
        .expect_err("garbage");
        assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");
        assert_eq!(store.list().expect("list").len(), 1);
        assert_eq!(
            std::fs::read_dir(store.root().join("tmp"))
                .expect("tmp")
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn image_api_over_grpc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path().join("s")).expect("open");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ImagesApi::new(store).into_server())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut client = ImagesClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let tar = simple_rootfs_tar();
        let msgs: Vec<ImportChunk> = chunks("web", &tar, 1000)
            .into_iter()
            .map(|c| c.expect("chunk"))
            .collect();
        let image = client
            .import(tokio_stream::iter(msgs))
            .await
            .expect("import")
            .into_inner()
            .image
            .expect("image");
        assert_eq!(image.tags, vec!["web:latest".to_string()]);
        let config = image.config.expect("config");
        assert!(config.cmd.is_empty());
        assert_eq!(
            config.env,
            vec![crate::image::busybox::DEFAULT_PATH_ENV.to_string()]
        );

        let list = client
            .list(ListImagesRequest {})
            .await
            .expect("list")
            .into_inner();
        assert_eq!(list.images.len(), 1);

        let err = client
            .bootstrap(BootstrapRequest {
                what: "alpine".into(),
            })
            .await
            .expect_err("alpine");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("only `busybox` is supported"),
            "{err:?}"
        );
        server.abort();
    }
}
