//! The control API: what the CLI calls. Reads come from the local store (after a linearizable
//! barrier where it matters); writes go through consensus.

pub mod network;
pub mod pin;
mod roles;
pub mod secrets;
pub mod stack;
mod validate;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use shoal_proto::control_server::{Control, ControlServer};
use shoal_proto::service_spec::Mode;
use shoal_proto::store_object::Object;
use shoal_proto::*;
use tonic::{Request, Response, Status};

pub use validate::{valid_name, validate_spec};

use crate::consensus::{new_id, Writer};
use crate::dispatcher::write_status;
use crate::store::{change, ApplyError, State, Store};

/// Whether an image can be run. On one node that is the local image store.
pub trait ImageCatalog: Send + Sync + 'static {
    /// `Err` says what is missing and how to get it.
    fn check(&self, reference: &str) -> Result<(), String>;

    /// [`ImageCatalog::check`], and the digest every node must run the image at (as this
    /// node has it, else as the node or registry that has it does): a service's
    /// `image_digest`. `None`: nothing to pin (the reference is a digest or an id already).
    fn pin(&self, reference: &str) -> Result<Option<String>, String> {
        self.check(reference).map(|()| None)
    }
}

pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogLine, Status>> + Send>>;

/// Where task logs are read from (the agents' log files).
pub trait TaskLogs: Send + Sync + 'static {
    fn stream(&self, tasks: Vec<Task>, follow: bool, tail: u64) -> LogStream;
}

/// Facts about this daemon that `info` shows and the store does not hold.
pub trait DaemonFacts: Send + Sync + 'static {
    fn node_id(&self) -> String;
    fn data_dir(&self) -> String;
    fn cgroup_version(&self) -> String;
    /// (term, last applied log index)
    fn raft_progress(&self) -> (u64, u64);
}

#[derive(Clone)]
pub struct ControlApi {
    store: Store,
    writer: Writer,
    images: Arc<dyn ImageCatalog>,
    logs: Arc<dyn TaskLogs>,
    facts: Arc<dyn DaemonFacts>,
}

impl ControlApi {
    pub fn new(
        store: Store,
        writer: Writer,
        images: Arc<dyn ImageCatalog>,
        logs: Arc<dyn TaskLogs>,
        facts: Arc<dyn DaemonFacts>,
    ) -> ControlApi {
        ControlApi {
            store,
            writer,
            images,
            logs,
            facts,
        }
    }

    pub fn into_service(self) -> ControlServer<ControlApi> {
        ControlServer::new(self)
    }

    fn find_service(&self, key: &str) -> Result<Service, Status> {
        self.store
            .read()
            .find_service(key)
            .cloned()
            .map_err(|e| match e {
                ApplyError::NotFound { .. } => Status::not_found(format!("no such service: {key}")),
                other => Status::invalid_argument(other.to_string()),
            })
    }

    /// A read barrier: the local store then holds every write committed before the call
    /// (on a follower, a ReadIndex from the leader), so a read right after a write made on
    /// another manager sees it.
    async fn barrier(&self) -> Result<(), Status> {
        self.writer.linearize().await.map_err(write_status)
    }

    /// A node by id, unique id prefix, or hostname.
    fn find_node(&self, key: &str) -> Result<Node, Status> {
        let state = self.store.read();
        if let Some(n) = state.nodes.get(key) {
            return Ok(n.clone());
        }
        let matches: Vec<&Node> = state
            .nodes
            .values()
            .filter(|n| {
                n.id.starts_with(key) || n.description.as_ref().is_some_and(|d| d.hostname == key)
            })
            .collect();
        match matches.as_slice() {
            [one] if !key.is_empty() => Ok((*one).clone()),
            [] | [_] => Err(Status::not_found(format!("no such node: {key}"))),
            _ => Err(Status::invalid_argument(format!(
                "node {key:?} is ambiguous: give more of its id"
            ))),
        }
    }

