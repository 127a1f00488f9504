//! The `Builder` gRPC service: receives the options and the build context (a tar stream,
//! unpacked with the store's safe unpacker into a directory under the store's `tmp/`, removed
//! after the build), runs the build, and streams its progress back.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::pin::Pin;

use shoal_proto::builder_server::{Builder, BuilderServer};
use shoal_proto::{BuildEvent, BuildInput};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::builder::{BuildRequest, ImageBuilder};
use super::progress::{decimal_size, Progress};
use super::BuildError;
use crate::image::error::ImageError;
use crate::image::fsutil::remove_tree;
use crate::image::registry::Credentials;
use crate::image::unpack::unpack_layer;

/// Context chunks buffered between the gRPC stream and the unpacker.
const CHANNEL_DEPTH: usize = 8;
/// Progress events buffered for a slow client.
const EVENTS_DEPTH: usize = 256;

/// The `Builder` service.
#[derive(Clone, Debug)]
pub struct BuilderApi {
    builder: ImageBuilder,
}

impl BuilderApi {
    pub fn new(builder: ImageBuilder) -> BuilderApi {
        BuilderApi { builder }
    }

    /// The tonic server wrapper, ready for `Server::add_service`.
    pub fn into_server(self) -> BuilderServer<BuilderApi> {
        BuilderServer::new(self)
    }
}

impl From<BuildError> for Status {
    fn from(e: BuildError) -> Status {
        let msg = e.to_string();
        match e {
            BuildError::Dockerfile { .. } | BuildError::Invalid(_) => Status::invalid_argument(msg),
            BuildError::RunFailed { .. } => Status::aborted(msg),
            BuildError::Image(e) => Status::from(e),
            BuildError::Cancelled => Status::cancelled(msg),
            BuildError::Internal(_) => Status::internal(msg),
        }
    }
}

/// A `Read` over the context chunks of the request stream (for a blocking thread).
struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
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

#[tonic::async_trait]
impl Builder for BuilderApi {
    type BuildStream = Pin<Box<dyn Stream<Item = Result<BuildEvent, Status>> + Send>>;

    async fn build(
        &self,
        request: Request<Streaming<BuildInput>>,
    ) -> Result<Response<Self::BuildStream>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty build request"))?;
        let options = first.options.ok_or_else(|| {
            Status::invalid_argument("the first build message must carry the options")
        })?;
        // A Dockerfile that does not parse fails at once, before the context is read.
        super::dockerfile::parse(&options.dockerfile).map_err(|e| {
            Status::from(BuildError::Dockerfile {
                file: options.dockerfile_name.clone(),
                line: e.line,
                message: e.message,
            })
        })?;
        let (tx, rx) = mpsc::channel(EVENTS_DEPTH);
        let builder = self.builder.clone();
        tokio::spawn(async move {
            let progress = Progress::new(tx.clone());
            let result = run_build(builder, options, first.context, stream, &progress).await;
            if let Err(e) = result {
                let _ = tx.send(Err(Status::from(e))).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Receives the context, then builds.
async fn run_build(
    builder: ImageBuilder,
    options: shoal_proto::BuildOptions,
    first_chunk: Vec<u8>,
    mut stream: Streaming<BuildInput>,
    progress: &Progress,
) -> Result<(), BuildError> {
    let name = if options.dockerfile_name.is_empty() {
        "Dockerfile".to_string()
    } else {
        options.dockerfile_name.clone()
    };
    let step = progress
        .start(format!("[internal] load build definition from {name}"))
        .await;
    progress
        .log(
            &step,
            &format!(
                "transferring dockerfile: {}B done",
                options.dockerfile.len()
            ),
            false,
        )
        .await;
    progress.done(&step, false).await;

    let store = builder.store().clone();
    let dir = store
        .tmp_path()
        .join(format!("build-{}", uuid::Uuid::new_v4().simple()));
    let context = dir.join("context");
    std::fs::create_dir_all(&context)
        .map_err(|e| BuildError::Internal(format!("create {}: {e}", context.display())))?;
    let _cleanup = RemoveOnDrop(dir.clone());

    let step = progress.start("[internal] load build context").await;
    let (ctx_tx, ctx_rx) = mpsc::channel::<io::Result<Vec<u8>>>(CHANNEL_DEPTH);
    let limits = store.limits();
    let dest = context.clone();
    let unpacker = tokio::task::spawn_blocking(move || {
        let reader = ChunkReader {
            rx: ctx_rx,
            buf: Vec::new(),
            pos: 0,
        };
        match unpack_layer(reader, &dest, &limits) {
            Ok(l) => Ok(l.size),
            // No context at all: an empty one.
            Err(ImageError::EmptyInput) => Ok(0),
            Err(e) => Err(e),
        }
    });
    let mut received = first_chunk.len() as u64;
    let mut pending = Some(first_chunk);
    loop {
        let data = match pending.take() {
            Some(d) => d,
            None => match stream.message().await {
                Ok(Some(m)) => m.context,
                Ok(None) => break,
                Err(status) => {
                    let _ = ctx_tx
                        .send(Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            format!("the client's stream failed: {}", status.message()),
                        )))
                        .await;
                    break;
                }
            },
        };
        if data.is_empty() {
            continue;
        }
        received += data.len() as u64;
        if ctx_tx.send(Ok(data)).await.is_err() {
            break;
        }
    }
    drop(ctx_tx);
    let unpacked = unpacker
        .await
        .map_err(|e| BuildError::Internal(format!("the context unpacker crashed: {e}")))?;
    if let Err(e) = unpacked {
        let e = BuildError::Invalid(format!("the build context: {e}"));
        progress.failed(&step, &e.to_string()).await;
        return Err(e);
    }
    progress
        .log(
            &step,
            &format!("transferring context: {} done", decimal_size(received, 2)),
            false,
        )
        .await;
    progress.done(&step, false).await;

    let request = BuildRequest {
        dockerfile: options.dockerfile,
        dockerfile_name: name,
        context,
        tags: options.tags,
        build_args: options.build_args.into_iter().collect::<BTreeMap<_, _>>(),
        target: Some(options.target).filter(|t| !t.is_empty()),
        no_cache: options.no_cache,
        labels: options.labels.into_iter().collect(),
        credentials: options
            .registry_credentials
            .into_iter()
            .map(|(key, c)| (key, Credentials::from(Some(c))))
            .collect(),
    };
    builder.build(&request, progress).await.map(drop)
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.0) {
            tracing::warn!(dir = %self.0.display(), "removing a build's context: {e}");
        }
    }
}
