//! Several managers: the Raft group seen from one of them.
//!
//! - [`Cluster`] is the [`Consensus`] a daemon's manager writes through. On the leader a write
//!   is proposed to Raft; on a follower it is forwarded to the leader (`Managers.Propose`, over
//!   the managers' mutual-TLS channels) and the follower waits until it has applied the
//!   entry itself, so a read on the same manager right after sees it. A read barrier
//!   ([`Consensus::linearize`]) is `ensure_linearizable` on the leader and a ReadIndex from
//!   the leader on a follower.
//! - A probe loop asks every other manager `Managers.Probe` a few times a second. It feeds
//!   `node ls`'s MANAGER STATUS (Leader / Reachable / Unreachable) and the quorum check: when
//!   fewer than a majority of managers answer, a write fails at once with a message that says
//!   so in plain words instead of waiting for an election that cannot succeed.
//! - [`ManagersService`] serves those calls; `AddManager` is how a manager joins: the joining
//!   manager, holding a manager certificate, calls it on the manager it joined through (a
//!   follower passes it on to the leader); the leader adds it as a learner, waits until it
//!   caught up, then makes it a voter (`add_learner` → `change_membership`) and records the
//!   node's manager status in the store. The joiner drives this (rather than the leader
//!   noticing a new node) because only the joiner knows when its Raft port is listening, and
//!   it gets a definite answer before it reports itself ready.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use shoal_proto::managers_client::ManagersClient;
use shoal_proto::managers_server::{Managers, ManagersServer};
use shoal_proto::store_object::Object;
use shoal_proto::{
    AddManagerRequest, AddManagerResponse, ChangeKind, ManagerStatus, Node, NodeRole, ProbeRequest,
    ProbeResponse, ProposeRequest, ProposeResponse, ReadIndexRequest, ReadIndexResponse,
    RemoveManagerRequest, RemoveManagerResponse, StoreCommand,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::consensus::{Consensus, ConsensusError, ManagerInfo, Writer};
use crate::raft::{codec, RaftError, RaftNode};
use crate::store::{change, Applied, ApplyError, Store};

/// How often every other manager is probed.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A probe not answered within this is a failure.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// A manager whose last good answer is older than this counts as unreachable.
const REACHABLE_FOR: Duration = Duration::from_millis(1_000);
/// The longest a forwarded write or a local proposal may take before the caller retries.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a follower waits to apply what the leader committed.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// add_learner waits until the new manager has caught up: a large state takes a while.
const ADD_MANAGER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy)]
struct Health {
    ok: bool,
    at: Instant,
    /// The leader the manager named in its last answer (0: none).
    leader: u64,
}

/// This manager's view of the Raft group; the [`Consensus`] of a daemon. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    raft: RaftNode,
    health: Mutex<HashMap<u64, Health>>,
}

