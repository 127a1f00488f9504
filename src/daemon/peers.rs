//! Images between nodes (see `shoal_agent::image::peer`): this daemon's side of it.
//!
//! - **Serving.** A manager serves `ImagePeer` (and the `ImagePeerDirectory`) on its manager
//!   port. A worker serves `ImagePeer` on a port of its own, `--listen-addr` (advertised as
//!   `--advertise-addr` when given), where the TLS handshake itself refuses a client without a
//!   certificate of the cluster CA. Either way the node reports the address in its
//!   description (`peer_addr`, shown by `node inspect`). A worker whose port cannot be bound
//!   still runs; it only serves no images (and says so in its log).
//! - **Fetching.** [`Links`]: the directory is asked of the known managers in turn; a peer is
//!   dialled over mutual TLS with this node's current certificate, and its certificate must
//!   name the node id the directory gave (a node cannot pass itself off as another).
//! - **Deploying.** [`ClusterImages`] is the control API's image catalog: an image is pinned
//!   to its digest as this node has it, else as another node has it, else as its registry
//!   has it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use shoal_agent::image::peer::{self, ImagePeerService, PeerImages, PeerLinks};
use shoal_agent::image::registry::Registry;
use shoal_agent::image::ImageStore;
use shoal_manager::control::ImageCatalog;
use shoal_proto::image_peer_directory_client::ImagePeerDirectoryClient;
use shoal_proto::{ImagePeerInfo, ListImagePeersRequest};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};

use super::certs::{tls_incoming, LiveCerts};
use super::identity::MANAGER_NAME;
use crate::cli::DaemonArgs;

/// How long a manager may take to list the peers.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(5);

/// The managers to ask, best first.
pub type Managers = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Channels by (address, server name), made with the certificate of the version kept beside.
type Channels = HashMap<(String, String), Channel>;

/// How this node reaches the others: the managers' directory, and the peers themselves.
pub struct Links {
    live: Arc<LiveCerts>,
    managers: Managers,
    /// Channels by (address, node id), made with the certificate of version `.0`.
    channels: Mutex<(u64, Channels)>,
}

impl Links {
    pub fn new(live: Arc<LiveCerts>, managers: Managers) -> Links {
        Links {
            live,
            managers,
            channels: Mutex::new((0, HashMap::new())),
        }
    }

    /// A channel to `addr` whose certificate must name `server_name`.
    fn channel(&self, addr: &str, server_name: &str) -> Result<Channel, String> {
        let mut cached = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let (version, channels) = &mut *cached;
        if *version != self.live.version() {
            *version = self.live.version();
            channels.clear();
        }
        let key = (addr.to_string(), server_name.to_string());
        if let Some(channel) = channels.get(&key) {
            return Ok(channel.clone());
        }
        let certs = self.live.current();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&certs.ca_pem))
            .identity(Identity::from_pem(&certs.cert_pem, &certs.key_pem))
            .domain_name(server_name);
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| format!("bad address {addr:?}: {e}"))?
            .tls_config(tls)
            .map_err(|e| format!("invalid TLS settings for {addr}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect_lazy();
        channels.insert(key, channel.clone());
        Ok(channel)
    }
}

impl PeerLinks for Links {
    fn peers(&self) -> BoxFuture<'static, Result<Vec<ImagePeerInfo>, String>> {
        let managers = (self.managers)();
        let channels: Vec<(String, Result<Channel, String>)> = managers
            .into_iter()
            .map(|m| {
                let channel = self.channel(&m, MANAGER_NAME);
                (m, channel)
            })
            .collect();
        Box::pin(async move {
            let mut errors = Vec::new();
            for (manager, channel) in channels {
                let asked = async {
                    let mut client = ImagePeerDirectoryClient::new(channel?);
                    client
                        .list_image_peers(ListImagePeersRequest {})
                        .await
                        .map(|r| r.into_inner().peers)
                        .map_err(|s| s.message().to_string())
                };
                match tokio::time::timeout(DIRECTORY_TIMEOUT, asked).await {
                    Ok(Ok(peers)) => return Ok(peers),
                    Ok(Err(e)) => errors.push(format!("manager {manager}: {e}")),
                    Err(_) => errors.push(format!("manager {manager}: no answer in time")),
                }
            }
            if errors.is_empty() {
                return Err("this node knows no manager".into());
            }
            Err(errors.join("; "))
        })
    }

    fn connect(&self, peer: &ImagePeerInfo) -> Result<Channel, String> {
        self.channel(&peer.addr, &peer.node_id)
    }
}

