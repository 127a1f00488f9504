//! `shoal daemon`: one process that is a manager (Raft store, loops, dispatcher, control API)
//! and an agent (runtime, images, executor) talking to that manager over the same gRPC
//! dispatcher protocol a remote agent uses.
//!
//! Containers are owned by their supervisors, not by this process: stopping or killing the
//! daemon leaves them running, and the next start adopts them (live restore).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_agent::containers_api::ContainersApi;
use shoal_agent::dns::{DnsServer, DnsTable};
use shoal_agent::executor::{ContainerResources, Executor, PublishedPorts, TaskNetworks};
use shoal_agent::image::registry::{Registry, RegistrySettings};
use shoal_agent::image::ImageStore;
use shoal_agent::network::{NetworkConfig, NetworkManager};
use shoal_agent::ports::{PortConfig, PortManager};
use shoal_agent::runtime::Runtime;
use shoal_agent::session::Session;
use shoal_agent::volume::{VolumeStore, VolumesApi};
use shoal_manager::ca::Role;
use shoal_manager::consensus::new_id;
use shoal_manager::control::secrets::SecretsApi;
use shoal_manager::control::{ControlApi, DaemonFacts, LogStream, TaskLogs};
use shoal_manager::dispatcher::Dispatcher;
use shoal_manager::join::{JoinService, ManagersOnly};
use shoal_manager::raft::RaftNode;
use shoal_manager::store::Store;
use shoal_proto::containers_server::ContainersServer;
use shoal_proto::{NodeDescription, NodeRole, Platform, Resources, Task};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Endpoint, Server};

use crate::cli::DaemonArgs;

mod build;
mod certs;
mod identity;
mod join;
mod manager;
mod peers;

use certs::{LiveCerts, Renewal};
use identity::NodeCerts;

pub async fn run(args: DaemonArgs) -> Result<()> {
    let data_dir = args.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))?;
    let _lock = lock_data_dir(&data_dir)?;

    // A first start with --join becomes a member of that cluster; the certificate's role
    // decides what this node runs from then on.
    if let (Some(manager), Some(token), None) = (
        args.join.as_deref(),
        args.token.as_deref(),
        NodeCerts::load(&data_dir)?,
    ) {
        let (node_id, role) = join::join(&data_dir, manager, token).await?;
        write_atomically(&data_dir.join("node_id"), &node_id)?;
        write_atomically(&data_dir.join("manager_addr"), manager)?;
        let role = if role == NodeRole::Manager {
            "manager"
        } else {
            "worker"
        };
        tracing::info!(%node_id, %manager, "joined the cluster as a {role}");
    }
    match NodeCerts::load(&data_dir)? {
        Some(certs) if certs.role()? == Role::Worker => run_worker(args, certs).await,
        certs => run_manager(args, certs).await,
    }
}

