//! Rule-by-rule unit tests and property tests of the replicated orchestrator.

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;
use shoal_proto::service_spec::Mode;
use shoal_proto::SharedSpec;
use shoal_proto::{
    ContainerSpec, GlobalService, Meta, Node, NodeState, NodeStatus, ReplicatedService,
    RestartCondition, RestartPolicy, Service, ServiceSpec, Task, TaskState, TaskStatus,
    UpdateConfig,
};

use super::restart::{self, Restart};
use super::update;
use super::*;

const NOW: i64 = 100_000;

fn spec(image: &str, replicas: u64, restart: Option<RestartPolicy>) -> ServiceSpec {
    ServiceSpec {
        name: "web".into(),
        container: Some(ContainerSpec {
            image: image.into(),
            ..Default::default()
        }),
        restart,
        mode: Some(Mode::Replicated(ReplicatedService { replicas })),
        // The rules below are about slots, not rollouts: every outdated slot at once, settled
        // as soon as it runs. Rolling updates are tested in their own section.
        update_config: Some(all_at_once()),
        ..Default::default()
    }
}

fn all_at_once() -> UpdateConfig {
    UpdateConfig {
        parallelism: Some(0),
        monitor_ms: Some(0),
        ..Default::default()
    }
}

fn service(version: u64, replicas: u64) -> Service {
    Service {
        id: "svc".into(),
        meta: Some(Meta {
            version,
            ..Default::default()
        }),
        spec: Some(spec("busybox:1", replicas, None)),
        ..Default::default()
    }
}

fn with_restart(mut s: Service, p: RestartPolicy) -> Service {
    if let Some(spec) = s.spec.as_mut() {
        spec.restart = Some(p);
    }
    s
}