/// The fetcher of this node's agent.
pub fn peer_images(images: &ImageStore, live: &Arc<LiveCerts>, managers: Managers) -> PeerImages {
    PeerImages::new(images.clone(), Arc::new(Links::new(live.clone(), managers)))
}

/// A worker's port for its images: bound on `--listen-addr` and served over mutual TLS to
/// cluster members only. Returns the address the node reports, or None (logged) when the
/// port cannot be had.
pub async fn serve_worker(
    args: &DaemonArgs,
    live: &Arc<LiveCerts>,
    images: &ImageStore,
) -> Option<String> {
    let served = async {
        let (listener, addr) = super::manager::bind(args).await?;
        let tls = live
            .members_server_config()
            .context("invalid TLS settings for the image port")?;
        let server = Server::builder()
            .add_service(InterceptedService::new(
                ImagePeerService::new(images.clone()).into_server(),
                shoal_manager::peers::require_member,
            ))
            .serve_with_incoming(tls_incoming(listener, tls));
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::warn!("the image port stopped: {e}");
            }
        });
        Ok::<_, anyhow::Error>(addr)
    };
    match served.await {
        Ok(addr) => Some(addr),
        Err(e) => {
            tracing::warn!(
                "this worker serves no images to the other nodes: {e:#}; give it a free \
                 --listen-addr that the other nodes can reach"
            );
            None
        }
    }
}

/// The control API's image catalog: this node's store, the other nodes, its registry.
pub struct ClusterImages {
    pub store: ImageStore,
    pub peers: PeerImages,
    pub registry: Registry,
}

impl ClusterImages {
    async fn pin_now(&self, reference: &str) -> Result<Option<String>, String> {
        let (store, r) = (self.store.clone(), reference.to_string());
        let local = tokio::task::spawn_blocking(move || store.resolve(&r))
            .await
            .map_err(|e| format!("looking up the image crashed: {e}"))?;
        match local {
            Ok(found) => return Ok(peer::pin_for(reference, &found.image)),
            Err(shoal_agent::image::ImageError::NotFound { .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
        let located = self.peers.locate(reference).await;
        match &located {
            Ok(Some(found)) => {
                tracing::info!(%reference, peer = %found.peer, digest = %found.manifest_digest, "pinned an image another node has");
                return Ok(match peer::Wanted::of(reference) {
                    Ok(peer::Wanted::Named(_)) => Some(found.manifest_digest.clone()),
                    _ => None,
                });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(%reference, "asking the other nodes for an image: {e}"),
        }
        match self.registry.available_digest(reference).await {
            Ok(digest) => Ok(digest
                .filter(|_| matches!(peer::Wanted::of(reference), Ok(peer::Wanted::Named(_))))),
            Err(e) => Err(match located {
                Err(peers) => format!("{e}; and from the other nodes: {peers}"),
                _ => format!("{e} (no other node of the cluster has it either)"),
            }),
        }
    }
}

impl ImageCatalog for ClusterImages {
    fn check(&self, reference: &str) -> Result<(), String> {
        self.pin(reference).map(|_| ())
    }

    fn pin(&self, reference: &str) -> Result<Option<String>, String> {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Err("the image catalog needs the daemon's runtime".into());
        };
        tokio::task::block_in_place(|| handle.block_on(self.pin_now(reference)))
    }
}
