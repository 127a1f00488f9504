//! Raft for the managers: openraft 0.9 (storage-v2) over a write-ahead log of our own, with
//! the in-memory [`Store`] as the state machine and openraft's own messages carried over tonic.
//!
//! - **Durability.** The log, the vote, the committed log id and the latest snapshot live in
//!   `<data_dir>/raft/`: the log in preallocated segment files (see `wal`), the rest in small
//!   files. An appended entry is reported flushed only after `fdatasync`, and the vote is on
//!   disk before `save_vote` returns. So a write [`RaftNode::propose`] acknowledged survives a
//!   crash of any minority of managers. Shoal before this layout kept all of it in one redb
//!   file, `<data_dir>/raft.redb`: such a data dir is refused with a message (see
//!   [`RaftError::OldLayout`]).
//! - **State machine.** [`Store`] is memory only. At start the last snapshot is restored into
//!   it, and openraft re-applies the committed entries after it (the committed log id is
//!   persisted too, so a restarted node catches up without waiting for a quorum).
//! - **Snapshots** hold the protobuf [`StoreSnapshot`] bytes plus the last log id and
//!   membership; one is built every [`RaftConfig::snapshot_logs`] entries and persisted before
//!   the log behind it is purged (keeping [`RaftConfig::snapshot_keep_logs`] entries so a
//!   slightly lagging follower catches up from the log rather than a full snapshot).
//! - **Log format.** An entry is postcard-encoded openraft `Entry`; a command inside it is the
//!   protobuf encoding of [`StoreCommand`], so the model on disk is the one from `proto/`.
//! - **Node ids** are chosen by the caller, who must persist its own (the daemon does);
//!   [`random_node_id`] makes a fresh one for a first start.
//! - **Transport.** [`RaftService`] serves AppendEntries / Vote / InstallSnapshot with each
//!   request and response postcard-encoded in a `RaftMessage`; [`NetworkFactory`] dials peers
//!   lazily (mutual TLS in a daemon) and reports dead peers as `Unreachable`, so openraft
//!   backs off.
//! - **Membership.** A manager joins as a learner, then becomes a voter
//!   ([`RaftNode::add_manager`]); [`RaftNode::remove_manager`] takes it out again.
//! - **Disaster recovery.** [`force_new_cluster`] rewrites a surviving manager's membership to
//!   itself alone (etcd's `--force-new-cluster`, Swarm's `init --force-new-cluster`): every
//!   entry in its log becomes committed under the new one-member configuration.
//!
//! [`StoreSnapshot`]: shoal_proto::StoreSnapshot

pub(crate) mod codec;
mod files;
mod network;
mod storage;
#[cfg(test)]
mod tests;
mod wal;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError};
use openraft::{BasicNode, ChangeMembers, Config, RaftMetrics, ServerState, SnapshotPolicy};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shoal_proto::StoreCommand;
use tokio::sync::watch;

use crate::store::{Applied, ApplyError, Store};

pub use network::{NetworkFactory, PeerNetwork, RaftService};
pub use storage::{LogStore, SnapshotBuilder, StateMachine, WalStats};

openraft::declare_raft_types!(
    /// shoal's Raft types: u64 node ids; a node's address is the "host:port" of its gRPC
    /// endpoint; a log entry carries one [`StoreCommand`].
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The openraft handle for shoal's types.
pub type Raft = openraft::Raft<TypeConfig>;

/// The payload of a normal log entry: the commands proposed together (group commit, see
/// [`RaftNode::propose`]). Its serde form is the protobuf encoding of a [`StoreCommandBatch`]
/// (as bytes), so the log on disk and on the wire is protobuf, not a serde mirror of it. An
/// entry written before batching (a bare `StoreCommand`) reads as a batch of one.
///
/// The commands are shared, not copied: the writer that proposed one keeps it to retry with
/// while it is in the log. Applying an entry read back from the log owns them alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Request(pub Vec<Arc<StoreCommand>>);

/// The field number of `StoreCommandBatch.commands` (cluster.proto).
const BATCH_COMMANDS_FIELD: u32 = 15;

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The bytes of a `StoreCommandBatch`, encoded field by field: building one would
        // copy every command first.
        let mut bytes = Vec::with_capacity(
            self.0
                .iter()
                .map(|c| prost::encoding::message::encoded_len(BATCH_COMMANDS_FIELD, &**c))
                .sum(),
        );
        for command in &self.0 {
            prost::encoding::message::encode(BATCH_COMMANDS_FIELD, &**command, &mut bytes);
        }
        serializer.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_byte_buf(codec::ProtoVisitor::<codec::CommandsOrOne>::new())
            .map(|c| Request(c.0.into_iter().map(Arc::new).collect()))
    }
}

