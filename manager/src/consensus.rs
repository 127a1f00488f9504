//! The one way the manager writes: a command proposed to consensus, committed, applied.
//!
//! [`Consensus`] is implemented by [`crate::raft::RaftNode`] (one manager) and by
//! [`crate::membership::Cluster`] (several: writes on a follower are forwarded to the leader,
//! reads get a ReadIndex barrier, and a lost quorum is reported at once); [`Immediate`]
//! applies commands straight to a [`Store`], which lets the dispatcher, control API and loops
//! be unit-tested without a Raft log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use shoal_proto::{now_ms, StoreChange, StoreCommand};

use crate::store::{Applied, ApplyError, Store};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsensusError {
    #[error("this manager is not the leader{}", leader.as_ref().map(|l| format!("; the leader is at {l}")).unwrap_or_default())]
    NotLeader { leader: Option<String> },
    #[error("the cluster cannot commit writes: {0}")]
    Unavailable(String),
    /// Not transient: a majority of managers is gone. Reported at once, never retried.
    #[error("{0}")]
    NoQuorum(String),
}

/// A manager as the answering manager sees it (`node ls`'s MANAGER STATUS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerInfo {
    pub raft_id: u64,
    pub addr: String,
    pub leader: bool,
    pub reachable: bool,
}

pub trait Consensus: Send + Sync + 'static {
    /// Commits `command` to the replicated log and returns what applying it did. Shared, so
    /// that a retry or a forward needs no copy.
    fn propose(
        &self,
        command: Arc<StoreCommand>,
    ) -> BoxFuture<'_, Result<Result<Applied, ApplyError>, ConsensusError>>;

    /// Whether this manager leads now (only the leader runs the reconcile loops).
    fn is_leader(&self) -> bool;

    /// Returns once this manager's store holds every write committed before the call (a
    /// linearizable read may follow).
    fn linearize(&self) -> BoxFuture<'_, Result<(), ConsensusError>> {
        Box::pin(async { Ok(()) })
    }

    /// The managers, leader first. Empty where there is no cluster (tests).
    fn managers(&self) -> Vec<ManagerInfo> {
        Vec::new()
    }

    /// Takes the manager with this Raft id out of the Raft membership.
    fn remove_manager(&self, raft_id: u64) -> BoxFuture<'_, Result<(), ConsensusError>> {
        let _ = raft_id;
        Box::pin(async { Ok(()) })
    }
}

/// How long a write is retried while no leader can commit it (an election).
const COMMIT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest pause between two retries: an election takes a few hundred ms.
const MAX_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// What a write can end in.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
}

/// Writes changes through consensus, each command stamped with a fresh request id and time.
#[derive(Clone)]
pub struct Writer {
    consensus: Arc<dyn Consensus>,
}

impl Writer {
    pub fn new(consensus: Arc<dyn Consensus>) -> Writer {
        Writer { consensus }
    }

    /// Commits `changes` atomically. While consensus is briefly unavailable (an election), the
    /// same command is retried: its request id makes a retry that follows a lost answer apply
    /// once.
    pub async fn commit(&self, changes: Vec<StoreChange>) -> Result<Applied, WriteError> {
        let command = Arc::new(StoreCommand {
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            changes,
            timestamp: now_ms(),
        });
        let mut delay = std::time::Duration::from_millis(20);
        let deadline = std::time::Instant::now() + COMMIT_PATIENCE;
        while std::time::Instant::now() < deadline {
            match self.consensus.propose(command.clone()).await {
                Err(ConsensusError::Unavailable(_))
                | Err(ConsensusError::NotLeader { leader: None }) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                other => return Ok(other??),
            }
        }
        Ok(self.consensus.propose(command).await??)
    }

    /// A read barrier: once it returns, the local store holds every write committed before
    /// the call. Retried like a write while an election is under way.
    pub async fn linearize(&self) -> Result<(), WriteError> {
        let mut delay = std::time::Duration::from_millis(20);
        let deadline = std::time::Instant::now() + COMMIT_PATIENCE;
        while std::time::Instant::now() < deadline {
            match self.consensus.linearize().await {
                Err(ConsensusError::Unavailable(_))
                | Err(ConsensusError::NotLeader { leader: None }) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                other => return Ok(other?),
            }
        }
        Ok(self.consensus.linearize().await?)
    }

    pub fn is_leader(&self) -> bool {
        self.consensus.is_leader()
    }

    /// The managers, leader first (empty without a cluster).
    pub fn managers(&self) -> Vec<ManagerInfo> {
        self.consensus.managers()
    }

    /// The leader's address, when one is known.
    pub fn leader_addr(&self) -> Option<String> {
        self.managers()
            .into_iter()
            .find(|m| m.leader)
            .map(|m| m.addr)
    }

    /// Takes a manager out of the Raft membership.
    pub async fn remove_manager(&self, raft_id: u64) -> Result<(), WriteError> {
        Ok(self.consensus.remove_manager(raft_id).await?)
    }
}

/// Consensus of one with no log: applies at once. For tests and tools, never for a daemon.
pub struct Immediate {
    store: Store,
    index: AtomicU64,
}

impl Immediate {
    pub fn new(store: Store) -> Immediate {
        Immediate {
            store,
            index: AtomicU64::new(0),
        }
    }
}

impl Consensus for Immediate {
    fn propose(
        &self,
        command: Arc<StoreCommand>,
    ) -> BoxFuture<'_, Result<Result<Applied, ApplyError>, ConsensusError>> {
        let index = self.index.fetch_add(1, Ordering::SeqCst) + 1;
        let result = self.store.apply(index, Arc::unwrap_or_clone(command));
        Box::pin(async move { Ok(result) })
    }

    fn is_leader(&self) -> bool {
        true
    }
}

/// A fresh object id: 25 lower-case base-36 characters, like Swarm's.
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut value = u128::from_le_bytes(*uuid::Uuid::new_v4().as_bytes());
    (0..25)
        .map(|_| {
            let c = ALPHABET[(value % 36) as usize] as char;
            value /= 36;
            c
        })
        .collect()
}

impl Consensus for crate::raft::RaftNode {
    fn propose(
        &self,
        command: Arc<StoreCommand>,
    ) -> BoxFuture<'_, Result<Result<Applied, ApplyError>, ConsensusError>> {
        Box::pin(async move {
            crate::raft::RaftNode::propose(self, command)
                .await
                .map_err(|e| match e.leader() {
                    Some((id, addr)) => ConsensusError::NotLeader {
                        leader: Some(
                            addr.map(str::to_string)
                                .unwrap_or_else(|| format!("node {id}")),
                        ),
                    },
                    None => ConsensusError::Unavailable(e.to_string()),
                })
        })
    }

    fn is_leader(&self) -> bool {
        crate::raft::RaftNode::is_leader(self)
    }
}
