//! The agent's side of the dispatcher protocol: one session stream with the manager, the
//! heartbeat that keeps the node READY, and delivery of task status reports.
//!
//! The same code serves the embedded agent of `shoal daemon` and, later, remote workers: only
//! the channel differs. Whatever happens to the connection, the loop reconnects with backoff
//! and the containers keep running meanwhile.

use std::collections::HashMap;
use std::time::Duration;

use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::{
    HeartbeatRequest, NodeDescription, SessionRequest, TaskStatusUpdate, UpdateTaskStatusRequest,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::executor::Executor;

const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long status reports gather before they are sent as one batch.
const REPORT_BATCH_WINDOW: Duration = Duration::from_millis(10);

pub struct Session {
    pub channel: Channel,
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
        loop {
            match self.session(&mut pending).await {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(e) => tracing::warn!("dispatcher session ended: {e}; reconnecting"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn session(
        &mut self,
        pending: &mut HashMap<String, TaskStatusUpdate>,
    ) -> Result<(), tonic::Status> {
        let mut client = DispatcherClient::new(self.channel.clone());
        let request = SessionRequest {
            node_id: self.node_id.clone(),
            description: Some(self.description.clone()),
        };
        let mut stream = client.session(request).await?.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| tonic::Status::unavailable("the manager closed the session at once"))?;
        let session_id = first.session_id.clone();
        self.node_id = first.node_id.clone();
        let period = Duration::from_millis(first.heartbeat_period_ms.max(100));
        if let Some(a) = first.assignments {
            self.executor.assign(a);
        }
        let mut heartbeat = tokio::time::interval(period);
        loop {
            if !pending.is_empty() {
                let request = UpdateTaskStatusRequest {
                    node_id: self.node_id.clone(),
                    session_id: session_id.clone(),
                    updates: pending.values().cloned().collect(),
                };
                client.update_task_status(request).await?;
                pending.clear();
            }
            tokio::select! {
                message = stream.message() => {
                    match message? {
                        Some(m) => if let Some(a) = m.assignments { self.executor.assign(a) },
                        None => return Err(tonic::Status::unavailable("the manager ended the session")),
                    }
                }
                update = self.updates.recv() => {
                    let Some(update) = update else { return Ok(()) };
                    pending.insert(update.task_id.clone(), update);
                    // Let a burst gather, so many reports become one Raft write.
                    tokio::time::sleep(REPORT_BATCH_WINDOW).await;
                    while let Ok(update) = self.updates.try_recv() {
                        pending.insert(update.task_id.clone(), update);
                    }
                }
                _ = heartbeat.tick() => {
                    let request = HeartbeatRequest {
                        node_id: self.node_id.clone(),
                        session_id: session_id.clone(),
                    };
                    client.heartbeat(request).await?;
                }
            }
        }
    }
}
