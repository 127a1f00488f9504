//! Fetching from real `ImagePeer` servers on loopback (plain HTTP/2: TLS is the daemon's
//! part), one of them lying about a blob.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use shoal_proto::image_peer_server::{ImagePeer, ImagePeerServer};
use shoal_proto::{ImagePeerInfo, PeerBlobChunk, PeerBlobRequest, PeerImage, PeerImageRequest};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

use super::*;
use crate::image::tests::gzip;

/// A layer of a few plain files (no root needed to unpack it).
fn layer_tar(content: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("etc/motd", content.as_bytes()),
        ("bin/hello", b"#!/bin/sh\necho hello\n".as_slice()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).expect("tar entry");
    }
    b.into_inner().expect("tar")
}

fn store_in(dir: &tempfile::TempDir, name: &str) -> ImageStore {
    ImageStore::open(dir.path().join(name)).expect("open store")
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Nothing at all in the store: no image, layer, blob, tag or temporary file.
fn assert_untouched(store: &ImageStore) {
    let root = store.root();
    for sub in ["layers", "images", "blobs/sha256", "tmp"] {
        assert_eq!(names_in(&root.join(sub)), Vec::<String>::new(), "{sub}");
    }
    assert!(store.list().expect("list").is_empty());
}

/// Wraps the real service: counts the calls, and (when `tamper`) flips a byte in the middle of
/// every blob it sends (same size, wrong digest).
#[derive(Clone)]
struct Wrapped {
    real: ImagePeerService,
    tamper: bool,
    get_image: Arc<AtomicUsize>,
    get_blob: Arc<AtomicUsize>,
}

type BlobStream = Pin<Box<dyn Stream<Item = Result<PeerBlobChunk, Status>> + Send>>;

#[tonic::async_trait]
impl ImagePeer for Wrapped {
    async fn get_image(
        &self,
        request: Request<PeerImageRequest>,
    ) -> Result<Response<PeerImage>, Status> {
        self.get_image.fetch_add(1, Ordering::SeqCst);
        self.real.get_image(request).await
    }

    type GetBlobStream = BlobStream;

    async fn get_blob(
        &self,
        request: Request<PeerBlobRequest>,
    ) -> Result<Response<BlobStream>, Status> {
        self.get_blob.fetch_add(1, Ordering::SeqCst);
        let stream = self.real.get_blob(request).await?.into_inner();
        if !self.tamper {
            return Ok(Response::new(stream));
        }
        let chunks: Vec<Result<PeerBlobChunk, Status>> = stream.collect().await;
        let mut bytes = Vec::new();
        for c in chunks {
            bytes.extend_from_slice(&c?.data);
        }
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        let one = futures::stream::iter([Ok(PeerBlobChunk { data: bytes })]);
        Ok(Response::new(Box::pin(one)))
    }
}

struct Peer {
    info: ImagePeerInfo,
    get_image: Arc<AtomicUsize>,
    get_blob: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Serves `store` on a loopback port as the node `node_id`.
async fn serve(node_id: &str, store: &ImageStore, tamper: bool) -> Peer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let wrapped = Wrapped {
        real: ImagePeerService::new(store.clone()),
        tamper,
        get_image: Arc::default(),
        get_blob: Arc::default(),
    };
    let (get_image, get_blob) = (wrapped.get_image.clone(), wrapped.get_blob.clone());
    let server = tokio::spawn(async move {
        let _ = Server::builder()
            .add_service(ImagePeerServer::new(wrapped))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    Peer {
        info: ImagePeerInfo {
            node_id: node_id.into(),
            addr: addr.to_string(),
            hostname: String::new(),
        },
        get_image,
        get_blob,
        server,
    }
}

/// The directory as a fixed list; plain channels.
struct Links(Vec<ImagePeerInfo>);

impl PeerLinks for Links {
    fn peers(&self) -> BoxFuture<'static, Result<Vec<ImagePeerInfo>, String>> {
        let peers = self.0.clone();
        Box::pin(async move { Ok(peers) })
    }

    fn connect(&self, peer: &ImagePeerInfo) -> Result<Channel, String> {
        Ok(Endpoint::from_shared(format!("http://{}", peer.addr))
            .map_err(|e| e.to_string())?
            .connect_lazy())
    }
}

fn fetcher(store: &ImageStore, peers: &[&Peer]) -> PeerImages {
    PeerImages::new(
        store.clone(),
        Arc::new(Links(peers.iter().map(|p| p.info.clone()).collect())),
    )
}

/// A source node with `app:v1` (one gzip layer), and its image.
fn source(dir: &tempfile::TempDir) -> (ImageStore, shoal_proto::Image) {
    let store = store_in(dir, "source");
    let image = store
        .import_tar("app:v1", &gzip(&layer_tar("from the source node\n"))[..])
        .expect("import");
    (store, image)
}

#[tokio::test]
async fn peer_fetch_brings_the_image_verified_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (source_store, image) = source(&dir);
    let peer = serve("n1", &source_store, false).await;
    let target = store_in(&dir, "target");

    let fetched = fetcher(&target, &[&peer])
        .fetch("app:v1")
        .await
        .expect("fetch")
        .expect("a node has it");
    assert_eq!(fetched.id, image.id, "the same image, byte for byte");
    assert_eq!(fetched.manifest_digest, image.manifest_digest);
    assert_eq!(fetched.tags, vec!["app:v1".to_string()]);
    let resolved = target.resolve("app:v1").expect("tagged here now");
    assert_eq!(resolved.layer_dirs.len(), 1);
    assert_eq!(
        std::fs::read_to_string(resolved.layer_dirs[0].join("etc/motd")).expect("motd"),
        "from the source node\n"
    );
    // The pinned form a service uses resolves too.
    let pinned = format!("app:v1@{}", image.manifest_digest);
    assert_eq!(target.resolve(&pinned).expect("pinned").image.id, image.id);
    assert_eq!(peer.get_blob.load(Ordering::SeqCst), 1);

    // No node has it: None, not an error.
    assert_eq!(
        fetcher(&target, &[&peer])
            .fetch("nope:1")
            .await
            .expect("asked"),
        None
    );
}

#[tokio::test]
async fn peer_serving_a_blob_that_does_not_match_its_digest_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (source_store, image) = source(&dir);
    let liar = serve("liar", &source_store, true).await;
    let target = store_in(&dir, "target");
    let pinned = format!("app:v1@{}", image.manifest_digest);

    let err = fetcher(&target, &[&liar])
        .fetch(&pinned)
        .await
        .expect_err("a tampered layer must be refused");
    let text = err.to_string();
    eprintln!("refused: {text}");
    let blob = {
        let bytes = std::fs::read(
            source_store
                .root()
                .join("blobs/sha256")
                .join(&image.manifest_digest["sha256:".len()..]),
        )
        .expect("manifest");
        let m: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        m["layers"][0]["digest"]
            .as_str()
            .expect("digest")
            .to_string()
    };
    assert!(
        text.contains("node liar") && text.contains(&blob) && text.contains("does not match"),
        "the error names the peer and the digest: {text}"
    );
    assert_untouched(&target);

    // With an honest node beside it, the image comes from the honest one.
    let honest = serve("honest", &source_store, false).await;
    let fetched = fetcher(&target, &[&liar, &honest])
        .fetch(&pinned)
        .await
        .expect("fetch")
        .expect("found");
    assert_eq!(fetched.id, image.id);
    assert_eq!(honest.get_blob.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn peer_fetches_of_one_image_and_of_one_blob_are_shared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (source_store, image) = source(&dir);
    // A second name for an image on the same layer (another config: another image).
    let other = source_store
        .import_tar("app:v2", &gzip(&layer_tar("from the source node\n"))[..])
        .expect("import v2");
    assert_eq!(other.layers, image.layers, "one layer under both");
    let peer = serve("n1", &source_store, false).await;
    let target = store_in(&dir, "target");
    let peers = fetcher(&target, &[&peer]);

    let asks = (0..6).map(|i| {
        let peers = peers.clone();
        async move {
            let r = if i % 2 == 0 { "app:v1" } else { "app:v2" };
            peers.fetch(r).await
        }
    });
    let results = futures::future::join_all(asks).await;
    for r in results {
        assert!(r.expect("fetch").is_some());
    }
    assert_eq!(
        peer.get_blob.load(Ordering::SeqCst),
        1,
        "six fetches, two images, one layer: one download"
    );
    assert!(
        peer.get_image.load(Ordering::SeqCst) <= 2,
        "one question per image, not per fetch"
    );
    assert_eq!(target.resolve("app:v2").expect("v2").image.id, other.id);
}

#[tokio::test]
async fn peer_locate_gives_the_digest_to_pin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (source_store, image) = source(&dir);
    let peer = serve("n1", &source_store, false).await;
    let target = store_in(&dir, "target");
    let peers = fetcher(&target, &[&peer]);
    let located = peers.locate("app:v1").await.expect("asked").expect("found");
    assert_eq!(located.manifest_digest, image.manifest_digest);
    assert!(located.peer.contains("n1"), "{located:?}");
    assert_eq!(peers.locate("app:v9").await.expect("asked"), None);
    assert_untouched(&target);
}

