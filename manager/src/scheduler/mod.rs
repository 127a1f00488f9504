//! The scheduler: a pure function that places pending tasks on nodes.
//!
//! It reads a snapshot (every node, every task) and returns one [`Decision`] per task it could
//! place, or per task it could not place whose reason changed. A thin async loop elsewhere
//! reads the store, calls [`schedule`], and commits the decisions through Raft; because the
//! function has no I/O, clock or randomness, every manager would decide the same from the same
//! snapshot, and a crashed loop simply runs again.
//!
//! # Rules (Swarm's, in Swarm's order)
//!
//! 1. Which tasks: desired state RUNNING, status NEW or PENDING, no node yet. A pending task
//!    created with its node already set (a global service's) is only checked against that
//!    node's filters, first.
//! 2. Filters, per node, first failure wins (it is the one reported):
//!    status READY → availability ACTIVE → memory → CPU → placement constraints
//!    ([`constraint`]) → host-mode published ports → max replicas per node → the service whose
//!    network namespace the task shares (`network_mode: service:NAME`, compose's sidecar
//!    form): only a node with a non-terminal task of NAME (placed earlier in the same call
//!    included) will do, as the agent joins that task's container there.
//!    A reservation of 0 always fits; a node that reported no resources (0) fits only tasks
//!    that reserve nothing, as in Swarm.
//!    What a node has left is its reported resources minus the reservations of every
//!    non-terminal task on it (whatever its desired state: a task being stopped still holds
//!    its memory), including tasks placed earlier in the same call.
//!    A host-mode port (protocol, published port ≠ 0) held by a non-terminal task on a node
//!    cannot be given to a second task there. `max_replicas_per_node` counts the non-terminal
//!    tasks of the same service on the node, placed in this call included. Both are checked
//!    for a preassigned (global) task too, except the replica limit, which Swarm allows for
//!    replicated services only.
//! 3. Spread preferences (`--placement-pref spread=node.labels.zone`), outermost first: the
//!    nodes that pass the task-independent filters are grouped by the descriptor's value
//!    (nodes without it form a group of their own) and each task goes to the group holding
//!    the fewest non-terminal tasks of the service, so the tasks split evenly over the
//!    values, as in Swarm.
//! 4. Then least loaded: fewest non-terminal tasks on the node, then fewest tasks of the same
//!    service, then the smallest node id, so that the result never depends on input order.
//!
//! A task no node accepts gets `node_id: None` and an `error` that aggregates the reasons the
//! way Swarm prints them, in the filters' order: `no suitable node (insufficient memory on 2
//! nodes; scheduling constraints not satisfied on 1 node; 1 node not ready)`.
//! When that text equals the task's `scheduling_error` already, no decision is emitted: the
//! loop would otherwise rewrite the same value through Raft on every pass.
//!
//! # Cost
//!
//! Pending tasks are sorted and grouped by (service, reservations), and within that by what
//! they ask of a node beyond resources (placement and host-mode ports: one group unless a
//! rolling update is changing them). A group without spread preferences builds a heap of the
//! eligible nodes once; a node that fails a filter for the group's next task (room for the
//! reservation, constraints, host ports, replica limit) is dropped from the heap for the rest
//! of the group: within a group every one of those only gets worse. Each placement is then
//! O(log nodes), so 100k tasks of a few services on 1000 nodes cost
//! O(tasks · log nodes + groups · nodes · constraints), never O(tasks × nodes × tasks).
//!
//! A group with spread preferences scans every node for each of its tasks instead: O(tasks ·
//! nodes · preferences) for that group. Spreading is for fault domains (a few zones, tens of
//! replicas), not for 100k-task services; those take the heap path. (Not measured by
//! scheduler-bench, which places services without preferences.)

pub mod constraint;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use shoal_proto::{Node, NodeAvailability, NodeState, Placement, PublishMode, Task, TaskState};

use constraint::Attribute;