/// What applying an entry returned: the [`Store::apply`] result of each of its commands;
/// blank and membership entries report one `Ok` with their index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response(pub Vec<Result<Applied, ApplyError>>);

/// Raft timings and snapshot policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfig {
    /// How often the leader sends heartbeats.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in `[min, max)` starts an election.
    /// Well under a second by default: Swarm takes 10–20 s to replace a dead leader.
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot once this many entries were applied since the last one.
    pub snapshot_logs: u64,
    /// How many entries to keep in the log behind a snapshot.
    pub snapshot_keep_logs: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_ms: 100,
            election_min_ms: 300,
            election_max_ms: 600,
            snapshot_logs: 10_000,
            snapshot_keep_logs: 1_000,
        }
    }
}

impl RaftConfig {
    fn to_openraft(&self) -> Result<Config, RaftError> {
        let config = Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            // A chunk is at most `snapshot_max_chunk_size` (3 MiB): allow a slow link.
            install_snapshot_timeout: 5_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs),
            max_in_snapshot_log_to_keep: self.snapshot_keep_logs,
            ..Config::default()
        };
        config.validate().map_err(|e| RaftError::Config {
            detail: e.to_string(),
        })
    }
}

/// Why a Raft operation failed, worded for the operator who reads it.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("cannot create the raft data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the raft data {path} is locked by another shoal process: stop it first")]
    Locked { path: PathBuf },
    #[error("{path} holds the raft state in the layout of an older shoal (one redb file), which this shoal does not read: run the older shoal to finish with this manager (demote or remove it), then join it again with an empty data directory")]
    OldLayout { path: PathBuf },
    #[error("cannot open the raft data {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("the raft data {path} holds unreadable data ({detail}): restore it from a backup, or remove this manager from the cluster and join it again with an empty data directory")]
    Corrupt { path: PathBuf, detail: String },
    #[error("invalid raft settings: {detail}")]
    Config { detail: String },
    #[error("{}", not_leader_message(*.leader_id, .leader_addr.as_deref()))]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    #[error("this manager cannot reach a quorum of managers ({detail}): check that a majority of managers are up and can reach each other, then retry")]
    NoQuorum { detail: String },
    #[error("no leader was elected within {waited_ms} ms: check that a majority of managers are up and can reach each other")]
    NoLeader { waited_ms: u64 },
    #[error("cannot initialise the cluster: {detail}")]
    Initialize { detail: String },
    #[error("raft has stopped on this manager ({detail}): see the daemon log, fix the cause and restart the daemon")]
    Stopped { detail: String },
    #[error("cannot change the managers: {detail}")]
    Membership { detail: String },
    #[error("timed out after {waited_ms} ms waiting for {what}")]
    Timeout { what: String, waited_ms: u64 },
}

fn not_leader_message(leader_id: Option<u64>, leader_addr: Option<&str>) -> String {
    match (leader_id, leader_addr) {
        (Some(id), Some(addr)) => {
            format!("this manager is not the leader; the leader is node {id} at {addr}")
        }
        (Some(id), None) => format!("this manager is not the leader; the leader is node {id}"),
        _ => "this manager is not the leader and no leader is known right now (an election is under way or there is no quorum): retry in a moment".into(),
    }
}

impl RaftError {
    /// The leader to forward to, when the error says this node is not it.
    pub fn leader(&self) -> Option<(u64, Option<&str>)> {
        match self {
            RaftError::NotLeader {
                leader_id: Some(id),
                leader_addr,
            } => Some((*id, leader_addr.as_deref())),
            _ => None,
        }
    }

    fn stopped(e: impl std::fmt::Display) -> RaftError {
        RaftError::Stopped {
            detail: e.to_string(),
        }
    }
}

fn membership_error(
    e: openraft::error::RaftError<u64, ClientWriteError<u64, BasicNode>>,
) -> RaftError {
    match e {
        openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => forward(&f),
        openraft::error::RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            RaftError::Membership {
                detail: e.to_string(),
            }
        }
        openraft::error::RaftError::Fatal(e) => RaftError::stopped(e),
    }
}