/// A manager (and the agent of its own node): Raft store, loops, dispatcher, control API.
async fn run_manager(args: DaemonArgs, certs: Option<NodeCerts>) -> Result<()> {
    let data_dir = args.data_dir.clone();
    let node_id = node_id(&data_dir)?;
    // Raft, the consensus over it (forwarding, quorum check) and the certificates: see
    // manager.rs. `addr` is what other managers and agents dial.
    let (listener, addr) = manager::bind(&args).await?;
    let store = Store::new();
    let core = manager::open(&args, &node_id, &addr, certs, store.clone()).await?;
    let (raft, writer) = (core.raft.clone(), core.writer.clone());
    let live = LiveCerts::new(core.certs.clone())?;

    let mut agent = Agent::open(&args)?;
    // Images between nodes: this one serves its own on the manager port (below) and asks
    // the managers, itself first, which nodes serve theirs.
    let peer_images = {
        let (dir, own) = (data_dir.clone(), addr.clone());
        let managers: peers::Managers =
            Arc::new(move || manager::known_managers(&dir, std::slice::from_ref(&own)));
        peers::peer_images(&agent.images, &live, managers)
    };
    agent.share_images(addr.clone(), peer_images.clone());
    let dispatcher = Dispatcher::new(
        store.clone(),
        writer.clone(),
        args.heartbeat,
        node_id.clone(),
        true,
    );
    let facts = Arc::new(Facts {
        node_id: node_id.clone(),
        data_dir: data_dir.clone(),
        cgroup_version: agent.runtime.cgroup_version().to_string(),
        raft: raft.clone(),
    });
    let control = ControlApi::new(
        store.clone(),
        writer.clone(),
        Arc::new(peers::ClusterImages {
            store: agent.images.clone(),
            peers: peer_images,
            registry: agent.registry.clone(),
        }),
        Arc::new(LocalLogs(agent.runtime.clone())),
        facts,
    );
    tokio::spawn(shoal_manager::leader::run(
        store.clone(),
        writer.clone(),
        dispatcher.clone(),
    ));

    // Manager traffic on TCP, all mutual TLS: joins, dispatcher sessions, certificate
    // renewals, Raft (managers only). TLS is done by `certs` so a renewal takes effect at once.
    let tls = live
        .server_config()
        .context("invalid TLS settings for the manager port")?;
    let tcp = Server::builder()
        .add_service(JoinService::new(store.clone()).into_service())
        .add_service(
            shoal_manager::certs::RenewService::new(store.clone(), writer.clone()).into_service(),
        )
        .add_service(dispatcher.into_service())
        .add_service(InterceptedService::new(
            raft.raft_service(),
            ManagersOnly::new(store.clone()),
        ))
        .add_service(InterceptedService::new(
            core.cluster.clone().into_service(writer.clone()),
            ManagersOnly::new(store.clone()),
        ))
        .add_service(InterceptedService::new(
            shoal_agent::image::peer::ImagePeerService::new(agent.images.clone()).into_server(),
            shoal_manager::peers::MembersOnly::new(store.clone()),
        ))
        .add_service(InterceptedService::new(
            shoal_manager::peers::PeerDirectory::new(store.clone()).into_service(),
            shoal_manager::peers::MembersOnly::new(store.clone()),
        ))
        .serve_with_incoming(certs::tls_incoming(listener, tls));
    let tcp = tokio::spawn(tcp);
    // A manager that joined becomes a voter now that its port serves Raft.
    manager::join(&core, &args, &node_id, &addr).await?;
    manager::apply_cert_expiry(&args, &store, &writer)?;

    // The CLI's API on a unix socket only root can open.
    let socket = args.socket.clone();
    let unix = bind_socket(&socket)?;
    let api = Server::builder()
        .add_service(control.into_service())
        .add_service(SecretsApi::new(store.clone(), writer.clone()).into_service())
        .add_service(
            shoal_agent::image::ImagesApi::new(agent.images.clone())
                .with_runtime(agent.runtime.clone())
                .into_server(),
        )
        .add_service(VolumesApi::new(agent.volumes.clone()).into_server())
        .add_service(agent.registry.clone().into_server())
        .add_service(build::service(&agent.builder))
        .add_service(agent.containers_api())
        .serve_with_incoming_shutdown(UnixListenerStream::new(unix), shutdown_signal());

    // The embedded agent dials the managers like any remote agent would (this one first).
    let wanted_role = agent.start(
        manager::known_managers(&data_dir, std::slice::from_ref(&addr)),
        &live,
        node_id.clone(),
        &data_dir,
    )?;
    let members = raft.clone();
    let tls_raft = raft.clone();
    tokio::spawn(
        Renewal {
            live: live.clone(),
            data_dir: data_dir.clone(),
            managers: Arc::new(move || {
                let mut all: Vec<String> =
                    members.membership().into_values().map(|(a, _)| a).collect();
                all.sort();
                all
            }),
            own_addr: Some(addr.clone()),
            wanted_role,
            on_renewed: Some(Arc::new(move |certs: &NodeCerts| {
                tls_raft.network().set_tls(certs.client_tls())
            })),
        }
        .run(),
    );

    tracing::info!(%node_id, %addr, socket = %socket.display(), "shoal daemon ready");
    let served = api.await;
    tracing::info!("shutting down; containers keep running");
    agent.networks.manager().empty_pool().await;
    tcp.abort();
    raft.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    served.context("the control API server failed")?;
    Ok(())
}