impl Cluster {
    /// Wraps `raft` and starts the probe loop (it ends when raft stops).
    pub fn new(raft: RaftNode) -> Cluster {
        let cluster = Cluster {
            inner: Arc::new(Inner {
                raft,
                health: Mutex::new(HashMap::new()),
            }),
        };
        let weak = Arc::downgrade(&cluster.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let cluster = Cluster { inner };
                if cluster.inner.raft.leader_changes().has_changed().is_err() {
                    return; // raft stopped
                }
                cluster.probe_all().await;
                drop(cluster);
                tokio::time::sleep(PROBE_EVERY).await;
            }
        });
        cluster
    }

    pub fn raft(&self) -> &RaftNode {
        &self.inner.raft
    }

    fn client(&self, addr: &str) -> Result<ManagersClient<Channel>, ConsensusError> {
        self.inner
            .raft
            .network()
            .channel(addr)
            .map(ManagersClient::new)
            .map_err(ConsensusError::Unavailable)
    }

    async fn probe_all(&self) {
        let me = self.inner.raft.id();
        let peers: Vec<(u64, String)> = self
            .inner
            .raft
            .membership()
            .into_iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, (addr, _))| (id, addr))
            .collect();
        let probes = peers.into_iter().map(|(id, addr)| async move {
            let answer = match self.client(&addr) {
                Ok(mut client) => {
                    let mut request = Request::new(ProbeRequest {});
                    request.set_timeout(PROBE_TIMEOUT);
                    match tokio::time::timeout(PROBE_TIMEOUT, client.probe(request)).await {
                        Ok(Ok(answer)) => Some(answer.into_inner().leader_id),
                        _ => None,
                    }
                }
                Err(_) => None,
            };
            (id, answer)
        });
        let results = futures::future::join_all(probes).await;
        let now = Instant::now();
        let mut health = self.health();
        for (id, answer) in results {
            let ok = answer.is_some();
            let leader = answer.unwrap_or(0);
            match health.get_mut(&id) {
                Some(h) if ok => {
                    *h = Health {
                        ok,
                        at: now,
                        leader,
                    }
                }
                Some(h) => h.ok = false,
                None => {
                    health.insert(
                        id,
                        Health {
                            ok,
                            at: now,
                            leader,
                        },
                    );
                }
            }
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Health>> {
        self.inner
            .health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the manager `id` answers. This manager always does; one never probed yet
    /// counts as reachable.
    fn reachable(&self, id: u64) -> bool {
        if id == self.inner.raft.id() {
            return true;
        }
        match self.health().get(&id) {
            Some(h) => h.ok && h.at.elapsed() < REACHABLE_FOR,
            None => true,
        }
    }

    /// `Some(message)` when fewer than a majority of the voting managers answer.
    pub fn quorum_lost(&self) -> Option<String> {
        let voters: Vec<u64> = self
            .inner
            .raft
            .membership()
            .into_iter()
            .filter(|(_, (_, voter))| *voter)
            .map(|(id, _)| id)
            .collect();
        if voters.is_empty() {
            return None;
        }
        let reachable = voters.iter().filter(|id| self.reachable(**id)).count();
        if reachable * 2 > voters.len() {
            return None;
        }
        Some(format!(
            "no leader: {reachable} of {} managers reachable, the cluster cannot accept changes \
             until a majority is back (or recover from this manager with `shoal daemon \
             --force-new-cluster`)",
            voters.len()
        ))
    }

    /// The leader's id and address, when one is known: from Raft, else from what the other
    /// managers answered to the last probes (a manager that just left the membership, e.g.
    /// a demoted leader, hears from no leader but can still forward to it).
    fn leader(&self) -> Option<(u64, String)> {
        let membership = self.inner.raft.membership();
        let known = self
            .inner
            .raft
            .metrics()
            .current_leader
            .filter(|id| membership.contains_key(id));
        let id = known.or_else(|| {
            self.health()
                .values()
                .filter(|h| h.ok && h.at.elapsed() < REACHABLE_FOR && h.leader != 0)
                .map(|h| h.leader)
                .find(|id| membership.contains_key(id))
        })?;
        let addr = membership.get(&id)?.0.clone();
        Some((id, addr))
    }

    fn transient(&self, e: RaftError) -> ConsensusError {
        if let Some(message) = self.quorum_lost() {
            return ConsensusError::NoQuorum(message);
        }
        match e {
            RaftError::NotLeader {
                leader_addr: Some(addr),
                ..
            } => ConsensusError::NotLeader { leader: Some(addr) },
            RaftError::NotLeader { .. } => ConsensusError::NotLeader { leader: None },
            e => ConsensusError::Unavailable(e.to_string()),
        }
    }

    async fn propose_here_or_forward(
        &self,
        command: Arc<StoreCommand>,
    ) -> Result<Result<Applied, ApplyError>, ConsensusError> {
        if let Some(message) = self.quorum_lost() {
            return Err(ConsensusError::NoQuorum(message));
        }
        let raft = &self.inner.raft;
        let local = tokio::time::timeout(PROPOSE_TIMEOUT, raft.propose_indexed(command.clone()));
        match local.await {
            Ok(Ok((_, result))) => return Ok(result),
            // Forwarded below, to the leader Raft names or (outside the membership) the
            // one the other managers name.
            Ok(Err(RaftError::NotLeader { .. })) => {}
            Ok(Err(e)) => return Err(self.transient(e)),
            Err(_) => {
                return Err(self.transient(RaftError::Timeout {
                    what: "the write to commit".into(),
                    waited_ms: PROPOSE_TIMEOUT.as_millis() as u64,
                }))
            }
        }
        // A follower: the leader commits it, then this manager applies it too.
        let Some((_, addr)) = self.leader() else {
            return Err(ConsensusError::NotLeader { leader: None });
        };
        let mut client = self.client(&addr)?;
        let mut request = Request::new(ProposeRequest {
            command: Some(Arc::unwrap_or_clone(command)),
        });
        request.set_timeout(PROPOSE_TIMEOUT);
        let answer = client
            .propose(request)
            .await
            .map_err(|s| {
                self.transient(RaftError::Stopped {
                    detail: format!("the leader at {addr}: {}", s.message()),
                })
            })?
            .into_inner();
        let result: Result<Applied, ApplyError> = codec::decode(&answer.result)
            .map_err(|e| ConsensusError::Unavailable(format!("undecodable answer: {e}")))?;
        raft.wait_applied(answer.log_index, APPLY_TIMEOUT)
            .await
            .map_err(|e| ConsensusError::Unavailable(e.to_string()))?;
        Ok(result)
    }

    async fn barrier(&self) -> Result<(), ConsensusError> {
        if let Some(message) = self.quorum_lost() {
            return Err(ConsensusError::NoQuorum(message));
        }
        let raft = &self.inner.raft;
        if raft.is_leader() {
            return match tokio::time::timeout(PROPOSE_TIMEOUT, raft.linearizable()).await {
                Ok(result) => result.map_err(|e| self.transient(e)),
                Err(_) => Err(ConsensusError::Unavailable("read barrier timed out".into())),
            };
        }
        let Some((_, addr)) = self.leader() else {
            return Err(ConsensusError::NotLeader { leader: None });
        };
        let mut client = self.client(&addr)?;
        let mut request = Request::new(ReadIndexRequest {});
        request.set_timeout(PROPOSE_TIMEOUT);
        let index = client
            .read_index(request)
            .await
            .map_err(|s| {
                ConsensusError::Unavailable(format!("the leader at {addr}: {}", s.message()))
            })?
            .into_inner()
            .index;
        raft.wait_applied(index, APPLY_TIMEOUT)
            .await
            .map_err(|e| ConsensusError::Unavailable(e.to_string()))
    }

    /// Makes this manager a voter: `AddManager` to the leader, or, when it is the leader
    /// itself (a one-manager cluster), records its manager status directly. Tries `seeds`
    /// (the address it joined through) while no leader is known. Retries until it worked or
    /// `patience` ran out.
    pub async fn register_self(
        &self,
        writer: &Writer,
        node_id: &str,
        addr: &str,
        seeds: &[String],
        patience: Duration,
    ) -> Result<(), String> {
        let raft_id = self.inner.raft.id();
        let deadline = Instant::now() + patience;
        let mut attempt = 0usize;
        loop {
            let done = if self.inner.raft.is_leader() {
                match add_manager(self, writer, raft_id, addr, node_id).await {
                    Ok(_) => return Ok(()),
                    Err(e) => Err(e.message().to_string()),
                }
            } else {
                let target = match self.leader() {
                    Some((_, leader)) => Some(leader),
                    None if !seeds.is_empty() => Some(seeds[attempt % seeds.len()].clone()),
                    None => None,
                };
                match target {
                    Some(target) => self.call_add_manager(&target, raft_id, addr, node_id).await,
                    None => Err("no leader is known yet".into()),
                }
            };
            match done {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(e) => tracing::debug!("joining the managers: {e}; retrying"),
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn call_add_manager(
        &self,
        target: &str,
        raft_id: u64,
        addr: &str,
        node_id: &str,
    ) -> Result<(), String> {
        let mut client = self.client(target).map_err(|e| e.to_string())?;
        let mut request = Request::new(AddManagerRequest {
            raft_id,
            addr: addr.to_string(),
            node_id: node_id.to_string(),
        });
        request.set_timeout(ADD_MANAGER_TIMEOUT);
        client
            .add_manager(request)
            .await
            .map(|_| ())
            .map_err(|s| format!("{target}: {}", s.message()))
    }

    pub fn into_service(self, writer: Writer) -> ManagersServer<ManagersService> {
        ManagersServer::new(ManagersService {
            cluster: self,
            writer,
        })
    }
}

impl Consensus for Cluster {
    fn propose(
        &self,
        command: Arc<StoreCommand>,
    ) -> BoxFuture<'_, Result<Result<Applied, ApplyError>, ConsensusError>> {
        Box::pin(self.propose_here_or_forward(command))
    }

    fn is_leader(&self) -> bool {
        self.inner.raft.is_leader()
    }

    fn linearize(&self) -> BoxFuture<'_, Result<(), ConsensusError>> {
        Box::pin(self.barrier())
    }

    fn managers(&self) -> Vec<ManagerInfo> {
        let leader = self.inner.raft.metrics().current_leader;
        let mut managers: Vec<ManagerInfo> = self
            .inner
            .raft
            .membership()
            .into_iter()
            .map(|(raft_id, (addr, _))| ManagerInfo {
                raft_id,
                addr,
                leader: Some(raft_id) == leader,
                reachable: self.reachable(raft_id),
            })
            .collect();
        managers.sort_by_key(|m| !m.leader);
        managers
    }

    fn remove_manager(&self, raft_id: u64) -> BoxFuture<'_, Result<(), ConsensusError>> {
        Box::pin(async move {
            if let Some(message) = self.quorum_lost() {
                return Err(ConsensusError::NoQuorum(message));
            }
            if self.inner.raft.is_leader() {
                return self
                    .inner
                    .raft
                    .remove_manager(raft_id)
                    .await
                    .map_err(|e| self.transient(e));
            }
            let Some((_, addr)) = self.leader() else {
                return Err(ConsensusError::NotLeader { leader: None });
            };
            self.client(&addr)?
                .remove_manager(RemoveManagerRequest { raft_id })
                .await
                .map(|_| ())
                .map_err(|s| {
                    ConsensusError::Unavailable(format!("the leader at {addr}: {}", s.message()))
                })
        })
    }
}

/// The leader's side of `AddManager`: membership first, then the node's manager status.
async fn add_manager(
    cluster: &Cluster,
    writer: &Writer,
    raft_id: u64,
    addr: &str,
    node_id: &str,
) -> Result<Vec<String>, Status> {
    if raft_id == 0 || addr.is_empty() || node_id.is_empty() {
        return Err(Status::invalid_argument(
            "AddManager needs a raft id, an address and a node id",
        ));
    }
    let raft = cluster.raft();
    tokio::time::timeout(ADD_MANAGER_TIMEOUT, raft.add_manager(raft_id, addr))
        .await
        .map_err(|_| Status::deadline_exceeded("the new manager did not catch up in time"))?
        .map_err(|e| Status::unavailable(e.to_string()))?;
    tracing::info!(raft_id, %addr, node = %node_id, "manager is a voter");
    // The node's object says it is a manager, and which Raft member it is.
    for _ in 0..5 {
        let existing = raft.store().read().nodes.get(node_id).cloned();
        let mut node = existing.clone().unwrap_or_else(|| Node {
            id: node_id.to_string(),
            ..Default::default()
        });
        node.role = NodeRole::Manager as i32;
        node.manager_status = Some(ManagerStatus {
            raft_id,
            addr: addr.to_string(),
            leader: false,
            reachability: String::new(),
        });
        if existing.as_ref() == Some(&node) {
            break;
        }
        let kind = if existing.is_some() {
            ChangeKind::Update
        } else {
            ChangeKind::Create
        };
        match writer.commit(vec![change(kind, Object::Node(node))]).await {
            Ok(_) => break,
            Err(crate::consensus::WriteError::Rejected(_)) => continue,
            Err(e) => return Err(Status::unavailable(e.to_string())),
        }
    }
    Ok(cluster.managers().into_iter().map(|m| m.addr).collect())
}

/// The `Managers` gRPC service (manager certificates only: mount it behind
/// [`crate::join::ManagersOnly`]).
pub struct ManagersService {
    cluster: Cluster,
    writer: Writer,
}

impl ManagersService {
    #[allow(clippy::result_large_err)]
    fn leader_only(&self) -> Result<(), Status> {
        if self.cluster.raft().is_leader() {
            return Ok(());
        }
        let mut status = Status::failed_precondition("this manager is not the leader");
        if let Some((_, addr)) = self.cluster.leader() {
            if let Ok(value) = addr.parse() {
                status.metadata_mut().insert("shoal-leader", value);
            }
        }
        Err(status)
    }
}

#[tonic::async_trait]
impl Managers for ManagersService {
    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let m = self.cluster.raft().metrics();
        Ok(Response::new(ProbeResponse {
            raft_id: m.id,
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
        }))
    }

    async fn add_manager(
        &self,
        request: Request<AddManagerRequest>,
    ) -> Result<Response<AddManagerResponse>, Status> {
        let r = request.into_inner();
        if !self.cluster.raft().is_leader() {
            // Pass it on: the joiner only knows the manager it joined through.
            let (_, addr) = self
                .cluster
                .leader()
                .ok_or_else(|| Status::unavailable("no leader is known right now: retry"))?;
            let mut client = self
                .cluster
                .client(&addr)
                .map_err(|e| Status::unavailable(e.to_string()))?;
            return client.add_manager(r).await;
        }
        let managers =
            add_manager(&self.cluster, &self.writer, r.raft_id, &r.addr, &r.node_id).await?;
        Ok(Response::new(AddManagerResponse { managers }))
    }

    async fn remove_manager(
        &self,
        request: Request<RemoveManagerRequest>,
    ) -> Result<Response<RemoveManagerResponse>, Status> {
        self.leader_only()?;
        let raft_id = request.into_inner().raft_id;
        // The leader may remove itself: it steps down once the new membership is committed.
        self.cluster
            .raft()
            .remove_manager(raft_id)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(RemoveManagerResponse {}))
    }

    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        self.leader_only()?;
        let command = request
            .into_inner()
            .command
            .ok_or_else(|| Status::invalid_argument("Propose needs a command"))?;
        let proposed = tokio::time::timeout(
            PROPOSE_TIMEOUT,
            self.cluster.raft().propose_indexed(command),
        )
        .await
        .map_err(|_| Status::unavailable("the write did not commit in time"))?;
        let (log_index, result) = proposed.map_err(|e| Status::unavailable(e.to_string()))?;
        let result = codec::encode(&result)
            .map_err(|e| Status::internal(format!("cannot encode the result: {e}")))?;
        Ok(Response::new(ProposeResponse { log_index, result }))
    }

    async fn read_index(
        &self,
        _: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        self.leader_only()?;
        let index = tokio::time::timeout(PROPOSE_TIMEOUT, self.cluster.raft().read_index())
            .await
            .map_err(|_| Status::unavailable("the leader could not confirm its lease in time"))?
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(ReadIndexResponse { index }))
    }
}

/// Raft id → node id, from the nodes' manager status in the store.
pub fn raft_ids(store: &Store) -> BTreeMap<u64, String> {
    store
        .read()
        .nodes
        .values()
        .filter_map(|n| Some((n.manager_status.as_ref()?.raft_id, n.id.clone())))
        .collect()
}