/// Where one task goes, or why it cannot go anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub task_id: String,
    /// `None`: no node accepted the task; see `error`.
    pub node_id: Option<String>,
    /// Empty when `node_id` is set.
    pub error: String,
}

/// Assigns every task that has desired_state RUNNING, status.state PENDING (or NEW) and an
/// empty node_id. `tasks` is every task in the store: the others count as load and
/// reservations on their nodes.
///
/// Decisions come in a deterministic order: by service and reservations, then by placement
/// and host-mode ports (in the order of their first task), then slot and task id.
pub fn schedule(nodes: &[Node], tasks: &[Task]) -> Vec<Decision> {
    let nodes: Vec<&Node> = nodes.iter().collect();
    let tasks: Vec<&Task> = tasks.iter().collect();
    schedule_refs(&nodes, &tasks)
}

/// [`schedule`] over borrowed nodes and tasks: the leader calls it on the store as it stands,
/// without copying anything first.
pub fn schedule_refs(nodes: &[&Node], tasks: &[&Task]) -> Vec<Decision> {
    let mut pending: Vec<&Task> = tasks.iter().copied().filter(|t| wants_node(t)).collect();
    // Tasks whose node is already chosen (a global service's) only need that node's consent.
    let mut preassigned: Vec<&Task> = tasks
        .iter()
        .copied()
        .filter(|t| awaits_node_check(t))
        .collect();
    if pending.is_empty() && preassigned.is_empty() {
        return Vec::new(); // the usual case: nothing to count the load for
    }
    let mut cluster = Cluster::new(nodes, tasks);

    pending.sort_by(|a, b| {
        (a.service_id.as_str(), reservation(a), a.slot, a.id.as_str()).cmp(&(
            b.service_id.as_str(),
            reservation(b),
            b.slot,
            b.id.as_str(),
        ))
    });

    let mut decisions = Vec::with_capacity(pending.len());
    preassigned.sort_by(|a, b| a.id.cmp(&b.id));
    for task in preassigned {
        cluster.check_preassigned(task, &mut decisions);
    }
    for group in
        pending.chunk_by(|a, b| a.service_id == b.service_id && reservation(a) == reservation(b))
    {
        for (needs, tasks) in by_needs(group) {
            cluster.place_group(&tasks, &needs, &mut decisions);
        }
    }
    decisions
}

/// Desired RUNNING and not yet past PENDING: a task waiting for a node's consent.
fn awaits_placement(task: &Task) -> bool {
    let state = task
        .status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(TaskState::New);
    task.desired_state() == TaskState::Running
        && matches!(state, TaskState::New | TaskState::Pending)
}

/// A task the scheduler should place.
fn wants_node(task: &Task) -> bool {
    awaits_placement(task) && task.node_id.is_empty()
}

/// A pending task created with its node already set: the node must still be able to take it.
fn awaits_node_check(task: &Task) -> bool {
    awaits_placement(task) && !task.node_id.is_empty()
}

/// A task status that no longer holds a node's resources.
fn is_terminal(task: &Task) -> bool {
    task.status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(TaskState::New)
        .is_terminal()
}

/// (memory bytes, nano CPUs) the task reserves; negative values mean nothing.
fn reservation(task: &Task) -> (i64, i64) {
    task.spec
        .as_ref()
        .and_then(|s| s.reservations.as_ref())
        .map(|r| (r.memory_bytes.max(0), r.nano_cpus.max(0)))
        .unwrap_or((0, 0))
}

/// (protocol, published port) of a host-mode port: one task per node may hold it.
type HostPort = (i32, u32);