    /// Network targets by name become ids; unknown networks are refused.
    /// Secret and config names become ids too.
    fn resolve_networks(&self, spec: &mut ServiceSpec) -> Result<(), Status> {
        let state = self.store.read();
        network::resolve_targets(&state, spec, &|_| None).map_err(Status::invalid_argument)?;
        secrets::resolve_secrets(&state, spec, &|_, _| None).map_err(Status::invalid_argument)
    }

    fn find_network(&self, key: &str) -> Result<Network, Status> {
        network::find_network(&self.store.read(), key)
            .cloned()
            .map_err(Status::not_found)
    }

    /// Checks that the spec's image can run and pins its digest (see [`pin::needs_pin`]):
    /// every node then runs the same bytes.
    fn pin_image(
        &self,
        spec: &mut ServiceSpec,
        current: Option<&ServiceSpec>,
    ) -> Result<(), Status> {
        let Some(container) = spec.container.as_mut() else {
            return self.images.check("").map_err(Status::failed_precondition);
        };
        if !pin::needs_pin(current.and_then(|c| c.container.as_ref()), container) {
            return Ok(());
        }
        container.image_digest = self
            .images
            .pin(&container.image)
            .map_err(Status::failed_precondition)?
            .unwrap_or_default();
        Ok(())
    }
}

impl ControlApi {
    /// Takes a manager out of the Raft membership, unless that leaves no manager or no
    /// quorum.
    async fn leave_managers(&self, node: &str, raft_id: u64) -> Result<(), Status> {
        roles::check_manager_removal(&self.writer.managers(), raft_id, node)
            .map_err(Status::failed_precondition)?;
        self.writer
            .remove_manager(raft_id)
            .await
            .map_err(write_status)?;
        tracing::info!(%node, raft_id, "manager left the Raft membership");
        Ok(())
    }
}

/// The cluster object without its secrets (the CA key, the join secrets): what a client sees.
pub fn public_cluster(cluster: &Cluster) -> Cluster {
    let mut public = cluster.clone();
    if let Some(ca) = public.root_ca.as_mut() {
        ca.key_pem.clear();
    }
    public.join_secrets = None;
    public
}

/// Tasks wanted by a service: its replicas, or for a global service the tasks the
/// orchestrator placed (one per eligible node).
pub fn desired_tasks(state: &State, service: &Service) -> u64 {
    match service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
        Some(Mode::Replicated(r)) => r.replicas,
        Some(Mode::Global(_)) => state
            .tasks_of(&service.id)
            .filter(|t| t.desired_state() == TaskState::Running)
            .count() as u64,
        None => 0,
    }
}

fn running_tasks(state: &State, service_id: &str) -> u64 {
    state
        .tasks_of(service_id)
        .filter(|t| {
            t.desired_state() == TaskState::Running
                && t.status.as_ref().map(|s| s.state()) == Some(TaskState::Running)
        })
        .count() as u64
}

