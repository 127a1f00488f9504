//! The executor turns the node's assigned task set into containers, and reports every state a
//! task reaches. It reconciles: given the complete set each time, it starts what is missing,
//! stops what is no longer wanted, removes what is gone, and after a daemon restart adopts the
//! containers that are still running (their supervisors outlive the daemon) instead of
//! replacing them, so no replica is ever duplicated.

mod config;
mod drain;
mod fetch;
mod health;
mod mounts;
mod net;
mod overlay;
mod published;
mod resources;
mod rotation;
mod secrets;
mod vip;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use config::{apply_network, container_config, container_name, stop_grace, DEFAULT_STOP_GRACE};
pub use net::{Prepared, TaskNetworks, DEFAULT_NETWORK};
pub use published::PublishedPorts;
pub use resources::ContainerResources;
pub use secrets::secrets_root;
use shoal_proto::{
    now_ms, Assignments, Network, Secret, Task, TaskAddress, TaskState, TaskStatus,
    TaskStatusUpdate,
};
use tokio::sync::{mpsc, watch};

use crate::image::ImageStore;
use crate::runtime::{ContainerStatus, ExitStatus, Runtime};
use crate::volume::VolumeStore;

#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<Runtime>,
    images: ImageStore,
    networks: TaskNetworks,
    volumes: Arc<VolumeStore>,
    /// The store networks the current assignments refer to, by id.
    known_networks: Mutex<HashMap<String, Network>>,
    /// The local networks the current assignments need (the others go once unused).
    needed_networks: Mutex<HashSet<String>>,
    /// The secrets and configs the current assignments use, by id.
    known_secrets: Mutex<HashMap<String, Secret>>,
    /// Where containers' secret files are written (on a tmpfs).
    secrets_root: std::path::PathBuf,
    updates: mpsc::UnboundedSender<TaskStatusUpdate>,
    workers: Mutex<HashMap<String, watch::Sender<Option<Task>>>>,
    /// Containers that exist on this node: found at start, then kept up to date.
    containers: Mutex<HashSet<String>>,
    /// Where images the node lacks are pulled from (see [`Executor::use_registry`]).
    registry: std::sync::OnceLock<crate::image::registry::Registry>,
    /// The other nodes, asked first for an image the node lacks (see [`Executor::use_peers`]).
    peers: std::sync::OnceLock<crate::image::peer::PeerImages>,
}

impl Executor {
    /// Returns the executor and the stream of status updates the session must deliver.
    pub fn new(
        runtime: Arc<Runtime>,
        images: ImageStore,
        networks: TaskNetworks,
        volumes: Arc<VolumeStore>,
    ) -> Result<(Executor, mpsc::UnboundedReceiver<TaskStatusUpdate>), crate::runtime::RuntimeError>
    {
        // Standalone containers (`shoal run`) are not the executor's: never strays to remove.
        let containers = runtime
            .list()?
            .into_iter()
            .filter(|c| {
                !c.labels
                    .contains_key(crate::containers_api::STANDALONE_LABEL)
            })
            .map(|c| c.id)
            .collect();
        let (updates, rx) = mpsc::unbounded_channel();
        let secrets_root = secrets::secrets_root(runtime.root());
        let executor = Executor {
            inner: Arc::new(Inner {
                secrets_root,
                known_secrets: Mutex::new(HashMap::new()),
                runtime,
                images,
                networks,
                volumes,
                known_networks: Mutex::new(HashMap::new()),
                needed_networks: Mutex::new(HashSet::new()),
                updates,
                workers: Mutex::new(HashMap::new()),
                containers: Mutex::new(containers),
                registry: std::sync::OnceLock::new(),
                peers: std::sync::OnceLock::new(),
            }),
        };
        Ok((executor, rx))
    }

    /// Tasks whose image the node lacks pull it from its registry (else they are rejected
    /// with "no such image"). Set once, at start.
    pub fn use_registry(&self, registry: crate::image::registry::Registry) {
        let _ = self.inner.registry.set(registry);
    }

    /// Tasks whose image the node lacks fetch it from another node that has it, before
    /// trying its registry. Set once, at start.
    pub fn use_peers(&self, peers: crate::image::peer::PeerImages) {
        let _ = self.inner.peers.set(peers);
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.inner.runtime
    }

