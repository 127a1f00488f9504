//! The dispatcher: the gRPC service every agent, local or remote, holds one session with.
//!
//! An agent opens `Session`; the dispatcher registers (or re-registers) its node as READY and
//! streams the node's complete task set each time it changes. Heartbeats are kept in memory
//! only (as Swarm does): a node whose heartbeats stop for `heartbeat_period × 3` is marked
//! DOWN through Raft by [`Dispatcher::expire_sessions`], which the leader runs on a timer.
//! Task status reports are batched into one Raft command, and states only move forward.
//!
//! Only the leader dispatches: a follower refuses a session with `Unavailable` and the
//! leader's address in the `shoal-leader` metadata, and a manager that loses the leadership
//! ends its sessions, so agents follow the leader through failovers. Every session message
//! carries the managers' addresses (leader first): where an agent goes next.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod overlay;

use futures::Stream;
use shoal_proto::dispatcher_server::{Dispatcher as DispatcherRpc, DispatcherServer};
use shoal_proto::store_object::Object;
use shoal_proto::{
    Assignments, ChangeKind, HeartbeatRequest, HeartbeatResponse, IngressService, Node, NodeRole,
    NodeState, NodeStatus, OverlayPeers, SessionMessage, SessionRequest, Task,
    UpdateTaskStatusRequest, UpdateTaskStatusResponse,
};
use tokio::sync::{broadcast, mpsc, watch};
use tonic::{Request, Response, Status};

use crate::consensus::{new_id, WriteError, Writer};
use crate::store::{change, ApplyError, Event, Store, TaskChange};

/// How often agents heartbeat; a node is down after three missed periods.
pub const DEFAULT_HEARTBEAT_PERIOD: Duration = Duration::from_millis(500);

/// How many heartbeat periods a new leader (or one that was stalled) waits before it marks
/// silent nodes down. Every agent must first see its session end, find the new leader (backing
/// off up to 500 ms between managers that are still starting) and register through Raft; a
/// node marked down too early loses its tasks (they are rescheduled), the work the agents kept
/// running through the managers' outage.
const NEW_LEADER_GRACE_PERIODS: u32 = 10;

/// How often a session checks that this manager still leads.
const LEADERSHIP_CHECK: Duration = Duration::from_millis(100);

/// How many status reports are written at a time (enough for group commit to fill entries).
const STATUS_WRITES_IN_FLIGHT: usize = 64;

/// How many times a status write is retried after losing a compare-and-set race.
const STATUS_WRITE_ATTEMPTS: usize = 8;

#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    writer: Writer,
    heartbeat_period: Duration,
    /// The node id this process's own agent uses: registered with the manager role.
    local_node_id: String,
    /// Whether callers must prove who they are with a cluster certificate (always, on a
    /// daemon's TLS port; unit tests call the methods directly).
    require_identity: bool,
    sessions: Mutex<HashMap<String, SessionEntry>>,
    /// Status reports being written. Each copies the tasks it reports, and Raft writes them
    /// one entry at a time: a thousand agents reporting at once would otherwise hold a
    /// thousand copies in its queue. Those past the limit wait with their request alone.
    status_writes: tokio::sync::Semaphore,
    /// Per node with a session, a counter the router bumps when a change concerns the node:
    /// its sessions wait on it. One router reads the store's events for all sessions, so a
    /// change costs a lookup per node it concerns, not a wake-up of every session.
    wakers: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
    /// The store's events, subscribed at creation (so no change is missed), until the router
    /// takes them at the first session.
    events: Mutex<Option<broadcast::Receiver<Arc<Vec<Event>>>>>,
}

struct SessionEntry {
    session_id: String,
    last_seen: Instant,
    /// Status reports of this session being written now. An agent waits for its report to
    /// be committed before it heartbeats again: while one is under way (a busy Raft log can
    /// take longer than the heartbeat TTL), the node is alive.
    reports_in_flight: usize,
}