/// A worker: only an agent, with a session to its manager, and the node-local image API.
async fn run_worker(args: DaemonArgs, certs: NodeCerts) -> Result<()> {
    let data_dir = args.data_dir.clone();
    let node_id = certs.node_id()?;
    let manager = std::fs::read_to_string(data_dir.join("manager_addr")).with_context(|| {
        format!(
            "this worker's data dir {} names no manager",
            data_dir.display()
        )
    })?;
    let mut agent = Agent::open(&args)?;
    let socket = args.socket.clone();
    let unix = bind_socket(&socket)?;
    let api = Server::builder()
        .add_service(
            shoal_agent::image::ImagesApi::new(agent.images.clone())
                .with_runtime(agent.runtime.clone())
                .into_server(),
        )
        .add_service(VolumesApi::new(agent.volumes.clone()).into_server())
        .add_service(agent.registry.clone().into_server())
        .add_service(build::service(&agent.builder))
        .add_service(agent.containers_api())
        .serve_with_incoming_shutdown(UnixListenerStream::new(unix), shutdown_signal());
    let live = LiveCerts::new(certs)?;
    let first = manager.trim().to_string();
    // Images between nodes: served on this worker's own port, fetched from the others.
    if let Some(peer_addr) = peers::serve_worker(&args, &live, &agent.images).await {
        let (dir, first) = (data_dir.clone(), first.clone());
        let managers: peers::Managers =
            Arc::new(move || manager::known_managers(&dir, std::slice::from_ref(&first)));
        let peer_images = peers::peer_images(&agent.images, &live, managers);
        agent.share_images(peer_addr, peer_images);
    }
    let wanted_role = agent.start(
        manager::known_managers(&data_dir, std::slice::from_ref(&first)),
        &live,
        node_id.clone(),
        &data_dir,
    )?;
    let dir = data_dir.clone();
    tokio::spawn(
        Renewal {
            live,
            data_dir: data_dir.clone(),
            managers: Arc::new(move || manager::known_managers(&dir, std::slice::from_ref(&first))),
            own_addr: None,
            wanted_role,
            on_renewed: None,
        }
        .run(),
    );
    tracing::info!(%node_id, manager = %manager.trim(), socket = %socket.display(), "shoal worker ready");
    let served = api.await;
    tracing::info!("shutting down; containers keep running");
    agent.networks.manager().empty_pool().await;
    let _ = std::fs::remove_file(&socket);
    served.context("the image API server failed")?;
    Ok(())
}

/// The node's agent: runtime, image store, networks, and (once started) the executor and its
/// session.
struct Agent {
    runtime: Arc<Runtime>,
    images: ImageStore,
    networks: TaskNetworks,
    volumes: Arc<VolumeStore>,
    registry: Registry,
    builder: shoal_agent::image::build::ImageBuilder,
    /// Where this node serves its images to the others (reported to the managers), and how
    /// it fetches theirs: see `peers.rs`.
    peer_addr: String,
    peers: Option<shoal_agent::image::peer::PeerImages>,
}

impl Agent {
    /// Tasks fetch images this node lacks from the other nodes; this node serves its own at
    /// `addr`.
    fn share_images(&mut self, addr: String, peers: shoal_agent::image::peer::PeerImages) {
        self.peer_addr = addr;
        self.peers = Some(peers);
    }

