//! Swarm's replicated orchestrator, with its restart supervisor, as one pure function.
//!
//! A replicated service with `replicas: n` owns slots `1..=n`. A slot's *current* task is its
//! task desired RUNNING; older tasks of the slot are its history. [`reconcile`] compares the
//! service with its tasks and returns the [`Plan`] that moves one towards the other:
//!
//! | situation | action |
//! |---|---|
//! | slot has several tasks desired RUNNING | keep the newest, the others → SHUTDOWN (start-first: an older RUNNING one stays until the newest runs) |
//! | slot has no task desired RUNNING | create one, unless the restart policy says wait or never |
//! | current task ended (terminal status) | → SHUTDOWN; restart by policy ([`restart`]) |
//! | current task's node is DOWN or gone | → SHUTDOWN and a replacement now, no delay |
//! | current task's spec is outdated | [`update::plan_update`] picks the slots to replace (rolling update) and sets the service's update status |
//! | slot > replicas (scale down) | running → SHUTDOWN (highest slots first), ended → deleted |
//! | service removed | running → REMOVE, ended → deleted |
//! | slot history beyond the limit | oldest ended tasks deleted |
//!
//! # Choices worth knowing
//!
//! - *Newest* means the latest `meta.created_at` (the store stamps it once, at creation), then
//!   the greater id, so the order is total and stable across calls.
//! - A slot without a running task whose newest task ended is evaluated by the restart policy
//!   every time, with the same answer: that is how "ended by policy" (settled, not recreated)
//!   is told apart from "missing". A slot whose newest task is still running down (desired
//!   SHUTDOWN after a scale down, then scaled up again) is missing: it gets a new task.
//! - A slot whose newest task ended but was made from an outdated spec gets a new task at
//!   once, whatever the policy: a service update re-runs ended one-shot tasks, as
//!   `docker service update` does.
//! - Ended tasks that would be deleted on the very next call (tasks of removed services and of
//!   slots beyond the replica count) are deleted at once rather than first marked REMOVE or
//!   SHUTDOWN: one plan, not two, and the plan stays idempotent.
//! - History trimming looks at the slot as the plan leaves it (the new task counts as one of
//!   the five), so trimming is itself idempotent.
//! - A spec without a mode is replicated with one replica (Docker's default); global services
//!   are left alone: another orchestrator will own them.

use std::collections::{BTreeMap, HashMap, HashSet};

use shoal_proto::{
    service_spec::Mode, Node, NodeAvailability, NodeState, Service, SharedSpec, Task, TaskState,
    TaskStatus,
};

use super::restart::{self, Restart};
use super::update::{self, SlotView};

/// The most slots one reconcile of a replicated service adds beyond its highest slot with a
/// task (a scale-up from 0 to 100,000 takes five passes).
pub const MAX_NEW_SLOTS: u64 = 20_000;

/// What one reconcile pass wants written to the store. Apply it atomically (one Raft entry):
/// the caller does compare-and-set on each updated task's `meta.version`, as read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// New tasks: desired RUNNING, status PENDING, no node, `meta` unset (the store stamps it).
    pub create: Vec<Task>,
    /// Existing tasks with a changed desired state, as read except for that change.
    pub update: Vec<Task>,
    /// Ids of tasks to delete: trimmed history, ended tasks of removed slots and services.
    pub delete: Vec<String>,
    /// Services rewritten by a rollout: a new update status, or an automatic rollback's
    /// spec swap. Compare-and-set on `meta.version`, as read.
    pub services: Vec<Service>,
    /// The earliest time the plan would change by itself (a restart delay expiring): call
    /// again then, even if the store did not change.
    pub wake_at: Option<i64>,
}

