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
//!    status READY → availability ACTIVE → memory → CPU.
//!    A reservation of 0 always fits; a node that reported no resources (0) fits only tasks
//!    that reserve nothing, as in Swarm.
//!    What a node has left is its reported resources minus the reservations of every
//!    non-terminal task on it (whatever its desired state: a task being stopped still holds
//!    its memory), including tasks placed earlier in the same call.
//! 3. Spread: fewest non-terminal tasks on the node, then fewest tasks of the same service,
//!    then the smallest node id, so that the result never depends on input order.
//!
//! A task no node accepts gets `node_id: None` and an `error` that aggregates the reasons the
//! way Swarm prints them: `no suitable node (insufficient memory on 2 nodes; 1 node not ready)`.
//! When that text equals the task's `scheduling_error` already, no decision is emitted: the
//! loop would otherwise rewrite the same value through Raft on every pass.
//!
//! # Cost
//!
//! Pending tasks are sorted and grouped by (service, reservations). Each group builds a heap of
//! the eligible nodes once; a node that cannot hold the group's reservation is dropped from the
//! heap for the rest of the group (within a group, what a node has left only shrinks). Each
//! placement is then O(log nodes), so 100k tasks of a few services on 1000 nodes cost
//! O(tasks · log nodes + groups · nodes), never O(tasks × nodes × tasks).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use shoal_proto::{Node, NodeAvailability, NodeState, Task, TaskState};

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
/// Decisions come in a deterministic order (by service, reservations, slot, task id).
pub fn schedule(nodes: &[Node], tasks: &[Task]) -> Vec<Decision> {
    let tasks: Vec<&Task> = tasks.iter().collect();
    schedule_refs(nodes, &tasks)
}

/// [`schedule`] over borrowed tasks: the leader calls it on the store as it stands, without
/// copying every task first.
pub fn schedule_refs(nodes: &[Node], tasks: &[&Task]) -> Vec<Decision> {
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
        cluster.place_group(group, &mut decisions);
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
    /// Non-terminal tasks per service per node.
    per_service: HashMap<&'a str, HashMap<usize, u64>>,
    /// How many nodes fail each static filter (the same for every task).
    not_ready: usize,
    paused: usize,
    drained: usize,
}

impl<'a> Cluster<'a> {
    fn new(nodes: &'a [Node], tasks: &[&'a Task]) -> Cluster<'a> {
        let mut sorted: Vec<&Node> = nodes.iter().collect();
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
        let mut per_service: HashMap<&str, HashMap<usize, u64>> = HashMap::new();
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
            *per_service
                .entry(task.service_id.as_str())
                .or_default()
                .entry(n)
                .or_default() += 1;
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
            per_service,
        }
    }

    /// Places one group of tasks (same service, same reservations), in order.
    fn place_group(&mut self, group: &[&'a Task], decisions: &mut Vec<Decision>) {
        let Some(first) = group.first() else {
            return;
        };
        let service = first.service_id.as_str();
        let wanted = reservation(first);
        let mut same_service = self.per_service.remove(service).unwrap_or_default();

        // Min-heap on (load, same-service load, node index). Only the node just popped ever
        // changes, so no entry in the heap is ever stale.
        let mut heap: BinaryHeap<Reverse<(u64, u64, usize)>> = (0..self.nodes.len())
            .filter(|&n| self.eligibility[n].is_ok())
            .map(|n| {
                let mine = same_service.get(&n).copied().unwrap_or(0);
                Reverse((self.load[n], mine, n))
            })
            .collect();
        // Nodes dropped from the heap because they lack room for this group's reservation.
        let mut short_memory = 0usize;
        let mut short_cpu = 0usize;

        for task in group {
            let placed = loop {
                let Some(Reverse((_, mine, n))) = heap.pop() else {
                    break None;
                };
                match self.fits(n, wanted) {
                    Err(Short::Memory) => short_memory += 1,
                    Err(Short::Cpu) => short_cpu += 1,
                    Ok(()) => {
                        self.reserved[n].0 = self.reserved[n].0.saturating_add(wanted.0);
                        self.reserved[n].1 = self.reserved[n].1.saturating_add(wanted.1);
                        self.load[n] += 1;
                        *same_service.entry(n).or_default() += 1;
                        heap.push(Reverse((self.load[n], mine + 1, n)));
                        break Some(n);
                    }
                }
            };
            match placed {
                Some(n) => decisions.push(Decision {
                    task_id: task.id.clone(),
                    node_id: Some(self.nodes[n].id.clone()),
                    error: String::new(),
                }),
                None => {
                    let error = self.explain(short_memory, short_cpu);
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
        self.per_service.insert(service, same_service);
    }

    /// Confirms a task on the node it was created for, or says why that node cannot take it.
    fn check_preassigned(&mut self, task: &'a Task, decisions: &mut Vec<Decision>) {
        let node_id = task.node_id.as_str();
        let found = self
            .nodes
            .binary_search_by(|n| n.id.as_str().cmp(node_id))
            .ok();
        let want = reservation(task);
        let verdict = match found {
            None => Err("its node left the cluster".to_string()),
            Some(n) => match (self.eligibility[n], self.fits(n, want)) {
                (Err(Ineligible::NotReady), _) => Err("its node is not ready".into()),
                (Err(Ineligible::Paused), _) => Err("its node is paused".into()),
                (Err(Ineligible::Drained), _) => Err("its node is drained".into()),
                (Ok(()), Err(Short::Memory)) => Err("insufficient memory on its node".into()),
                (Ok(()), Err(Short::Cpu)) => Err("insufficient cpu on its node".into()),
                (Ok(()), Ok(())) => Ok(n),
            },
        };
        match verdict {
            Ok(n) => {
                self.reserved[n].0 += want.0;
                self.reserved[n].1 += want.1;
                self.load[n] += 1;
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

    /// Swarm-style aggregate of why no node took a task.
    fn explain(&self, short_memory: usize, short_cpu: usize) -> String {
        if self.nodes.is_empty() {
            return "no suitable node (no nodes in the cluster)".to_string();
        }
        let nodes = |n: usize| if n == 1 { "node" } else { "nodes" };
        let mut reasons = Vec::new();
        if short_memory > 0 {
            reasons.push(format!(
                "insufficient memory on {short_memory} {}",
                nodes(short_memory)
            ));
        }
        if short_cpu > 0 {
            reasons.push(format!(
                "insufficient cpu on {short_cpu} {}",
                nodes(short_cpu)
            ));
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