/// Rewrites the Raft membership stored in `<data_dir>/raft/` to this manager alone, for a
/// cluster that lost its quorum for good. The directory is copied to
/// `raft.before-force-new-cluster/` first. Everything in this manager's log is kept and
/// becomes committed once it elects itself. Run it with the daemon stopped; other former
/// managers must not be started again on their old data.
pub async fn force_new_cluster(data_dir: &Path, node_id: u64, addr: &str) -> Result<(), RaftError> {
    let path = data_dir.join(RAFT_DIR);
    refuse_old_layout(data_dir)?;
    let backup = data_dir.join(format!("{RAFT_DIR}.before-force-new-cluster"));
    copy_dir(&path, &backup).map_err(|source| RaftError::DataDir {
        path: backup.clone(),
        source,
    })?;
    storage::force_single_member(&path, node_id, addr).await
}

/// Copies the files of `from` into a new directory `to` (the raft directory has no
/// subdirectories), and syncs them.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for item in std::fs::read_dir(from)? {
        let item = item?;
        if item.file_type()?.is_file() && item.file_name() != "LOCK" {
            let target = to.join(item.file_name());
            std::fs::copy(item.path(), &target)?;
            std::fs::File::open(&target)?.sync_all()?;
        }
    }
    std::fs::File::open(to)?.sync_all()
}

/// Refuses a data dir whose raft state is in the older one-file layout.
fn refuse_old_layout(data_dir: &Path) -> Result<(), RaftError> {
    let legacy = data_dir.join(LEGACY_DB_FILE);
    if legacy.exists() && !data_dir.join(RAFT_DIR).exists() {
        return Err(RaftError::OldLayout { path: legacy });
    }
    Ok(())
}

fn forward(f: &openraft::error::ForwardToLeader<u64, BasicNode>) -> RaftError {
    RaftError::NotLeader {
        leader_id: f.leader_id,
        leader_addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
    }
}

/// A fresh, non-zero node id for a manager's first start. The caller persists it.
pub fn random_node_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// The directory of the Raft state inside the data directory.
pub const RAFT_DIR: &str = "raft";
/// Where shoal kept the Raft state before [`RAFT_DIR`]: one redb file.
pub const LEGACY_DB_FILE: &str = "raft.redb";

/// Largest gRPC message the Raft service sends or accepts: a batch of entries or a snapshot
/// chunk (3 MiB) with room to spare.
const MAX_MESSAGE: usize = 64 << 20;

/// What a proposal ends in: the log index it was committed at and what applying it did.
type Proposed = Result<(u64, Result<Applied, ApplyError>), RaftError>;

/// A command waiting for the next log entry, and where its result goes.
struct Proposal {
    command: Arc<StoreCommand>,
    reply: tokio::sync::oneshot::Sender<Proposed>,
}

/// The most commands one log entry carries.
const MAX_BATCH: usize = 1_024;
/// An entry stops taking commands past this size (a single larger command still goes).
const MAX_BATCH_BYTES: usize = 4 << 20;

fn write_error(e: &openraft::error::RaftError<u64, ClientWriteError<u64, BasicNode>>) -> RaftError {
    match e {
        openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => forward(f),
        openraft::error::RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            RaftError::stopped(e)
        }
        openraft::error::RaftError::Fatal(e) => RaftError::stopped(e),
    }
}

/// Takes the proposals queued while the previous entry was being written and writes them as
/// one entry; ends when the node is dropped.
async fn run_proposer(raft: Raft, mut queue: tokio::sync::mpsc::UnboundedReceiver<Proposal>) {
    use prost::Message;
    while let Some(first) = queue.recv().await {
        let mut bytes = first.command.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += next.command.encoded_len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        // The commands go into the entry (shared, not copied); the replies wait for its result.
        let (commands, replies): (Vec<Arc<StoreCommand>>, Vec<_>) =
            batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        match raft.client_write(Request(commands)).await {
            Ok(response) => {
                let index = response.log_id.index;
                let mut results = response.data.0.into_iter();
                for reply in replies {
                    let result = results.next().unwrap_or_else(|| {
                        Err(ApplyError::Invalid(
                            "the state machine returned no result for this command".into(),
                        ))
                    });
                    let _ = reply.send(Ok((index, result)));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(write_error(&e)));
                }
            }
        }
    }
}

/// What [`start_on_own_thread`] hands back: openraft's handle, the current leader, and the
/// queue of the proposer.
type Started = (
    Raft,
    watch::Receiver<Option<u64>>,
    tokio::sync::mpsc::UnboundedSender<Proposal>,
);