#[tonic::async_trait]
impl Control for ControlApi {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let (raft_term, raft_last_applied) = self.facts.raft_progress();
        let state = self.store.read();
        let tasks_running = state
            .tasks
            .values()
            .filter(|t| t.status.as_ref().map(|s| s.state()) == Some(TaskState::Running))
            .count() as u64;
        Ok(Response::new(InfoResponse {
            cluster: state.cluster.as_ref().map(public_cluster),
            node_id: self.facts.node_id(),
            is_manager: true,
            is_leader: self.writer.is_leader(),
            nodes: state.nodes.len() as u64,
            services: state.services.len() as u64,
            tasks_running,
            version: env!("CARGO_PKG_VERSION").into(),
            data_dir: self.facts.data_dir(),
            cgroup_version: self.facts.cgroup_version(),
            raft_term,
            raft_last_applied,
        }))
    }

    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        self.barrier().await?;
        // MANAGER STATUS is as this manager sees it now, not as stored.
        let managers: std::collections::HashMap<u64, crate::consensus::ManagerInfo> = self
            .writer
            .managers()
            .into_iter()
            .map(|m| (m.raft_id, m))
            .collect();
        let nodes = self
            .store
            .read()
            .nodes
            .values()
            .cloned()
            .map(|mut n| {
                if let Some(status) = n.manager_status.as_mut() {
                    match managers.get(&status.raft_id) {
                        Some(m) => {
                            status.leader = m.leader;
                            status.reachability = if m.reachable {
                                "reachable"
                            } else {
                                "unreachable"
                            }
                            .into();
                        }
                        // Not (or no longer) in the Raft membership.
                        None if !managers.is_empty() => {
                            status.leader = false;
                            status.reachability = "unreachable".into();
                        }
                        None => {}
                    }
                }
                n
            })
            .collect();
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn create_service(
        &self,
        request: Request<CreateServiceRequest>,
    ) -> Result<Response<CreateServiceResponse>, Status> {
        let mut spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("CreateService needs a spec"))?;
        validate_spec(&spec).map_err(Status::invalid_argument)?;
        self.resolve_networks(&mut spec)?;
        self.pin_image(&mut spec, None)?;
        crate::ingress::check_ports(&self.store.read(), "", &spec)
            .map_err(Status::invalid_argument)?;
        let id = new_id();
        let service = Service {
            id: id.clone(),
            meta: None,
            spec: Some(spec),
            ..Default::default()
        };
        self.writer
            .commit(vec![change(
                ChangeKind::Create,
                Object::Service(Box::new(service)),
            )])
            .await
            .map_err(write_status)?;
        let service = self.find_service(&id)?;
        Ok(Response::new(CreateServiceResponse {
            service: Some(service),
        }))
    }

    async fn get_service(
        &self,
        request: Request<GetServiceRequest>,
    ) -> Result<Response<GetServiceResponse>, Status> {
        self.barrier().await?;
        let service = self.find_service(&request.into_inner().service)?;
        Ok(Response::new(GetServiceResponse {
            service: Some(service),
        }))
    }

    async fn update_service(
        &self,
        request: Request<UpdateServiceRequest>,
    ) -> Result<Response<UpdateServiceResponse>, Status> {
        let r = request.into_inner();
        if r.rollback {
            // `service rollback`: back to the previous spec (Swarm swaps the two), rolled out
            // with the rollback config by the orchestrator.
            self.barrier().await?;
            let mut service = self.find_service(&r.service_id)?;
            let name = service
                .spec
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            let Some(previous) = service.previous_spec.take() else {
                return Err(Status::failed_precondition(format!(
                    "service {name} has no previous spec to roll back to"
                )));
            };
            service.previous_spec = service.spec.replace(previous);
            service.update_status = Some(UpdateStatus {
                state: UpdateState::RollbackStarted as i32,
                started_at: now_ms(),
                completed_at: 0,
                message: "manually requested rollback".into(),
                ..Default::default()
            });
            if r.version != 0 {
                service.meta = Some(Meta {
                    version: r.version,
                    ..Default::default()
                });
            }
            let id = service.id.clone();
            self.writer
                .commit(vec![change(
                    ChangeKind::Update,
                    Object::Service(Box::new(service)),
                )])
                .await
                .map_err(write_status)?;
            return Ok(Response::new(UpdateServiceResponse {
                service: Some(self.find_service(&id)?),
            }));
        }
        let mut spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("UpdateService needs a spec"))?;
        validate_spec(&spec).map_err(Status::invalid_argument)?;
        self.resolve_networks(&mut spec)?;
        self.barrier().await?;
        let current = self.find_service(&r.service_id)?;
        if current.spec.as_ref().map(|s| &s.container) != Some(&spec.container) {
            self.pin_image(&mut spec, current.spec.as_ref())?;
        }
        crate::ingress::check_ports(&self.store.read(), &current.id, &spec)
            .map_err(Status::invalid_argument)?;
        let mut service = current;
        service.meta = Some(Meta {
            version: r.version,
            ..Default::default()
        });
        if !crate::orchestrator::update::same_task_spec(service.spec.as_ref(), Some(&spec)) {
            // A new rollout: the spec it replaces is kept for `service rollback`, and the
            // orchestrator writes the new update status. (A change no task sees, such as a
            // scale or new rollout settings, keeps both.)
            service.previous_spec = service.spec.take();
            service.update_status = None;
        }
        service.spec = Some(spec);
        let id = service.id.clone();
        self.writer
            .commit(vec![change(
                ChangeKind::Update,
                Object::Service(Box::new(service)),
            )])
            .await
            .map_err(write_status)?;
        Ok(Response::new(UpdateServiceResponse {
            service: Some(self.find_service(&id)?),
        }))
    }

    async fn list_services(
        &self,
        _: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        self.barrier().await?;
        let state = self.store.read();
        let services = state
            .services
            .values()
            .map(|s| ServiceSummary {
                running: running_tasks(&state, &s.id),
                desired: desired_tasks(&state, s),
                service: Some(s.clone()),
            })
            .collect();
        Ok(Response::new(ListServicesResponse { services }))
    }

    async fn remove_service(
        &self,
        request: Request<RemoveServiceRequest>,
    ) -> Result<Response<RemoveServiceResponse>, Status> {
        self.barrier().await?;
        let service = self.find_service(&request.into_inner().service)?;
        let gone = Service {
            id: service.id,
            ..Default::default()
        };
        self.writer
            .commit(vec![change(
                ChangeKind::Delete,
                Object::Service(Box::new(gone)),
            )])
            .await
            .map_err(write_status)?;
        Ok(Response::new(RemoveServiceResponse {}))
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let r = request.into_inner();
        if r.changed_after > 0 {
            let mut applied = self.store.applied_index();
            // Timing out is an answer too: the caller asks again (and minds its deadline).
            let _ = tokio::time::timeout(
                LIST_TASKS_LONGEST_WAIT,
                applied.wait_for(|index| *index > r.changed_after),
            )
            .await;
        }
        self.barrier().await?;
        let service_id = if r.service.is_empty() {
            None
        } else {
            Some(self.find_service(&r.service)?.id)
        };
        // Read before the state, so that the state is at least as new as the index given out.
        let index = *self.store.applied_index().borrow();
        let state = self.store.read();
        let tasks = state
            .tasks
            .values()
            .filter(|t| service_id.as_ref().is_none_or(|id| &t.service_id == id))
            .filter(|t| r.node_id.is_empty() || t.node_id == r.node_id)
            .map(|t| Task::clone(t))
            .collect();
        Ok(Response::new(ListTasksResponse { tasks, index }))
    }

    async fn update_node(
        &self,
        request: Request<UpdateNodeRequest>,
    ) -> Result<Response<UpdateNodeResponse>, Status> {
        let r = request.into_inner();
        let role = r
            .role
            .map(NodeRole::try_from)
            .transpose()
            .map_err(|_| Status::invalid_argument("unknown role"))?;
        // Demoting a manager: out of the Raft membership first (refused if that would lose
        // the quorum). Once the store says worker, the node's next certificate is a worker's
        // and it restarts as one. Promoting is the store alone: the node gets a manager
        // certificate, restarts as a manager and joins the Raft membership by itself.
        if role == Some(NodeRole::Worker) {
            let node = self.find_node(&r.node)?;
            if let Some(status) = node.manager_status.as_ref().filter(|s| s.raft_id != 0) {
                self.leave_managers(&node.id, status.raft_id).await?;
            }
        }
        // Compare-and-set: retry when the node changed meanwhile (heartbeats, status).
        for _ in 0..5 {
            let mut node = self.find_node(&r.node)?;
            if let Some(a) = r.availability {
                node.availability = NodeAvailability::try_from(a)
                    .map_err(|_| Status::invalid_argument("unknown availability"))?
                    as i32;
            }
            for key in &r.label_rm {
                node.labels.remove(key);
            }
            node.labels.extend(r.label_add.clone());
            if let Some(role) = role {
                node.set_role(role);
                if role == NodeRole::Worker {
                    node.manager_status = None;
                }
            }
            let id = node.id.clone();
            match self
                .writer
                .commit(vec![change(ChangeKind::Update, Object::Node(node))])
                .await
            {
                Ok(_) => {
                    return Ok(Response::new(UpdateNodeResponse {
                        node: self.store.read().nodes.get(&id).cloned(),
                    }))
                }
                Err(crate::consensus::WriteError::Rejected(ApplyError::Conflict { .. })) => {
                    continue
                }
                Err(e) => return Err(write_status(e)),
            }
        }
        Err(Status::aborted("the node kept changing: try again"))
    }

    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        let r = request.into_inner();
        let node = self.find_node(&r.node)?;
        if node.id == self.facts.node_id() {
            return Err(Status::failed_precondition(
                "this is the manager you are talking to: it cannot remove itself",
            ));
        }
        let up = node.status.as_ref().map(|s| s.state()) == Some(NodeState::Ready);
        if up && !r.force {
            return Err(Status::failed_precondition(format!(
                "node {} is up: drain it and stop its daemon first, or use --force",
                node.id
            )));
        }
        // A manager leaves the Raft membership first (Docker asks for a demote; --force does
        // both).
        if let Some(status) = node.manager_status.as_ref().filter(|s| s.raft_id != 0) {
            if !r.force {
                return Err(Status::failed_precondition(format!(
                    "node {} is a manager: demote it first, or use --force",
                    node.id
                )));
            }
            self.leave_managers(&node.id, status.raft_id).await?;
        }
        // Remove the node and revoke its certificate in one entry.
        let mut cluster = self
            .store
            .read()
            .cluster
            .clone()
            .ok_or_else(|| Status::unavailable("the cluster is not initialised yet"))?;
        cluster.revoked_nodes.push(node.id.clone());
        let gone = Node {
            id: node.id,
            ..Default::default()
        };
        self.writer
            .commit(vec![
                change(ChangeKind::Delete, Object::Node(gone)),
                change(ChangeKind::Update, Object::Cluster(cluster)),
            ])
            .await
            .map_err(write_status)?;
        Ok(Response::new(RemoveNodeResponse {}))
    }

    async fn join_token(
        &self,
        request: Request<JoinTokenRequest>,
    ) -> Result<Response<JoinTokenResponse>, Status> {
        let r = request.into_inner();
        let role = r.role();
        let cluster = self
            .store
            .read()
            .cluster
            .clone()
            .ok_or_else(|| Status::unavailable("the cluster is not initialised yet"))?;
        let cluster = if r.rotate {
            let mut rotated = cluster;
            let digest = crate::join::cluster_ca(&rotated)?.digest();
            let secrets = rotated.join_secrets.get_or_insert_with(Default::default);
            let fresh = crate::ca::JoinToken::generate(digest).secret;
            match role {
                NodeRole::Worker => secrets.worker = fresh,
                NodeRole::Manager => secrets.manager = fresh,
            }
            self.writer
                .commit(vec![change(
                    ChangeKind::Update,
                    Object::Cluster(rotated.clone()),
                )])
                .await
                .map_err(write_status)?;
            rotated
        } else {
            cluster
        };
        Ok(Response::new(JoinTokenResponse {
            token: crate::join::join_token(&cluster, role)?,
        }))
    }

    async fn deploy_stack(
        &self,
        request: Request<DeployStackRequest>,
    ) -> Result<Response<DeployStackResponse>, Status> {
        let r = request.into_inner();
        let mut spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("DeployStack needs a spec"))?;
        for service in &mut spec.services {
            let name = service.name.clone();
            self.pin_image(service, None).map_err(|e| {
                Status::failed_precondition(format!("service {name}: {}", e.message()))
            })?;
        }
        // A conflicting concurrent change makes the compare-and-set fail: plan again.
        for _ in 0..5 {
            let plan = {
                let state = self.store.read();
                stack::plan_deploy(&state, &spec, r.prune, &mut new_id)
                    .map_err(Status::invalid_argument)?
            };
            match self.writer.commit(plan.changes).await {
                Ok(_) => {
                    let stack = self.store.read().stacks.get(&spec.name).cloned();
                    return Ok(Response::new(DeployStackResponse {
                        stack,
                        created: plan.created,
                        updated: plan.updated,
                        unchanged: plan.unchanged,
                        removed: plan.removed,
                    }));
                }
                Err(crate::consensus::WriteError::Rejected(ApplyError::Conflict { .. })) => {
                    continue
                }
                Err(e) => return Err(write_status(e)),
            }
        }
        Err(Status::aborted(
            "the stack kept changing while it was being deployed: try again",
        ))
    }

    async fn list_stacks(
        &self,
        _: Request<ListStacksRequest>,
    ) -> Result<Response<ListStacksResponse>, Status> {
        let state = self.store.read();
        let stacks = state
            .stacks
            .values()
            .map(|s| StackSummary {
                services: state
                    .services
                    .values()
                    .filter(|svc| stack::stack_of(svc) == Some(s.id.as_str()))
                    .count() as u64,
                stack: Some(s.clone()),
            })
            .collect();
        Ok(Response::new(ListStacksResponse { stacks }))
    }

    async fn remove_stack(
        &self,
        request: Request<RemoveStackRequest>,
    ) -> Result<Response<RemoveStackResponse>, Status> {
        let name = request.into_inner().name;
        let plan = {
            let state = self.store.read();
            stack::plan_remove(&state, &name).map_err(Status::not_found)?
        };
        self.writer
            .commit(plan.changes)
            .await
            .map_err(write_status)?;
        Ok(Response::new(RemoveStackResponse {
            removed: plan.removed,
        }))
    }

    async fn create_network(
        &self,
        request: Request<CreateNetworkRequest>,
    ) -> Result<Response<CreateNetworkResponse>, Status> {
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("CreateNetwork needs a spec"))?;
        let id = new_id();
        let created = network::new_network(&self.store.read(), spec, id.clone(), &[])
            .map_err(Status::invalid_argument)?;
        self.writer
            .commit(vec![change(ChangeKind::Create, Object::Network(created))])
            .await
            .map_err(write_status)?;
        Ok(Response::new(CreateNetworkResponse {
            network: Some(self.find_network(&id)?),
        }))
    }

    async fn list_networks(
        &self,
        _: Request<ListNetworksRequest>,
    ) -> Result<Response<ListNetworksResponse>, Status> {
        let networks = self.store.read().networks.values().cloned().collect();
        Ok(Response::new(ListNetworksResponse { networks }))
    }

    async fn get_network(
        &self,
        request: Request<GetNetworkRequest>,
    ) -> Result<Response<GetNetworkResponse>, Status> {
        let network = self.find_network(&request.into_inner().network)?;
        Ok(Response::new(GetNetworkResponse {
            network: Some(network),
        }))
    }

    async fn remove_network(
        &self,
        request: Request<RemoveNetworkRequest>,
    ) -> Result<Response<RemoveNetworkResponse>, Status> {
        let found = self.find_network(&request.into_inner().network)?;
        let users = network::users_of(&self.store.read(), &found.id);
        if !users.is_empty() {
            let name = found.spec.map(|s| s.name).unwrap_or_default();
            return Err(Status::failed_precondition(format!(
                "network {name} is in use by service {}: remove the service first",
                users.join(", ")
            )));
        }
        let gone = Network {
            id: found.id,
            ..Default::default()
        };
        self.writer
            .commit(vec![change(ChangeKind::Delete, Object::Network(gone))])
            .await
            .map_err(write_status)?;
        Ok(Response::new(RemoveNetworkResponse {}))
    }

    async fn promote_service(
        &self,
        request: Request<PromoteServiceRequest>,
    ) -> Result<Response<PromoteServiceResponse>, Status> {
        let key = request.into_inner().service;
        // Compare-and-set: retry when the orchestrator wrote the service meanwhile.
        for _ in 0..5 {
            self.barrier().await?;
            let service = self.find_service(&key)?;
            let name = service
                .spec
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            let Some(promoted) = crate::orchestrator::bluegreen::promote(&service)
                .map_err(|e| Status::failed_precondition(format!("service {name}: {e}")))?
            else {
                return Ok(Response::new(PromoteServiceResponse {
                    service: Some(service),
                }));
            };
            let id = promoted.id.clone();
            match self
                .writer
                .commit(vec![change(
                    ChangeKind::Update,
                    Object::Service(Box::new(promoted)),
                )])
                .await
            {
                Ok(_) => {
                    return Ok(Response::new(PromoteServiceResponse {
                        service: Some(self.find_service(&id)?),
                    }))
                }
                Err(crate::consensus::WriteError::Rejected(ApplyError::Conflict { .. })) => {
                    continue
                }
                Err(e) => return Err(write_status(e)),
            }
        }
        Err(Status::aborted("the service kept changing: try again"))
    }

    type ServiceLogsStream = LogStream;

    async fn service_logs(
        &self,
        request: Request<ServiceLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let r = request.into_inner();
        let service = self.find_service(&r.service)?;
        let mut tasks: Vec<Task> = self.store.read().tasks_of(&service.id).cloned().collect();
        tasks.sort_by_key(|t| (t.slot, t.meta.as_ref().map(|m| m.created_at)));
        if !r.follow {
            return Ok(Response::new(self.logs.stream(tasks, false, r.tail)));
        }
        Ok(Response::new(self.follow_logs(service.id, tasks, r.tail)))
    }
}