    /// Docker's local container commands over this node's runtime, images, networks and
    /// volumes.
    fn containers_api(&self) -> ContainersServer<ContainersApi> {
        ContainersApi::new(self.runtime.clone(), self.images.clone())
            .with_resources(ContainerResources {
                networks: self.networks.clone(),
                volumes: self.volumes.clone(),
            })
            .into_server()
    }

    fn open(args: &DaemonArgs) -> Result<Agent> {
        let runtime = Arc::new(Runtime::new(
            args.data_dir.join("containers"),
            std::env::current_exe().context("cannot find the shoal binary to run supervisors")?,
            args.cgroup_parent.clone(),
        )?);
        let images = ImageStore::open(args.data_dir.join("images"))?;
        let mut config =
            NetworkConfig::new(args.data_dir.join("network"), args.data_dir.join("run"));
        config.name_prefix = args.network_prefix.clone();
        config.nft_table = args.nft_table.clone();
        if !args.address_pools.is_empty() {
            config.pools = args.address_pools.clone();
        }
        let manager = NetworkManager::open(config).context("cannot open the node's networks")?;
        let dns = DnsServer::new(DnsTable::new(), dns_upstreams(&args.dns_upstreams)?);
        let ports = PortManager::open(PortConfig {
            state_dir: args.data_dir.join("ports"),
            nft_table: format!("{}-ports", args.nft_table),
        })
        .context("cannot open the node's published ports")?;
        let volumes = VolumeStore::open(args.data_dir.join("volumes"))
            .context("cannot open the node's volumes")?;
        let registry = Registry::new(
            images.clone(),
            RegistrySettings {
                insecure: args.insecure_registries.clone(),
            },
        );
        // Builds pull the base images the store lacks as `image pull` does.
        let builder = build::open(args, &images, &manager)?.with_registry(registry.clone());
        Ok(Agent {
            networks: TaskNetworks::new(manager, dns, PublishedPorts::new(ports), runtime.clone()),
            runtime,
            registry,
            builder,
            images,
            volumes: Arc::new(volumes),
            peer_addr: String::new(),
            peers: None,
        })
    }

    /// Opens the dispatcher session with the leader among `managers`, over mutual TLS with
    /// the node's current certificate; the managers' list the leader sends is kept in the
    /// data dir for the next start. Returns the role the cluster wants the node in, as the
    /// session learns it.
    fn start(
        &self,
        managers: Vec<String>,
        live: &Arc<LiveCerts>,
        node_id: String,
        data_dir: &Path,
    ) -> Result<tokio::sync::watch::Receiver<Option<NodeRole>>> {
        let (executor, updates) = Executor::new(
            self.runtime.clone(),
            self.images.clone(),
            self.networks.clone(),
            self.volumes.clone(),
        )?;
        executor.use_registry(self.registry.clone());
        if let Some(peers) = &self.peers {
            executor.use_peers(peers.clone());
        }
        let reconciling = executor.clone();
        tokio::spawn(async move { reconciling.reconcile_networks().await });
        let live = live.clone();
        // Channels per manager, made with the certificate of version `.0`: a renewal makes
        // the next connection use the new one.
        let channels = Arc::new(std::sync::Mutex::new((
            live.version(),
            std::collections::HashMap::<String, tonic::transport::Channel>::new(),
        )));
        let connect: shoal_agent::session::Connect = Arc::new(move |addr: &str| {
            let mut cached = channels.lock().unwrap_or_else(|p| p.into_inner());
            let (version, channels) = &mut *cached;
            if *version != live.version() {
                *version = live.version();
                channels.clear();
            }
            if let Some(channel) = channels.get(addr) {
                return Ok(channel.clone());
            }
            let channel = Endpoint::from_shared(format!("https://{addr}"))
                .map_err(|e| format!("bad manager address {addr:?}: {e}"))?
                .tls_config(live.client_tls())
                .map_err(|e| format!("invalid TLS settings for the agent: {e}"))?
                .connect_timeout(Duration::from_millis(500))
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(2))
                .connect_lazy();
            channels.insert(addr.to_string(), channel.clone());
            Ok(channel)
        });
        let dir = data_dir.to_path_buf();
        let (role_tx, role_rx) = tokio::sync::watch::channel(None);
        tokio::spawn(
            Session {
                managers,
                connect,
                on_managers: Some(Arc::new(move |m: &[String]| {
                    manager::remember_managers(&dir, m)
                })),
                on_role: Some(Arc::new(move |role: i32| {
                    let role = NodeRole::try_from(role).ok();
                    role_tx.send_if_modified(|now| {
                        let changed = *now != role;
                        *now = role;
                        changed
                    });
                })),
                node_id,
                description: NodeDescription {
                    peer_addr: self.peer_addr.clone(),
                    ..describe_node()
                },
                executor,
                updates,
            }
            .run(),
        );
        Ok(role_rx)
    }
}

