//! A manager's place in the cluster: its port and advertised address, its Raft id, the Raft
//! node and the [`Cluster`] consensus over it, and joining the other managers.
//!
//! - The **Raft id** of the manager that made the cluster is 1; a manager that joins draws a
//!   random one. Either is kept in `<data dir>/raft_id`.
//! - The **address** other managers and agents dial is `--advertise-addr`, else the address
//!   `--listen-addr` bound. With port 0 the port picked at the first start is kept in
//!   `<data dir>/listen_addr` and asked for again on the next start, because the other
//!   managers know this one by it (if it is taken, a new one is picked and the leader is told).
//! - **Joining** (`--join ADDR --token <manager token>`): once its ports listen, the manager
//!   calls `Managers.AddManager` on the manager it joined through; the leader adds it as a
//!   learner, waits until it has caught up, and makes it a voter. A restarted manager makes
//!   the same call, which only updates its address if it changed.
//! - **`--force-new-cluster`**: when a majority of managers is lost for good, start one
//!   surviving manager with it: its Raft membership is rewritten to itself alone (the old
//!   Raft directory is kept as `raft.before-force-new-cluster/`), everything in its log is kept,
//!   and the cluster accepts changes again. Remove the lost managers (`node rm --force`) and
//!   join new ones with fresh data dirs; never restart a lost manager on its old data.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shoal_manager::consensus::Writer;
use shoal_manager::membership::Cluster;
use shoal_manager::raft::{NetworkFactory, RaftConfig, RaftNode};
use shoal_manager::store::{change, Store};
use shoal_proto::store_object::Object;
use shoal_proto::ChangeKind;

use super::identity::NodeCerts;
use super::write_atomically;
use crate::cli::DaemonArgs;

/// The Raft id of the manager that makes a new cluster.
const FIRST_RAFT_ID: u64 = 1;
/// How long a first start waits to become a voter of the cluster it joins.
const JOIN_PATIENCE: Duration = Duration::from_secs(60);

/// Binds the manager port; returns it and the address other nodes reach it at.
pub async fn bind(args: &DaemonArgs) -> Result<(tokio::net::TcpListener, String)> {
    let saved = args.data_dir.join("listen_addr");
    let mut listener = None;
    if args.listen_addr.ends_with(":0") {
        if let Ok(previous) = std::fs::read_to_string(&saved) {
            listener = tokio::net::TcpListener::bind(previous.trim()).await.ok();
        }
    }
    let listener = match listener {
        Some(l) => l,
        None => tokio::net::TcpListener::bind(&args.listen_addr)
            .await
            .with_context(|| {
                format!("cannot listen on {}: is the port in use?", args.listen_addr)
            })?,
    };
    let bound = listener.local_addr()?;
    if args.listen_addr.ends_with(":0") {
        write_atomically(&saved, &bound.to_string())?;
    }
    let advertised = match &args.advertise_addr {
        Some(a) if a.contains(':') => a.clone(),
        Some(host) => format!("{host}:{}", bound.port()),
        None => {
            if bound.ip().is_unspecified() {
                tracing::warn!(%bound, "listening on all addresses: other managers cannot dial this one until --advertise-addr names it");
            }
            bound.to_string()
        }
    };
    Ok((listener, advertised))
}

/// The manager's Raft id: kept in the data dir; a joining manager draws a random one.
fn raft_id(data_dir: &Path, joining: bool) -> Result<u64> {
    let path = data_dir.join("raft_id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return text
            .trim()
            .parse()
            .with_context(|| format!("{} is not a number", path.display()));
    }
    let id = if joining {
        shoal_manager::raft::random_node_id()
    } else {
        FIRST_RAFT_ID
    };
    write_atomically(&path, &id.to_string())?;
    Ok(id)
}

