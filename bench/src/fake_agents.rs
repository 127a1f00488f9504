//! Light fake agents in one process, speaking the real protocol with a real manager: each
//! joins with the worker token (its own key, CSR and certificate), holds a mutual-TLS
//! dispatcher session, heartbeats, and acknowledges every task assigned to it by reporting it
//! RUNNING (no container is made). For the benchmarks that need many nodes (scheduler-bench)
//! or nodes of their own to write to (raft-bench).

#![allow(dead_code)] // each benchmark uses a part

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::join_client::JoinClient;
use shoal_proto::{
    HeartbeatRequest, IssueNodeCertificateRequest, NodeDescription, Platform, Resources,
    SessionRequest, TaskState, TaskStatus, TaskStatusUpdate, UpdateTaskStatusRequest,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The name every manager certificate carries.
const MANAGER_NAME: &str = "swarm-manager.shoal";

pub struct FakeAgent {
    pub node_id: String,
    channel: Channel,
}

/// Counts what the fake agents did, across all of them.
#[derive(Default)]
pub struct Counters {
    /// Tasks reported RUNNING and accepted by the manager.
    pub acknowledged: AtomicU64,
    /// Sessions open right now.
    pub sessions: AtomicU64,
}

fn tls(ca_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(MANAGER_NAME)
}

/// Joins the cluster of the manager at `addr` with the worker `token`.
pub async fn join(addr: &str, ca_pem: &str, token: &str) -> Result<FakeAgent> {
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))?;
    let anonymous = endpoint.clone().tls_config(tls(ca_pem))?.connect().await?;
    let (key_pem, csr_pem) = shoal_manager::ca::node_key_and_csr("fake")?;
    let issued = JoinClient::new(anonymous)
        .issue_node_certificate(IssueNodeCertificateRequest {
            token: token.to_string(),
            csr_pem,
        })
        .await
        .map_err(|s| anyhow!("join refused: {}", s.message()))?
        .into_inner();
    let channel = endpoint
        .tls_config(tls(ca_pem).identity(Identity::from_pem(&issued.cert_pem, &key_pem)))?
        .connect()
        .await
        .context("connecting with the node certificate")?;
    Ok(FakeAgent {
        node_id: issued.node_id,
        channel,
    })
}

/// Joins `n` fake agents, `parallel` at a time.
pub async fn join_many(
    addr: &str,
    ca_pem: &str,
    token: &str,
    n: usize,
    parallel: usize,
) -> Result<Vec<FakeAgent>> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    stream::iter(0..n)
        .map(|_| join(addr, ca_pem, token))
        .buffer_unordered(parallel.max(1))
        .try_collect()
        .await
}

impl FakeAgent {
    /// Holds the session until the process ends (reopening it if it breaks); reports every
    /// newly assigned task RUNNING.
    pub fn spawn(self, counters: Arc<Counters>) {
        tokio::spawn(async move {
            let mut reported = HashSet::new();
            loop {
                // A session that ends (the manager going away at the end of a run) is simply
                // reopened; the benchmarks watch the counters.
                let _ = self.session(&counters, &mut reported).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    async fn session(
        &self,
        counters: &Counters,
        reported: &mut HashSet<String>,
    ) -> Result<(), tonic::Status> {
        let mut client = DispatcherClient::new(self.channel.clone());
        let mut stream = client
            .session(SessionRequest {
                node_id: self.node_id.clone(),
                description: Some(NodeDescription {
                    hostname: format!("fake-{}", &self.node_id[..8]),
                    platform: Some(Platform {
                        os: "linux".into(),
                        architecture: "x86_64".into(),
                    }),
                    resources: Some(Resources {
                        memory_bytes: 1 << 40,
                        nano_cpus: 1 << 40,
                        pids: 0,
                    }),
                    engine_version: "fake".into(),
                    // Fake agents serve no images.
                    peer_addr: String::new(),
                }),
            })
            .await?
            .into_inner();
        counters.sessions.fetch_add(1, Ordering::SeqCst);
        let result = async {
            let first = stream
                .message()
                .await?
                .ok_or_else(|| tonic::Status::unavailable("the session closed at once"))?;
            let session_id = first.session_id.clone();
            let period = Duration::from_millis(first.heartbeat_period_ms.max(100));
            let mut heartbeat = tokio::time::interval(period);
            let mut message = Some(first);
            loop {
                if let Some(m) = message.take() {
                    let updates: Vec<TaskStatusUpdate> = m
                        .assignments
                        .map(|a| a.tasks)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|t| t.desired_state() == TaskState::Running)
                        .filter(|t| !reported.contains(&t.id))
                        .map(|t| TaskStatusUpdate {
                            task_id: t.id,
                            status: Some(TaskStatus {
                                state: TaskState::Running as i32,
                                timestamp: shoal_proto::now_ms(),
                                message: "started".into(),
                                ..Default::default()
                            }),
                        })
                        .collect();
                    if !updates.is_empty() {
                        let ids: Vec<String> = updates.iter().map(|u| u.task_id.clone()).collect();
                        client
                            .update_task_status(UpdateTaskStatusRequest {
                                node_id: self.node_id.clone(),
                                session_id: session_id.clone(),
                                updates,
                            })
                            .await?;
                        counters
                            .acknowledged
                            .fetch_add(ids.len() as u64, Ordering::SeqCst);
                        reported.extend(ids);
                    }
                }
                tokio::select! {
                    next = stream.message() => match next? {
                        Some(m) => message = Some(m),
                        None => return Err(tonic::Status::unavailable("the manager ended the session")),
                    },
                    _ = heartbeat.tick() => {
                        client
                            .heartbeat(HeartbeatRequest {
                                node_id: self.node_id.clone(),
                                session_id: session_id.clone(),
                            })
                            .await?;
                    }
                }
            }
        }
        .await;
        counters.sessions.fetch_sub(1, Ordering::SeqCst);
        result
    }
}