    /// After a daemon restart: releases the network endpoints of containers that are gone and
    /// removes leftover links, netns files and rules.
    pub async fn reconcile_networks(&self) {
        let live = lock(&self.inner.containers).clone();
        let services: HashSet<String> = self
            .inner
            .runtime
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.config.labels.get(config::SERVICE_ID_LABEL).cloned())
            .collect();
        let ports = self.inner.networks.ports().clone();
        let _ = tokio::task::spawn_blocking(move || ports.reconcile(&services)).await;
        match self.inner.networks.manager().reconcile(live).await {
            Ok(report) => tracing::info!(?report, "networks reconciled"),
            Err(e) => tracing::warn!("reconciling networks: {e}"),
        }
    }

    /// Reconciles with the complete set of tasks assigned to this node.
    pub fn assign(&self, node_id: &str, assignments: Assignments) {
        let Assignments {
            tasks,
            networks,
            secrets,
            overlay_peers,
            ingress,
            node_addrs,
        } = assignments;
        // The routing mesh: every ingress service's ports open here (blocking: nft).
        let ports = self.inner.networks.ports().clone();
        let (own, seq) = (node_id.to_string(), ports.next_ingress_seq());
        tokio::task::spawn_blocking(move || ports.set_ingress(seq, &ingress, &node_addrs, &own));
        tracing::debug!(tasks = tasks.len(), "assignments");
        *lock(&self.inner.known_secrets) = secrets.into_iter().map(|s| (s.id.clone(), s)).collect();
        let known: HashMap<String, Network> =
            networks.into_iter().map(|n| (n.id.clone(), n)).collect();
        let remote = overlay::remote_view(&overlay_peers, node_id, |id| {
            known.get(id)?.spec.as_ref().map(|s| s.name.clone())
        });
        self.inner.networks.set_remote(remote);
        let networks = self.inner.networks.clone();
        tokio::spawn(async move { networks.apply_remote().await });
        *lock(&self.inner.needed_networks) = TaskNetworks::needed_by(&tasks, &known);
        *lock(&self.inner.known_networks) = known;
        // Who the manager holds out of rotation: set before any worker starts or changes, so
        // that a task that goes live here is never in rotation against the manager's word.
        self.inner.networks.set_held(
            tasks
                .iter()
                .filter(|t| t.out_of_rotation)
                .map(|t| t.id.clone())
                .collect(),
        );
        let wanted: HashSet<String> = tasks.iter().map(|t| t.id.clone()).collect();
        let mut workers = lock(&self.inner.workers);
        workers.retain(|id, desired| {
            if wanted.contains(id) {
                return true;
            }
            // The task is gone from the store: its worker stops and removes the container.
            let _ = desired.send(None);
            false
        });
        for task in tasks {
            if let Some(desired) = workers.get(&task.id) {
                desired.send_if_modified(|current| {
                    let changed = current.as_ref() != Some(&task);
                    *current = Some(task.clone());
                    changed
                });
                continue;
            }
            let observed = task.status.as_ref().map(|s| s.state()).unwrap_or_default();
            let has_container = lock(&self.inner.containers).contains(&task.id);
            if observed.is_terminal() && !has_container {
                continue; // nothing ran, nothing to clean up
            }
            let (tx, rx) = watch::channel(Some(task.clone()));
            workers.insert(task.id.clone(), tx);
            let worker = Worker {
                executor: self.clone(),
                id: task.id.clone(),
                reported: observed,
                pid: 0,
                last_status: task
                    .status
                    .clone()
                    .filter(|_| observed == TaskState::Running),
                ingress_pending: false,
            };
            tokio::spawn(worker.run(rx));
        }
        // Containers with no task at all (deleted while the daemon was down): remove them.
        let strays: Vec<String> = lock(&self.inner.containers)
            .iter()
            .filter(|id| !workers.contains_key(*id))
            .cloned()
            .collect();
        drop(workers);
        for id in strays {
            let executor = self.clone();
            tokio::spawn(async move { executor.remove_container(&id).await });
        }
        let executor = self.clone();
        tokio::spawn(async move { executor.prune_networks().await });
    }

    /// Removes this node's networks that nothing needs any more.
    async fn prune_networks(&self) {
        let needed = lock(&self.inner.needed_networks).clone();
        self.inner.networks.prune(&needed).await;
    }

    /// What a container held besides itself: network endpoints and volumes.
    async fn release_resources(&self, id: &str) {
        self.inner.networks.release(id).await;
        secrets::release(&self.inner.secrets_root, id);
        let (volumes, id) = (self.inner.volumes.clone(), id.to_string());
        let _ = tokio::task::spawn_blocking(move || mounts::release(&volumes, &id)).await;
    }

    async fn remove_container(&self, id: &str) {
        let grace = DEFAULT_STOP_GRACE;
        if let Err(e) = self.inner.runtime.stop(id, grace).await {
            tracing::debug!(container = id, "stop before removal: {e}");
        }
        match self.inner.runtime.remove(id).await {
            Ok(()) => {
                lock(&self.inner.containers).remove(id);
                self.release_resources(id).await;
                self.prune_networks().await;
            }
            Err(e) => tracing::warn!(container = id, "could not remove container: {e}"),
        }
    }
}

