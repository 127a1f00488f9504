//! Swarm's global orchestrator: one task of the service on every node that can run it.
//!
//! A node's tasks form one "slot" keyed by the node, judged with the same rules as a
//! replicated slot (current task, restart policy, history, spec updates). A new task is
//! created with its node already chosen; the scheduler only checks that the node can take it.
//! Nodes that are READY and ACTIVE get a task; a PAUSEd node keeps the task it has but gets no
//! new one; a drained, down or removed node's task is shut down (and not replaced elsewhere).
//! Placement constraints narrow the nodes, as in Swarm: a node that stops matching them (a
//! label removed, a role changed) has its task shut down, paused or not, and one that starts
//! matching gets a task. A placement that does not parse (refused when written, so only a spec
//! from elsewhere) narrows nothing: the scheduler then holds every task pending with the
//! reason.

use std::collections::BTreeMap;

use shoal_proto::{Service, Task, TaskState};

use super::replicated::{assess_slots, emit_slot, is_terminal, with_desired, Nodes, Plan};
use super::restart;
use crate::scheduler::constraint::Rules;

/// Global tasks carry slot 0: their node is their identity.
const GLOBAL_SLOT: u64 = 0;

pub(super) fn reconcile_global(
    service: &Service,
    service_id: &str,
    tasks: &[&Task],
    nodes: &Nodes,
    now: i64,
    new_id: &mut dyn FnMut() -> String,
) -> Plan {
    let mut by_node: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for &task in tasks {
        by_node.entry(task.node_id.as_str()).or_default().push(task);
    }
    let limit = restart::history_limit(service.spec.as_ref().and_then(|s| s.restart.as_ref()));
    let rules =
        Rules::parse(service.spec.as_ref().and_then(|s| s.placement.as_ref())).unwrap_or_default();
    let matches = |node_id: &str| nodes.get(node_id).is_some_and(|n| rules.admits(n));
    let mut plan = Plan::default();
    let slots = nodes
        .global_targets()
        .iter()
        .filter(|&&node_id| matches(node_id))
        .map(|&node_id| {
            (
                GLOBAL_SLOT,
                node_id,
                by_node.remove(node_id).unwrap_or_default(),
            )
        })
        .collect();
    let works = assess_slots(slots, service, nodes, limit, now, &mut plan);
    for work in &works {
        emit_slot(work, service, service_id, limit, now, new_id, &mut plan);
    }

    // Nodes the service no longer runs on: paused ones keep a running task; the others' tasks
    // stop, and ended ones are forgotten.
    for (node_id, tasks) in by_node {
        let keep = nodes.is_paused(node_id) && matches(node_id);
        for task in tasks {
            if is_terminal(task) {
                if task.desired_state() != TaskState::Running {
                    plan.delete.push(task.id.clone());
                }
            } else if task.desired_state() == TaskState::Running && !keep {
                plan.update.push(with_desired(task, TaskState::Shutdown));
            }
        }
    }
    super::replicated::stamp_drain(&mut plan, service);
    plan
}
