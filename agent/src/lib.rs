//! shoal's agent: everything that runs on a node.
//!
//! - [`runtime`]: namespaces + cgroups + overlayfs containers, each owned by a small supervisor
//!   process (the `shoal` binary re-executed) so containers outlive the daemon;
//! - [`image`]: the node's local image store;
//! - [`executor`]: turns the set of tasks assigned to this node into running containers, and
//!   reports what happens to them;
//! - [`session`]: the dispatcher client: one session stream with the managers.

pub mod containers_api;
pub mod dns;
pub mod executor;
pub mod image;
pub mod logs;
pub mod network;
pub mod ports;
pub mod runtime;
pub mod session;
pub mod volume;
