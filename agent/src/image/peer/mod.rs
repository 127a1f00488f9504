//! Images without a registry: an image present on any node (built, loaded or pulled there)
//! runs on every node. A node that lacks a task's image fetches it from a node that has it.
//!
//! - **Who serves.** Every node serves the `ImagePeer` gRPC service (`proto/peer.proto`, see
//!   [`ImagePeerService`]) over the cluster's mutual TLS: managers on their manager port,
//!   workers on their `--listen-addr`; only clients with a certificate of the same cluster CA
//!   get in. Each node reports where it serves in its node description (`peer_addr`), and the
//!   managers' `ImagePeerDirectory` lists the ready nodes that serve.
//! - **Fetching** ([`PeerImages::fetch`]): the node asks every peer at once whether it has the
//!   reference (`GetImage`: manifest and config as stored), checks each answer (`verify.rs`:
//!   the config is the blob the manifest names; a pinned reference's digest is the manifest's
//!   or the config's), then fetches from the first peer that answered well: each layer it
//!   lacks through `GetBlob`, three at a time, each verified against its descriptor's digest
//!   and size and its config diff id while it is written and unpacked (the registry pull's
//!   code path, `registry::pull::receive_layer`), before it enters the store. A mismatch fails
//!   that peer with an error that names it and the digest; nothing half-written stays (staged
//!   files are removed, placed layers collected); the next peer that has the image is tried.
//! - **Single flight.** Concurrent fetches of one image on a node share one fetch, and so do
//!   concurrent fetches of one blob (two images with a common base layer): the second waits
//!   for the first instead of downloading again (`single_flight.rs`).
//! - **Names.** The fetched image is registered as a pull registers one (manifest kept byte for
//!   byte when the store keeps the same blobs; otherwise the peer's manifest digest is kept as
//!   an alias, so the pinned reference still resolves), and tagged with the reference's tag
//!   when that tag is free on this node (a local image keeps its name).
//! - **Pinning** ([`PeerImages::locate`]): a manager asked to deploy an image it lacks learns
//!   from the peers the digest to pin.

mod server;
mod single_flight;
mod verify;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use shoal_proto::image_peer_client::ImagePeerClient;
use shoal_proto::{ImagePeerInfo, PeerBlobRequest, PeerImageRequest};
use tonic::transport::Channel;

pub use server::ImagePeerService;
pub use single_flight::{Answer, SingleFlight};
pub use verify::Wanted;

use super::registry::manifest::Descriptor;
use super::registry::pull::receive_layer;
use super::registry::{Progress, RegistryError};
use super::store::{ImageStore, PreparedImage};

/// How long a peer may take to say whether it has an image.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// Layers fetched at once from a peer (as a registry pull).
const CONCURRENT_LAYERS: usize = 3;
/// Manifests and configs are bounded (4 MiB each); the answer carries both.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// How this node reaches the others.
pub trait PeerLinks: Send + Sync + 'static {
    /// The ready nodes that serve images, this one excepted (the managers' directory).
    fn peers(&self) -> BoxFuture<'static, Result<Vec<ImagePeerInfo>, String>>;
    /// A channel to a peer's `ImagePeer` service: mutual TLS with this node's certificate,
    /// and the peer's certificate must name `peer.node_id`.
    fn connect(&self, peer: &ImagePeerInfo) -> Result<Channel, String>;
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum PeerError {
    /// The managers could not say which nodes serve images.
    #[error("cannot learn from the managers which nodes serve images: {0}")]
    Directory(String),
    /// The reference is not one a node can resolve.
    #[error("{0}")]
    Reference(String),
    /// Nodes had the image, and every one of them failed to provide it.
    #[error("no node could provide image {reference}: {}", .attempts.join("; "))]
    Failed {
        reference: String,
        /// One line per node tried: which node, and what went wrong.
        attempts: Vec<String>,
    },
}

/// Where an image is, as [`PeerImages::locate`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The node (as `node ID (ADDR)`).
    pub peer: String,
    /// The digest of its manifest there.
    pub manifest_digest: String,
    /// The image id.
    pub id: String,
}

/// The digest a service naming `reference` pins, given the image it names on the deploying
/// node: its manifest digest (its id when it has none). `None` when the reference pins itself
/// (a digest or an id).
pub fn pin_for(reference: &str, image: &shoal_proto::Image) -> Option<String> {
    match Wanted::of(reference) {
        Ok(Wanted::Named(_)) if !image.manifest_digest.is_empty() => {
            Some(image.manifest_digest.clone())
        }
        Ok(Wanted::Named(_)) if !image.id.is_empty() => Some(image.id.clone()),
        _ => None,
    }
}

/// The reference a node runs for a service's `image` pinned to `digest` (its
/// `image_digest`): `name:tag@digest`, as Swarm writes it. An image named by id or already by
/// digest stays as it is; so does any image when there is no pin.
pub fn pinned_reference(image: &str, digest: &str) -> String {
    if digest.is_empty() {
        return image.to_string();
    }
    match Wanted::of(image) {
        Ok(Wanted::Named(r)) => super::Reference {
            digest: Some(digest.to_string()),
            ..r
        }
        .to_string(),
        _ => image.to_string(),
    }
}