impl Plan {
    /// Nothing to write (a pending `wake_at` does not count: it is not a change).
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.update.is_empty()
            && self.delete.is_empty()
            && self.services.is_empty()
    }

    /// Appends another service's plan to this one.
    pub fn merge(&mut self, other: Plan) {
        self.create.extend(other.create);
        self.update.extend(other.update);
        self.delete.extend(other.delete);
        self.services.extend(other.services);
        self.wake(other.wake_at);
    }

    pub(super) fn wake(&mut self, at: Option<i64>) {
        self.wake_at = match (self.wake_at, at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// One service's view of the world.
#[derive(Debug, Clone, Copy)]
pub struct ReconcileInput<'a> {
    /// `None`: the service was removed; its tasks are torn down.
    pub service: Option<&'a Service>,
    pub service_id: &'a str,
    /// This service's tasks (tasks of other services are ignored).
    pub tasks: &'a [Task],
    /// Every node: a task on a node that is DOWN or not listed is rescheduled.
    pub nodes: &'a [Node],
    /// Unix ms.
    pub now: i64,
}

/// Reconciles one service. `new_id` names created tasks (injected so tests are deterministic).
pub fn reconcile(input: &ReconcileInput, new_id: &mut dyn FnMut() -> String) -> Plan {
    let nodes: Vec<&Node> = input.nodes.iter().collect();
    let nodes = Nodes::new(&nodes);
    let tasks: Vec<&Task> = input
        .tasks
        .iter()
        .filter(|t| t.service_id == input.service_id)
        .collect();
    reconcile_service(
        input.service,
        input.service_id,
        &tasks,
        &nodes,
        input.now,
        new_id,
    )
}

/// Reconciles every service, and tears down tasks whose service no longer exists. The merged
/// plan lists services in id order, then the removed ones.
pub fn reconcile_all(
    services: &[Service],
    tasks: &[Task],
    nodes: &[Node],
    now: i64,
    new_id: &mut dyn FnMut() -> String,
) -> Plan {
    let nodes: Vec<&Node> = nodes.iter().collect();
    reconcile_all_refs(services.iter(), tasks.iter(), &nodes, now, new_id)
}

/// [`reconcile_all`] over borrowed services, tasks and nodes: the leader calls it on the store
/// as it stands, without copying anything first.
pub fn reconcile_all_refs<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    tasks: impl IntoIterator<Item = &'a Task>,
    nodes: &[&Node],
    now: i64,
    new_id: &mut dyn FnMut() -> String,
) -> Plan {
    let nodes = Nodes::new(nodes);
    let mut by_service: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for task in tasks {
        by_service
            .entry(task.service_id.as_str())
            .or_default()
            .push(task);
    }
    let services: BTreeMap<&str, &Service> =
        services.into_iter().map(|s| (s.id.as_str(), s)).collect();
    let by_name: HashMap<&str, &Service> = services
        .values()
        .filter_map(|s| Some((s.spec.as_ref()?.name.as_str(), *s)))
        .collect();
    let tasks_of: HashMap<&str, Vec<&Task>> = by_service
        .iter()
        .map(|(id, tasks)| (*id, tasks.clone()))
        .collect();

    let mut plan = Plan::default();
    for (id, service) in &services {
        let tasks = by_service.remove(id).unwrap_or_default();
        if tasks.is_empty() && super::depends::waiting_for(service, &by_name, &tasks_of).is_some() {
            continue; // depends_on: not yet
        }
        plan.merge(reconcile_service(
            Some(service),
            id,
            &tasks,
            &nodes,
            now,
            new_id,
        ));
    }
    for (id, tasks) in by_service {
        plan.merge(reconcile_service(None, id, &tasks, &nodes, now, new_id));
    }
    plan
}

/// Node states by id, built once per call.
pub(super) struct Nodes<'a> {
    state: HashMap<&'a str, NodeState>,
    /// Every node, for the placement constraints of global services.
    by_id: HashMap<&'a str, &'a Node>,
    /// Nodes a global service runs on: READY and ACTIVE, in id order.
    global_targets: Vec<&'a str>,
    /// Nodes that keep the tasks they have but get no new ones (PAUSE).
    paused: HashSet<&'a str>,
    /// Nodes whose tasks move elsewhere (DRAIN).
    drained: HashSet<&'a str>,
}