/// Starts openraft, the proposer and the leader watch on a thread of their own, with a
/// single-threaded runtime: a write hops between openraft's core, its state machine worker
/// and the proposer several times, and within one thread each hop is a queue push, not a
/// thread wake-up (which on 2 cores cost more than the rest of the write). The thread ends
/// once openraft has stopped.
async fn start_on_own_thread(
    node_id: u64,
    config: Arc<Config>,
    network: NetworkFactory,
    log_store: LogStore,
    state_machine: StateMachine,
) -> Result<Started, RaftError> {
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RaftError::stopped(format!("cannot start its runtime: {e}")))?;
    std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            runtime.block_on(async move {
                let raft =
                    match openraft::Raft::new(node_id, config, network, log_store, state_machine)
                        .await
                    {
                        Ok(raft) => raft,
                        Err(e) => {
                            let _ = started_tx.send(Err(RaftError::stopped(e)));
                            return;
                        }
                    };
                let mut metrics = raft.metrics();
                let (leader_tx, leader) = watch::channel(metrics.borrow().current_leader);
                let (proposals, queue) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(run_proposer(raft.clone(), queue));
                if started_tx.send(Ok((raft, leader, proposals))).is_err() {
                    return;
                }
                // Ends when openraft stops (its metrics sender goes away).
                while metrics.changed().await.is_ok() {
                    let now = metrics.borrow_and_update().current_leader;
                    leader_tx.send_if_modified(|current| {
                        let changed = *current != now;
                        *current = now;
                        changed
                    });
                }
            })
        })
        .map_err(|e| RaftError::stopped(format!("cannot start its thread: {e}")))?;
    started
        .await
        .map_err(|_| RaftError::stopped("its thread ended while starting"))?
}

/// A running Raft member. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    raft: Raft,
    store: Store,
    path: PathBuf,
    config: RaftConfig,
    network: NetworkFactory,
    leader: watch::Receiver<Option<u64>>,
    /// Commands for the next log entry (see [`RaftNode::propose_indexed`]).
    proposals: tokio::sync::mpsc::UnboundedSender<Proposal>,
    /// Tells when the raft directory is closed, so its lock is free again.
    closed: watch::Receiver<()>,
    wal_stats: Arc<WalStats>,
}

impl RaftNode {
    /// Opens (or creates) `<data_dir>/raft/`, restores the last snapshot into `store`,
    /// and starts openraft. A node that was a member rejoins its cluster by itself; a new one
    /// waits for [`initialize`](Self::initialize) or for a leader to add it.
    pub async fn open(
        data_dir: &Path,
        node_id: u64,
        config: RaftConfig,
        store: Store,
    ) -> Result<RaftNode, RaftError> {
        Self::open_with_network(data_dir, node_id, config, store, NetworkFactory::new()).await
    }

