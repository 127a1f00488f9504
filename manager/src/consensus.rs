//! The one way the manager writes: a command proposed to consensus, committed, applied.
//!
//! [`Consensus`] is implemented by [`crate::raft::RaftNode`]; [`Immediate`] applies commands
//! straight to a [`Store`], which lets the dispatcher, control API and loops be unit-tested
//! without a Raft log.

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
}

pub trait Consensus: Send + Sync + 'static {
    /// Commits `command` to the replicated log and returns what applying it did.
    fn propose(
        &self,
        command: StoreCommand,
    ) -> BoxFuture<'_, Result<Result<Applied, ApplyError>, ConsensusError>>;

    /// Whether this manager leads now (only the leader runs the reconcile loops).
    fn is_leader(&self) -> bool;
}

/// How often a write is retried while no leader can commit it (≈ 5 s in all).
const COMMIT_RETRIES: usize = 14;

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
        let command = StoreCommand {
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            changes,
            timestamp: now_ms(),
        };
        let mut delay = std::time::Duration::from_millis(20);
        for _ in 0..COMMIT_RETRIES {
            match self.consensus.propose(command.clone()).await {
                Err(ConsensusError::Unavailable(_))
                | Err(ConsensusError::NotLeader { leader: None }) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_millis(500));
                }
                other => return Ok(other??),
            }
        }
        Ok(self.consensus.propose(command).await??)
    }

    pub fn is_leader(&self) -> bool {
        self.consensus.is_leader()
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
        command: StoreCommand,
    ) -> BoxFuture<'_, Result<Result<Applied, ApplyError>, ConsensusError>> {
        let index = self.index.fetch_add(1, Ordering::SeqCst) + 1;
        let result = self.store.apply(index, &command);
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
        command: StoreCommand,
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