/// Raft timings: heartbeats every 50 ms, elections after 200–400 ms of silence, so a dead
/// leader is replaced in well under a second (ha-bench: leader kill → first write ≈ 0.8 s on
/// loopback; 100/300–600 ms gave ≈ 1.2 s: a follower still inside the dead leader's lease
/// refuses the first vote). `SHOAL_RAFT_TIMINGS=heartbeat,election_min,election_max` (ms)
/// overrides them. `SHOAL_SNAPSHOT_EVERY=N[,KEEP]` builds a snapshot every N entries and keeps
/// KEEP entries behind it (default 10,000 and 1,000): tests make a lagging manager catch up
/// by snapshot with small values.
fn raft_config() -> RaftConfig {
    let mut config = RaftConfig {
        heartbeat_ms: 50,
        election_min_ms: 200,
        election_max_ms: 400,
        ..RaftConfig::default()
    };
    if let Ok(text) = std::env::var("SHOAL_RAFT_TIMINGS") {
        let ms: Vec<u64> = text
            .split(',')
            .filter_map(|t| t.trim().parse().ok())
            .collect();
        if let [heartbeat, min, max] = ms[..] {
            config.heartbeat_ms = heartbeat;
            config.election_min_ms = min;
            config.election_max_ms = max;
        }
    }
    if let Ok(text) = std::env::var("SHOAL_SNAPSHOT_EVERY") {
        let n: Vec<u64> = text
            .split(',')
            .filter_map(|t| t.trim().parse().ok())
            .collect();
        match n[..] {
            [every] => config.snapshot_logs = every.max(1),
            [every, keep] => {
                config.snapshot_logs = every.max(1);
                config.snapshot_keep_logs = keep;
            }
            _ => tracing::warn!(%text, "SHOAL_SNAPSHOT_EVERY: give N or N,KEEP; ignored"),
        }
    }
    config
}

/// What a manager runs on: its Raft node, the consensus over it, and its certificates.
pub struct Core {
    pub raft: RaftNode,
    pub cluster: Cluster,
    pub writer: Writer,
    pub certs: NodeCerts,
    /// Set on the first start of a manager that joined: it is not a voter yet.
    pub joining: bool,
}

/// Opens (or creates) the manager's Raft node. A first start without `--join` makes a
/// one-manager cluster (and its CA); a first start that joined waits for [`join`].
pub async fn open(
    args: &DaemonArgs,
    node_id: &str,
    addr: &str,
    certs: Option<NodeCerts>,
    store: Store,
) -> Result<Core> {
    let data_dir = &args.data_dir;
    let seed = data_dir.join("manager_addr");
    let pristine_db = !data_dir.join(shoal_manager::raft::RAFT_DIR).exists()
        && !data_dir.join(shoal_manager::raft::LEGACY_DB_FILE).exists();
    let joined = certs.is_some() && seed.exists();
    let raft_id = raft_id(data_dir, joined && pristine_db)?;
    if args.force_new_cluster {
        if pristine_db {
            bail!("--force-new-cluster needs the data dir of a surviving manager, and {} has no Raft state", data_dir.display());
        }
        shoal_manager::raft::force_new_cluster(data_dir, raft_id, addr)
            .await
            .context("cannot rewrite the Raft membership")?;
        tracing::warn!(raft_id, %addr, "forced a new one-manager cluster from this manager's data");
    }
    let network = NetworkFactory::new();
    if let Some(certs) = &certs {
        network.set_tls(certs.client_tls());
    }
    let raft =
        RaftNode::open_with_network(data_dir, raft_id, raft_config(), store.clone(), network)
            .await
            .context("cannot open the Raft store")?;
    let cluster = Cluster::new(raft.clone());
    let writer = Writer::new(Arc::new(cluster.clone()));
    let joining = raft.is_pristine().await && joined;
    if raft.is_pristine().await && !joined {
        tracing::info!(%node_id, "initialising a new one-manager cluster");
        raft.initialize_single(addr).await?;
    }
    if !joining {
        // A restarted manager finds its leader by itself; it starts even without one, so
        // that the API can say why nothing can change.
        if let Err(e) = raft.wait_for_leader(Duration::from_secs(3)).await {
            tracing::warn!("{e}");
        }
    }
    if writer.is_leader() && store.read().cluster.is_none() {
        let mut cluster = shoal_manager::join::new_cluster(shoal_proto::now_ms() / 1000)?;
        cluster.node_cert_expiry_secs = cert_expiry_secs(args)?.unwrap_or(0);
        cluster.overlay_address_pool = args
            .overlay_address_pool
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default();
        cluster.ingress_port_range = args.ingress_port_range.clone().unwrap_or_default();
        writer
            .commit(vec![change(ChangeKind::Create, Object::Cluster(cluster))])
            .await?;
    }
    let certs = match certs {
        Some(certs) => certs,
        None => {
            let cluster = store
                .read()
                .cluster
                .clone()
                .context("this manager has no cluster yet and no leader to get it from")?;
            let ca = shoal_manager::join::cluster_ca(&cluster)
                .map_err(|s| anyhow::anyhow!("cannot load the cluster CA: {}", s.message()))?;
            let lifetime = shoal_manager::join::cert_lifetime(&cluster);
            let certs = NodeCerts::issue_for_manager(&ca, node_id, lifetime)?;
            certs.save(data_dir)?;
            raft.network().set_tls(certs.client_tls());
            certs
        }
    };
    Ok(Core {
        raft,
        cluster,
        writer,
        certs,
        joining,
    })
}

