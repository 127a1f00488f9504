//! Orchestrators: pure reconcile functions that turn desired services into tasks.
//!
//! Like the [scheduler](crate::scheduler), they do no I/O and read no clock: a thin async loop
//! (elsewhere) reads a store snapshot, calls [`reconcile_all`] (or [`reconcile`] for the one
//! service that changed) with `now`, commits the [`Plan`] through Raft, and calls again at
//! [`Plan::wake_at`] or when the store changes. Every function here is deterministic and
//! idempotent: reconciling the state that results from applying a plan yields an empty plan,
//! so a loop that crashes half-way simply runs again.
//!
//! - [`replicated`]: Swarm's replicated orchestrator (slots `1..=replicas`), with the restart
//!   supervisor ([`restart`]) and the spec-update step ([`update`]) it calls.
//!
//! - [`global`]: one task on every READY, ACTIVE node.
//!
//! - [`bluegreen`]: the blue-green strategy, wrapped around either: the new tasks start
//!   beside the old ones, out of rotation, and the traffic switches in one plan.

pub mod bluegreen;
pub mod depends;
pub mod global;
pub mod replicated;
pub mod restart;
pub mod update;

pub use replicated::{
    reconcile, reconcile_all, reconcile_all_refs, Plan, ReconcileInput, MAX_NEW_SLOTS,
};
pub use restart::{DEFAULT_RESTART_DELAY_MS, TASK_HISTORY_LIMIT};

#[cfg(test)]
mod tests;