/// Fetches images from the other nodes into this node's store. Cheap to clone.
#[derive(Clone)]
pub struct PeerImages {
    inner: Arc<Inner>,
}

struct Inner {
    store: ImageStore,
    links: Arc<dyn PeerLinks>,
    /// Image fetches under way, by reference.
    images: SingleFlight<String, Result<Option<shoal_proto::Image>, PeerError>>,
    /// Layer blob fetches under way, by blob digest: Ok(downloaded) or the error's text.
    blobs: SingleFlight<String, Result<bool, String>>,
}

impl std::fmt::Debug for PeerImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerImages")
    }
}

/// A peer as errors and logs name it.
fn peer_name(peer: &ImagePeerInfo) -> String {
    format!("node {} ({})", peer.node_id, peer.addr)
}

impl PeerImages {
    pub fn new(store: ImageStore, links: Arc<dyn PeerLinks>) -> PeerImages {
        PeerImages {
            inner: Arc::new(Inner {
                store,
                links,
                images: SingleFlight::new(),
                blobs: SingleFlight::new(),
            }),
        }
    }

    /// Fetches the image `reference` names from a node that has it. `Ok(None)`: no node has
    /// it. Concurrent calls for one reference share one fetch.
    pub async fn fetch(&self, reference: &str) -> Result<Option<shoal_proto::Image>, PeerError> {
        let this = self.clone();
        let owned = reference.to_string();
        self.inner
            .images
            .run(reference.to_string(), move || async move {
                this.fetch_now(&owned).await
            })
            .await
            .value
    }

    /// Which node has the image `reference` names, and its manifest digest there (checked as a
    /// fetch would check it). `Ok(None)`: no node has it.
    pub async fn locate(&self, reference: &str) -> Result<Option<Located>, PeerError> {
        let wanted = Wanted::of(reference).map_err(|e| PeerError::Reference(e.to_string()))?;
        let (found, failures) = self.ask(reference, &wanted).await?;
        if let Some((peer, described)) = found.into_iter().next() {
            return Ok(Some(Located {
                peer: peer_name(&peer),
                manifest_digest: described.manifest_digest,
                id: described.id,
            }));
        }
        if failures.is_empty() {
            return Ok(None);
        }
        Err(PeerError::Failed {
            reference: reference.to_string(),
            attempts: failures,
        })
    }

    async fn fetch_now(&self, reference: &str) -> Result<Option<shoal_proto::Image>, PeerError> {
        let wanted = Wanted::of(reference).map_err(|e| PeerError::Reference(e.to_string()))?;
        // Another fetch may have brought it while this one waited for its turn.
        let store = self.inner.store.clone();
        let r = reference.to_string();
        if let Ok(Ok(found)) = tokio::task::spawn_blocking(move || store.resolve(&r)).await {
            return Ok(Some(found.image));
        }
        let (found, mut attempts) = self.ask(reference, &wanted).await?;
        if found.is_empty() && attempts.is_empty() {
            return Ok(None);
        }
        for (peer, described) in found {
            let name = peer_name(&peer);
            match self.fetch_from(&peer, described, &wanted).await {
                Ok(image) => {
                    tracing::info!(%reference, peer = %name, id = %image.id, "fetched image from a peer");
                    return Ok(Some(image));
                }
                Err(e) => {
                    tracing::warn!(%reference, peer = %name, "fetching an image from a peer failed: {e}");
                    attempts.push(format!("{name}: {e}"));
                }
            }
        }
        Err(PeerError::Failed {
            reference: reference.to_string(),
            attempts,
        })
    }

