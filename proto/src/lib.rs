//! shoal's model and wire protocols, generated from `proto/shoal.proto`.
//!
//! Everything the manager, the agent and the CLI exchange or store is defined there, once.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("shoal.v1");
}

pub use v1::*;

pub mod rollout;
pub mod serde_enums;
mod shared_spec;
pub use shared_spec::SharedSpec;
mod task_state;
pub use rollout::DEFAULT_DRAIN_MS;
pub use task_state::*;