impl<'a> Nodes<'a> {
    pub(super) fn new(nodes: &[&'a Node]) -> Nodes<'a> {
        let state_of = |n: &Node| {
            n.status
                .as_ref()
                .map(|s| s.state())
                .unwrap_or(NodeState::Unknown)
        };
        let state = nodes.iter().map(|n| (n.id.as_str(), state_of(n))).collect();
        let mut global_targets: Vec<&str> = nodes
            .iter()
            .filter(|n| {
                state_of(n) == NodeState::Ready && n.availability() == NodeAvailability::Active
            })
            .map(|n| n.id.as_str())
            .collect();
        global_targets.sort_unstable();
        let with = |a: NodeAvailability| {
            nodes
                .iter()
                .filter(|n| n.availability() == a)
                .map(|n| n.id.as_str())
                .collect()
        };
        Nodes {
            state,
            by_id: nodes.iter().map(|n| (n.id.as_str(), *n)).collect(),
            global_targets,
            paused: with(NodeAvailability::Pause),
            drained: with(NodeAvailability::Drain),
        }
    }

    /// The task's node is gone for good: DOWN, or removed from the cluster. UNKNOWN and
    /// DISCONNECTED are not: after a leader change every node is UNKNOWN for a moment, and
    /// rescheduling the whole cluster then would be a disaster.
    pub(super) fn is_lost(&self, node_id: &str) -> bool {
        !node_id.is_empty()
            && self
                .state
                .get(node_id)
                .is_none_or(|s| *s == NodeState::Down)
    }

    /// The operator drained the node: its tasks are replaced elsewhere, like a lost node's.
    pub(super) fn is_drained(&self, node_id: &str) -> bool {
        self.drained.contains(node_id)
    }

    pub(super) fn global_targets(&self) -> &[&'a str] {
        &self.global_targets
    }

    /// The task's node no longer satisfies the task's own placement constraints (a label
    /// was removed or changed): Swarm's constraint enforcer replaces such a task elsewhere,
    /// like a drained node's. A placement that does not parse enforces nothing here.
    pub(super) fn violates_constraints(&self, task: &Task) -> bool {
        let Some(placement) = task.spec.as_ref().and_then(|s| s.placement.as_ref()) else {
            return false;
        };
        if placement.constraints.is_empty() {
            return false;
        }
        let Some(node) = self.get(&task.node_id) else {
            return false; // a removed node is `is_lost`
        };
        crate::scheduler::constraint::Rules::parse(Some(placement))
            .is_ok_and(|rules| !rules.admits(node))
    }

    /// The node with this id, if it is in the cluster.
    pub(super) fn get(&self, node_id: &str) -> Option<&'a Node> {
        self.by_id.get(node_id).copied()
    }

    pub(super) fn is_paused(&self, node_id: &str) -> bool {
        self.paused.contains(node_id)
    }
}

pub(super) fn status_state(task: &Task) -> TaskState {
    task.status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(TaskState::New)
}

pub(super) fn is_terminal(task: &Task) -> bool {
    status_state(task).is_terminal()
}

/// Newest first: latest creation, then the greater id.
pub(super) fn newest_first(tasks: &mut [&Task]) {
    let created = |t: &Task| t.meta.as_ref().map(|m| m.created_at).unwrap_or(0);
    tasks.sort_by(|a, b| (created(b), b.id.as_str()).cmp(&(created(a), a.id.as_str())));
}

/// Replica count, or `None` for a mode this orchestrator does not own.
pub(super) fn replicas(service: &Service) -> Option<u64> {
    match service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
        Some(Mode::Replicated(r)) => Some(r.replicas),
        Some(Mode::Global(_)) => None,
        None => Some(1),
    }
}