/// The host-mode ports the task publishes on its node, sorted. A published port of 0 is
/// chosen by the node, so it never conflicts (as in Swarm).
fn host_ports(task: &Task) -> Vec<HostPort> {
    let mut ports: Vec<HostPort> = task
        .spec
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .map(|e| {
            e.ports
                .iter()
                .filter(|p| p.publish_mode() == PublishMode::Host && p.published_port != 0)
                .map(|p| (p.protocol, p.published_port))
                .collect()
        })
        .unwrap_or_default();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// What a task asks of a node beyond resources. The tasks of one group share it.
#[derive(Debug, PartialEq)]
struct Needs<'a> {
    /// `None` also for an empty placement.
    placement: Option<&'a Placement>,
    host_ports: Vec<HostPort>,
    /// The service whose network namespace the task shares (`network_mode: service:NAME`).
    network_service: Option<&'a str>,
}

/// NAME of `network_mode: service:NAME`.
fn network_service(task: &Task) -> Option<&str> {
    task.spec
        .as_ref()?
        .container
        .as_ref()?
        .network_mode
        .strip_prefix("service:")
        .filter(|name| !name.is_empty())
}

fn needs(task: &Task) -> Needs<'_> {
    Needs {
        network_service: network_service(task),
        placement: task
            .spec
            .as_ref()
            .and_then(|s| s.placement.as_ref())
            .filter(|p| **p != Placement::default()),
        host_ports: host_ports(task),
    }
}

/// Splits a (service, reservations) group by needs, keeping the order within each part.
/// Tasks of one service differ in needs only while an update changes them: few parts.
fn by_needs<'a>(group: &[&'a Task]) -> Vec<(Needs<'a>, Vec<&'a Task>)> {
    let mut parts: Vec<(Needs<'a>, Vec<&'a Task>)> = Vec::new();
    for &task in group {
        let wanted = needs(task);
        match parts.iter_mut().find(|(n, _)| *n == wanted) {
            Some((_, tasks)) => tasks.push(task),
            None => parts.push((wanted, vec![task])),
        }
    }
    parts
}

/// Why a node cannot take any new task at all, whatever it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ineligible {
    NotReady,
    Paused,
    Drained,
}

/// Why a node cannot take one particular task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Short {
    Memory,
    Cpu,
    Constraints,
    Ports,
    MaxReplicas,
    NetworkService,
}

/// How many nodes failed each task-dependent filter.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    memory: usize,
    cpu: usize,
    constraints: usize,
    ports: usize,
    max_replicas: usize,
    network_service: usize,
}

impl Tally {
    fn add(&mut self, short: Short) {
        match short {
            Short::Memory => self.memory += 1,
            Short::Cpu => self.cpu += 1,
            Short::Constraints => self.constraints += 1,
            Short::Ports => self.ports += 1,
            Short::MaxReplicas => self.max_replicas += 1,
            Short::NetworkService => self.network_service += 1,
        }
    }
}

/// Per-node counters, indexed like `Cluster::nodes` (sorted by node id, so the index doubles as
/// the final tie-break).
struct Cluster<'a> {
    nodes: Vec<&'a Node>,
    eligibility: Vec<Result<(), Ineligible>>,
    /// Reported (memory, nano CPUs).
    capacity: Vec<(i64, i64)>,
    /// Reserved by non-terminal tasks, including placements made in this call.
    reserved: Vec<(i64, i64)>,
    /// Non-terminal tasks on the node.
    load: Vec<u64>,
    /// Host-mode ports held by non-terminal tasks on the node.
    ports: Vec<HashSet<HostPort>>,
    /// Non-terminal tasks per service per node.
    per_service: HashMap<&'a str, HashMap<usize, u64>>,
    /// The nodes holding a non-terminal task of each service, by service name.
    by_name: HashMap<&'a str, HashSet<usize>>,
    /// How many nodes fail each static filter (the same for every task).
    not_ready: usize,
    paused: usize,
    drained: usize,
}

impl<'a> Cluster<'a> {
    fn new(nodes: &[&'a Node], tasks: &[&'a Task]) -> Cluster<'a> {
        let mut sorted: Vec<&Node> = nodes.to_vec();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        // A node id is unique in the store; should a snapshot repeat one, the first wins.
        sorted.dedup_by(|a, b| a.id == b.id);
        let index: HashMap<&str, usize> = sorted
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();

