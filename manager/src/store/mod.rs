//! The cluster state as every manager holds it in memory, and how the rest of the manager
//! reads it and hears about changes.
//!
//! Durability is Raft's job (see [`crate::raft`]): the state machine is this in-memory
//! [`State`], rebuilt at start from the last snapshot plus the log entries after it, both
//! fsync'd before any write is acknowledged (swarmkit's design too).
//! Only the Raft state machine calls [`Store::apply`]; everyone else reads.

mod state;

use std::sync::{Arc, RwLock, RwLockReadGuard};

use shoal_proto::{StoreCommand, StoreSnapshot};
pub use state::{
    change, same_but_status, Applied, ApplyError, Event, State, TaskChange, TaskEvent,
};
use tokio::sync::{broadcast, watch};

/// How many batches of events the store buffers for its watchers.
const EVENT_BATCHES: usize = 128;

/// Shared handle on the replicated state.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<State>,
    /// Every applied change, in order. A lagging receiver must re-read the state.
    events: broadcast::Sender<Arc<Vec<Event>>>,
    /// The log index of the last applied entry.
    applied: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Store {
        // Every buffered batch is kept until overwritten: a small ring keeps little. Its
        // readers are quick; one that lags re-reads the state.
        let (events, _) = broadcast::channel(EVENT_BATCHES);
        let (applied, _) = watch::channel(0);
        Store {
            inner: Arc::new(Inner {
                state: RwLock::new(State::default()),
                events,
                applied,
            }),
        }
    }

    /// Read access. Hold the guard briefly: the state machine waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a committed entry and tells the watchers. Called by the Raft state machine only.
    pub fn apply(&self, index: u64, command: StoreCommand) -> Result<Applied, ApplyError> {
        let result = {
            let mut state = self
                .inner
                .state
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.apply(index, command)
        };
        self.inner.applied.send_replace(index);
        match result {
            Ok((applied, events)) => {
                if !events.is_empty() {
                    // No receivers is fine: nobody is watching yet.
                    let _ = self.inner.events.send(Arc::new(events));
                }
                Ok(applied)
            }
            Err(e) => Err(e),
        }
    }

    /// Marks an entry that carries no command (a membership change, a blank) as applied.
    pub fn mark_applied(&self, index: u64) {
        self.inner.applied.send_replace(index);
    }

    pub fn snapshot(&self) -> StoreSnapshot {
        self.read().to_snapshot()
    }

    /// Replaces the whole state (a snapshot installed or loaded at start).
    pub fn restore(&self, snapshot: StoreSnapshot, index: u64) {
        {
            let mut state = self
                .inner
                .state
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *state = State::from_snapshot(snapshot);
        }
        self.inner.applied.send_replace(index);
        // Watchers cannot follow a replaced state event by event: an empty batch means
        // "re-read everything".
        let _ = self.inner.events.send(Arc::new(Vec::new()));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<Event>>> {
        self.inner.events.subscribe()
    }

    pub fn applied_index(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }
}