/// A slot in `1..=replicas` as the plan is being built.
pub(super) struct SlotWork<'a> {
    pub(super) slot: u64,
    /// The node a new task goes to: set for global services, empty for the scheduler to pick.
    pub(super) node_id: &'a str,
    /// Newest first.
    pub(super) tasks: Vec<&'a Task>,
    /// The desired state each task will have, parallel to `tasks`.
    pub(super) desired: Vec<TaskState>,
    /// Index of the current task: desired RUNNING, not ended, on a live node.
    pub(super) current: Option<usize>,
    /// Index of the current task, once it is known to be healthy but outdated.
    pub(super) dirty: Option<usize>,
    /// A new task is created for this slot.
    pub(super) create: bool,
}

/// What a slot needs, before the update step has its say.
enum Need {
    Nothing,
    Create,
    Wait(i64),
}

fn reconcile_service(
    service: Option<&Service>,
    service_id: &str,
    tasks: &[&Task],
    nodes: &Nodes,
    now: i64,
    new_id: &mut dyn FnMut() -> String,
) -> Plan {
    let Some(service) = service else {
        return remove_all(tasks);
    };
    if super::bluegreen::applies(service, tasks, nodes) {
        return super::bluegreen::reconcile(service, service_id, tasks, nodes, now, new_id);
    }
    reconcile_mode(service, service_id, tasks, nodes, now, new_id)
}

/// The replicated or global orchestrator, as the service's mode says.
pub(super) fn reconcile_mode(
    service: &Service,
    service_id: &str,
    tasks: &[&Task],
    nodes: &Nodes,
    now: i64,
    new_id: &mut dyn FnMut() -> String,
) -> Plan {
    let Some(replicas) = replicas(service) else {
        return super::global::reconcile_global(service, service_id, tasks, nodes, now, new_id);
    };

    let mut by_slot: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
    for &task in tasks {
        by_slot.entry(task.slot).or_default().push(task);
    }
    let limit = restart::history_limit(service.spec.as_ref().and_then(|s| s.restart.as_ref()));

    let mut plan = Plan::default();
    // A large scale-up is created in steps: slots up to MAX_NEW_SLOTS past the highest that
    // has a task, so that no plan holds a copy of the spec for every new replica at once.
    // The slots past that have no task yet; the next call (woken by these creates) goes on.
    let highest = by_slot.keys().next_back().copied().unwrap_or(0);
    let upto = replicas.min(highest.saturating_add(MAX_NEW_SLOTS));
    let slots = (1..=upto)
        .map(|slot| (slot, "", by_slot.remove(&slot).unwrap_or_default()))
        .collect();
    let works = assess_slots(slots, service, nodes, limit, now, &mut plan);

    for work in &works {
        emit_slot(work, service, service_id, limit, now, new_id, &mut plan);
    }

    // Slots beyond the replica count (and slot 0, which a replicated task never has),
    // highest first, so a scale down stops the newest replicas first, as Swarm does.
    for (_, mut tasks) in by_slot.into_iter().rev() {
        newest_first(&mut tasks);
        for task in tasks {
            if is_terminal(task) {
                plan.delete.push(task.id.clone());
            } else if task.desired_state() == TaskState::Running {
                plan.update.push(with_desired(task, TaskState::Shutdown));
            }
        }
    }
    stamp_drain(&mut plan, service);
    plan
}

/// Every task the plan stops gets the service's drain period (see [`update::drain_of`]).
pub(super) fn stamp_drain(plan: &mut Plan, service: &Service) {
    let drain = update::drain_of(service);
    for task in &mut plan.update {
        if task.desired_state() != TaskState::Running && task.drain_ms.is_none() {
            task.drain_ms = Some(drain);
        }
    }
}

