//! This node's certificate while the daemon runs, and its renewal.
//!
//! - [`LiveCerts`] holds the current certificate in memory. The manager port's TLS is done
//!   here ([`tls_incoming`], tokio-rustls) rather than by tonic, so that the certificate it
//!   presents can be swapped by a renewal without a restart; clients (Raft, the agent's
//!   session, renewals) build their TLS settings from it whenever they connect.
//! - [`Renewal`] renews the certificate at a random 50–80 % of its lifetime (Swarm's rule,
//!   so a cluster's nodes do not all renew at once), and at once when the cluster wants the
//!   node in another role (`node promote` / `node demote`, learnt from the dispatcher
//!   session). A renewal that brings a new role saves the certificate and restarts the
//!   daemon in place (`exec`, same pid and flags) as a manager or as a worker; containers
//!   keep running across it, as across any restart.

use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use shoal_manager::ca::{self, NodeIdentity, Role};
use shoal_proto::node_certificates_client::NodeCertificatesClient;
use shoal_proto::{NodeRole, RenewCertificateRequest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{ClientTlsConfig, Endpoint};

use super::identity::NodeCerts;

/// A TLS handshake that takes longer than this is dropped (a stuck or hostile client must not
/// hold the accept loop).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause between two failed renewal attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The node's current certificate, shared by its servers and clients.
pub struct LiveCerts {
    certs: RwLock<NodeCerts>,
    served: RwLock<Arc<CertifiedKey>>,
    version: watch::Sender<u64>,
}

impl std::fmt::Debug for LiveCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveCerts")
    }
}

fn certified_key(certs: &NodeCerts) -> Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(certs.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .context("the node certificate is not valid PEM")?;
    let key = PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes())
        .context("the node key is not valid PEM")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| anyhow!("the node key cannot sign: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

impl LiveCerts {
    pub fn new(certs: NodeCerts) -> Result<Arc<LiveCerts>> {
        let served = certified_key(&certs)?;
        Ok(Arc::new(LiveCerts {
            certs: RwLock::new(certs),
            served: RwLock::new(served),
            version: watch::channel(0).0,
        }))
    }

    pub fn current(&self) -> NodeCerts {
        self.certs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Client TLS with the current certificate.
    pub fn client_tls(&self) -> ClientTlsConfig {
        self.current().client_tls()
    }

    /// Bumped on every renewal: clients drop cached connections made with the old one.
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    fn replace(&self, certs: NodeCerts) -> Result<()> {
        let served = certified_key(&certs)?;
        *self.served.write().unwrap_or_else(|p| p.into_inner()) = served;
        *self.certs.write().unwrap_or_else(|p| p.into_inner()) = certs;
        self.version.send_modify(|v| *v += 1);
        Ok(())
    }

    /// TLS for the manager port: the current certificate; a client certificate is verified
    /// against the cluster CA when shown (only the Join service serves clients without one,
    /// and every other service checks the peer's identity itself).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>> {
        self.tls_server_config(false)
    }

    /// TLS for a worker's port, which serves only the node-to-node services: a client
    /// without a certificate of the cluster CA is refused at the handshake.
    pub fn members_server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>> {
        self.tls_server_config(true)
    }

    fn tls_server_config(
        self: &Arc<Self>,
        require_client_cert: bool,
    ) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(self.current().ca_pem.as_bytes()) {
            roots
                .add(ca.context("the cluster CA is not valid PEM")?)
                .context("the cluster CA is not a usable certificate")?;
        }
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let builder = if require_client_cert {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        let verifier = builder
            .build()
            .context("cannot verify clients against the cluster CA")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS settings")?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

#[derive(Debug)]
struct Resolver(Arc<LiveCerts>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .served
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// Accepted TLS connections of the manager port, for tonic's `serve_with_incoming` (tonic
/// reads the peer's certificate from them as it would from its own TLS). Handshakes run
/// concurrently; a failed one (no valid certificate where one was shown: another CA,
/// expired) is logged and dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accepting a manager-port connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, "TLS handshake refused: {e}"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Which managers a renewal may ask, best first.
pub type Managers = Arc<dyn Fn() -> Vec<String> + Send + Sync>;
/// Told the renewed certificate (same role): e.g. the Raft transport's TLS is switched.
pub type OnRenewed = Arc<dyn Fn(&NodeCerts) + Send + Sync>;

/// The renewal loop of a node.
pub struct Renewal {
    pub live: Arc<LiveCerts>,
    pub data_dir: PathBuf,
    pub managers: Managers,
    /// This node's own manager address (a manager's), which a demoted node forgets.
    pub own_addr: Option<String>,
    /// The role the cluster wants this node in, from the dispatcher session.
    pub wanted_role: watch::Receiver<Option<NodeRole>>,
    pub on_renewed: Option<OnRenewed>,
}

fn role_of(role: Role) -> NodeRole {
    match role {
        Role::Worker => NodeRole::Worker,
        Role::Manager => NodeRole::Manager,
    }
}

/// A random number in [0, 1).
fn random_fraction() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

impl Renewal {
    /// Runs until the daemon ends (or restarts itself in a new role).
    pub async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let identity = match ca::identity_of(&self.live.current().cert_pem) {
                Ok(identity) => identity,
                Err(e) => {
                    tracing::error!(
                        "this node's certificate is unreadable, it cannot be renewed: {e}"
                    );
                    return;
                }
            };
            let have = role_of(identity.role);
            let differs = move |wanted: &Option<NodeRole>| wanted.is_some_and(|w| w != have);
            let now = shoal_proto::now_ms() / 1000;
            let wait = if failures > 0 {
                (Duration::from_millis(500) * 2u32.saturating_pow(failures.min(6))).min(MAX_RETRY)
            } else {
                let due = ca::renewal_time(&identity, random_fraction());
                Duration::from_secs((due - now).max(0) as u64)
            };
            if !differs(&self.wanted_role.borrow()) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    gone = async { self.wanted_role.wait_for(differs).await.is_err() } => {
                        if gone {
                            // The session is gone for good: renew on time only.
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
            }
            match self.renew_once(&identity).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let left = identity.not_after - shoal_proto::now_ms() / 1000;
                    tracing::warn!(
                        "cannot renew this node's certificate ({e:#}); it expires in {left} s: retrying"
                    );
                }
            }
        }
    }

    async fn renew_once(&self, identity: &NodeIdentity) -> Result<()> {
        let current = self.live.current();
        let (key_pem, csr_pem) = ca::node_key_and_csr(&identity.node_id)?;
        let mut last = anyhow!("no manager address is known");
        for addr in (self.managers)() {
            match self.ask(&addr, &csr_pem).await {
                Ok(cert_pem) => {
                    let renewed = ca::identity_of(&cert_pem)?;
                    if renewed.node_id != identity.node_id {
                        bail!(
                            "the manager at {addr} issued a certificate for node {}, not this one",
                            renewed.node_id
                        );
                    }
                    let certs = NodeCerts {
                        ca_pem: current.ca_pem.clone(),
                        cert_pem,
                        key_pem,
                    };
                    certs.save(&self.data_dir)?;
                    if renewed.role != identity.role {
                        tracing::warn!(from = ?identity.role, to = ?renewed.role, "this node's role changed: restarting in its new role (containers keep running)");
                        self.restart_as(renewed.role)?;
                    }
                    self.live.replace(certs.clone())?;
                    if let Some(tell) = &self.on_renewed {
                        tell(&certs);
                    }
                    tracing::info!(
                        valid_until = renewed.not_after,
                        "renewed this node's certificate"
                    );
                    return Ok(());
                }
                Err(e) => last = e.context(format!("the manager at {addr}")),
            }
        }
        Err(last)
    }

    async fn ask(&self, addr: &str, csr_pem: &str) -> Result<String> {
        let channel = Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(self.live.client_tls())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15))
            .connect()
            .await?;
        let answer = NodeCertificatesClient::new(channel)
            .renew(RenewCertificateRequest {
                csr_pem: csr_pem.to_string(),
            })
            .await
            .map_err(|s| anyhow!("{}", s.message()))?;
        Ok(answer.into_inner().cert_pem)
    }

    /// Prepares the data dir for the new role, then replaces this process with a fresh start
    /// of the same command line (it only returns on failure).
    fn restart_as(&self, role: Role) -> Result<()> {
        if role == Role::Worker {
            leave_manager_state(&self.data_dir, &(self.managers)(), self.own_addr.as_deref())?;
        }
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().context("cannot find the shoal binary to restart")?;
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .exec();
        Err(anyhow!("cannot restart the daemon in its new role: {err}"))
    }
}