fn node(id: &str, state: NodeState) -> Node {
    Node {
        id: id.into(),
        status: Some(NodeStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn nodes() -> Vec<Node> {
    vec![node("n1", NodeState::Ready), node("n2", NodeState::Ready)]
}

/// A task of `s` on n1, created at `created`, in `state` since `created` too.
fn task(
    s: &Service,
    id: &str,
    slot: u64,
    desired: TaskState,
    state: TaskState,
    created: i64,
) -> Task {
    let mut status = TaskStatus {
        timestamp: created,
        ..Default::default()
    };
    status.set_state(state);
    let mut t = Task {
        id: id.into(),
        meta: Some(Meta {
            version: 1,
            created_at: created,
            updated_at: created,
        }),
        service_id: s.id.clone(),
        slot,
        node_id: "n1".into(),
        spec: s.spec.clone().map(SharedSpec::new),
        spec_version: s.meta.as_ref().map(|m| m.version).unwrap_or(0),
        status: Some(status),
        ..Default::default()
    };
    t.set_desired_state(desired);
    t
}

fn running(s: &Service, id: &str, slot: u64, created: i64) -> Task {
    task(s, id, slot, TaskState::Running, TaskState::Running, created)
}

fn ids() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("new{n:04}")
    }
}

fn run(s: Option<&Service>, tasks: &[Task], nodes: &[Node], now: i64) -> Plan {
    let mut gen = ids();
    reconcile(
        &ReconcileInput {
            service: s,
            service_id: "svc",
            tasks,
            nodes,
            now,
        },
        &mut gen,
    )
}

/// What the store would hold after committing `plan` at `now`.
fn apply(tasks: &[Task], plan: &Plan, now: i64) -> Vec<Task> {
    let mut out: BTreeMap<String, Task> = tasks.iter().map(|t| (t.id.clone(), t.clone())).collect();
    for t in &plan.update {
        assert!(out.contains_key(&t.id), "update of unknown task {}", t.id);
        let mut t = t.clone();
        if let Some(m) = t.meta.as_mut() {
            m.version += 1;
            m.updated_at = now;
        }
        out.insert(t.id.clone(), t);
    }
    for id in &plan.delete {
        assert!(out.remove(id).is_some(), "delete of unknown task {id}");
    }
    for t in &plan.create {
        let mut t = t.clone();
        t.meta = Some(Meta {
            version: 1,
            created_at: now,
            updated_at: now,
        });
        assert!(out.insert(t.id.clone(), t).is_none(), "duplicate create");
    }
    out.into_values().collect()
}

/// The service as the store would hold it after committing `plan`.
fn service_after(s: Option<&Service>, plan: &Plan) -> Option<Service> {
    let mut s = s?.clone();
    if let Some(new) = plan.services.iter().find(|n| n.id == s.id) {
        s = new.clone();
        if let Some(m) = s.meta.as_mut() {
            m.version += 1;
        }
    }
    Some(s)
}

fn desired_of(plan: &Plan) -> Vec<(&str, TaskState)> {
    plan.update
        .iter()
        .map(|t| (t.id.as_str(), t.desired_state()))
        .collect()
}

fn slots_of(plan: &Plan) -> Vec<u64> {
    plan.create.iter().map(|t| t.slot).collect()
}

/// The task, as the next call would see it, after its status moved to `state` at `at`.
fn ended(mut t: Task, state: TaskState, at: i64, exit: Option<i32>) -> Task {
    if let Some(s) = t.status.as_mut() {
        s.set_state(state);
        s.timestamp = at;
        s.exit_code = exit;
    }
    t
}

// ---------------------------------------------------------------------------------------------
// Missing slots
// ---------------------------------------------------------------------------------------------

#[test]
fn creates_a_task_per_missing_slot() {
    let s = service(4, 3);
    let existing = running(&s, "a", 2, 10);
    let plan = run(Some(&s), std::slice::from_ref(&existing), &nodes(), NOW);
    assert_eq!(slots_of(&plan), vec![1, 3]);
    assert!(plan.update.is_empty() && plan.delete.is_empty() && plan.wake_at.is_none());
    let t = &plan.create[0];
    assert_eq!(t.id, "new0001");
    assert_eq!(t.service_id, "svc");
    assert_eq!(t.spec.as_deref(), s.spec.as_ref());
    assert_eq!(t.spec_version, 4);
    assert_eq!(t.desired_state(), TaskState::Running);
    assert_eq!(t.node_id, "");
    assert_eq!(t.meta, None);
    let status = t.status.clone().unwrap_or_default();
    assert_eq!(status.state(), TaskState::Pending);
    assert_eq!(status.timestamp, NOW);
    assert_eq!(status.message, "pending task scheduling");

    let after = apply(&[existing], &plan, NOW);
    assert!(run(Some(&s), &after, &nodes(), NOW).is_empty());
}

#[test]
fn a_large_scale_up_is_created_in_steps_that_add_up_to_every_slot() {
    let replicas = 2 * MAX_NEW_SLOTS + 5;
    let s = service(4, replicas);
    let mut gen = ids();
    let mut tasks: Vec<Task> = Vec::new();
    let mut steps = Vec::new();
    loop {
        let plan = reconcile(
            &ReconcileInput {
                service: Some(&s),
                service_id: "svc",
                tasks: &tasks,
                nodes: &nodes(),
                now: NOW,
            },
            &mut gen,
        );
        if plan.is_empty() {
            break;
        }
        assert!(plan.update.is_empty() && plan.delete.is_empty());
        steps.push(plan.create.len() as u64);
        tasks = apply(&tasks, &plan, NOW);
        assert!(steps.len() <= 3, "a scale-up must converge");
    }
    assert_eq!(steps, [MAX_NEW_SLOTS, MAX_NEW_SLOTS, 5]);
    let slots: HashSet<u64> = tasks.iter().map(|t| t.slot).collect();
    assert_eq!(slots, (1..=replicas).collect::<HashSet<u64>>());
}

#[test]
fn a_spec_without_mode_has_one_replica() {
    let mut s = service(1, 3);
    if let Some(spec) = s.spec.as_mut() {
        spec.mode = None;
    }
    assert_eq!(slots_of(&run(Some(&s), &[], &nodes(), NOW)), vec![1]);
}

// ---------------------------------------------------------------------------------------------
// Global services
// ---------------------------------------------------------------------------------------------

fn global(mut s: Service) -> Service {
    if let Some(spec) = s.spec.as_mut() {
        spec.mode = Some(Mode::Global(GlobalService {}));
    }
    s
}

fn with_availability(mut n: Node, a: shoal_proto::NodeAvailability) -> Node {
    n.set_availability(a);
    n
}

#[test]
fn global_services_run_one_task_on_every_ready_active_node() {
    let s = global(service(1, 0));
    let nodes = vec![
        node("n1", NodeState::Ready),
        node("n2", NodeState::Ready),
        node("n3", NodeState::Down),
        with_availability(
            node("n4", NodeState::Ready),
            shoal_proto::NodeAvailability::Drain,
        ),
    ];
    let existing = running(&s, "a", 0, 10); // on n1
    let plan = run(Some(&s), std::slice::from_ref(&existing), &nodes, NOW);
    let placed: Vec<&str> = plan.create.iter().map(|t| t.node_id.as_str()).collect();
    assert_eq!(
        placed,
        vec!["n2"],
        "n1 has its task; n3 is down, n4 drained"
    );
    assert!(
        plan.create
            .iter()
            .all(|t| t.slot == 0
                && t.status.as_ref().map(|st| st.state()) == Some(TaskState::Pending))
    );
    let after = apply(&[existing], &plan, NOW);
    assert!(run(Some(&s), &after, &nodes, NOW).is_empty(), "idempotent");
}

#[test]
fn a_drained_nodes_global_task_stops_and_a_paused_one_keeps_it() {
    let s = global(service(1, 0));
    let mut on_n2 = running(&s, "b", 0, 10);
    on_n2.node_id = "n2".into();
    let tasks = vec![running(&s, "a", 0, 10), on_n2];
    let nodes = vec![
        with_availability(
            node("n1", NodeState::Ready),
            shoal_proto::NodeAvailability::Drain,
        ),
        with_availability(
            node("n2", NodeState::Ready),
            shoal_proto::NodeAvailability::Pause,
        ),
    ];
    let plan = run(Some(&s), &tasks, &nodes, NOW);
    assert!(plan.create.is_empty());
    assert_eq!(desired_of(&plan), vec![("a", TaskState::Shutdown)]);
}

fn labelled(mut n: Node, key: &str, value: &str) -> Node {
    n.labels.insert(key.into(), value.into());
    n
}

fn constrained(mut s: Service, constraint: &str) -> Service {
    if let Some(spec) = s.spec.as_mut() {
        spec.placement = Some(shoal_proto::Placement {
            constraints: vec![constraint.into()],
            ..Default::default()
        });
    }
    s
}

#[test]
fn a_global_service_runs_only_where_its_constraints_hold_and_follows_labels() {
    let s = constrained(global(service(1, 0)), "node.labels.zone==b");
    let nodes = vec![
        labelled(node("n1", NodeState::Ready), "zone", "b"),
        node("n2", NodeState::Ready),
        labelled(node("n3", NodeState::Ready), "zone", "a"),
    ];
    let plan = run(Some(&s), &[], &nodes, NOW);
    let placed: Vec<&str> = plan.create.iter().map(|t| t.node_id.as_str()).collect();
    assert_eq!(placed, vec!["n1"]);
    let tasks = apply(&[], &plan, NOW);
    assert!(run(Some(&s), &tasks, &nodes, NOW).is_empty(), "idempotent");

    // n2 gets the label, n1 loses it (and n1 is paused: it would otherwise keep its task).
    let nodes = vec![
        with_availability(
            node("n1", NodeState::Ready),
            shoal_proto::NodeAvailability::Pause,
        ),
        labelled(node("n2", NodeState::Ready), "zone", "b"),
        labelled(node("n3", NodeState::Ready), "zone", "a"),
    ];
    let plan = run(Some(&s), &tasks, &nodes, NOW);
    let placed: Vec<&str> = plan.create.iter().map(|t| t.node_id.as_str()).collect();
    assert_eq!(placed, vec!["n2"]);
    assert_eq!(
        plan.update
            .iter()
            .map(|t| (t.node_id.as_str(), t.desired_state()))
            .collect::<Vec<_>>(),
        vec![("n1", TaskState::Shutdown)]
    );
}

#[test]
fn a_replicated_task_on_a_node_that_stops_matching_is_replaced() {
    let s = constrained(service(1, 2), "node.labels.zone==b");
    let mut on_n2 = running(&s, "b", 2, 10);
    on_n2.node_id = "n2".into();
    let tasks = vec![running(&s, "a", 1, 10), on_n2];
    let matching = vec![
        labelled(node("n1", NodeState::Ready), "zone", "b"),
        labelled(node("n2", NodeState::Ready), "zone", "b"),
    ];
    assert!(run(Some(&s), &tasks, &matching, NOW).is_empty());
    // n1 loses its label: its task is shut down and its slot gets a new, unplaced task.
    let nodes = vec![
        node("n1", NodeState::Ready),
        labelled(node("n2", NodeState::Ready), "zone", "b"),
    ];
    let plan = run(Some(&s), &tasks, &nodes, NOW);
    assert_eq!(desired_of(&plan), vec![("a", TaskState::Shutdown)]);
    assert_eq!(slots_of(&plan), vec![1]);
    assert!(plan.create.iter().all(|t| t.node_id.is_empty()));
}

#[test]
fn a_changed_placement_replaces_the_tasks() {
    let old = service(3, 2);
    let new = constrained(service(8, 2), "node.role==worker");
    let tasks = vec![running(&old, "a", 1, 10), running(&old, "b", 2, 10)];
    let plan = run(Some(&new), &tasks, &nodes(), NOW);
    assert_eq!(
        desired_of(&plan),
        vec![("a", TaskState::Shutdown), ("b", TaskState::Shutdown)]
    );
    assert!(plan
        .create
        .iter()
        .all(|t| t.spec.as_deref() == new.spec.as_ref()));
}

#[test]
fn a_global_task_that_failed_restarts_on_its_node_by_the_policy() {
    let s = global(service(1, 0));
    let failed = ended(running(&s, "a", 0, 10), TaskState::Failed, 20, Some(1));
    let plan = run(
        Some(&s),
        &[failed],
        &[node("n1", NodeState::Ready)],
        20 + 5_000,
    );
    let placed: Vec<&str> = plan.create.iter().map(|t| t.node_id.as_str()).collect();
    assert_eq!(placed, vec!["n1"]);
    assert_eq!(desired_of(&plan), vec![("a", TaskState::Shutdown)]);
}

#[test]
fn tasks_of_other_services_are_ignored() {
    let s = service(1, 1);
    let mut other = running(&s, "other", 1, 10);
    other.service_id = "elsewhere".into();
    assert_eq!(slots_of(&run(Some(&s), &[other], &nodes(), NOW)), vec![1]);
}

#[test]
fn keeps_only_the_newest_of_several_running_tasks_in_a_slot() {
    let s = service(1, 1);
    let tasks = vec![
        running(&s, "old", 1, 10),
        running(&s, "new", 1, 20),
        running(&s, "mid", 1, 15),
    ];
    let plan = run(Some(&s), &tasks, &nodes(), NOW);
    assert_eq!(
        desired_of(&plan),
        vec![("mid", TaskState::Shutdown), ("old", TaskState::Shutdown)]
    );
    assert!(plan.create.is_empty());
    // Same creation time: the greater id wins, deterministically.
    let tasks = vec![running(&s, "b", 1, 10), running(&s, "a", 1, 10)];
    assert_eq!(
        desired_of(&run(Some(&s), &tasks, &nodes(), NOW)),
        vec![("a", TaskState::Shutdown)]
    );
}

#[test]
fn a_removed_service_stops_its_tasks_without_draining() {
    let s = service(1, 2);
    let tasks = vec![running(&s, "a", 1, 10), running(&s, "b", 2, 10)];
    let plan = run(None, &tasks, &nodes(), NOW);
    assert_eq!(plan.update.len(), 2);
    for t in &plan.update {
        assert_eq!(t.desired_state(), TaskState::Remove);
        assert_eq!(t.drain_ms, Some(0));
    }
}

#[test]
fn updates_keep_the_task_as_read() {
    let s = service(1, 1);
    let tasks = vec![running(&s, "old", 1, 10), running(&s, "new", 1, 20)];
    let plan = run(Some(&s), &tasks, &nodes(), NOW);
    let mut expected = tasks[0].clone();
    expected.set_desired_state(TaskState::Shutdown);
    // Stopped tasks carry the service's drain period (Swarm's update config has none).
    expected.drain_ms = Some(shoal_proto::DEFAULT_DRAIN_MS);
    assert_eq!(plan.update, vec![expected]);
}

// ---------------------------------------------------------------------------------------------
// Restart policy
// ---------------------------------------------------------------------------------------------

#[test]
fn an_ended_task_is_stopped_and_restarted_after_the_default_delay() {
    let s = service(1, 1);
    let t = ended(
        running(&s, "a", 1, 10),
        TaskState::Failed,
        NOW - 1000,
        Some(1),
    );
    let plan = run(Some(&s), std::slice::from_ref(&t), &nodes(), NOW);
    assert_eq!(desired_of(&plan), vec![("a", TaskState::Shutdown)]);
    assert!(plan.create.is_empty());
    assert_eq!(plan.wake_at, Some(NOW + 4000));

    // Nothing more to do until then, and the same wake-up.
    let after = apply(&[t], &plan, NOW);
    let again = run(Some(&s), &after, &nodes(), NOW + 10);
    assert!(again.is_empty());
    assert_eq!(again.wake_at, Some(NOW + 4000));

    let later = run(Some(&s), &after, &nodes(), NOW + 4000);
    assert_eq!(slots_of(&later), vec![1]);
    assert!(later.update.is_empty());
    assert_eq!(later.wake_at, None);
}

#[test]
fn restart_is_immediate_when_the_delay_already_passed() {
    let s = service(1, 1);
    let t = ended(
        running(&s, "a", 1, 10),
        TaskState::Complete,
        NOW - 5000,
        Some(0),
    );
    let plan = run(Some(&s), std::slice::from_ref(&t), &nodes(), NOW);
    assert_eq!(desired_of(&plan), vec![("a", TaskState::Shutdown)]);
    assert_eq!(slots_of(&plan), vec![1]);
    assert!(run(Some(&s), &apply(&[t], &plan, NOW), &nodes(), NOW).is_empty());
}

#[test]
fn every_terminal_state_stops_the_task() {
    let s = with_restart(
        service(1, 1),
        RestartPolicy {
            delay_ms: Some(0),
            ..Default::default()
        },
    );
    for state in [
        TaskState::Complete,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Orphaned,
        TaskState::Shutdown,
    ] {
        let t = ended(running(&s, "a", 1, 10), state, NOW - 1, None);
        let plan = run(Some(&s), &[t], &nodes(), NOW);
        assert_eq!(
            desired_of(&plan),
            vec![("a", TaskState::Shutdown)],
            "{state:?}"
        );
        assert_eq!(slots_of(&plan), vec![1], "{state:?}");
    }
}

#[test]
fn on_failure_does_not_restart_a_success_and_the_slot_stays_settled() {
    let mut p = RestartPolicy::default();
    p.set_condition(RestartCondition::OnFailure);
    let s = with_restart(service(1, 2), p);
    let ok = ended(
        running(&s, "ok", 1, 10),
        TaskState::Complete,
        NOW - 10_000,
        Some(0),
    );
    let bad = ended(
        running(&s, "bad", 2, 10),
        TaskState::Failed,
        NOW - 10_000,
        Some(1),
    );
    let plan = run(Some(&s), &[ok.clone(), bad.clone()], &nodes(), NOW);
    assert_eq!(
        desired_of(&plan),
        vec![("ok", TaskState::Shutdown), ("bad", TaskState::Shutdown)]
    );
    assert_eq!(slots_of(&plan), vec![2]);
    let after = apply(&[ok, bad], &plan, NOW);
    let again = run(Some(&s), &after, &nodes(), NOW + 1_000_000);
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(again.wake_at, None);
}

#[test]
fn condition_none_never_restarts() {
    let mut p = RestartPolicy::default();
    p.set_condition(RestartCondition::None);
    let s = with_restart(service(1, 1), p);
    let t = ended(
        running(&s, "a", 1, 10),
        TaskState::Failed,
        NOW - 10_000,
        Some(1),
    );
    let plan = run(Some(&s), std::slice::from_ref(&t), &nodes(), NOW);
    assert_eq!(desired_of(&plan), vec![("a", TaskState::Shutdown)]);
    assert!(plan.create.is_empty() && plan.wake_at.is_none());
    assert!(run(Some(&s), &apply(&[t], &plan, NOW), &nodes(), NOW).is_empty());
}

#[test]
fn max_attempts_gives_up_after_that_many_restarts() {
    let s = with_restart(
        service(1, 1),
        RestartPolicy {
            delay_ms: Some(0),
            max_attempts: 2,
            ..Default::default()
        },
    );
    let mut tasks = run_until_stable(&s, Vec::new(), NOW);
    let mut now = NOW;
    let mut runs = 0;
    loop {
        let current = tasks
            .iter()
            .position(|t| t.desired_state() == TaskState::Running)
            .map(|i| tasks.remove(i));
        let Some(current) = current else { break };
        runs += 1;
        now += 1000;
        tasks.push(ended(current, TaskState::Failed, now, Some(1)));
        tasks = run_until_stable(&s, tasks, now);
        assert!(runs < 10, "never gave up");
    }
    // The first run and two restarts.
    assert_eq!(runs, 3);
    assert_eq!(tasks.len(), 3);
}

/// Reconciles and applies until nothing changes; asserts it takes one round.
fn run_until_stable(s: &Service, tasks: Vec<Task>, now: i64) -> Vec<Task> {
    let mut gen = {
        let mut n = tasks.len();
        move || {
            n += 1;
            format!("t{n:04}")
        }
    };
    let input = |tasks| ReconcileInput {
        service: Some(s),
        service_id: "svc",
        tasks,
        nodes: &[],
        now,
    };
    let plan = reconcile(&input(&tasks), &mut gen);
    let after = apply(&tasks, &plan, now);
    assert!(reconcile(&input(&after), &mut gen).is_empty());
    after
}

#[test]
fn updates_and_scale_downs_are_not_restart_attempts() {
    let s = with_restart(
        service(5, 1),
        RestartPolicy {
            delay_ms: Some(0),
            max_attempts: 1,
            ..Default::default()
        },
    );
    // Three earlier tasks stopped on purpose, one real failure now: one restart is allowed.
    let mut tasks: Vec<Task> = (0..3)
        .map(|i| {
            let mut t = task(
                &s,
                &format!("old{i}"),
                1,
                TaskState::Shutdown,
                TaskState::Shutdown,
                i,
            );
            t.spec_version = 5;
            t
        })
        .collect();
    tasks.push(ended(
        running(&s, "cur", 1, 10),
        TaskState::Failed,
        NOW,
        Some(1),
    ));
    let plan = run(Some(&s), &tasks, &nodes(), NOW);
    assert_eq!(slots_of(&plan), vec![1]);
}

#[test]
fn history_needed_to_count_attempts_is_kept() {
    let s = with_restart(
        service(1, 1),
        RestartPolicy {
            delay_ms: Some(0),
            max_attempts: 7,
            ..Default::default()
        },
    );
    let mut tasks = Vec::new();
    for i in 0..7 {
        tasks.push(ended(
            task(
                &s,
                &format!("f{i}"),
                1,
                TaskState::Shutdown,
                TaskState::Running,
                i,
            ),
            TaskState::Failed,
            i,
            Some(1),
        ));
    }
    tasks.push(ended(
        running(&s, "cur", 1, 10),
        TaskState::Failed,
        20,
        Some(1),
    ));
    // Eight runs ended: 7 restarts were made, give up; nothing is trimmed (limit 8).
    let plan = run(Some(&s), &tasks, &nodes(), NOW);
    assert_eq!(desired_of(&plan), vec![("cur", TaskState::Shutdown)]);
    assert!(plan.create.is_empty() && plan.delete.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Node failure
// ---------------------------------------------------------------------------------------------

#[test]
fn a_task_on_a_down_node_is_replaced_at_once() {
    let s = service(1, 2);
    let mut on_down = running(&s, "a", 1, 10);
    on_down.node_id = "dead".into();
    let mut on_gone = running(&s, "b", 2, 10);
    on_gone.node_id = "removed".into();
    let nodes = vec![node("n1", NodeState::Ready), node("dead", NodeState::Down)];
    let tasks = vec![on_down, on_gone];
    let plan = run(Some(&s), &tasks, &nodes, NOW);
    assert_eq!(
        desired_of(&plan),
        vec![("a", TaskState::Shutdown), ("b", TaskState::Shutdown)]
    );
    // Status left as reported.
    assert_eq!(plan.update[0].status, tasks[0].status);
    assert_eq!(slots_of(&plan), vec![1, 2]);
    assert_eq!(plan.wake_at, None);
    assert!(run(Some(&s), &apply(&tasks, &plan, NOW), &nodes, NOW).is_empty());
}

#[test]
fn unknown_or_disconnected_nodes_are_not_rescheduled() {
    let s = service(1, 2);
    let mut a = running(&s, "a", 1, 10);
    a.node_id = "u".into();
    let mut b = running(&s, "b", 2, 10);
    b.node_id = "d".into();
    let nodes = vec![
        node("u", NodeState::Unknown),
        node("d", NodeState::Disconnected),
    ];
    assert!(run(Some(&s), &[a, b], &nodes, NOW).is_empty());
}

#[test]
fn a_pending_task_without_a_node_is_not_lost() {
    let s = service(1, 1);
    let mut t = task(&s, "a", 1, TaskState::Running, TaskState::Pending, 10);
    t.node_id.clear();
    assert!(run(Some(&s), &[t], &[], NOW).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Spec updates
// ---------------------------------------------------------------------------------------------

#[test]
fn a_changed_spec_replaces_every_task() {
    let old = service(3, 2);
    let mut new = service(8, 2);
    new.spec = Some(spec("busybox:2", 2, None));
    let tasks = vec![running(&old, "a", 1, 10), running(&old, "b", 2, 10)];
    let plan = run(Some(&new), &tasks, &nodes(), NOW);
    assert_eq!(
        desired_of(&plan),
        vec![("a", TaskState::Shutdown), ("b", TaskState::Shutdown)]
    );
    assert_eq!(slots_of(&plan), vec![1, 2]);
    assert!(plan
        .create
        .iter()
        .all(|t| t.spec_version == 8 && t.spec.as_deref() == new.spec.as_ref()));
    assert!(run(Some(&new), &apply(&tasks, &plan, NOW), &nodes(), NOW).is_empty());
}

#[test]
fn scaling_does_not_replace_tasks() {
    let old = service(3, 2);
    let new = service(8, 3);
    let tasks = vec![running(&old, "a", 1, 10), running(&old, "b", 2, 10)];
    let plan = run(Some(&new), &tasks, &nodes(), NOW);
    assert!(plan.update.is_empty());
    assert_eq!(slots_of(&plan), vec![3]);
}

#[test]
fn an_update_reruns_a_slot_that_ended_by_policy() {
    let mut p = RestartPolicy::default();
    p.set_condition(RestartCondition::None);
    let old = with_restart(service(3, 1), p);
    let t = task(&old, "a", 1, TaskState::Shutdown, TaskState::Complete, 10);
    assert!(run(Some(&old), std::slice::from_ref(&t), &nodes(), NOW).is_empty());
    let mut new = with_restart(service(4, 1), p);
    if let Some(spec) = new.spec.as_mut() {
        spec.container = Some(ContainerSpec {
            image: "busybox:2".into(),
            ..Default::default()
        });
    }
    assert_eq!(slots_of(&run(Some(&new), &[t], &nodes(), NOW)), vec![1]);
}

// ---------------------------------------------------------------------------------------------
// Scale down, removal
// ---------------------------------------------------------------------------------------------

#[test]
fn scale_down_stops_the_highest_slots_and_deletes_their_ended_tasks() {
    let s = service(2, 1);
    let tasks = vec![
        running(&s, "s1", 1, 10),
        running(&s, "s2", 2, 10),
        running(&s, "s3", 3, 10),
        task(&s, "s3-old", 3, TaskState::Shutdown, TaskState::Failed, 5),
        task(
            &s,
            "s2-stopping",
            2,
            TaskState::Shutdown,
            TaskState::Running,
            5,
        ),
        ended(running(&s, "s4", 4, 10), TaskState::Complete, 20, Some(0)),
    ];
    let plan = run(Some(&s), &tasks, &nodes(), NOW);
    assert_eq!(
        desired_of(&plan),
        vec![("s3", TaskState::Shutdown), ("s2", TaskState::Shutdown)]
    );
    assert_eq!(plan.delete, vec!["s4".to_string(), "s3-old".to_string()]);
    assert!(plan.create.is_empty());
    let after = apply(&tasks, &plan, NOW);
    assert!(run(Some(&s), &after, &nodes(), NOW).is_empty());

    // Once they ended, they go.
    let after: Vec<Task> = after
        .into_iter()
        .map(|t| {
            if t.slot > 1 {
                ended(t, TaskState::Shutdown, NOW, None)
            } else {
                t
            }
        })
        .collect();
    let plan = run(Some(&s), &after, &nodes(), NOW);
    let mut deleted = plan.delete.clone();
    deleted.sort();
    assert_eq!(deleted, vec!["s2", "s2-stopping", "s3"]);
    assert!(plan.update.is_empty() && plan.create.is_empty());
}

#[test]
fn scaling_back_up_while_a_task_is_stopping_creates_a_new_one() {
    let s = service(3, 2);
    let tasks = vec![
        running(&s, "s1", 1, 10),
        task(&s, "s2", 2, TaskState::Shutdown, TaskState::Running, 10),
    ];
    assert_eq!(slots_of(&run(Some(&s), &tasks, &nodes(), NOW)), vec![2]);
}

#[test]
fn a_removed_service_is_torn_down() {
    let s = service(1, 3);
    let tasks = vec![
        running(&s, "run", 1, 10),
        task(
            &s,
            "stopping",
            2,
            TaskState::Shutdown,
            TaskState::Running,
            10,
        ),
        task(&s, "removing", 3, TaskState::Remove, TaskState::Running, 10),
        task(&s, "done", 1, TaskState::Shutdown, TaskState::Failed, 5),
        task(&s, "gone", 2, TaskState::Remove, TaskState::Shutdown, 5),
    ];
    let plan = run(None, &tasks, &nodes(), NOW);
    assert_eq!(
        desired_of(&plan),
        vec![("run", TaskState::Remove), ("stopping", TaskState::Remove)]
    );
    assert_eq!(plan.delete, vec!["done".to_string(), "gone".to_string()]);
    assert!(plan.create.is_empty());
    let after = apply(&tasks, &plan, NOW);
    assert!(run(None, &after, &nodes(), NOW).is_empty());
}

// ---------------------------------------------------------------------------------------------
// History
// ---------------------------------------------------------------------------------------------

#[test]
fn history_keeps_five_tasks_per_slot() {
    let s = service(1, 1);
    let mut tasks: Vec<Task> = (0..7)
        .map(|i| {
            task(
                &s,
                &format!("h{i}"),
                1,
                TaskState::Shutdown,
                TaskState::Failed,
                i,
            )
        })
        .collect();
    // An old task still being stopped is never deleted, however old.
    tasks.push(task(
        &s,
        "slow",
        1,
        TaskState::Shutdown,
        TaskState::Running,
        -1,
    ));
    tasks.push(running(&s, "cur", 1, 10));
    let plan = run(Some(&s), &tasks, &nodes(), NOW);
    // Kept: cur, h6, h5, h4, h3.
    assert_eq!(plan.delete, vec!["h2", "h1", "h0"]);
    assert!(plan.update.is_empty() && plan.create.is_empty());
    assert!(run(Some(&s), &apply(&tasks, &plan, NOW), &nodes(), NOW).is_empty());
}

#[test]
fn history_counts_the_new_task() {
    let s = with_restart(
        service(1, 1),
        RestartPolicy {
            delay_ms: Some(0),
            ..Default::default()
        },
    );
    let mut tasks: Vec<Task> = (0..4)
        .map(|i| {
            task(
                &s,
                &format!("h{i}"),
                1,
                TaskState::Shutdown,
                TaskState::Failed,
                i,
            )
        })
        .collect();
    tasks.push(ended(
        running(&s, "cur", 1, 10),
        TaskState::Failed,
        20,
        Some(1),
    ));
    let plan = run(Some(&s), &tasks, &nodes(), NOW);
    assert_eq!(desired_of(&plan), vec![("cur", TaskState::Shutdown)]);
    assert_eq!(slots_of(&plan), vec![1]);
    assert_eq!(plan.delete, vec!["h0"]);
    assert!(run(Some(&s), &apply(&tasks, &plan, NOW), &nodes(), NOW).is_empty());
}

// ---------------------------------------------------------------------------------------------
// reconcile_all
// ---------------------------------------------------------------------------------------------

#[test]
fn reconcile_all_merges_services_and_tears_down_orphans() {
    let a = Service {
        id: "a".into(),
        ..service(1, 2)
    };
    let b = Service {
        id: "b".into(),
        ..with_restart(
            service(1, 1),
            RestartPolicy {
                delay_ms: Some(1000),
                ..Default::default()
            },
        )
    };
    let mut g = Service {
        id: "g".into(),
        ..service(1, 0)
    };
    if let Some(spec) = g.spec.as_mut() {
        spec.mode = Some(Mode::Global(GlobalService {}));
    }
    let b_failed = ended(
        running(&b, "b1", 1, 10),
        TaskState::Failed,
        NOW - 100,
        Some(1),
    );
    let b_failed = Task {
        service_id: "b".into(),
        ..b_failed
    };
    let c_run = Task {
        service_id: "c".into(),
        ..running(&a, "c1", 1, 10)
    };
    let c_done = Task {
        service_id: "c".into(),
        ..task(&a, "c0", 1, TaskState::Shutdown, TaskState::Complete, 5)
    };
    let g_run = Task {
        service_id: "g".into(),
        ..running(&g, "g1", 0, 10)
    };
    let tasks = vec![c_run, b_failed, g_run, c_done];
    let services = vec![b.clone(), g, a];
    let mut gen = ids();
    let plan = reconcile_all(&services, &tasks, &nodes(), NOW, &mut gen);
    let created: Vec<(&str, u64)> = plan
        .create
        .iter()
        .map(|t| (t.service_id.as_str(), t.slot))
        .collect();
    // The global service g has its task on n1 and gets one on n2.
    assert_eq!(created, vec![("a", 1), ("a", 2), ("g", 0)]);
    assert_eq!(
        desired_of(&plan),
        vec![("b1", TaskState::Shutdown), ("c1", TaskState::Remove)]
    );
    assert_eq!(plan.delete, vec!["c0"]);
    assert_eq!(plan.wake_at, Some(NOW + 900));

    let after = apply(&tasks, &plan, NOW);
    let again = reconcile_all(&services, &after, &nodes(), NOW, &mut gen);
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(again.wake_at, Some(NOW + 900));
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn arb_policy() -> impl Strategy<Value = Option<RestartPolicy>> {
    proptest::option::weighted(
        0.8,
        (
            prop_oneof![
                Just(RestartCondition::Any),
                Just(RestartCondition::OnFailure),
                Just(RestartCondition::None)
            ],
            proptest::option::of(prop_oneof![Just(0u64), Just(500), Just(5000), Just(20_000)]),
            prop_oneof![3 => Just(0u64), 1 => 1u64..8],
            prop_oneof![Just(0u64), Just(300), Just(3000)],
        )
            .prop_map(|(condition, delay_ms, max_attempts, window_ms)| {
                let mut p = RestartPolicy {
                    delay_ms,
                    max_attempts,
                    window_ms,
                    ..Default::default()
                };
                p.set_condition(condition);
                p
            }),
    )
}

fn arb_state() -> impl Strategy<Value = TaskState> {
    (0i32..=13).prop_map(|i| TaskState::try_from(i).unwrap_or(TaskState::New))
}

/// A service at version 1..=4 whose image changes with the version (sometimes not).
fn service_at(version: u64, replicas: u64, restart: Option<RestartPolicy>) -> Service {
    Service {
        id: "svc".into(),
        meta: Some(Meta {
            version,
            ..Default::default()
        }),
        spec: Some(spec(&format!("busybox:{}", version / 2), replicas, restart)),
        ..Default::default()
    }
}

#[derive(Debug, Clone)]
struct Scenario {
    service: Option<Service>,
    nodes: Vec<Node>,
    tasks: Vec<Task>,
    now: i64,
}

fn arb_task(i: usize) -> impl Strategy<Value = Task> {
    (
        0u64..7,
        prop_oneof![
            4 => Just(TaskState::Running),
            2 => Just(TaskState::Shutdown),
            1 => Just(TaskState::Remove)
        ],
        arb_state(),
        0usize..6,
        0i64..1000,
        0i64..1000,
        proptest::option::of(0i32..3),
        1u64..=4,
        arb_policy(),
    )
        .prop_map(
            move |(slot, desired, state, node, created, at, exit, version, policy)| {
                let s = service_at(version, 1, policy);
                let mut t = task(&s, &format!("a{i:02}"), slot, desired, state, created);
                // n0..n3 exist, n4 does not, n5 means "no node yet".
                t.node_id = if node == 5 {
                    String::new()
                } else {
                    format!("n{node}")
                };
                if let Some(st) = t.status.as_mut() {
                    st.timestamp = at;
                    st.exit_code = exit;
                }
                t
            },
        )
}

fn arb_scenario() -> impl Strategy<Value = Scenario> {
    (
        proptest::option::weighted(0.9, (1u64..=4, 0u64..6, arb_policy())),
        proptest::collection::vec(
            prop_oneof![
                3 => Just(NodeState::Ready),
                1 => Just(NodeState::Down),
                1 => Just(NodeState::Unknown)
            ],
            4,
        ),
        (0usize..16).prop_flat_map(|n| (0..n).map(arb_task).collect::<Vec<_>>()),
        1000i64..30_000,
    )
        .prop_map(|(service, node_states, mut tasks, now)| {
            let service = service.map(|(v, r, p)| service_at(v, r, p));
            // A task made from the service's current version has its spec.
            for t in &mut tasks {
                if let Some(s) = service
                    .as_ref()
                    .filter(|s| s.meta.as_ref().map(|m| m.version) == Some(t.spec_version))
                {
                    t.spec = s.spec.clone().map(SharedSpec::new);
                }
            }
            Scenario {
                service,
                nodes: node_states
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| node(&format!("n{i}"), s))
                    .collect(),
                tasks,
                now,
            }
        })
}

/// Checks the plan is well formed: no task both updated and deleted, no duplicates, and only
/// desired states the orchestrator may set.
fn check_shape(plan: &Plan, tasks: &[Task]) -> Result<(), TestCaseError> {
    let known: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    let mut seen = HashSet::new();
    for t in &plan.update {
        prop_assert!(known.contains(t.id.as_str()));
        prop_assert!(seen.insert(t.id.as_str()), "twice: {}", t.id);
        let before = tasks.iter().find(|b| b.id == t.id);
        let mut back = t.clone();
        if let Some(b) = before {
            back.set_desired_state(b.desired_state());
            back.out_of_rotation = b.out_of_rotation;
            if t.desired_state() != TaskState::Running {
                prop_assert!(t.drain_ms.is_some(), "a stopped task carries its drain");
                back.drain_ms = b.drain_ms;
            }
            prop_assert_eq!(
                &back,
                b,
                "only desired_state, rotation and drain may change"
            );
            prop_assert!(
                t.desired_state() != b.desired_state() || t.out_of_rotation != b.out_of_rotation,
                "an update that changes nothing: {:?}",
                t
            );
        }
    }
    for id in &plan.delete {
        prop_assert!(known.contains(id.as_str()));
        prop_assert!(seen.insert(id.as_str()), "twice: {}", id);
    }
    for t in &plan.create {
        prop_assert!(!known.contains(t.id.as_str()));
        prop_assert!(seen.insert(t.id.as_str()));
        prop_assert_eq!(t.desired_state(), TaskState::Running);
    }
    Ok(())
}

fn reconcile_scenario(sc: &Scenario, tasks: &[Task], gen: &mut dyn FnMut() -> String) -> Plan {
    reconcile(
        &ReconcileInput {
            service: sc.service.as_ref(),
            service_id: "svc",
            tasks,
            nodes: &sc.nodes,
            now: sc.now,
        },
        gen,
    )
}

fn lost(sc: &Scenario, node_id: &str) -> bool {
    !node_id.is_empty()
        && sc
            .nodes
            .iter()
            .find(|n| n.id == node_id)
            .is_none_or(|n| n.status.as_ref().map(|s| s.state()) == Some(NodeState::Down))
}

fn terminal(t: &Task) -> bool {
    t.status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(TaskState::New)
        .is_terminal()
}

/// The slot invariants after a plan was applied.
fn check_slots(sc: &Scenario, tasks: &[Task]) -> Result<(), TestCaseError> {
    let Some(service) = &sc.service else {
        for t in tasks {
            prop_assert!(!terminal(t), "ended task of a removed service kept");
            prop_assert_eq!(t.desired_state(), TaskState::Remove);
        }
        return Ok(());
    };
    let replicas = match service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
        Some(Mode::Replicated(r)) => r.replicas,
        _ => return Ok(()),
    };
    let limit = restart::history_limit(service.spec.as_ref().and_then(|s| s.restart.as_ref()));
    let mut by_slot: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        by_slot.entry(t.slot).or_default().push(t);
    }
    for (slot, mut ts) in by_slot.clone() {
        ts.sort_by(|a, b| {
            let c = |t: &Task| t.meta.as_ref().map(|m| m.created_at).unwrap_or(0);
            (c(b), b.id.as_str()).cmp(&(c(a), a.id.as_str()))
        });
        let running: Vec<&&Task> = ts
            .iter()
            .filter(|t| t.desired_state() == TaskState::Running)
            .collect();
        if slot == 0 || slot > replicas {
            prop_assert!(running.is_empty(), "slot {} beyond replicas runs", slot);
            prop_assert!(
                ts.iter().all(|t| !terminal(t)),
                "ended task kept in slot {}",
                slot
            );
            continue;
        }
        prop_assert!(
            running.len() <= 1,
            "slot {} runs {} tasks",
            slot,
            running.len()
        );
        if let Some(current) = running.first() {
            prop_assert!(!terminal(current));
            prop_assert!(!lost(sc, &current.node_id));
            prop_assert!(!update::is_dirty(current, service));
        } else {
            // Settled or waiting: the newest ended, is current, and the policy says not now.
            let newest = ts[0];
            prop_assert!(terminal(newest));
            prop_assert!(!update::is_dirty(newest, service));
            prop_assert_ne!(restart::decide(&ts, limit, sc.now), Restart::Now);
        }
        for t in ts.iter().skip(limit) {
            prop_assert!(
                !terminal(t) || t.desired_state() == TaskState::Running,
                "history not trimmed"
            );
        }
    }
    for slot in 1..=replicas {
        prop_assert!(
            by_slot.contains_key(&slot),
            "slot {} has no task at all",
            slot
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn reconcile_is_idempotent(sc in arb_scenario()) {
        let mut gen = ids();
        let plan = reconcile_scenario(&sc, &sc.tasks, &mut gen);
        check_shape(&plan, &sc.tasks)?;
        let after = apply(&sc.tasks, &plan, sc.now);
        let sc_after = Scenario { service: service_after(sc.service.as_ref(), &plan), ..sc.clone() };
        let again = reconcile_scenario(&sc_after, &after, &mut gen);
        prop_assert!(again.is_empty(), "second plan {:?}\nafter first {:?}", again, plan);
        prop_assert_eq!(again.wake_at, plan.wake_at);
        // Deterministic: the same input gives the same plan.
        prop_assert_eq!(reconcile_scenario(&sc, &sc.tasks, &mut ids()), plan);
    }

    #[test]
    fn slots_hold_one_running_task_unless_the_policy_says_otherwise(sc in arb_scenario()) {
        let plan = reconcile_scenario(&sc, &sc.tasks, &mut ids());
        let after = apply(&sc.tasks, &plan, sc.now);
        check_slots(&sc, &after)?;
    }

    #[test]
    fn with_restart_always_every_slot_runs(
        sc in arb_scenario(),
        replicas in 0u64..6,
    ) {
        // Restart on any exit, no delay, no limit: exactly `replicas` slots run, whatever the
        // tasks looked like.
        let policy = Some(RestartPolicy { delay_ms: Some(0), ..Default::default() });
        let sc = Scenario {
            service: Some(service_at(4, replicas, policy)),
            tasks: sc.tasks.into_iter().map(|mut t| {
                if let Some(s) = t.spec.as_mut() { s.restart = policy; }
                t
            }).collect(),
            ..sc
        };
        let plan = reconcile_scenario(&sc, &sc.tasks, &mut ids());
        let after = apply(&sc.tasks, &plan, sc.now);
        let mut running: HashMap<u64, usize> = HashMap::new();
        for t in after.iter().filter(|t| t.desired_state() == TaskState::Running) {
            *running.entry(t.slot).or_default() += 1;
        }
        let expected: HashMap<u64, usize> = (1..=replicas).map(|s| (s, 1)).collect();
        prop_assert_eq!(running, expected);
        prop_assert!(plan.wake_at.is_none());
    }
}

#[test]
fn a_drained_nodes_replicated_task_is_replaced_elsewhere() {
    let s = service(1, 1);
    let t = running(&s, "a", 1, 10); // on n1
    let nodes = vec![
        with_availability(
            node("n1", NodeState::Ready),
            shoal_proto::NodeAvailability::Drain,
        ),
        node("n2", NodeState::Ready),
    ];
    let plan = run(Some(&s), std::slice::from_ref(&t), &nodes, NOW);
    assert_eq!(desired_of(&plan), vec![("a", TaskState::Shutdown)]);
    assert_eq!(slots_of(&plan), vec![1]);
}

// ---------------------------------------------------------------------------------------------
// Rolling updates and rollback
// ---------------------------------------------------------------------------------------------

use shoal_proto::{UpdateFailureAction, UpdateOrder, UpdateState};

/// A service (replicated, `replicas`) and its tasks as they evolve: the orchestrator's passes
/// applied like the store would, and a fake agent that moves the tasks.
struct Sim {
    service: Service,
    tasks: Vec<Task>,
    now: i64,
    next_id: usize,
}

impl Sim {
    /// `replicas` tasks of `v1` running since `now - 60 s`.
    fn running(v1: Service, replicas: u64, now: i64) -> Sim {
        let tasks = (1..=replicas)
            .map(|slot| running(&v1, &format!("v1-{slot}"), slot, now - 60_000))
            .collect();
        Sim {
            service: v1,
            tasks,
            now,
            next_id: 0,
        }
    }

    /// The operator's update: the new spec and config, as the control API writes it.
    fn update(&mut self, image: &str, config: UpdateConfig) {
        let mut s = self.service.clone();
        s.previous_spec = s.spec.clone();
        s.update_status = None;
        if let Some(spec) = s.spec.as_mut() {
            if let Some(c) = spec.container.as_mut() {
                c.image = image.into();
            }
            spec.update_config = Some(config);
        }
        if let Some(m) = s.meta.as_mut() {
            m.version += 10;
        }
        self.service = s;
    }

    /// One orchestrator pass, committed.
    fn pass(&mut self) -> Plan {
        let mut n = self.next_id;
        let mut gen = || {
            n += 1;
            format!("t{n:04}")
        };
        let plan = reconcile(
            &ReconcileInput {
                service: Some(&self.service),
                service_id: "svc",
                tasks: &self.tasks,
                nodes: &nodes(),
                now: self.now,
            },
            &mut gen,
        );
        self.next_id = n;
        self.tasks = apply(&self.tasks, &plan, self.now);
        self.service = service_after(Some(&self.service), &plan).unwrap_or_default();
        plan
    }

    /// The agent: stops what should stop, and starts the wanted tasks `start` picks; a task
    /// whose image is `failing` fails instead of running.
    fn agent(&mut self, start: &mut dyn FnMut(&Task) -> bool, failing: Option<&str>) -> bool {
        let now = self.now;
        let mut changed = false;
        for t in &mut self.tasks {
            let state = t.status.as_ref().map(|s| s.state()).unwrap_or_default();
            if state.is_terminal() {
                continue;
            }
            let to = if t.desired_state() != TaskState::Running {
                TaskState::Shutdown
            } else if state < TaskState::Running && start(t) {
                if failing.is_some_and(|f| image_of(t) == f) {
                    TaskState::Failed
                } else {
                    TaskState::Running
                }
            } else {
                continue;
            };
            *t = ended(t.clone(), to, now, None);
            changed = true;
        }
        changed
    }

    fn status(&self) -> UpdateState {
        self.service
            .update_status
            .as_ref()
            .map(|s| s.state())
            .unwrap_or_default()
    }

    /// Wanted and serving: desired RUNNING and RUNNING.
    fn serving(&self) -> Vec<&Task> {
        self.tasks
            .iter()
            .filter(|t| {
                t.desired_state() == TaskState::Running
                    && t.status.as_ref().map(|s| s.state()) == Some(TaskState::Running)
            })
            .collect()
    }

    /// Slots whose newest wanted task runs `image` and has not been RUNNING for `monitor`.
    fn in_flight(&self, image: &str, monitor: i64) -> usize {
        let mut slots = HashSet::new();
        for t in &self.tasks {
            if t.desired_state() != TaskState::Running || image_of(t) != image {
                continue;
            }
            let s = t.status.clone().unwrap_or_default();
            if s.state() < TaskState::Running
                || (s.state() == TaskState::Running && s.timestamp + monitor > self.now)
            {
                slots.insert(t.slot);
            }
        }
        slots.len()
    }

    /// Passes (starting everything) until nothing changes, `max` at most, `step` ms apart.
    fn settle(&mut self, step: i64, failing: Option<&str>, max: usize) {
        for _ in 0..max {
            let plan = self.pass();
            let moved = self.agent(&mut |_| true, failing);
            if plan.is_empty() && plan.wake_at.is_none() && !moved {
                return;
            }
            self.now += step;
        }
    }
}

fn image_of(t: &Task) -> &str {
    t.spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map(|c| c.image.as_str())
        .unwrap_or("")
}

fn v1(replicas: u64) -> Service {
    let mut s = service(1, replicas);
    if let Some(spec) = s.spec.as_mut() {
        spec.update_config = None;
    }
    s
}

#[test]
fn a_rolling_update_replaces_one_slot_at_a_time_by_default() {
    let mut sim = Sim::running(v1(3), 3, NOW);
    sim.update("busybox:2", UpdateConfig::default());
    let plan = sim.pass();
    assert_eq!(slots_of(&plan), vec![1]);
    assert_eq!(desired_of(&plan), vec![("v1-1", TaskState::Shutdown)]);
    assert_eq!(sim.status(), UpdateState::Updating);
    // In flight: nothing more until the new task ran for the monitor period (5 s).
    assert!(sim.pass().is_empty());
    sim.agent(&mut |_| true, None);
    let started = sim.now;
    sim.now += 4_999;
    let plan = sim.pass();
    assert!(plan.is_empty());
    assert_eq!(plan.wake_at, Some(started + 5_000));
    sim.now = started + 5_000;
    assert_eq!(slots_of(&sim.pass()), vec![2]);
    sim.settle(5_000, None, 20);
    assert_eq!(sim.status(), UpdateState::Completed);
    let status = sim.service.update_status.clone().unwrap_or_default();
    assert_eq!(status.message, "update completed");
    assert!(status.completed_at > status.started_at);
    let serving = sim.serving();
    assert_eq!(serving.len(), 3);
    assert!(serving.iter().all(|t| image_of(t) == "busybox:2"));
}

#[test]
fn start_first_keeps_the_old_task_until_the_new_one_runs() {
    let mut sim = Sim::running(v1(2), 2, NOW);
    sim.update(
        "busybox:2",
        UpdateConfig {
            order: UpdateOrder::StartFirst as i32,
            monitor_ms: Some(1_000),
            ..Default::default()
        },
    );
    let plan = sim.pass();
    assert_eq!(slots_of(&plan), vec![1]);
    assert!(plan.update.is_empty(), "the old task keeps running");
    // The new task is starting: both stay wanted, again and again.
    assert!(sim.pass().is_empty());
    assert_eq!(sim.serving().len(), 2);
    // It runs: now the old one stops.
    sim.agent(&mut |_| true, None);
    let plan = sim.pass();
    assert_eq!(desired_of(&plan), vec![("v1-1", TaskState::Shutdown)]);
    assert_eq!(sim.serving().len(), 2);
    sim.settle(1_000, None, 20);
    assert_eq!(sim.status(), UpdateState::Completed);
    assert!(sim.serving().iter().all(|t| image_of(t) == "busybox:2"));
    assert_eq!(sim.serving().len(), 2);
}

#[test]
fn a_failed_start_first_replacement_pauses_and_leaves_the_old_task_running() {
    let mut sim = Sim::running(v1(2), 2, NOW);
    sim.update(
        "busybox:bad",
        UpdateConfig {
            order: UpdateOrder::StartFirst as i32,
            ..Default::default()
        },
    );
    sim.pass();
    sim.agent(&mut |_| true, Some("busybox:bad"));
    sim.now += 100;
    sim.settle(1_000, Some("busybox:bad"), 20);
    assert_eq!(sim.status(), UpdateState::Paused);
    let status = sim.service.update_status.clone().unwrap_or_default();
    assert!(
        status
            .message
            .starts_with("update paused due to failure or early termination of task t"),
        "{}",
        status.message
    );
    let serving = sim.serving();
    assert_eq!(serving.len(), 2);
    assert!(serving.iter().all(|t| image_of(t) == "busybox:1"));
}

#[test]
fn failure_action_rollback_restores_the_previous_spec() {
    let mut sim = Sim::running(v1(3), 3, NOW);
    let v1_spec = sim.service.spec.clone();
    sim.update(
        "busybox:bad",
        UpdateConfig {
            failure_action: UpdateFailureAction::Rollback as i32,
            monitor_ms: Some(1_000),
            ..Default::default()
        },
    );
    let v2_spec = sim.service.spec.clone();
    sim.settle(500, Some("busybox:bad"), 50);
    assert_eq!(sim.status(), UpdateState::RollbackCompleted);
    assert_eq!(sim.service.spec, v1_spec);
    assert_eq!(sim.service.previous_spec, v2_spec);
    let status = sim.service.update_status.clone().unwrap_or_default();
    assert!(
        status.message.starts_with(
            "rollback completed (update rolled back due to failure or early termination of task t"
        ),
        "{}",
        status.message
    );
    let serving = sim.serving();
    assert_eq!(serving.len(), 3);
    assert!(serving.iter().all(|t| image_of(t) == "busybox:1"));
}

#[test]
fn a_manual_rollback_uses_the_rollback_config() {
    let mut sim = Sim::running(v1(4), 4, NOW);
    sim.update("busybox:2", all_at_once());
    sim.settle(100, None, 20);
    assert_eq!(sim.status(), UpdateState::Completed);
    // `service rollback`: the control API swaps the specs and starts the rollback.
    let mut s = sim.service.clone();
    std::mem::swap(&mut s.spec, &mut s.previous_spec);
    if let Some(p) = s.previous_spec.as_mut() {
        p.rollback_config = Some(UpdateConfig {
            parallelism: Some(2),
            monitor_ms: Some(0),
            ..Default::default()
        });
    }
    s.update_status = Some(shoal_proto::UpdateStatus {
        state: UpdateState::RollbackStarted as i32,
        started_at: sim.now,
        ..Default::default()
    });
    if let Some(m) = s.meta.as_mut() {
        m.version += 10;
    }
    sim.service = s;
    let plan = sim.pass();
    assert_eq!(slots_of(&plan), vec![1, 2]);
    sim.settle(100, None, 20);
    assert_eq!(sim.status(), UpdateState::RollbackCompleted);
    assert!(sim.serving().iter().all(|t| image_of(t) == "busybox:1"));
}

#[test]
fn scaling_during_nothing_writes_no_status() {
    let mut sim = Sim::running(v1(2), 2, NOW);
    let mut s = sim.service.clone();
    s.spec = Some(spec("busybox:1", 3, None));
    sim.service = s;
    sim.settle(100, None, 10);
    assert_eq!(sim.service.update_status, None);
}

#[derive(Debug, Clone)]
struct Rolling {
    replicas: u64,
    parallelism: u64,
    start_first: bool,
    monitor_ms: u64,
    delay_ms: u64,
    /// Per step: how far the clock moves, and which wanted tasks start.
    steps: Vec<(i64, u64)>,
}

fn arb_rolling() -> impl Strategy<Value = Rolling> {
    (
        1u64..7,
        0u64..4,
        any::<bool>(),
        prop_oneof![Just(0u64), 0u64..3000],
        prop_oneof![Just(0u64), 0u64..1000],
        proptest::collection::vec((0i64..2000, any::<u64>()), 0..60),
    )
        .prop_map(
            |(replicas, parallelism, start_first, monitor_ms, delay_ms, steps)| Rolling {
                replicas,
                parallelism,
                start_first,
                monitor_ms,
                delay_ms,
                steps,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn rolling_updates_respect_parallelism_and_start_first_keeps_capacity(r in arb_rolling()) {
        let mut sim = Sim::running(v1(r.replicas), r.replicas, NOW);
        let order = if r.start_first { UpdateOrder::StartFirst } else { UpdateOrder::StopFirst };
        sim.update("busybox:2", UpdateConfig {
            parallelism: Some(r.parallelism),
            monitor_ms: Some(r.monitor_ms),
            delay_ms: r.delay_ms,
            order: order as i32,
            ..Default::default()
        });
        let limit = if r.parallelism == 0 { r.replicas as usize } else { r.parallelism as usize };
        for (advance, mask) in &r.steps {
            sim.pass();
            let in_flight = sim.in_flight("busybox:2", r.monitor_ms as i64);
            prop_assert!(in_flight <= limit, "{} slots in flight, parallelism {}", in_flight, limit);
            if r.start_first {
                prop_assert!(sim.serving().len() as u64 >= r.replicas,
                    "only {} serving of {}", sim.serving().len(), r.replicas);
            }
            let mut bit = 0;
            sim.agent(&mut |_| { bit += 1; mask & (1 << (bit % 64)) != 0 }, None);
            sim.now += advance;
        }
        sim.settle(1_000, None, 200);
        prop_assert_eq!(sim.status(), UpdateState::Completed);
        let serving = sim.serving();
        prop_assert_eq!(serving.len() as u64, r.replicas);
        prop_assert!(serving.iter().all(|t| image_of(t) == "busybox:2"));
    }

    #[test]
    fn a_failing_update_with_rollback_always_ends_on_the_previous_spec(
        replicas in 1u64..6,
        parallelism in 0u64..3,
        start_first in any::<bool>(),
    ) {
        let mut sim = Sim::running(v1(replicas), replicas, NOW);
        let order = if start_first { UpdateOrder::StartFirst } else { UpdateOrder::StopFirst };
        let v1_spec = sim.service.spec.clone();
        sim.update("busybox:bad", UpdateConfig {
            parallelism: Some(parallelism),
            order: order as i32,
            failure_action: UpdateFailureAction::Rollback as i32,
            ..Default::default()
        });
        sim.settle(1_000, Some("busybox:bad"), 200);
        prop_assert_eq!(sim.status(), UpdateState::RollbackCompleted);
        prop_assert_eq!(&sim.service.spec, &v1_spec);
        let serving = sim.serving();
        prop_assert_eq!(serving.len() as u64, replicas);
        prop_assert!(serving.iter().all(|t| image_of(t) == "busybox:1"));
    }
}

fn arb_rollout() -> impl Strategy<Value = (UpdateConfig, Option<shoal_proto::UpdateStatus>)> {
    (
        prop_oneof![Just(None), (0u64..3).prop_map(Some)],
        prop_oneof![Just(0u64), Just(700)],
        0i32..3,
        prop_oneof![Just(None), Just(Some(0u64)), Just(Some(2_000))],
        prop_oneof![Just(0.0f32), Just(0.5)],
        0i32..2,
        proptest::option::of((1i32..=6, 0i64..30_000)),
        (0i32..2, 0i32..2),
    )
        .prop_map(
            |(
                parallelism,
                delay_ms,
                action,
                monitor_ms,
                ratio,
                order,
                status,
                (strategy, promote),
            )| {
                let config = UpdateConfig {
                    parallelism,
                    delay_ms,
                    failure_action: action,
                    monitor_ms,
                    max_failure_ratio: ratio,
                    order,
                    strategy,
                    promote,
                    ..Default::default()
                };
                let status = status.map(|(state, started_at)| shoal_proto::UpdateStatus {
                    state,
                    started_at,
                    ..Default::default()
                });
                (config, status)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any rollout settings and state: the plan is well formed, and unless it rolls the
    /// service back (a new spec), reconciling its result changes nothing more.
    #[test]
    fn rollouts_are_idempotent(sc in arb_scenario(), (config, status) in arb_rollout()) {
        let mut sc = sc;
        if let Some(s) = sc.service.as_mut() {
            if let Some(spec) = s.spec.as_mut() {
                spec.update_config = Some(config.clone());
                spec.rollback_config = Some(config);
            }
            s.previous_spec = Some(spec("busybox:0", 2, None));
            s.update_status = status;
        }
        let mut gen = ids();
        let plan = reconcile_scenario(&sc, &sc.tasks, &mut gen);
        check_shape(&plan, &sc.tasks)?;
        prop_assert!(plan.services.len() <= 1);
        let after = apply(&sc.tasks, &plan, sc.now);
        let service = service_after(sc.service.as_ref(), &plan);
        if service.as_ref().map(|s| &s.spec) != sc.service.as_ref().map(|s| &s.spec) {
            prop_assert!(plan.create.is_empty(), "a rollback creates nothing from the old spec");
            return Ok(());
        }
        let sc_after = Scenario { service, ..sc.clone() };
        let again = reconcile_scenario(&sc_after, &after, &mut gen);
        prop_assert!(again.is_empty(), "second plan {:?}\nafter first {:?}", again, plan);
        prop_assert_eq!(reconcile_scenario(&sc, &sc.tasks, &mut ids()), plan);
    }
}