/// Phases one and two for a service's slots, given as (slot, node for new tasks, tasks):
/// judge each slot, then let the update step choose which outdated tasks to replace now
/// (and rewrite the service's update status, or roll it back).
pub(super) fn assess_slots<'a>(
    slots: Vec<(u64, &'a str, Vec<&'a Task>)>,
    service: &Service,
    nodes: &Nodes,
    limit: usize,
    now: i64,
    plan: &mut Plan,
) -> Vec<SlotWork<'a>> {
    let start_first = update::starts_first(service);
    let mut works: Vec<SlotWork> = Vec::with_capacity(slots.len());
    for (slot, node_id, mut tasks) in slots {
        newest_first(&mut tasks);
        let mut work = SlotWork {
            slot,
            node_id,
            desired: tasks.iter().map(|t| t.desired_state()).collect(),
            tasks,
            current: None,
            dirty: None,
            create: false,
        };
        match assess(&mut work, service, nodes, limit, now, start_first) {
            Need::Nothing => {}
            Need::Create => work.create = true,
            Need::Wait(at) => plan.wake(Some(at)),
        }
        works.push(work);
    }
    let views: Vec<SlotView> = works
        .iter()
        .map(|w| SlotView {
            current: w.current.map(|i| w.tasks[i]),
            dirty: w.dirty.is_some(),
            refilled: w.create,
        })
        .collect();
    let history: Vec<&Task> = works.iter().flat_map(|w| w.tasks.iter().copied()).collect();
    let step = update::plan_update(service, &views, &history, now);
    plan.wake(step.wake_at);
    if step.changes_spec(service) {
        // An automatic rollback: the next pass plans from the restored spec.
        for work in &mut works {
            work.create = false;
        }
    }
    for index in step.replace {
        if let Some(work) = works.get_mut(index) {
            if let Some(i) = work.dirty.take() {
                // Start-first keeps the old task beside its replacement, if it runs (the rule
                // in `assess` that the next pass applies).
                if !start_first || status_state(work.tasks[i]) != TaskState::Running {
                    work.desired[i] = TaskState::Shutdown;
                }
                work.create = true;
            }
        }
    }
    plan.services.extend(step.service);
    works
}

/// Phase one for a slot in range: fixes its current task and says what the slot needs.
fn assess(
    work: &mut SlotWork,
    service: &Service,
    nodes: &Nodes,
    limit: usize,
    now: i64,
    start_first: bool,
) -> Need {
    // At most one current task: the newest desired RUNNING. Start-first: a task that ended
    // while wanted gives way to an older one still running (the replacement failed; the old
    // task goes on), and the newest older RUNNING task stays beside a current task that is
    // not RUNNING yet (it is shut down once its replacement runs).
    let mut current = None;
    let mut predecessor = false;
    for i in 0..work.tasks.len() {
        if work.desired[i] != TaskState::Running {
            continue;
        }
        let task = work.tasks[i];
        match current {
            None if start_first && is_terminal(task) => work.desired[i] = TaskState::Shutdown,
            None => current = Some(i),
            Some(c)
                if start_first
                    && !predecessor
                    && status_state(work.tasks[c]) < TaskState::Running
                    && status_state(task) == TaskState::Running
                    && !nodes.is_lost(&task.node_id)
                    && !nodes.is_drained(&task.node_id) =>
            {
                predecessor = true;
            }
            Some(_) => work.desired[i] = TaskState::Shutdown,
        }
    }

    if let Some(i) = current {
        let task = work.tasks[i];
        if is_terminal(task) {
            // It ended while wanted: stop it, then the slot is judged like any slot without a
            // running task (below), which is also what the next call will see.
            work.desired[i] = TaskState::Shutdown;
        } else if nodes.is_lost(&task.node_id)
            || nodes.is_drained(&task.node_id)
            || nodes.violates_constraints(task)
        {
            // Swarm reschedules at once when a node fails, is drained or stops satisfying the
            // task's constraints; the old task's status stays as reported (a lost node's agent
            // is gone; the others stop it).
            work.desired[i] = TaskState::Shutdown;
            return Need::Create;
        } else if update::is_dirty(task, service) {
            work.current = Some(i);
            work.dirty = Some(i);
            return Need::Nothing;
        } else {
            work.current = Some(i);
            return Need::Nothing;
        }
    }

    let Some(&newest) = work.tasks.first() else {
        return Need::Create;
    };
    if !is_terminal(newest) || update::is_dirty(newest, service) {
        return Need::Create;
    }
    match restart::decide(&work.tasks, limit, now) {
        Restart::Now => Need::Create,
        Restart::At(at) => Need::Wait(at),
        Restart::Never => Need::Nothing,
    }
}