        let eligibility: Vec<Result<(), Ineligible>> = sorted.iter().map(|n| eligible(n)).collect();
        let capacity = sorted
            .iter()
            .map(|n| {
                n.description
                    .as_ref()
                    .and_then(|d| d.resources.as_ref())
                    .map(|r| (r.memory_bytes.max(0), r.nano_cpus.max(0)))
                    .unwrap_or((0, 0))
            })
            .collect();

        let mut reserved = vec![(0i64, 0i64); sorted.len()];
        let mut load = vec![0u64; sorted.len()];
        let mut ports = vec![HashSet::new(); sorted.len()];
        let mut per_service: HashMap<&str, HashMap<usize, u64>> = HashMap::new();
        let mut by_name: HashMap<&str, HashSet<usize>> = HashMap::new();
        for &task in tasks {
            // Preassigned pending tasks are counted when their node accepts them.
            if task.node_id.is_empty() || is_terminal(task) || awaits_node_check(task) {
                continue;
            }
            let Some(&n) = index.get(task.node_id.as_str()) else {
                continue;
            };
            let (mem, cpu) = reservation(task);
            reserved[n].0 = reserved[n].0.saturating_add(mem);
            reserved[n].1 = reserved[n].1.saturating_add(cpu);
            load[n] += 1;
            ports[n].extend(host_ports(task));
            *per_service
                .entry(task.service_id.as_str())
                .or_default()
                .entry(n)
                .or_default() += 1;
            if let Some(spec) = task.spec.as_ref() {
                by_name.entry(spec.name.as_str()).or_default().insert(n);
            }
        }