/// Counts a status report in flight on its session, and counts it as a sign of life when it
/// ends, however it ends.
struct ReportInFlight {
    dispatcher: Dispatcher,
    node_id: String,
    session_id: String,
}

impl ReportInFlight {
    fn start(dispatcher: &Dispatcher, node_id: &str, session_id: &str) -> ReportInFlight {
        if let Some(entry) = dispatcher
            .sessions()
            .get_mut(node_id)
            .filter(|e| e.session_id == session_id)
        {
            entry.reports_in_flight += 1;
        }
        ReportInFlight {
            dispatcher: dispatcher.clone(),
            node_id: node_id.to_string(),
            session_id: session_id.to_string(),
        }
    }
}

impl Drop for ReportInFlight {
    fn drop(&mut self) {
        if let Some(entry) = self
            .dispatcher
            .sessions()
            .get_mut(&self.node_id)
            .filter(|e| e.session_id == self.session_id)
        {
            entry.reports_in_flight = entry.reports_in_flight.saturating_sub(1);
            entry.last_seen = Instant::now();
        }
    }
}

impl Dispatcher {
    pub fn new(
        store: Store,
        writer: Writer,
        heartbeat_period: Duration,
        local_node_id: String,
        require_identity: bool,
    ) -> Dispatcher {
        Dispatcher {
            inner: Arc::new(Inner {
                writer,
                heartbeat_period,
                local_node_id,
                require_identity,
                sessions: Mutex::new(HashMap::new()),
                status_writes: tokio::sync::Semaphore::new(STATUS_WRITES_IN_FLIGHT),
                wakers: Arc::new(Mutex::new(HashMap::new())),
                events: Mutex::new(Some(store.subscribe())),
                store,
            }),
        }
    }