/// `--cert-expiry` in seconds, checked.
fn cert_expiry_secs(args: &DaemonArgs) -> Result<Option<i64>> {
    let Some(expiry) = args.cert_expiry else {
        return Ok(None);
    };
    let secs = expiry.as_secs() as i64;
    if secs < shoal_manager::ca::MIN_NODE_CERT_SECS {
        bail!(
            "--cert-expiry {expiry:?} is too short: give at least {} s (the default is 90 days)",
            shoal_manager::ca::MIN_NODE_CERT_SECS
        );
    }
    Ok(Some(secs))
}

/// A manager started with `--cert-expiry` stores it for the whole cluster (if it differs):
/// certificates issued and renewed from then on get that lifetime.
pub fn apply_cert_expiry(args: &DaemonArgs, store: &Store, writer: &Writer) -> Result<()> {
    let Some(secs) = cert_expiry_secs(args)? else {
        return Ok(());
    };
    let (store, writer) = (store.clone(), writer.clone());
    tokio::spawn(async move {
        for _ in 0..20 {
            let Some(mut cluster) = store.read().cluster.clone() else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            if cluster.node_cert_expiry_secs == secs {
                return;
            }
            cluster.node_cert_expiry_secs = secs;
            match writer
                .commit(vec![change(ChangeKind::Update, Object::Cluster(cluster))])
                .await
            {
                Ok(_) => {
                    tracing::info!(secs, "node certificates now live this long");
                    return;
                }
                Err(e) => tracing::debug!("storing --cert-expiry: {e}; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tracing::warn!("could not store --cert-expiry for the cluster: is there a leader?");
    });
    Ok(())
}

/// Makes this manager a voter (first start after `--join`: waits for it) and records its
/// manager status; a restarted manager does it in the background when no leader answers
/// at once. Call once the manager port serves Raft and `Managers`.
pub async fn join(core: &Core, args: &DaemonArgs, node_id: &str, addr: &str) -> Result<()> {
    // The manager it joined through, then every manager it heard of since (a promoted
    // worker's first manager may be long gone).
    let first: Vec<String> = std::fs::read_to_string(args.data_dir.join("manager_addr"))
        .map(|s| {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let seeds: Vec<String> = known_managers(&args.data_dir, &first)
        .into_iter()
        .filter(|m| m != addr)
        .collect();
    let patience = if core.joining {
        JOIN_PATIENCE
    } else {
        Duration::from_secs(5)
    };
    let done = core
        .cluster
        .register_self(&core.writer, node_id, addr, &seeds, patience)
        .await;
    match done {
        Ok(()) => {
            if core.joining {
                tracing::info!(%node_id, %addr, "joined the managers as a voter");
            }
            Ok(())
        }
        Err(e) if core.joining => bail!(
            "could not join the managers through {}: {e}",
            seeds.join(", ")
        ),
        Err(e) => {
            tracing::warn!(
                "cannot record this manager with the leader yet ({e}); retrying in the background"
            );
            let cluster = core.cluster.clone();
            let writer = core.writer.clone();
            let (node_id, addr) = (node_id.to_string(), addr.to_string());
            tokio::spawn(async move {
                let forever = Duration::from_secs(365 * 24 * 3600);
                if let Err(e) = cluster
                    .register_self(&writer, &node_id, &addr, &seeds, forever)
                    .await
                {
                    tracing::warn!("cannot record this manager with the leader: {e}");
                }
            });
            Ok(())
        }
    }
}

/// The managers an agent starts with: those this node knew last time, else `first`.
pub fn known_managers(data_dir: &Path, first: &[String]) -> Vec<String> {
    let mut managers: Vec<String> = first.to_vec();
    if let Ok(text) = std::fs::read_to_string(data_dir.join("managers")) {
        for m in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !managers.iter().any(|k| k == m) {
                managers.push(m.to_string());
            }
        }
    }
    managers
}

/// Keeps the managers' list for the next start (best effort).
pub fn remember_managers(data_dir: &Path, managers: &[String]) {
    if let Err(e) = write_atomically(&data_dir.join("managers"), &managers.join("\n")) {
        tracing::warn!("cannot keep the managers' addresses: {e}");
    }
}