/// Where the node's DNS server forwards unknown names: `--dns-upstream`, else the host's
/// resolvers.
fn dns_upstreams(given: &[String]) -> Result<Vec<std::net::SocketAddr>> {
    if given.iter().any(|g| g == "none") {
        return Ok(Vec::new());
    }
    if given.is_empty() {
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        return Ok(DnsServer::upstreams_from_resolv_conf(&resolv));
    }
    given
        .iter()
        .map(|g| {
            g.parse()
                .or_else(|_| g.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                .with_context(|| format!("--dns-upstream {g:?}: give IP or IP:PORT, or none"))
        })
        .collect()
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// One daemon per data dir: a second one would corrupt the Raft log. The lock lives as
/// long as the returned guard.
fn lock_data_dir(data_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    let path = data_dir.join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        anyhow::anyhow!(
            "another shoal daemon is using {}: stop it first, or pick another --data-dir",
            data_dir.display()
        )
    })
}

/// This node's id: made once, kept in the data dir.
fn node_id(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = new_id();
            write_atomically(&path, &id)?;
            Ok(id)
        }
    }
}

/// Writes a small file so that a crash leaves the old content or the new, never a mix.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn bind_socket(path: &PathBuf) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A socket file left by a daemon that was killed: nobody listens on it (the data dir lock
    // proves this daemon is the only one), so it can go.
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn describe_node() -> NodeDescription {
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let memory = nix::sys::sysinfo::sysinfo()
        .map(|i| i.ram_total() as i64)
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as i64)
        .unwrap_or(1);
    NodeDescription {
        hostname,
        platform: Some(Platform {
            os: std::env::consts::OS.into(),
            architecture: std::env::consts::ARCH.into(),
        }),
        resources: Some(Resources {
            memory_bytes: memory,
            nano_cpus: cpus * 1_000_000_000,
            pids: 0,
        }),
        engine_version: env!("CARGO_PKG_VERSION").into(),
        peer_addr: String::new(),
    }
}

struct LocalLogs(Arc<Runtime>);

impl TaskLogs for LocalLogs {
    fn stream(&self, tasks: Vec<Task>, follow: bool, tail: u64) -> LogStream {
        let rx = shoal_agent::logs::stream_task_logs(&self.0, tasks, follow, tail);
        Box::pin(tokio_stream::StreamExt::map(ReceiverStream::new(rx), Ok))
    }
}

struct Facts {
    node_id: String,
    data_dir: PathBuf,
    cgroup_version: String,
    raft: RaftNode,
}

impl DaemonFacts for Facts {
    fn node_id(&self) -> String {
        self.node_id.clone()
    }
    fn data_dir(&self) -> String {
        self.data_dir.display().to_string()
    }
    fn cgroup_version(&self) -> String {
        self.cgroup_version.clone()
    }
    fn raft_progress(&self) -> (u64, u64) {
        let m = self.raft.metrics();
        (m.current_term, m.last_applied.map(|l| l.index).unwrap_or(0))
    }
}