    /// Starts the router on first use (it needs the runtime), then hands out the receiver
    /// the sessions of `node_id` wait on.
    fn watch_node(&self, node_id: &str) -> watch::Receiver<u64> {
        if let Some(events) = lock(&self.inner.events).take() {
            tokio::spawn(route(
                events,
                self.inner.wakers.clone(),
                self.inner.store.clone(),
            ));
        }
        lock(&self.inner.wakers)
            .entry(node_id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// The node id the caller may act as: its certificate's, when identities are required.
    #[allow(clippy::result_large_err)]
    fn authorize<T>(&self, request: &Request<T>, claimed: &str) -> Result<Option<String>, Status> {
        if !self.inner.require_identity {
            return Ok(None);
        }
        let identity = crate::join::peer_identity(request).ok_or_else(|| {
            Status::unauthenticated("a cluster certificate is required: join the cluster first")
        })?;
        let revoked = self
            .inner
            .store
            .read()
            .cluster
            .as_ref()
            .is_some_and(|c| c.revoked_nodes.contains(&identity.node_id));
        if revoked {
            return Err(Status::permission_denied(format!(
                "node {} was removed from the cluster: join it again with a new token",
                identity.node_id
            )));
        }
        if !claimed.is_empty() && claimed != identity.node_id {
            return Err(Status::permission_denied(format!(
                "node {} cannot act as node {claimed}",
                identity.node_id
            )));
        }
        Ok(Some(identity.node_id))
    }

    /// Sessions go to the leader only: a follower names it in the refusal.
    #[allow(clippy::result_large_err)]
    fn leader_only(&self) -> Result<(), Status> {
        let writer = &self.inner.writer;
        if writer.is_leader() {
            return Ok(());
        }
        let leader = writer.leader_addr();
        let mut status = Status::unavailable(match &leader {
            Some(addr) => format!("this manager is not the leader; the leader is at {addr}"),
            None => "this manager is not the leader and no leader is known right now".into(),
        });
        if let Some(value) = leader.and_then(|a| a.parse().ok()) {
            status.metadata_mut().insert("shoal-leader", value);
        }
        Err(status)
    }

    pub fn into_service(self) -> DispatcherServer<Dispatcher> {
        DispatcherServer::new(self)
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionEntry>> {
        lock(&self.inner.sessions)
    }

    fn end_session(&self, node_id: &str, session_id: &str) {
        let mut sessions = self.sessions();
        if sessions
            .get(node_id)
            .is_some_and(|s| s.session_id == session_id)
        {
            sessions.remove(node_id);
        }
    }

    /// A heartbeat or report of a live session. A node marked down meanwhile (this manager
    /// stalled, or heard nothing for a while) must open a new session, which marks it READY.
    fn check_session(&self, node_id: &str, session_id: &str) -> Result<(), Status> {
        let ready = self
            .inner
            .store
            .read()
            .nodes
            .get(node_id)
            .is_some_and(|n| node_state(n) == NodeState::Ready);
        let mut sessions = self.sessions();
        match sessions.get_mut(node_id) {
            Some(entry) if entry.session_id == session_id && !ready => {
                sessions.remove(node_id);
                Err(Status::failed_precondition(format!(
                    "node {node_id} was marked down: open a new session"
                )))
            }
            Some(entry) if entry.session_id == session_id => {
                entry.last_seen = Instant::now();
                Ok(())
            }
            _ => Err(Status::failed_precondition(format!(
                "node {node_id} has no session {session_id} with this manager: open a new session"
            ))),
        }
    }

    /// Marks DOWN every READY node without a live session. The leader calls this on a timer;
    /// nodes get [`NEW_LEADER_GRACE_PERIODS`] after a leader starts before they can be marked
    /// down.
    pub async fn expire_sessions(&self, leader_since: Instant) -> Result<(), WriteError> {
        let ttl = self.inner.heartbeat_period * 3;
        if leader_since.elapsed() < self.inner.heartbeat_period * NEW_LEADER_GRACE_PERIODS {
            return Ok(());
        }
        let live: Vec<String> = {
            let mut sessions = self.sessions();
            sessions.retain(|_, s| s.reports_in_flight > 0 || s.last_seen.elapsed() < ttl);
            sessions.keys().cloned().collect()
        };
        let changes: Vec<_> = {
            let state = self.inner.store.read();
            state
                .nodes
                .values()
                .filter(|n| node_state(n) == NodeState::Ready && !live.contains(&n.id))
                .map(|n| {
                    let mut node = n.clone();
                    node.status = Some(NodeStatus {
                        state: NodeState::Down as i32,
                        message: "heartbeat failure".into(),
                        addr: n
                            .status
                            .as_ref()
                            .map(|s| s.addr.clone())
                            .unwrap_or_default(),
                    });
                    change(ChangeKind::Update, Object::Node(node))
                })
                .collect()
        };
        if changes.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            nodes = changes.len(),
            "marking nodes down: heartbeat failure"
        );
        self.inner.writer.commit(changes).await.map(|_| ())
    }

    async fn register(
        &self,
        request: SessionRequest,
        addr: String,
    ) -> Result<(String, String), Status> {
        let node_id = if request.node_id.is_empty() {
            new_id()
        } else {
            request.node_id
        };
        let role = if node_id == self.inner.local_node_id {
            NodeRole::Manager
        } else {
            NodeRole::Worker
        };
        // The session is live before the node is READY: otherwise the expiry timer could see
        // a READY node without a session in between, and mark it down for good.
        let session_id = new_id();
        self.sessions().insert(
            node_id.clone(),
            SessionEntry {
                session_id: session_id.clone(),
                last_seen: Instant::now(),
                reports_in_flight: 0,
            },
        );
        // Compare-and-set on the version read: a blind overwrite would undo a change (a
        // label, an availability) committed between the read and this write.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let existing = self.inner.store.read().nodes.get(&node_id).cloned();
            let kind = if existing.is_some() {
                ChangeKind::Update
            } else {
                ChangeKind::Create
            };
            let mut node = existing.unwrap_or_else(|| Node {
                id: node_id.clone(),
                role: role as i32,
                ..Default::default()
            });
            node.description = request.description.clone();
            node.status = Some(NodeStatus {
                state: NodeState::Ready as i32,
                message: String::new(),
                addr: addr.clone(),
            });
            match self
                .inner
                .writer
                .commit(vec![change(kind, Object::Node(node))])
                .await
            {
                Ok(_) => break,
                Err(WriteError::Rejected(
                    ApplyError::Conflict { .. }
                    | ApplyError::AlreadyExists { .. }
                    | ApplyError::NotFound { .. },
                )) if attempts < STATUS_WRITE_ATTEMPTS => continue,
                Err(e) => {
                    self.end_session(&node_id, &session_id);
                    return Err(write_status(e));
                }
            }
        }
        tracing::info!(node = %node_id, "agent session opened");
        Ok((node_id, session_id))
    }

    /// Applies status reports: each task's observed state may only move forward.
    async fn update_statuses(&self, request: UpdateTaskStatusRequest) -> Result<(), WriteError> {
        for _ in 0..STATUS_WRITE_ATTEMPTS {
            let changes: Vec<_> = {
                let state = self.inner.store.read();
                request
                    .updates
                    .iter()
                    .filter_map(|u| {
                        let task = state.tasks.get(&u.task_id)?;
                        if task.node_id != request.node_id {
                            return None;
                        }
                        let new = u.status.clone()?;
                        let current = task.status.as_ref().map(|s| s.state()).unwrap_or_default();
                        let unchanged = task.status.as_ref() == Some(&new);
                        if new.state() < current || unchanged {
                            return None;
                        }
                        let mut task = Task::clone(task);
                        task.status = Some(new);
                        Some(change(ChangeKind::Update, Object::Task(task)))
                    })
                    .collect()
            };
            if changes.is_empty() {
                return Ok(());
            }
            match self.inner.writer.commit(changes).await {
                Err(WriteError::Rejected(ApplyError::Conflict { .. }))
                | Err(WriteError::Rejected(ApplyError::NotFound { .. })) => continue,
                other => return other.map(|_| ()),
            }
        }
        Err(WriteError::Rejected(ApplyError::Invalid(
            "task status kept conflicting with other writes; the agent will retry".into(),
        )))
    }
}

fn node_state(node: &Node) -> NodeState {
    node.status.as_ref().map(|s| s.state()).unwrap_or_default()
}

/// The node's tasks, and the networks, secrets and configs they use (so the agent needs
/// nothing else).
fn assignments_of(store: &Store, node_id: &str) -> Assignments {
    let state = store.read();
    let tasks: Vec<Task> = state.tasks_on(node_id).cloned().collect();
    let wanted: std::collections::BTreeSet<&str> = tasks
        .iter()
        .filter_map(|t| t.spec.as_ref())
        .flat_map(|s| s.networks.iter().map(|n| n.target.as_str()))
        .collect();
    let overlay_peers = overlay::overlay_peers(&state, &wanted);
    let networks = wanted
        .into_iter()
        .filter_map(|id| state.networks.get(id).cloned())
        .collect();
    let used: std::collections::BTreeSet<&str> = tasks
        .iter()
        .filter_map(|t| t.spec.as_ref()?.container.as_ref())
        .flat_map(|c| c.secrets.iter().chain(&c.configs))
        .map(|r| r.secret_id.as_str())
        .collect();
    let secrets = used
        .into_iter()
        .filter_map(|id| state.secrets.get(id).cloned())
        .collect();
    let ingress = overlay::ingress_services(&state);
    let node_addrs = if ingress.is_empty() {
        Vec::new()
    } else {
        overlay::up_node_addrs(&state)
    };
    Assignments {
        tasks,
        networks,
        secrets,
        overlay_peers,
        ingress,
        node_addrs,
    }
}

/// The nodes whose sessions a batch of store events may change the message of: the nodes of
/// the tasks written or deleted, and the nodes written (the role they should have).
#[derive(Debug, PartialEq, Eq)]
enum Concerned<'a> {
    All,
    Nodes(std::collections::BTreeSet<&'a str>),
}

fn concerned_nodes(events: &[Event]) -> Concerned<'_> {
    // An empty batch means the whole state was replaced: assume everything changed.
    if events.is_empty() {
        return Concerned::All;
    }
    let mut nodes = std::collections::BTreeSet::new();
    for event in events {
        match event {
            // Other nodes follow these tasks (overlay addresses, DNS, the routing mesh),
            // wherever they run; each session then sends only if its message changed.
            Event::Task(t) if t.cluster_wide => return Concerned::All,
            // A change of status alone is what the agent reported (or a verdict on it): the
            // agent needs nothing new. Swarm's dispatcher skips these too.
            Event::Task(t) if matches!(t.change, TaskChange::Status(_)) => {}
            Event::Task(t) => {
                nodes.extend(
                    std::iter::once(t.node_id.as_str())
                        .chain(t.previous_node_id.as_deref())
                        .filter(|n| !n.is_empty()),
                );
            }
            Event::Put { kind: "node", id } | Event::Deleted { kind: "node", id } => {
                nodes.insert(id.as_str());
            }
            _ => {}
        }
    }
    Concerned::Nodes(nodes)
}