/// A demoted manager becomes a worker: it keeps the managers' addresses to dial (without its
/// own) and sets its Raft state aside (it is no longer a member; a later promotion joins
/// afresh with a new Raft id).
fn leave_manager_state(data_dir: &Path, managers: &[String], own: Option<&str>) -> Result<()> {
    let others: Vec<&String> = managers
        .iter()
        .filter(|m| Some(m.as_str()) != own)
        .collect();
    let first = others
        .first()
        .context("no other manager is known to connect to as a worker")?;
    super::write_atomically(&data_dir.join("manager_addr"), first)?;
    let list: Vec<&str> = others.iter().map(|s| s.as_str()).collect();
    super::write_atomically(&data_dir.join("managers"), &list.join("\n"))?;
    let db = data_dir.join(shoal_manager::raft::RAFT_DIR);
    if db.exists() {
        let aside = data_dir.join(format!(
            "{}.demoted-{}",
            shoal_manager::raft::RAFT_DIR,
            shoal_proto::now_ms() / 1000
        ));
        std::fs::rename(&db, &aside)
            .with_context(|| format!("cannot set {} aside", db.display()))?;
    }
    let _ = std::fs::remove_file(data_dir.join("raft_id"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_fractions_stay_in_range() {
        for _ in 0..100 {
            let f = random_fraction();
            assert!((0.0..1.0).contains(&f), "{f}");
        }
    }

    #[test]
    fn a_demoted_manager_keeps_the_other_managers_and_sets_raft_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(shoal_manager::raft::RAFT_DIR), "x").expect("db");
        std::fs::write(dir.path().join("raft_id"), "7").expect("id");
        let managers = vec!["10.0.0.1:4242".to_string(), "10.0.0.2:4242".to_string()];
        leave_manager_state(dir.path(), &managers, Some("10.0.0.1:4242")).expect("done");
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect("file");
        assert_eq!(read("manager_addr"), "10.0.0.2:4242");
        assert_eq!(read("managers"), "10.0.0.2:4242");
        assert!(!dir.path().join(shoal_manager::raft::RAFT_DIR).exists());
        assert!(!dir.path().join("raft_id").exists());
        let err = leave_manager_state(dir.path(), &managers[..1], Some("10.0.0.1:4242"))
            .expect_err("no other manager");
        assert!(err.to_string().contains("no other manager"), "{err}");
    }
}