#[test]
fn peer_pinned_reference_is_name_tag_at_digest() {
    let d = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(pinned_reference("app:v1", &d), format!("app:v1@{d}"));
    assert_eq!(pinned_reference("app", &d), format!("app:latest@{d}"));
    assert_eq!(
        pinned_reference("host:5000/team/app:2", &d),
        format!("host:5000/team/app:2@{d}")
    );
    assert_eq!(pinned_reference("app:v1", ""), "app:v1", "no pin");
    let other = format!("app@sha256:{}", "cd".repeat(32));
    assert_eq!(pinned_reference(&other, &d), other, "pinned by its user");
    let id = format!("sha256:{}", "ef".repeat(32));
    assert_eq!(pinned_reference(&id, &d), id, "an id is a pin");
    assert_eq!(pinned_reference("Not A Name", &d), "Not A Name");
}

#[test]
fn peer_pin_is_the_manifest_digest_of_a_named_image() {
    let image = shoal_proto::Image {
        id: format!("sha256:{}", "11".repeat(32)),
        manifest_digest: format!("sha256:{}", "22".repeat(32)),
        ..Default::default()
    };
    assert_eq!(
        pin_for("app:v1", &image),
        Some(image.manifest_digest.clone())
    );
    let no_manifest = shoal_proto::Image {
        manifest_digest: String::new(),
        ..image.clone()
    };
    assert_eq!(pin_for("app", &no_manifest), Some(image.id.clone()));
    assert_eq!(pin_for(&image.id, &image), None, "an id pins itself");
    let by_digest = format!("app@{}", image.manifest_digest);
    assert_eq!(pin_for(&by_digest, &image), None, "a digest pins itself");
}