/// Wakes the sessions of the nodes each batch of events concerns (all of them after a gap).
async fn route(
    mut events: broadcast::Receiver<Arc<Vec<Event>>>,
    wakers: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
    store: Store,
) {
    let bump = |w: &watch::Sender<u64>| w.send_modify(|n| *n = n.wrapping_add(1));
    loop {
        match events.recv().await {
            Ok(batch) => {
                let mut concerned = concerned_nodes(&batch);
                // A node that goes down or comes back takes its tasks out of (or back into)
                // every overlay network's endpoints.
                if batch
                    .iter()
                    .any(|e| matches!(e, Event::Put { kind: "node", .. }))
                    && {
                        let state = store.read();
                        state.networks.values().any(crate::ipam::is_overlay)
                            || state.services.values().any(|s| !s.ingress_ports.is_empty())
                    }
                {
                    concerned = Concerned::All;
                }
                // Every node opens the ingress ports of every service: one that comes, changes
                // them or goes concerns them all.
                if batch.iter().any(|e| match e {
                    Event::Deleted {
                        kind: "service", ..
                    } => true,
                    Event::Put {
                        kind: "service",
                        id,
                    } => store
                        .read()
                        .services
                        .get(id)
                        .is_some_and(|s| !s.ingress_ports.is_empty()),
                    _ => false,
                }) {
                    concerned = Concerned::All;
                }
                let wakers = lock(&wakers);
                match concerned {
                    Concerned::All => wakers.values().for_each(bump),
                    Concerned::Nodes(nodes) => nodes
                        .into_iter()
                        .filter_map(|n| wakers.get(n))
                        .for_each(bump),
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => lock(&wakers).values().for_each(bump),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// What a session waits on; forgets the node's waker once its last session ended, whichever
/// way it ended.
struct NodeWatch {
    changes: watch::Receiver<u64>,
    wakers: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
    node_id: String,
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        let mut wakers = lock(&self.wakers);
        // `changes` is still alive here: a count of one is this session alone.
        if wakers
            .get(&self.node_id)
            .is_some_and(|w| w.receiver_count() == 1)
        {
            wakers.remove(&self.node_id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn write_status(e: WriteError) -> Status {
    match e {
        WriteError::Rejected(ApplyError::NotFound { .. }) => Status::not_found(e.to_string()),
        WriteError::Rejected(ApplyError::AlreadyExists { .. })
        | WriteError::Rejected(ApplyError::NameInUse { .. }) => {
            Status::already_exists(e.to_string())
        }
        WriteError::Rejected(ApplyError::Conflict { .. }) => Status::aborted(e.to_string()),
        WriteError::Rejected(ApplyError::Invalid(_)) => Status::invalid_argument(e.to_string()),
        WriteError::Consensus(_) => Status::unavailable(e.to_string()),
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<SessionMessage, Status>> + Send>>;

#[tonic::async_trait]
impl DispatcherRpc for Dispatcher {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<SessionRequest>,
    ) -> Result<Response<SessionStream>, Status> {
        let addr = request
            .remote_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let certified = self.authorize(&request, &request.get_ref().node_id)?;
        self.leader_only()?;
        let mut session_request = request.into_inner();
        if let Some(node_id) = certified {
            session_request.node_id = node_id;
        }
        // Watch before the first read so no change slips between the two.
        let watched = if session_request.node_id.is_empty() {
            None
        } else {
            Some(self.watch_node(&session_request.node_id))
        };
        let (node_id, session_id) = self.register(session_request, addr).await?;
        // A node that came without an id has one now; nothing could concern it before.
        let wake = match watched {
            Some(w) => w,
            None => self.watch_node(&node_id),
        };
        // One message waits at most: the next is built only once the agent took the last, so
        // a slow agent gets the latest set, never a queue of stale full sets.
        let (tx, rx) = mpsc::channel(1);
        let store = self.inner.store.clone();
        let writer = self.inner.writer.clone();
        let period = self.inner.heartbeat_period.as_millis() as u64;
        let mut wake = NodeWatch {
            changes: wake,
            wakers: self.inner.wakers.clone(),
            node_id: node_id.clone(),
        };
        tokio::spawn(async move {
            type Fingerprint = (
                Vec<(String, u64)>,
                Vec<String>,
                i32,
                Vec<OverlayPeers>,
                Vec<IngressService>,
                Vec<String>,
            );
            let mut last_sent: Option<Fingerprint> = None;
            let mut leadership = tokio::time::interval(LEADERSHIP_CHECK);
            loop {
                let Ok(permit) = tx.reserve().await else {
                    break; // the agent went away
                };
                let managers: Vec<String> = writer.managers().into_iter().map(|m| m.addr).collect();
                let assignments = assignments_of(&store, &node_id);
                let fingerprint: Vec<(String, u64)> = assignments
                    .tasks
                    .iter()
                    .map(|t| {
                        (
                            t.id.clone(),
                            t.meta.as_ref().map(|m| m.version).unwrap_or(0),
                        )
                    })
                    .collect();
                // The role the cluster wants the node in (promote / demote).
                let role = store
                    .read()
                    .nodes
                    .get(&node_id)
                    .map(|n| n.role)
                    .unwrap_or_default();
                let fingerprint = (
                    fingerprint,
                    managers,
                    role,
                    assignments.overlay_peers.clone(),
                    assignments.ingress.clone(),
                    assignments.node_addrs.clone(),
                );
                if last_sent.as_ref() != Some(&fingerprint) {
                    let message = SessionMessage {
                        session_id: session_id.clone(),
                        node_id: node_id.clone(),
                        heartbeat_period_ms: period,
                        assignments: Some(assignments),
                        managers: fingerprint.1.clone(),
                        role,
                    };
                    permit.send(Ok(message));
                    last_sent = Some(fingerprint);
                }
                // Wait for a change that concerns this node; end the session when this
                // manager stops leading, so the agent goes to the new leader.
                loop {
                    tokio::select! {
                        changed = wake.changes.changed() => match changed {
                            Ok(()) => break,
                            Err(_) => return,
                        },
                        _ = leadership.tick() => {
                            if !writer.is_leader() {
                                let _ = tx
                                    .send(Err(Status::unavailable(
                                        "this manager is no longer the leader",
                                    )))
                                    .await;
                                tracing::info!(node = %node_id, "leadership lost: agent session ended");
                                return;
                            }
                            let now: Vec<String> =
                                writer.managers().into_iter().map(|m| m.addr).collect();
                            if last_sent.as_ref().map(|l| &l.1) != Some(&now) {
                                break;
                            }
                        }
                    }
                }
                if tx.is_closed() {
                    break;
                }
            }
            tracing::info!(node = %node_id, "agent session closed");
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.authorize(&request, &request.get_ref().node_id)?;
        let r = request.into_inner();
        self.check_session(&r.node_id, &r.session_id)?;
        Ok(Response::new(HeartbeatResponse {
            period_ms: self.inner.heartbeat_period.as_millis() as u64,
        }))
    }

    async fn update_task_status(
        &self,
        request: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        self.authorize(&request, &request.get_ref().node_id)?;
        let r = request.into_inner();
        self.check_session(&r.node_id, &r.session_id)?;
        let _in_flight = ReportInFlight::start(self, &r.node_id, &r.session_id);
        let _turn = self
            .inner
            .status_writes
            .acquire()
            .await
            .map_err(|_| Status::unavailable("the dispatcher is shutting down"))?;
        self.update_statuses(r).await.map_err(write_status)?;
        Ok(Response::new(UpdateTaskStatusResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::Immediate;
    use shoal_proto::{TaskState, TaskStatus, TaskStatusUpdate};

    fn dispatcher(period: Duration) -> (Dispatcher, Store) {
        let store = Store::new();
        let writer = Writer::new(Arc::new(Immediate::new(store.clone())));
        (
            Dispatcher::new(store.clone(), writer, period, "local".into(), false),
            store,
        )
    }

    fn status(state: TaskState) -> Option<TaskStatus> {
        Some(TaskStatus {
            state: state as i32,
            ..Default::default()
        })
    }

    fn task_event(node: &str, previous: Option<&str>, change: TaskChange) -> Event {
        Event::Task(crate::store::TaskEvent {
            id: "t".into(),
            node_id: node.into(),
            previous_node_id: previous.map(str::to_string),
            change,
            cluster_wide: false,
        })
    }

    fn nodes<'a>(names: &[&'a str]) -> Concerned<'a> {
        Concerned::Nodes(names.iter().copied().collect())
    }

    #[test]
    fn a_change_wakes_only_the_sessions_it_concerns() {
        assert_eq!(concerned_nodes(&[]), Concerned::All, "a replaced state");
        let events = [
            task_event("n1", Some(""), TaskChange::Written),
            task_event("n2", Some("n3"), TaskChange::Written),
            task_event("n4", None, TaskChange::Deleted),
            task_event("", None, TaskChange::Written),
            Event::Put {
                kind: "node",
                id: "n5".into(),
            },
            Event::Put {
                kind: "service",
                id: "s".into(),
            },
        ];
        assert_eq!(
            concerned_nodes(&events),
            nodes(&["n1", "n2", "n3", "n4", "n5"])
        );
    }

    #[test]
    fn a_status_report_wakes_no_session() {
        let events = [task_event(
            "n1",
            None,
            TaskChange::Status(TaskState::Running),
        )];
        assert_eq!(concerned_nodes(&events), nodes(&[]));
    }

    #[tokio::test]
    async fn a_session_wakes_on_its_tasks_and_not_on_their_reports() {
        let (d, store) = dispatcher(DEFAULT_HEARTBEAT_PERIOD);
        let (node_id, session_id) = d
            .register(SessionRequest::default(), String::new())
            .await
            .expect("registers");
        let mut wake = d.watch_node(&node_id);
        let mut other = d.watch_node("someone-else");
        let task = Task {
            id: "t1".into(),
            node_id: node_id.clone(),
            status: status(TaskState::Assigned),
            ..Default::default()
        };
        d.inner
            .writer
            .commit(vec![change(ChangeKind::Create, Object::Task(task))])
            .await
            .expect("task created");
        tokio::time::timeout(Duration::from_secs(5), wake.changed())
            .await
            .expect("woken by its new task")
            .expect("router alive");
        d.update_statuses(UpdateTaskStatusRequest {
            node_id: node_id.clone(),
            session_id,
            updates: vec![TaskStatusUpdate {
                task_id: "t1".into(),
                status: status(TaskState::Running),
            }],
        })
        .await
        .expect("reported");
        let state = store.read().tasks["t1"].status.as_ref().map(|s| s.state());
        assert_eq!(state, Some(TaskState::Running));
        // Give the router time to (wrongly) pass the report on.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !wake.has_changed().expect("router alive"),
            "woken by its own report"
        );
        assert!(
            !other.has_changed().expect("router alive"),
            "woken by another node's task"
        );
        let _ = other.borrow_and_update();
    }

    #[tokio::test]
    async fn a_node_with_a_report_in_flight_is_not_marked_down() {
        let period = Duration::from_millis(10);
        let (d, store) = dispatcher(period);
        let (node_id, session_id) = d
            .register(SessionRequest::default(), String::new())
            .await
            .expect("registers");
        let leader_since = Instant::now() - period * 10;
        let report = ReportInFlight::start(&d, &node_id, &session_id);
        tokio::time::sleep(period * 4).await;
        d.expire_sessions(leader_since).await.expect("writes");
        assert_eq!(node_state(&store.read().nodes[&node_id]), NodeState::Ready);
        // The report's end is a sign of life: the node has a full TTL from there.
        drop(report);
        d.expire_sessions(leader_since).await.expect("writes");
        assert_eq!(node_state(&store.read().nodes[&node_id]), NodeState::Ready);
        tokio::time::sleep(period * 4).await;
        d.expire_sessions(leader_since).await.expect("writes");
        assert_eq!(node_state(&store.read().nodes[&node_id]), NodeState::Down);
    }

    #[tokio::test]
    async fn a_session_registers_the_node_ready() {
        let (d, store) = dispatcher(DEFAULT_HEARTBEAT_PERIOD);
        let (node_id, _) = d
            .register(SessionRequest::default(), "127.0.0.1".into())
            .await
            .expect("registers");
        let state = store.read();
        let node = &state.nodes[&node_id];
        assert_eq!(node_state(node), NodeState::Ready);
        assert_eq!(node.role(), NodeRole::Worker);
    }

    #[tokio::test]
    async fn task_states_only_move_forward() {
        let (d, store) = dispatcher(DEFAULT_HEARTBEAT_PERIOD);
        let (node_id, session_id) = d
            .register(SessionRequest::default(), String::new())
            .await
            .expect("registers");
        let task = Task {
            id: "t1".into(),
            node_id: node_id.clone(),
            status: status(TaskState::Assigned),
            ..Default::default()
        };
        d.inner
            .writer
            .commit(vec![change(ChangeKind::Create, Object::Task(task))])
            .await
            .expect("task created");
        let report = |state| UpdateTaskStatusRequest {
            node_id: node_id.clone(),
            session_id: session_id.clone(),
            updates: vec![TaskStatusUpdate {
                task_id: "t1".into(),
                status: status(state),
            }],
        };
        d.update_statuses(report(TaskState::Running))
            .await
            .expect("forward");
        d.update_statuses(report(TaskState::Preparing))
            .await
            .expect("ignored");
        let state = store.read().tasks["t1"].status.as_ref().map(|s| s.state());
        assert_eq!(state, Some(TaskState::Running));
    }

    #[tokio::test]
    async fn silent_nodes_are_marked_down() {
        let period = Duration::from_millis(10);
        let (d, store) = dispatcher(period);
        let (node_id, _) = d
            .register(SessionRequest::default(), String::new())
            .await
            .expect("registers");
        // A leader that just started gives the agents time to find it.
        let new_leader = Instant::now();
        tokio::time::sleep(period * 4).await;
        d.expire_sessions(new_leader).await.expect("writes");
        assert_eq!(node_state(&store.read().nodes[&node_id]), NodeState::Ready);
        let leader_since = Instant::now() - period * NEW_LEADER_GRACE_PERIODS;
        d.expire_sessions(leader_since).await.expect("writes");
        assert_eq!(node_state(&store.read().nodes[&node_id]), NodeState::Down);
    }
}
