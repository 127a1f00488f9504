//! The agent's side of the dispatcher protocol: one session stream with the manager, the
//! heartbeat that keeps the node READY, and delivery of task status reports.
//!
//! The same code serves the embedded agent of `shoal daemon` and remote workers. Whatever
//! happens to the connection, the loop reconnects with backoff and the containers keep
//! running meanwhile.
//!
//! Several managers: the agent knows their addresses (every session message carries them,
//! leader first) and tries them in turn; a follower refuses the session and names the leader
//! (`shoal-leader` metadata), which the agent tries next. So it follows the leader through
//! failovers, and reconciles with whatever the new leader assigns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::{
    HeartbeatRequest, NodeDescription, SessionRequest, TaskState, TaskStatusUpdate,
    UpdateTaskStatusRequest,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::executor::Executor;

/// Short: a node whose agent stays away for three heartbeats is marked down after a failover.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// A session that is not open within this (a paused or cut-off manager) is given up.
const SESSION_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long status reports gather before they are sent as one batch.
const REPORT_BATCH_WINDOW: Duration = Duration::from_millis(10);

/// Makes (or reuses) the channel to the manager at an address.
pub type Connect = Arc<dyn Fn(&str) -> Result<Channel, String> + Send + Sync>;
/// Told the managers' new list.
pub type OnManagers = Arc<dyn Fn(&[String]) + Send + Sync>;
/// Told the role the cluster wants this node in (a `NodeRole` value), with every session
/// message: when it differs from the node's certificate, the node renews it.
pub type OnRole = Arc<dyn Fn(i32) + Send + Sync>;

pub struct Session {
    /// The managers to try, in order; replaced by the list each session message carries.
    pub managers: Vec<String>,
    pub connect: Connect,
    /// Told when the managers' list changes (the daemon keeps it for its next start).
    pub on_managers: Option<OnManagers>,
    /// Told the role the cluster wants this node in.
    pub on_role: Option<OnRole>,
    pub node_id: String,
    pub description: NodeDescription,
    pub executor: Executor,
    pub updates: mpsc::UnboundedReceiver<TaskStatusUpdate>,
}

impl Session {
    /// Runs forever: opens sessions, follows assignments, delivers reports.
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        // Reports not yet acknowledged, by task: only the newest status of a task matters.
        let mut pending: HashMap<String, TaskStatusUpdate> = HashMap::new();
        let mut next = 0usize;
        let mut hint: Option<String> = None;
        loop {
            let addr = match hint.take() {
                Some(leader) => leader,
                None if self.managers.is_empty() => {
                    tracing::error!("the agent knows no manager address");
                    return;
                }
                None => {
                    next += 1;
                    self.managers[(next - 1) % self.managers.len()].clone()
                }
            };
            let mut established = false;
            match self.session(&addr, &mut pending, &mut established).await {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(e) => {
                    hint = e
                        .metadata()
                        .get("shoal-leader")
                        .and_then(|v| v.to_str().ok())
                        .filter(|leader| *leader != addr)
                        .map(str::to_string);
                    if hint.is_none() {
                        tracing::warn!(manager = %addr, "dispatcher session ended: {}; reconnecting", e.message());
                    }
                }
            }
            if established {
                backoff = Duration::from_millis(50);
                next = 0; // the list starts with the leader
            }
            if hint.is_some() {
                continue;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn learn_managers(&mut self, managers: &[String]) {
        if managers.is_empty() || managers == self.managers.as_slice() {
            return;
        }
        self.managers = managers.to_vec();
        if let Some(remember) = &self.on_managers {
            remember(managers);
        }
    }

    fn learn_role(&self, role: i32) {
        if let Some(tell) = &self.on_role {
            tell(role);
        }
    }

    async fn session(
        &mut self,
        addr: &str,
        pending: &mut HashMap<String, TaskStatusUpdate>,
        established: &mut bool,
    ) -> Result<(), tonic::Status> {
        let channel = (self.connect)(addr).map_err(tonic::Status::unavailable)?;
        let mut client = DispatcherClient::new(channel);
        let request = SessionRequest {
            node_id: self.node_id.clone(),
            description: Some(self.description.clone()),
        };
        let opened = async {
            let mut stream = client.session(request).await?.into_inner();
            let first = stream.message().await?.ok_or_else(|| {
                tonic::Status::unavailable("the manager closed the session at once")
            })?;
            Ok::<_, tonic::Status>((stream, first))
        };
        let (mut stream, first) = tokio::time::timeout(SESSION_OPEN_TIMEOUT, opened)
            .await
            .map_err(|_| {
                tonic::Status::unavailable("the manager did not open a session in time")
            })??;
        *established = true;
        tracing::info!(manager = %addr, "dispatcher session open");
        self.learn_managers(&first.managers);
        self.learn_role(first.role);
        let session_id = first.session_id.clone();
        self.node_id = first.node_id.clone();
        let period = Duration::from_millis(first.heartbeat_period_ms.max(100));
        if let Some(a) = first.assignments {
            self.executor.assign(&self.node_id, a);
        }
        let mut heartbeat = tokio::time::interval(period);
        loop {
            if !pending.is_empty() {
                let request = UpdateTaskStatusRequest {
                    node_id: self.node_id.clone(),
                    session_id: session_id.clone(),
                    updates: pending.values().cloned().collect(),
                };
                tokio::time::timeout(period * 10, client.update_task_status(request))
                    .await
                    .map_err(|_| {
                        tonic::Status::unavailable("the manager stopped answering status reports")
                    })??;
                pending.clear();
            }
            tokio::select! {
                message = stream.message() => {
                    match message? {
                        Some(m) => {
                            self.learn_managers(&m.managers);
                            self.learn_role(m.role);
                            if let Some(a) = m.assignments { self.executor.assign(&self.node_id, a) }
                        }
                        None => return Err(tonic::Status::unavailable("the manager ended the session")),
                    }
                }
                update = self.updates.recv() => {
                    let Some(update) = update else { return Ok(()) };
                    let running = update
                        .status
                        .as_ref()
                        .is_some_and(|s| s.state() == TaskState::Running);
                    pending.insert(update.task_id.clone(), update);
                    // Let a burst gather, so many reports become one Raft write. A task
                    // turning RUNNING goes at once: the next step of a rollout or of a
                    // dependency chain waits on it.
                    if running {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(REPORT_BATCH_WINDOW).await;
                    }
                    while let Ok(update) = self.updates.try_recv() {
                        pending.insert(update.task_id.clone(), update);
                    }
                }
                _ = heartbeat.tick() => {
                    let request = HeartbeatRequest {
                        node_id: self.node_id.clone(),
                        session_id: session_id.clone(),
                    };
                    // A manager that stopped answering (paused, cut off) must not hold the
                    // agent: three periods without an answer end the session.
                    tokio::time::timeout(period * 3, client.heartbeat(request))
                        .await
                        .map_err(|_| tonic::Status::unavailable("the manager stopped answering heartbeats"))??;
                }
            }
        }
    }
}