/// Phase three for a slot in range: writes its creates, updates and trimmed history.
pub(super) fn emit_slot(
    work: &SlotWork,
    service: &Service,
    service_id: &str,
    limit: usize,
    now: i64,
    new_id: &mut dyn FnMut() -> String,
    plan: &mut Plan,
) {
    let created = usize::from(work.create);
    if work.create {
        // The creates of one service share its spec (one copy per plan, not per task).
        let version = service.meta.as_ref().map(|m| m.version).unwrap_or(0);
        let spec = match plan.create.last() {
            Some(t) if t.service_id == service_id && t.spec_version == version => t.spec.clone(),
            _ => service.spec.clone().map(SharedSpec::new),
        };
        plan.create
            .push(new_task(service, service_id, spec, work, now, new_id()));
    }
    for (i, (&task, &desired)) in work.tasks.iter().zip(&work.desired).enumerate() {
        // Position in the slot as the plan leaves it: the new task is the newest.
        let position = created + i;
        if position >= limit && is_terminal(task) && desired != TaskState::Running {
            plan.delete.push(task.id.clone());
        } else if desired != task.desired_state() {
            plan.update.push(with_desired(task, desired));
        }
    }
}

/// The service is gone: stop everything with REMOVE, delete what already ended.
pub(super) fn remove_all(tasks: &[&Task]) -> Plan {
    let mut tasks = tasks.to_vec();
    newest_first(&mut tasks);
    tasks.sort_by_key(|t| t.slot);
    let mut plan = Plan::default();
    for task in tasks {
        if is_terminal(task) {
            plan.delete.push(task.id.clone());
        } else if task.desired_state() != TaskState::Remove {
            // The service is gone: no other task takes its traffic over, so waiting gains
            // nothing. Its tasks stop at once (each with its stop grace period), as
            // `docker service rm` and `compose down` stop theirs.
            let mut removed = with_desired(task, TaskState::Remove);
            removed.drain_ms = Some(0);
            plan.update.push(removed);
        }
    }
    plan
}

pub(super) fn with_desired(task: &Task, desired: TaskState) -> Task {
    let mut task = task.clone();
    task.set_desired_state(desired);
    task
}

fn new_task(
    service: &Service,
    service_id: &str,
    spec: Option<SharedSpec>,
    work: &SlotWork,
    now: i64,
    id: String,
) -> Task {
    let mut status = TaskStatus {
        timestamp: now,
        message: "pending task scheduling".to_string(),
        ..Default::default()
    };
    status.set_state(TaskState::Pending);
    let mut task = Task {
        id,
        meta: None,
        service_id: service_id.to_string(),
        slot: work.slot,
        node_id: work.node_id.to_string(),
        spec,
        spec_version: service.meta.as_ref().map(|m| m.version).unwrap_or(0),
        desired_state: 0,
        status: Some(status),
        scheduling_error: String::new(),
        drain_ms: None,
        out_of_rotation: false,
        // Given when the task is placed (see `crate::ipam`).
        network_addresses: Vec::new(),
    };
    task.set_desired_state(TaskState::Running);
    task
}
