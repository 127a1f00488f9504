//! shoal's manager: the replicated store and the loops that act on it.
//!
//! - [`store`]: the cluster state and its pure, deterministic `apply` of a [`StoreCommand`];
//! - [`raft`]: openraft over a write-ahead log of our own: makes every change durable and replicated, then applies it;
//! - [`membership`]: several managers: forwarding, read barriers, joins, the quorum check;
//! - [`orchestrator`]: reconcile loops (desired services → tasks);
//! - [`scheduler`]: a pure function that assigns tasks to nodes;
//! - [`dispatcher`]: the gRPC service agents hold their sessions with;
//! - [`control`]: the gRPC API the CLI calls;
//! - [`certs`]: node certificate renewal (and with it, role changes);
//! - [`peers`]: which nodes serve images to the others, and who may fetch them.
//!
//! [`StoreCommand`]: shoal_proto::StoreCommand

pub mod ca;
pub mod certs;
pub mod consensus;
pub mod control;
pub mod dispatcher;
pub mod ingress;
pub mod ipam;
pub mod join;
pub mod leader;
pub mod membership;
pub mod orchestrator;
pub mod peers;
pub mod raft;
pub mod scheduler;
pub mod store;