/// The container's addresses as a task status shows them.
fn task_addresses(attachments: &[crate::network::Attachment]) -> Vec<TaskAddress> {
    attachments
        .iter()
        .map(|a| TaskAddress {
            network: a.network_name.clone(),
            address: format!("{}/{}", a.ip, a.prefix_len),
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Follows one task from assignment to removal.
struct Worker {
    executor: Executor,
    id: String,
    /// The furthest state reported so far: reports only move forward.
    reported: TaskState,
    /// Host pid of the container's first process, once started.
    pid: i32,
    /// The status last reported (a verification result is added to it).
    last_status: Option<TaskStatus>,
    /// It went live before its service's ingress ports were applied here: they are added to
    /// its RUNNING status once they are.
    ingress_pending: bool,
}

/// How long an unhealthy task that serves while a blue-green standby of its service is held
/// on this node waits for the manager to move the traffic before it stops by itself.
const UNHEALTHY_HANDOFF: Duration = Duration::from_secs(3);

/// A blue-green verification under way: (passed, output).
type Verification = std::pin::Pin<Box<dyn std::future::Future<Output = (bool, String)> + Send>>;

/// What the manager wants of the task right now; `None` when the task is gone.
fn wanted(rx: &watch::Receiver<Option<Task>>) -> Option<TaskState> {
    rx.borrow().as_ref().map(|t| t.desired_state())
}

impl Worker {
    fn report(&mut self, state: TaskState, message: &str, fill: impl FnOnce(&mut TaskStatus)) {
        if self.reported.is_terminal() || state <= self.reported {
            return;
        }
        self.reported = state;
        tracing::debug!(task = %self.id, ?state, message, "task state");
        let mut status = TaskStatus {
            state: state as i32,
            timestamp: now_ms(),
            message: message.into(),
            container_id: self.id.clone(),
            ..Default::default()
        };
        fill(&mut status);
        self.last_status = Some(status.clone());
        let _ = self.executor.inner.updates.send(TaskStatusUpdate {
            task_id: self.id.clone(),
            status: Some(status),
        });
    }

    /// Blue-green: the result of the task's verification, added to its RUNNING status.
    fn report_verify(&mut self, passed: bool, output: String) {
        self.report_running(|s| {
            s.verify = if passed { "passed" } else { "failed" }.into();
            s.verify_output = output;
        });
    }

    /// The task turned unhealthy: said at once, while it still runs, so that the manager can
    /// act (a blue-green switch back) before the task is stopped.
    fn report_unhealthy(&mut self, output: &str) {
        self.report_running(|s| {
            s.health = health::HealthState::Unhealthy.as_str().into();
            s.health_output = output.to_string();
            s.timestamp = now_ms();
        });
    }

    /// A change to the RUNNING status already reported.
    fn report_running(&mut self, change: impl FnOnce(&mut TaskStatus)) {
        let Some(mut status) = self.last_status.clone() else {
            return;
        };
        if self.reported != TaskState::Running {
            return;
        }
        change(&mut status);
        self.last_status = Some(status.clone());
        let _ = self.executor.inner.updates.send(TaskStatusUpdate {
            task_id: self.id.clone(),
            status: Some(status),
        });
    }

    fn report_exit(&mut self, exit: &ExitStatus, stopped: bool) {
        let code = exit.code;
        let (state, message, error) = if stopped {
            (TaskState::Shutdown, "shutdown".to_string(), String::new())
        } else if exit.oom_killed {
            (TaskState::Failed, "failed".into(), "OOMKilled".into())
        } else if code == 0 {
            (TaskState::Complete, "finished".into(), String::new())
        } else {
            (
                TaskState::Failed,
                "failed".into(),
                format!("task: non-zero exit ({code})"),
            )
        };
        self.report(state, &message, |s| {
            s.exit_code = Some(code);
            s.error = error;
        });
    }

    async fn run(mut self, mut rx: watch::Receiver<Option<Task>>) {
        let runtime = self.executor.inner.runtime.clone();
        let existing = runtime.state(&self.id).ok().map(|c| c.status);
        let interrupted = matches!(existing, Some(ContainerStatus::Created));
        match existing {
            Some(ContainerStatus::Running { pid }) => {
                let task = rx.borrow().clone();
                // A joiner whose namespace's owner stopped while the daemon was down: stopped
                // now (it fails below, saying why), not adopted.
                let orphaned = self
                    .executor
                    .inner
                    .networks
                    .stop_if_orphaned(&self.id)
                    .await;
                if let Some(task) = task.filter(|_| !orphaned) {
                    self.go_live(&task, pid, "running (adopted)", None).await;
                }
            }
            Some(ContainerStatus::Exited(exit)) => self.report_exit(&exit, false),
            Some(ContainerStatus::Created) | None => {
                if interrupted {
                    // A start the daemon did not live to finish: begin again from scratch.
                    self.executor.remove_container(&self.id).await;
                }
                if wanted(&rx) == Some(TaskState::Running) {
                    self.start(&rx).await;
                } else {
                    self.report(TaskState::Shutdown, "shutdown before start", |_| {});
                }
            }
        }
        // While the container runs: wait for its exit or for the manager to want it stopped,
        // and probe its health if it has a healthcheck.
        if !self.reported.is_terminal() {
            let task = rx.borrow().clone();
            let probe = task
                .as_ref()
                .and_then(|t| health::probe_of(t).ok().flatten());
            let started = tokio::time::Instant::now();
            let mut health = health::Health::default();
            let mut unhealthy = None;
            // The task as last assigned (its drain period is stamped when it is stopped).
            let mut latest = task.clone();
            // Blue-green verification: run once, while the running task is held out of
            // rotation (its result may have been reported before a daemon restart).
            let verify_probe = task.as_ref().and_then(health::verify_probe_of);
            let mut verified = task
                .as_ref()
                .and_then(|t| t.status.as_ref())
                .is_some_and(|s| !s.verify.is_empty());
            let mut verifying: Option<Verification> = None;
            // The manager stopped an unhealthy task it was told about (see below).
            let mut handed_off = false;
            let mut ingress_applied = self.executor.inner.networks.ports().ingress_applied();
            // Applied since it went live, maybe: looked at once at the start.
            ingress_applied.mark_changed();
            let stopped = loop {
                if let Some(t) = rx.borrow().as_ref() {
                    latest = Some(t.clone());
                }
                if wanted(&rx) != Some(TaskState::Running) {
                    break true;
                }
                let held = latest.as_ref().is_some_and(|t| t.out_of_rotation);
                if let Some(p) = verify_probe
                    .as_ref()
                    .filter(|_| !verified && verifying.is_none() && held)
                    .filter(|_| self.reported == TaskState::Running)
                {
                    let (runtime, id, p) = (runtime.clone(), self.id.clone(), p.clone());
                    verifying = Some(Box::pin(async move {
                        health::run_probe(&runtime, &id, &p).await
                    }));
                }
                let delay = probe
                    .as_ref()
                    .map(|p| health.next_delay(started.elapsed(), p))
                    .unwrap_or(Duration::MAX);
                tokio::select! {
                    _ = runtime.wait(&self.id) => break false,
                    changed = rx.changed() => if changed.is_err() { break true },
                    applied = ingress_applied.changed(), if self.ingress_pending => {
                        match (applied, latest.as_ref()) {
                            (Ok(()), Some(task)) => self.report_ingress(task),
                            _ => self.ingress_pending = false,
                        }
                    }
                    (passed, output) = async {
                        match verifying.as_mut() {
                            Some(v) => v.await,
                            None => std::future::pending().await,
                        }
                    }, if verifying.is_some() => {
                        verifying = None;
                        verified = true;
                        self.report_verify(passed, output);
                    }
                    _ = tokio::time::sleep(delay), if probe.is_some() => {
                        let Some(p) = probe.as_ref() else { continue };
                        let (ok, output) = health::run_probe(&runtime, &self.id, p).await;
                        match health.record(ok, started.elapsed(), p) {
                            health::HealthState::Healthy
                                if self.reported < TaskState::Running =>
                            {
                                if let Some(task) = task.as_ref() {
                                    let pid = self.pid;
                                    self.go_live(task, pid, "started (healthy)", Some(output))
                                        .await;
                                }
                            }
                            health::HealthState::Unhealthy => {
                                self.report_unhealthy(&output);
                                unhealthy = Some(output);
                                // A blue-green standby of the service is held here: the
                                // manager decides where the traffic goes (back to blue, and
                                // this task stopped, in one step); until then, or for
                                // UNHEALTHY_HANDOFF at most, the task keeps serving.
                                let standby = task.as_ref().is_some_and(|t| {
                                    self.executor.inner.networks.has_standby(&t.id, &t.service_id)
                                });
                                if standby {
                                    let deadline = tokio::time::sleep(UNHEALTHY_HANDOFF);
                                    tokio::pin!(deadline);
                                    while wanted(&rx) == Some(TaskState::Running) {
                                        tokio::select! {
                                            _ = &mut deadline => break,
                                            _ = runtime.wait(&self.id) => break,
                                            changed = rx.changed() => if changed.is_err() { break },
                                        }
                                    }
                                    handed_off = wanted(&rx) != Some(TaskState::Running);
                                }
                                break true;
                            }
                            _ => {}
                        }
                    }
                }
            };
            // Out of rotation first (DNS, published ports), then drained, then stopped: no
            // new client is sent to a dying task, and the requests it has get time to finish.
            // A task that never served (or left long ago: blue kept after a switch) stops at
            // once; one that served waits out its drain period from the moment it left, or
            // less once nobody is served by it any more (see `drain`).
            let left = self.executor.inner.networks.withdraw(&self.id).await;
            if let Some(left) = left.filter(|_| stopped && (unhealthy.is_none() || handed_off)) {
                let drain = latest
                    .as_ref()
                    .map(Task::drain_period_ms)
                    .unwrap_or(shoal_proto::DEFAULT_DRAIN_MS);
                let until = left + Duration::from_millis(drain);
                let networks = &self.executor.inner.networks;
                tokio::select! {
                    _ = runtime.wait(&self.id) => {}
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = networks.idle_after(&self.id, self.pid, left), if self.pid > 0 => {}
                }
            }
            if stopped {
                let grace = rx
                    .borrow()
                    .as_ref()
                    .map(stop_grace)
                    .unwrap_or(DEFAULT_STOP_GRACE);
                if let Err(e) = runtime.stop(&self.id, grace).await {
                    tracing::warn!(task = %self.id, "stop failed: {e}");
                }
            }
            let lost = self.executor.inner.networks.lost_network(&self.id);
            match (runtime.wait(&self.id).await, unhealthy) {
                (Ok(exit), _) if lost.is_some() && !stopped => {
                    self.report(TaskState::Failed, "failed", |s| {
                        s.exit_code = Some(exit.code);
                        s.error = format!("task: {}", lost.unwrap_or_default());
                    })
                }
                (Ok(exit), Some(output)) => self.report(TaskState::Failed, "failed", |s| {
                    s.exit_code = Some(exit.code);
                    s.health = health::HealthState::Unhealthy.as_str().into();
                    s.error = format!("task: container unhealthy: {output}");
                    s.health_output = output;
                }),
                (Ok(exit), None) => self.report_exit(&exit, stopped),
                (Err(e), _) => {
                    self.report(TaskState::Failed, "failed", |s| s.error = e.to_string())
                }
            }
            // An exited container keeps its logs and volumes, not its addresses (as Docker).
            self.executor.inner.networks.release(&self.id).await;
        }
        // Keep the exited container (and its logs) while the task is history; remove it when
        // the task is removed or forgotten.
        while !matches!(wanted(&rx), None | Some(TaskState::Remove)) {
            if rx.changed().await.is_err() {
                break;
            }
        }
        self.executor.remove_container(&self.id).await;
        let mut workers = lock(&self.executor.inner.workers);
        if workers
            .get(&self.id)
            .is_some_and(|tx| rx.same_channel(&tx.subscribe()))
        {
            workers.remove(&self.id);
        }
    }

    /// accepted → preparing → ready → starting → running, or rejected/failed with the reason.
    async fn start(&mut self, rx: &watch::Receiver<Option<Task>>) {
        let Some(task) = rx.borrow().clone() else {
            return;
        };
        self.report(TaskState::Accepted, "accepted", |_| {});
        // The image as the manager pinned it, so that every node runs the same bytes.
        let image_ref = task
            .spec
            .as_ref()
            .and_then(|s| s.container.as_ref())
            .map(|c| crate::image::peer::pinned_reference(&c.image, &c.image_digest))
            .unwrap_or_default();
        let store = self.executor.inner.images.clone();
        let resolve = |image_ref: &str| {
            let (images, image_ref) = (store.clone(), image_ref.to_string());
            tokio::task::spawn_blocking(move || images.resolve(&image_ref))
        };
        let mut resolved = resolve(&image_ref).await;
        // An image the node lacks is fetched now, as the task's preparing step: from another
        // node, else from its registry.
        let registry = self.executor.inner.registry.get().cloned();
        let peers = self.executor.inner.peers.get().cloned();
        match &resolved {
            Ok(Err(crate::image::ImageError::NotFound { .. }))
                if registry.is_some() || peers.is_some() =>
            {
                let message = format!("fetching image {image_ref}");
                self.report(TaskState::Preparing, &message, |_| {});
                match fetch::fetch_missing(&image_ref, peers.as_ref(), registry.as_ref()).await {
                    Ok(fetch::Fetched::Image(id)) => resolved = resolve(&id).await,
                    Ok(fetch::Fetched::Pulled) => resolved = resolve(&image_ref).await,
                    Err(e) => return self.reject(&e),
                }
            }
            _ => self.report(TaskState::Preparing, "preparing", |_| {}),
        }
        let resolved = match resolved {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return self.reject(&e.to_string()),
            Err(e) => return self.reject(&format!("image lookup crashed: {e}")),
        };
        let image_config = resolved.image.config.clone().unwrap_or_default();
        let mut config = match container_config(&task, &image_config, resolved.layer_dirs) {
            Ok(c) => c,
            Err(e) => return self.reject(&e),
        };
        let executor = self.executor.clone();
        let (volumes, for_mounts) = (executor.inner.volumes.clone(), task.clone());
        let mounted = tokio::task::spawn_blocking(move || mounts::prepare(&volumes, &for_mounts))
            .await
            .unwrap_or_else(|e| Err(format!("preparing mounts crashed: {e}")));
        match mounted {
            Ok(m) => {
                config.mounts = m.mounts;
                config.tmpfs.extend(m.tmpfs);
            }
            Err(e) => return self.reject(&e),
        }
        let known_secrets = lock(&executor.inner.known_secrets).clone();
        match secrets::prepare(&executor.inner.secrets_root, &task, &known_secrets) {
            Ok(files) => config.mounts.extend(files),
            Err(e) => {
                executor.release_resources(&self.id).await;
                return self.reject(&e);
            }
        }
        let known = lock(&executor.inner.known_networks).clone();
        let networks = executor.inner.networks.clone();
        let prepared = match networks.prepare(&task, &known).await {
            Ok(p) => p,
            Err(e) => {
                executor.release_resources(&self.id).await;
                return self.reject(&e);
            }
        };
        if let Err(e) = apply_network(&mut config, &task, &prepared) {
            executor.release_resources(&self.id).await;
            return self.reject(&e);
        }
        self.report(TaskState::Ready, "ready", |_| {});
        if wanted(rx) != Some(TaskState::Running) {
            executor.release_resources(&self.id).await;
            return self.report(TaskState::Shutdown, "shutdown before start", |_| {});
        }
        self.report(TaskState::Starting, "starting", |_| {});
        lock(&self.executor.inner.containers).insert(self.id.clone());
        match self.executor.inner.runtime.create_and_start(config).await {
            Ok(state) => {
                self.pid = match state.status {
                    ContainerStatus::Running { pid } => pid,
                    ContainerStatus::Exited(_) | ContainerStatus::Created => 0,
                };
                // With a healthcheck the task stays `starting` until its first healthy probe.
                if !matches!(health::probe_of(&task), Ok(Some(_))) {
                    let pid = self.pid;
                    wait_for_listeners(&task, pid).await;
                    self.go_live(&task, pid, "started", None).await;
                }
            }
            Err(e) => {
                lock(&self.executor.inner.containers).remove(&self.id);
                executor.release_resources(&self.id).await;
                self.report(TaskState::Failed, "starting container failed", |s| {
                    s.error = e.to_string()
                });
            }
        }
    }

    /// The task runs (and is healthy): it joins DNS and its published ports, and says so.
    async fn go_live(&mut self, task: &Task, pid: i32, message: &str, health: Option<String>) {
        let networks = self.executor.inner.networks.clone();
        // Its status names its ingress ports: wait (briefly) for the assignment that made
        // them; if it comes later, the ports are reported then (see `report_ingress`).
        let mut applied = networks.ports().ingress_applied();
        let ready = applied.wait_for(|_| networks.ports().ingress_ready(task));
        self.ingress_pending =
            !matches!(tokio::time::timeout(INGRESS_WAIT, ready).await, Ok(Ok(_)));
        let ports = networks.announce(task, &container_name(task)).await;
        let addresses = task_addresses(&networks.manager().read_attachments(&self.id).await);
        self.report(TaskState::Running, message, |s| {
            s.pid = pid as u32;
            s.addresses = addresses;
            s.ports = ports;
            if let Some(output) = health {
                s.health = health::HealthState::Healthy.as_str().into();
                s.health_output = output;
            }
        });
    }

    /// The task's ingress ports, applied here after it went live, added to its RUNNING status.
    fn report_ingress(&mut self, task: &Task) {
        let Some(reported) = self.last_status.as_ref().map(|s| s.ports.clone()) else {
            return;
        };
        let ports = self.executor.inner.networks.ports();
        if let Some(resolved) = ports.resolve_ingress(task, &reported) {
            self.ingress_pending = false;
            self.report_running(|s| s.ports = resolved);
        }
    }

    fn reject(&mut self, error: &str) {
        self.report(TaskState::Rejected, "rejected", |s| s.error = error.into());
    }
}

/// How long a task going live waits for its service's ingress ports to be applied here.
const INGRESS_WAIT: Duration = Duration::from_secs(2);

/// How long a started task without a healthcheck may take to listen on its published TCP
/// ports before it joins their backends anyway.
const LISTEN_WAIT: Duration = Duration::from_secs(2);

/// Waits (within [`LISTEN_WAIT`]) until the task's process listens on every TCP port it
/// publishes: a backend added before its server has bound would refuse the connections sent
/// to it, which a rolling update under load would see as failed requests.
async fn wait_for_listeners(task: &Task, pid: i32) {
    let ports: Vec<u16> = task
        .spec
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .map(|e| e.ports.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|p| p.protocol() == shoal_proto::PortProtocol::Tcp)
        .filter_map(|p| u16::try_from(p.target_port).ok())
        .filter(|p| *p != 0)
        .collect();
    if ports.is_empty() || pid <= 0 {
        return;
    }
    let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
    loop {
        let ports = ports.clone();
        let listening = tokio::task::spawn_blocking(move || drain::listening_in(pid, &ports))
            .await
            .ok()
            .flatten();
        // Unreadable tables (the process is gone): nothing to wait for.
        if listening != Some(false) || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