    /// Asks every peer at once for `reference`: the checked answers of those that have it
    /// (first to answer first), and the failures of those whose answer does not hold.
    #[allow(clippy::type_complexity)]
    async fn ask(
        &self,
        reference: &str,
        wanted: &Wanted,
    ) -> Result<(Vec<(ImagePeerInfo, verify::Described)>, Vec<String>), PeerError> {
        let peers = self
            .inner
            .links
            .peers()
            .await
            .map_err(PeerError::Directory)?;
        let asks = peers.into_iter().map(|peer| {
            let links = self.inner.links.clone();
            let reference = reference.to_string();
            async move {
                let name = peer_name(&peer);
                let answer = async {
                    let channel = links.connect(&peer)?;
                    let mut client =
                        ImagePeerClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES);
                    match client.get_image(PeerImageRequest { reference }).await {
                        Ok(r) => Ok(Some(r.into_inner())),
                        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                        Err(s) => Err(format!("{}: {}", s.code(), s.message())),
                    }
                };
                let answer = tokio::time::timeout(ASK_TIMEOUT, answer)
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("no answer within {} s", ASK_TIMEOUT.as_secs()))
                    });
                (peer, name, answer)
            }
        });
        let mut answers = futures::stream::iter(asks).buffer_unordered(16);
        let (mut found, mut failures) = (Vec::new(), Vec::new());
        while let Some((peer, name, answer)) = answers.next().await {
            match answer {
                Ok(Some(image)) => {
                    match verify::check(wanted, image.manifest, image.config, &name) {
                        Ok(described) => found.push((peer, described)),
                        Err(e) => {
                            tracing::warn!(%reference, peer = %name, "a peer's image does not hold: {e}");
                            failures.push(format!("{name}: {e}"));
                        }
                    }
                }
                Ok(None) => {}
                // Unreachable nodes are not failures of the image: another may have it.
                Err(e) => {
                    tracing::info!(%reference, peer = %name, "cannot ask a peer for an image: {e}")
                }
            }
        }
        Ok((found, failures))
    }

    /// Fetches the layers this node lacks from `peer`, then registers the image.
    async fn fetch_from(
        &self,
        peer: &ImagePeerInfo,
        described: verify::Described,
        wanted: &Wanted,
    ) -> Result<shoal_proto::Image, String> {
        let channel = self.inner.links.connect(peer)?;
        let store = self.inner.store.clone();
        let diff_ids = described.config.rootfs.diff_ids.clone();
        let pins = store.pin_layers(&diff_ids);
        let jobs: Vec<_> = described
            .manifest
            .layers
            .iter()
            .zip(&diff_ids)
            .map(|(desc, diff)| self.fetch_layer(channel.clone(), peer, desc.clone(), diff.clone()))
            .collect();
        let mut results = futures::stream::iter(jobs).buffer_unordered(CONCURRENT_LAYERS);
        // Every job runs to its end, so no unpacker still writes when a failure returns.
        let mut first_error = None;
        while let Some(r) = results.next().await {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        let result = match first_error {
            Some(e) => Err(e),
            None => self.register(described, wanted).await,
        };
        drop(pins);
        if result.is_err() {
            let store = store.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = store.collect_garbage() {
                    tracing::warn!(error = %e, "image store: cannot collect a failed fetch's layers");
                }
            })
            .await;
        }
        result
    }

    /// One layer from `peer`, unless the store has it; concurrent fetches of one blob share
    /// one download.
    async fn fetch_layer(
        &self,
        channel: Channel,
        peer: &ImagePeerInfo,
        desc: Descriptor,
        diff_id: String,
    ) -> Result<bool, String> {
        let store = self.inner.store.clone();
        let name = peer_name(peer);
        let key = desc.digest.clone();
        let answer = self
            .inner
            .blobs
            .run(key, move || async move {
                let what = format!("layer {} from {name}", desc.digest);
                let open = || async {
                    let request = PeerBlobRequest {
                        digest: desc.digest.clone(),
                    };
                    let stream = ImagePeerClient::new(channel)
                        .get_blob(request)
                        .await
                        .map_err(|s| peer_failure(&what, s))?
                        .into_inner();
                    Ok(stream.map(|chunk| {
                        chunk
                            .map(|c| bytes::Bytes::from(c.data))
                            .map_err(|s| peer_failure(&what, s))
                    }))
                };
                let received =
                    receive_layer(&store, &desc, &diff_id, &what, &Progress::none(), open).await;
                if let Ok(true) = received {
                    tracing::info!(digest = %desc.digest, peer = %name, size = desc.size, "fetched a layer from a peer");
                }
                received.map_err(|e| e.to_string())
            })
            .await;
        answer.value
    }

    /// Registers a fetched image whose layers are in place and pinned.
    async fn register(
        &self,
        described: verify::Described,
        wanted: &Wanted,
    ) -> Result<shoal_proto::Image, String> {
        let store = self.inner.store.clone();
        let tag = wanted.tag();
        let peer_manifest = described.manifest_digest.clone();
        let image = tokio::task::spawn_blocking(move || {
            // Named as asked, unless that name is a local image's.
            let free = tag
                .as_ref()
                .is_some_and(|t| store.resolve(&t.to_string()).is_err());
            let prepared = PreparedImage {
                blobs: described
                    .config
                    .rootfs
                    .diff_ids
                    .iter()
                    .map(|_| None)
                    .collect(),
                config_bytes: described.config_bytes,
                config: described.config,
                manifest: Some(described.manifest_bytes),
                tags: tag.filter(|_| free).into_iter().collect(),
            };
            let image = store.commit_images(vec![prepared])?.pop().ok_or_else(|| {
                super::ImageError::Corrupt {
                    path: store.root().to_path_buf(),
                    detail: "the store registered nothing".into(),
                }
            })?;
            if image.manifest_digest != peer_manifest {
                store.add_digest_alias(&image.id, &peer_manifest)?;
            }
            Ok::<_, super::ImageError>(image)
        })
        .await
        .map_err(|e| format!("registering the image crashed: {e}"))?
        .map_err(|e| e.to_string())?;
        Ok(image)
    }
}

/// A peer's refusal or a broken transfer, as a registry error naming the peer.
fn peer_failure(what: &str, status: tonic::Status) -> RegistryError {
    RegistryError::Transfer {
        what: format!("sending {what}"),
        detail: format!("{}: {}", status.code(), status.message()),
    }
}