    /// [`open`](Self::open) with the given transport (a daemon's is mutual TLS).
    pub async fn open_with_network(
        data_dir: &Path,
        node_id: u64,
        config: RaftConfig,
        store: Store,
        network: NetworkFactory,
    ) -> Result<RaftNode, RaftError> {
        let raft_config = Arc::new(config.to_openraft()?);
        std::fs::create_dir_all(data_dir).map_err(|source| RaftError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        refuse_old_layout(data_dir)?;
        let path = data_dir.join(RAFT_DIR);
        let (log_store, state_machine) = storage::open(&path, store.clone()).await?;
        let closed = log_store.closed();
        let wal_stats = log_store.stats();
        let (raft, leader, proposals) = start_on_own_thread(
            node_id,
            raft_config,
            network.clone(),
            log_store,
            state_machine,
        )
        .await?;
        tracing::info!(node_id, path = %path.display(), "raft started");
        Ok(RaftNode {
            inner: Arc::new(Inner {
                id: node_id,
                raft,
                store,
                path,
                config,
                network,
                leader,
                proposals,
                closed,
                wal_stats,
            }),
        })
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The state machine this node applies to.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The raft directory, for messages and `shoal info`.
    pub fn db_path(&self) -> &Path {
        &self.inner.path
    }

    /// True when this node has never been initialised or joined (no vote, no log, no
    /// snapshot): only then may a daemon bootstrap a cluster on it. Errs towards false.
    pub async fn is_pristine(&self) -> bool {
        matches!(self.inner.raft.is_initialized().await, Ok(false))
    }

    /// Makes a one-member cluster of this node (first start of `shoal daemon`) and waits
    /// until it leads. A no-op if the node was already initialised or joined: a restarted
    /// member finds its cluster by itself.
    pub async fn initialize_single(&self, addr: &str) -> Result<(), RaftError> {
        if !self.is_pristine().await {
            return Ok(());
        }
        let members = BTreeMap::from([(self.inner.id, addr.to_string())]);
        self.initialize(members).await?;
        self.wait_for_leader(self.election_patience()).await?;
        Ok(())
    }

    /// Makes a cluster of `members` (node id → "host:port"), which must include this node.
    /// Call it on one node only; the others learn the membership from it. A no-op if this
    /// node was already initialised.
    pub async fn initialize(&self, members: BTreeMap<u64, String>) -> Result<(), RaftError> {
        let raft = &self.inner.raft;
        if raft.is_initialized().await.map_err(RaftError::stopped)? {
            return Ok(());
        }
        let nodes: BTreeMap<u64, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode::new(addr)))
            .collect();
        match raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(openraft::error::RaftError::APIError(e)) => Err(RaftError::Initialize {
                detail: e.to_string(),
            }),
            Err(openraft::error::RaftError::Fatal(e)) => Err(RaftError::stopped(e)),
        }
    }

    /// Waits until some node is known as leader and returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, RaftError> {
        let mut leader = self.inner.leader.clone();
        let found = tokio::time::timeout(timeout, leader.wait_for(|l| l.is_some())).await;
        match found {
            Ok(Ok(id)) => id.ok_or(RaftError::NoLeader {
                waited_ms: timeout.as_millis() as u64,
            }),
            Ok(Err(_)) => Err(RaftError::stopped("it was shut down")),
            Err(_) => Err(RaftError::NoLeader {
                waited_ms: timeout.as_millis() as u64,
            }),
        }
    }

    /// Proposes a command and waits until it is committed and applied here; returns what
    /// applying it returned. On a follower: [`RaftError::NotLeader`] naming the leader, so the
    /// caller can forward. A command may be applied even when this returns an error (the
    /// leader lost its post mid-way): retry with the same `request_id`, which applies once.
    pub async fn propose(
        &self,
        command: impl Into<Arc<StoreCommand>>,
    ) -> Result<Result<Applied, ApplyError>, RaftError> {
        self.propose_indexed(command)
            .await
            .map(|(_, result)| result)
    }

    /// [`propose`](Self::propose), also returning the log index the command was committed at
    /// (what a follower that forwarded it waits to have applied).
    ///
    /// Group commit: proposals that arrive while an append is under way wait for it and then
    /// go together into the next log entry, so concurrent writers share one append and one
    /// fsync (openraft 0.9 appends and syncs each entry on its own).
    pub async fn propose_indexed(
        &self,
        command: impl Into<Arc<StoreCommand>>,
    ) -> Result<(u64, Result<Applied, ApplyError>), RaftError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let command = command.into();
        self.inner
            .proposals
            .send(Proposal { command, reply })
            .map_err(|_| RaftError::stopped("it was shut down"))?;
        answer
            .await
            .map_err(|_| RaftError::stopped("it was shut down"))?
    }

    /// On the leader: confirms with a quorum that it still leads and returns the index a
    /// linearizable read must see applied (the ReadIndex a follower asks for).
    pub async fn read_index(&self) -> Result<u64, RaftError> {
        match self.inner.raft.ensure_linearizable().await {
            Ok(read) => Ok(read.map(|l| l.index).unwrap_or(0)),
            Err(openraft::error::RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(forward(&f))
            }
            Err(openraft::error::RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                Err(RaftError::NoQuorum {
                    detail: q.to_string(),
                })
            }
            Err(openraft::error::RaftError::Fatal(e)) => Err(RaftError::stopped(e)),
        }
    }

    /// Waits until this node has applied `index` (a forwarded write, a ReadIndex).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), RaftError> {
        let applied =
            |m: &RaftMetrics<u64, BasicNode>| m.last_applied.map(|l| l.index) >= Some(index);
        let mut metrics = self.inner.raft.metrics();
        let wait = async {
            loop {
                if applied(&metrics.borrow_and_update()) {
                    return Ok(());
                }
                if metrics.changed().await.is_err() {
                    return Err(RaftError::stopped("it was shut down"));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| {
                Err(RaftError::Timeout {
                    what: format!("this manager to apply log index {index}"),
                    waited_ms: timeout.as_millis() as u64,
                })
            })
    }

    /// On the leader: makes the manager `id` at `addr` a voter. It is added as a learner
    /// first and caught up (so the quorum never waits on an empty node), then promoted. A
    /// member already known at another address gets its address updated.
    pub async fn add_manager(&self, id: u64, addr: &str) -> Result<(), RaftError> {
        let membership = self.membership();
        let node = BasicNode::new(addr);
        match membership.get(&id) {
            Some((known, true)) if known == addr => return Ok(()),
            Some((known, _)) if known != addr => {
                self.change(ChangeMembers::SetNodes(BTreeMap::from([(
                    id,
                    node.clone(),
                )])))
                .await?;
            }
            Some(_) => {}
            None => {
                let raft = &self.inner.raft;
                raft.add_learner(id, node, true)
                    .await
                    .map_err(membership_error)?;
            }
        }
        if !matches!(self.membership().get(&id), Some((_, true))) {
            self.change(ChangeMembers::AddVoterIds([id].into())).await?;
        }
        Ok(())
    }

    /// On the leader: takes the manager `id` out of the membership (voter and node).
    pub async fn remove_manager(&self, id: u64) -> Result<(), RaftError> {
        let membership = self.membership();
        match membership.get(&id) {
            None => return Ok(()),
            Some((_, true)) => {
                self.change(ChangeMembers::RemoveVoters([id].into()))
                    .await?;
            }
            Some((_, false)) => {}
        }
        if self.membership().contains_key(&id) {
            self.change(ChangeMembers::RemoveNodes([id].into())).await?;
        }
        Ok(())
    }

    async fn change(&self, change: ChangeMembers<u64, BasicNode>) -> Result<(), RaftError> {
        self.inner
            .raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(membership_error)
    }

    /// The current membership: raft id → (address, is a voter).
    pub fn membership(&self) -> BTreeMap<u64, (String, bool)> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| (*id, (node.addr.clone(), voters.contains(id))))
            .collect()
    }

    /// The transport, whose channels also carry the manager-to-manager calls.
    pub fn network(&self) -> &NetworkFactory {
        &self.inner.network
    }

    /// The configured timings.
    pub fn config(&self) -> &RaftConfig {
        &self.inner.config
    }

    /// Waits until this node can serve linearizable reads: it is the leader, a quorum still
    /// says so, and everything committed before the call is applied to [`Self::store`].
    pub async fn linearizable(&self) -> Result<(), RaftError> {
        match self.inner.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(openraft::error::RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(forward(&f))
            }
            Err(openraft::error::RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                Err(RaftError::NoQuorum {
                    detail: q.to_string(),
                })
            }
            Err(openraft::error::RaftError::Fatal(e)) => Err(RaftError::stopped(e)),
        }
    }

    /// True while this node is the leader (as far as it knows).
    pub fn is_leader(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.id)
    }

    /// The current leader's id, updated on every change. Closed when raft stops.
    pub fn leader_changes(&self) -> watch::Receiver<Option<u64>> {
        self.inner.leader.clone()
    }

    /// Term, last log / applied index, membership... for `shoal info`.
    pub fn metrics(&self) -> RaftMetrics<u64, BasicNode> {
        self.inner.raft.metrics().borrow().clone()
    }

    /// The log writer's counters (syncs, time in them, appends covered).
    pub fn wal_stats(&self) -> &WalStats {
        &self.inner.wal_stats
    }

    /// The openraft handle, for membership changes and what this wrapper does not cover.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The gRPC service peers call; the daemon mounts it on its cluster listener.
    pub fn raft_service(&self) -> shoal_proto::raft_server::RaftServer<RaftService> {
        shoal_proto::raft_server::RaftServer::new(RaftService::new(self.inner.raft.clone()))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// Stops openraft and waits until the raft directory is closed, so that it can be opened
    /// again at once (by a restart in the same process, or another one).
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
        // openraft's state machine worker and a snapshot build may still hold the directory
        // for a moment after the core stopped.
        let mut closed = self.inner.closed.clone();
        let wait = async { while closed.changed().await.is_ok() {} };
        if tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .is_err()
        {
            tracing::warn!(path = %self.inner.path.display(), "raft directory still open 10 s after shutdown");
        }
    }

    /// How long a healthy cluster may take to elect a leader: a few election rounds.
    fn election_patience(&self) -> Duration {
        Duration::from_millis((self.inner.config.election_max_ms * 10).max(5_000))
    }
}