/// The longest a `ListTasks` with `changed_after` waits for a change.
const LIST_TASKS_LONGEST_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How often `logs --follow` looks for tasks that started since it began.
const NEW_TASK_POLL: std::time::Duration = std::time::Duration::from_millis(250);

impl ControlApi {
    /// Follows the logs of `tasks` and of every task of the service that appears later (a
    /// restart, a scale-up), like `docker service logs -f`, until the client goes away.
    fn follow_logs(&self, service_id: String, tasks: Vec<Task>, tail: u64) -> LogStream {
        use futures::StreamExt;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let store = self.store.clone();
        let logs = self.logs.clone();
        tokio::spawn(async move {
            let mut seen: std::collections::HashSet<String> =
                tasks.iter().map(|t| t.id.clone()).collect();
            let mut streams = futures::stream::SelectAll::new();
            streams.push(logs.stream(tasks, true, tail));
            let mut poll = tokio::time::interval(NEW_TASK_POLL);
            loop {
                tokio::select! {
                    line = streams.next(), if !streams.is_empty() => {
                        let Some(line) = line else { continue };
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                    _ = poll.tick() => {
                        if tx.is_closed() {
                            return;
                        }
                        let new: Vec<Task> = store
                            .read()
                            .tasks_of(&service_id)
                            .filter(|t| !seen.contains(&t.id))
                            .cloned()
                            .collect();
                        if !new.is_empty() {
                            seen.extend(new.iter().map(|t| t.id.clone()));
                            streams.push(logs.stream(new, true, 0));
                        }
                    }
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}