        let count = |which: Ineligible| eligibility.iter().filter(|e| **e == Err(which)).count();
        Cluster {
            not_ready: count(Ineligible::NotReady),
            paused: count(Ineligible::Paused),
            drained: count(Ineligible::Drained),
            nodes: sorted,
            eligibility,
            capacity,
            reserved,
            load,
            ports,
            per_service,
            by_name,
        }
    }

    /// Places one group of tasks (same service, reservations and needs), in order.
    fn place_group(&mut self, group: &[&'a Task], needs: &Needs, decisions: &mut Vec<Decision>) {
        let Some(first) = group.first() else {
            return;
        };
        let rules = match constraint::Rules::parse(needs.placement) {
            Ok(rules) => rules,
            Err(e) => {
                // Refused when the spec was written; a spec stored before that check, or
                // written by a newer manager, waits with the reason.
                let error = format!("no suitable node ({e})");
                for task in group {
                    if error != task.scheduling_error {
                        decisions.push(Decision {
                            task_id: task.id.clone(),
                            node_id: None,
                            error: error.clone(),
                        });
                    }
                }
                return;
            }
        };
        let service = first.service_id.as_str();
        let mut same_service = self.per_service.remove(service).unwrap_or_default();
        let group_filter = GroupFilter {
            name: first.spec.as_ref().map(|s| s.name.as_str()).unwrap_or(""),
            network_service: needs.network_service,
            wanted: reservation(first),
            host_ports: &needs.host_ports,
            max_replicas: rules.max_replicas_per_node,
            // Constraints do not change within the call: evaluated once per node.
            constraints_hold: self
                .nodes
                .iter()
                .map(|n| constraint::all_hold(&rules.constraints, n))
                .collect(),
        };
        if rules.spread.is_empty() {
            self.place_by_heap(group, &group_filter, &mut same_service, decisions);
        } else {
            self.place_by_spread(
                group,
                &group_filter,
                &rules.spread,
                &mut same_service,
                decisions,
            );
        }
        self.per_service.insert(service, same_service);
    }

    /// The least-loaded order alone: a heap, O(log nodes) per task.
    fn place_by_heap(
        &mut self,
        group: &[&'a Task],
        filter: &GroupFilter<'_, 'a>,
        same_service: &mut HashMap<usize, u64>,
        decisions: &mut Vec<Decision>,
    ) {
        // Min-heap on (load, same-service load, node index). Only the node just popped ever
        // changes, so no entry in the heap is ever stale.
        let mut heap: BinaryHeap<Reverse<(u64, u64, usize)>> = (0..self.nodes.len())
            .filter(|&n| self.eligibility[n].is_ok())
            .map(|n| {
                let mine = same_service.get(&n).copied().unwrap_or(0);
                Reverse((self.load[n], mine, n))
            })
            .collect();
        // Nodes dropped from the heap: within the group, a filter that fails keeps failing
        // (room only shrinks; ports and replica counts only grow).
        let mut tally = Tally::default();

        for task in group {
            let placed = loop {
                let Some(Reverse((_, mine, n))) = heap.pop() else {
                    break None;
                };
                match self.admits(n, filter, mine) {
                    Err(short) => tally.add(short),
                    Ok(()) => {
                        self.take(n, filter, same_service);
                        heap.push(Reverse((self.load[n], mine + 1, n)));
                        break Some(n);
                    }
                }
            };
            self.decide(task, placed, &tally, decisions);
        }
    }

    /// Spread preferences: each task goes to the group of nodes (by the descriptors' values,
    /// outermost first) that holds the fewest tasks of the service, then to the least loaded
    /// node in it. A scan of every node per task (see Cost in the module doc).
    fn place_by_spread(
        &mut self,
        group: &[&'a Task],
        filter: &GroupFilter<'_, 'a>,
        spread: &[Attribute],
        same_service: &mut HashMap<usize, u64>,
        decisions: &mut Vec<Decision>,
    ) {
        // Every node that passes the task-independent filters belongs to one branch per
        // level; nodes sharing the values of the first k descriptors share the k-th branch.
        let members: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.eligibility[n].is_ok() && filter.constraints_hold[n])
            .collect();
        let mut branch_ids: HashMap<Vec<&str>, usize> = HashMap::new();
        let mut branches: Vec<Vec<usize>> = vec![Vec::new(); self.nodes.len()];
        for &n in &members {
            let mut path = Vec::with_capacity(spread.len());
            for attribute in spread {
                path.push(attribute.of(self.nodes[n]));
                let next = branch_ids.len();
                let id = *branch_ids.entry(path.clone()).or_insert(next);
                branches[n].push(id);
            }
        }
        // Tasks of the service in each branch.
        let mut in_branch = vec![0u64; branch_ids.len()];
        for &n in &members {
            let mine = same_service.get(&n).copied().unwrap_or(0);
            for &id in &branches[n] {
                in_branch[id] += mine;
            }
        }

        for task in group {
            let mut tally = Tally::default();
            let mut best: Option<(Vec<u64>, u64, u64, usize)> = None;
            for (n, node_branches) in branches.iter().enumerate() {
                if self.eligibility[n].is_err() {
                    continue;
                }
                let mine = same_service.get(&n).copied().unwrap_or(0);
                if let Err(short) = self.admits(n, filter, mine) {
                    tally.add(short);
                    continue;
                }
                let key: (Vec<u64>, u64, u64, usize) = (
                    node_branches.iter().map(|&id| in_branch[id]).collect(),
                    self.load[n],
                    mine,
                    n,
                );
                if best.as_ref().is_none_or(|b| key < *b) {
                    best = Some(key);
                }
            }
            let placed = best.map(|(_, _, _, n)| n);
            if let Some(n) = placed {
                self.take(n, filter, same_service);
                for &id in &branches[n] {
                    in_branch[id] += 1;
                }
            }
            self.decide(task, placed, &tally, decisions);
        }
    }

    /// Records a placement (or the reason there is none) as a decision.
    fn decide(
        &self,
        task: &Task,
        placed: Option<usize>,
        tally: &Tally,
        decisions: &mut Vec<Decision>,
    ) {
        match placed {
            Some(n) => decisions.push(Decision {
                task_id: task.id.clone(),
                node_id: Some(self.nodes[n].id.clone()),
                error: String::new(),
            }),
            None => {
                let error = self.explain(tally);
                if error != task.scheduling_error {
                    decisions.push(Decision {
                        task_id: task.id.clone(),
                        node_id: None,
                        error,
                    });
                }
            }
        }
    }

    /// The task-dependent filters, in order; `mine` is the service's tasks on the node.
    fn admits(&self, n: usize, filter: &GroupFilter<'_, 'a>, mine: u64) -> Result<(), Short> {
        self.fits(n, filter.wanted)?;
        if !filter.constraints_hold[n] {
            return Err(Short::Constraints);
        }
        if filter.host_ports.iter().any(|p| self.ports[n].contains(p)) {
            return Err(Short::Ports);
        }
        if filter.max_replicas > 0 && mine >= filter.max_replicas {
            return Err(Short::MaxReplicas);
        }
        if !filter.network_service.is_none_or(|name| self.runs(name, n)) {
            return Err(Short::NetworkService);
        }
        Ok(())
    }

    /// Counts a task of the group as placed on node `n`.
    fn take(
        &mut self,
        n: usize,
        filter: &GroupFilter<'_, 'a>,
        same_service: &mut HashMap<usize, u64>,
    ) {
        let (mem, cpu) = filter.wanted;
        self.reserved[n].0 = self.reserved[n].0.saturating_add(mem);
        self.reserved[n].1 = self.reserved[n].1.saturating_add(cpu);
        self.load[n] += 1;
        self.ports[n].extend(filter.host_ports.iter().copied());
        *same_service.entry(n).or_default() += 1;
        if !filter.name.is_empty() {
            self.by_name.entry(filter.name).or_default().insert(n);
        }
    }

    /// Whether node `n` holds a non-terminal task of the service named `name`.
    fn runs(&self, name: &str, n: usize) -> bool {
        self.by_name
            .get(name)
            .is_some_and(|nodes| nodes.contains(&n))
    }

    /// Confirms a task on the node it was created for, or says why that node cannot take it.
    fn check_preassigned(&mut self, task: &'a Task, decisions: &mut Vec<Decision>) {
        let node_id = task.node_id.as_str();
        let found = self
            .nodes
            .binary_search_by(|n| n.id.as_str().cmp(node_id))
            .ok();
        let want = reservation(task);
        let wanted_ports = host_ports(task);
        let verdict = match (found, constraint::Rules::parse(needs(task).placement)) {
            (_, Err(e)) => Err(e.to_string()),
            (None, _) => Err("its node left the cluster".to_string()),
            (Some(n), Ok(rules)) => match (self.eligibility[n], self.fits(n, want)) {
                (Err(Ineligible::NotReady), _) => Err("its node is not ready".into()),
                (Err(Ineligible::Paused), _) => Err("its node is paused".into()),
                (Err(Ineligible::Drained), _) => Err("its node is drained".into()),
                (Ok(()), Err(Short::Memory)) => Err("insufficient memory on its node".into()),
                (Ok(()), Err(_)) => Err("insufficient cpu on its node".into()),
                (Ok(()), Ok(())) if !constraint::all_hold(&rules.constraints, self.nodes[n]) => {
                    Err("scheduling constraints not satisfied on its node".into())
                }
                (Ok(()), Ok(())) if wanted_ports.iter().any(|p| self.ports[n].contains(p)) => {
                    Err("host-mode port already in use on its node".into())
                }
                (Ok(()), Ok(()))
                    if !network_service(task).is_none_or(|name| self.runs(name, n)) =>
                {
                    Err("no task of its network_mode service on its node".into())
                }
                (Ok(()), Ok(())) => Ok(n),
            },
        };
        match verdict {
            Ok(n) => {
                self.reserved[n].0 = self.reserved[n].0.saturating_add(want.0);
                self.reserved[n].1 = self.reserved[n].1.saturating_add(want.1);
                self.load[n] += 1;
                self.ports[n].extend(wanted_ports);
                if let Some(spec) = task.spec.as_ref() {
                    self.by_name
                        .entry(spec.name.as_str())
                        .or_default()
                        .insert(n);
                }
                *self
                    .per_service
                    .entry(task.service_id.as_str())
                    .or_default()
                    .entry(n)
                    .or_default() += 1;
                decisions.push(Decision {
                    task_id: task.id.clone(),
                    node_id: Some(task.node_id.clone()),
                    error: String::new(),
                });
            }
            Err(reason) => {
                let error = format!("no suitable node ({reason})");
                if error != task.scheduling_error {
                    decisions.push(Decision {
                        task_id: task.id.clone(),
                        node_id: None,
                        error,
                    });
                }
            }
        }
    }

    /// Whether node `n` has room left for a (memory, CPU) reservation.
    fn fits(&self, n: usize, (mem, cpu): (i64, i64)) -> Result<(), Short> {
        let (cap_mem, cap_cpu) = self.capacity[n];
        let (res_mem, res_cpu) = self.reserved[n];
        if mem > 0 && cap_mem.saturating_sub(res_mem) < mem {
            return Err(Short::Memory);
        }
        if cpu > 0 && cap_cpu.saturating_sub(res_cpu) < cpu {
            return Err(Short::Cpu);
        }
        Ok(())
    }

    /// Swarm-style aggregate of why no node took a task, in the filters' order.
    fn explain(&self, tally: &Tally) -> String {
        if self.nodes.is_empty() {
            return "no suitable node (no nodes in the cluster)".to_string();
        }
        let nodes = |n: usize| if n == 1 { "node" } else { "nodes" };
        let mut reasons = Vec::new();
        for (count, what) in [
            (tally.memory, "insufficient memory on"),
            (tally.cpu, "insufficient cpu on"),
            (tally.constraints, "scheduling constraints not satisfied on"),
            (tally.ports, "host-mode port already in use on"),
            (tally.max_replicas, "max replicas per node limit exceed on"),
            (
                tally.network_service,
                "no task of the network_mode service on",
            ),
        ] {
            if count > 0 {
                reasons.push(format!("{what} {count} {}", nodes(count)));
            }
        }
        for (count, what) in [
            (self.not_ready, "not ready"),
            (self.paused, "paused"),
            (self.drained, "drained"),
        ] {
            if count > 0 {
                reasons.push(format!("{count} {} {what}", nodes(count)));
            }
        }
        format!("no suitable node ({})", reasons.join("; "))
    }
}

/// What one group asks of every node, evaluated once for the group.
struct GroupFilter<'g, 'a> {
    /// The group's service name (its placements count for `network_service`).
    name: &'a str,
    /// See [`Needs::network_service`].
    network_service: Option<&'g str>,
    wanted: (i64, i64),
    host_ports: &'g [HostPort],
    /// 0: no limit.
    max_replicas: u64,
    /// Indexed like `Cluster::nodes`.
    constraints_hold: Vec<bool>,
}

/// The filters that do not depend on the task.
fn eligible(node: &Node) -> Result<(), Ineligible> {
    let state = node
        .status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(NodeState::Unknown);
    if state != NodeState::Ready {
        return Err(Ineligible::NotReady);
    }
    match node.availability() {
        NodeAvailability::Active => Ok(()),
        NodeAvailability::Pause => Err(Ineligible::Paused),
        NodeAvailability::Drain => Err(Ineligible::Drained),
    }
}

#[cfg(test)]
mod tests;
