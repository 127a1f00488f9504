use super::*;
use proptest::prelude::*;
use shoal_proto::{NodeDescription, NodeStatus, Resources, ServiceSpec, SharedSpec, TaskStatus};

fn node(id: &str, state: NodeState, availability: NodeAvailability, mem: i64, cpu: i64) -> Node {
    let mut n = Node {
        id: id.to_string(),
        description: Some(NodeDescription {
            resources: Some(Resources {
                memory_bytes: mem,
                nano_cpus: cpu,
                pids: 0,
            }),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    n.set_availability(availability);
    n
}

fn ready(id: &str) -> Node {
    node(
        id,
        NodeState::Ready,
        NodeAvailability::Active,
        8 << 30,
        4_000_000_000,
    )
}

fn task(id: &str, service: &str, slot: u64, mem: i64, cpu: i64) -> Task {
    let mut t = Task {
        id: id.to_string(),
        service_id: service.to_string(),
        slot,
        spec: Some(SharedSpec::new(ServiceSpec {
            reservations: Some(Resources {
                memory_bytes: mem,
                nano_cpus: cpu,
                pids: 0,
            }),
            ..Default::default()
        })),
        status: Some(TaskStatus {
            state: TaskState::Pending as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    t.set_desired_state(TaskState::Running);
    t
}

fn on(mut t: Task, node_id: &str, state: TaskState) -> Task {
    t.node_id = node_id.to_string();
    if let Some(s) = t.status.as_mut() {
        s.set_state(state);
    }
    t
}

fn placed(decisions: &[Decision]) -> Vec<(&str, Option<&str>)> {
    decisions
        .iter()
        .map(|d| (d.task_id.as_str(), d.node_id.as_deref()))
        .collect()
}

#[test]
fn assigns_a_pending_task_to_a_ready_node() {
    let d = schedule(&[ready("n1")], &[task("t1", "s", 1, 0, 0)]);
    assert_eq!(placed(&d), vec![("t1", Some("n1"))]);
    assert_eq!(d[0].error, "");
}

#[test]
fn new_tasks_are_scheduled_too() {
    let mut t = task("t1", "s", 1, 0, 0);
    t.status = None; // NEW
    let d = schedule(&[ready("n1")], &[t]);
    assert_eq!(placed(&d), vec![("t1", Some("n1"))]);
}

#[test]
fn only_pending_unassigned_tasks_desired_running_are_considered() {
    // (A pending task with a node is a global one: see the preassigned test.)
    let mut shut = task("shut", "s", 1, 0, 0);
    shut.set_desired_state(TaskState::Shutdown);
    let assigned = on(task("assigned", "s", 2, 0, 0), "n1", TaskState::Assigned);
    let running = on(task("running", "s", 4, 0, 0), "n1", TaskState::Running);
    let d = schedule(&[ready("n1")], &[shut, assigned, running]);
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn skips_nodes_that_are_not_ready_or_not_active() {
    let nodes = [
        node(
            "a-down",
            NodeState::Down,
            NodeAvailability::Active,
            1 << 30,
            0,
        ),
        node(
            "b-unknown",
            NodeState::Unknown,
            NodeAvailability::Active,
            1 << 30,
            0,
        ),
        node(
            "c-disc",
            NodeState::Disconnected,
            NodeAvailability::Active,
            1 << 30,
            0,
        ),
        node(
            "d-drain",
            NodeState::Ready,
            NodeAvailability::Drain,
            1 << 30,
            0,
        ),
        node(
            "e-pause",
            NodeState::Ready,
            NodeAvailability::Pause,
            1 << 30,
            0,
        ),
        ready("z-ok"),
    ];
    let d = schedule(
        &nodes,
        &[task("t1", "s", 1, 0, 0), task("t2", "s", 2, 0, 0)],
    );
    assert_eq!(placed(&d), vec![("t1", Some("z-ok")), ("t2", Some("z-ok"))]);
}

#[test]
fn explains_why_nothing_fits_aggregated_by_reason() {
    let nodes = [
        node(
            "a",
            NodeState::Ready,
            NodeAvailability::Active,
            1 << 20,
            1_000_000_000,
        ),
        node(
            "b",
            NodeState::Ready,
            NodeAvailability::Active,
            1 << 20,
            1_000_000_000,
        ),
        node(
            "c",
            NodeState::Down,
            NodeAvailability::Active,
            1 << 40,
            1_000_000_000,
        ),
    ];
    let d = schedule(&nodes, &[task("t1", "s", 1, 1 << 30, 0)]);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].node_id, None);
    assert_eq!(
        d[0].error,
        "no suitable node (insufficient memory on 2 nodes; 1 node not ready)"
    );

    let nodes = [
        node("a", NodeState::Ready, NodeAvailability::Active, 1 << 30, 1),
        node("b", NodeState::Ready, NodeAvailability::Drain, 1 << 30, 1),
        node("c", NodeState::Ready, NodeAvailability::Pause, 1 << 30, 1),
        node("d", NodeState::Ready, NodeAvailability::Drain, 1 << 30, 1),
    ];
    let d = schedule(&nodes, &[task("t1", "s", 1, 0, 2)]);
    assert_eq!(
        d[0].error,
        "no suitable node (insufficient cpu on 1 node; 1 node paused; 2 nodes drained)"
    );
}

#[test]
fn no_nodes_at_all() {
    let d = schedule(&[], &[task("t1", "s", 1, 0, 0)]);
    assert_eq!(d[0].node_id, None);
    assert_eq!(d[0].error, "no suitable node (no nodes in the cluster)");
}

#[test]
fn an_unchanged_error_is_not_repeated() {
    let mut t = task("t1", "s", 1, 0, 0);
    t.scheduling_error = "no suitable node (no nodes in the cluster)".into();
    assert!(schedule(&[], &[t.clone()]).is_empty());
    // A different reason is reported.
    let d = schedule(
        &[node("n", NodeState::Down, NodeAvailability::Active, 0, 0)],
        &[t],
    );
    assert_eq!(d[0].error, "no suitable node (1 node not ready)");
}

#[test]
fn a_node_without_reported_resources_takes_only_tasks_that_reserve_nothing() {
    let nodes = [node("n1", NodeState::Ready, NodeAvailability::Active, 0, 0)];
    let d = schedule(
        &nodes,
        &[task("free", "s", 1, 0, 0), task("mem", "s", 2, 1, 0)],
    );
    assert_eq!(placed(&d), vec![("free", Some("n1")), ("mem", None)]);
}

#[test]
fn reservations_of_non_terminal_tasks_on_the_node_count() {
    let nodes = [node(
        "n1",
        NodeState::Ready,
        NodeAvailability::Active,
        1000,
        1000,
    )];
    // A task still being stopped holds its memory; a finished one does not.
    let mut stopping = on(task("old", "x", 1, 600, 0), "n1", TaskState::Running);
    stopping.set_desired_state(TaskState::Shutdown);
    let finished = on(task("done", "x", 2, 900, 0), "n1", TaskState::Failed);
    let d = schedule(
        &nodes,
        &[
            stopping.clone(),
            finished.clone(),
            task("t", "s", 1, 500, 0),
        ],
    );
    assert_eq!(d[0].node_id, None);
    assert_eq!(
        d[0].error,
        "no suitable node (insufficient memory on 1 node)"
    );
    let d = schedule(&nodes, &[stopping, finished, task("t", "s", 1, 400, 0)]);
    assert_eq!(d[0].node_id.as_deref(), Some("n1"));
}

#[test]
fn reservations_placed_earlier_in_the_same_call_count() {
    let nodes = [
        node("n1", NodeState::Ready, NodeAvailability::Active, 1000, 1000),
        node("n2", NodeState::Ready, NodeAvailability::Active, 1000, 1000),
    ];
    let tasks: Vec<Task> = (1..=5)
        .map(|i| task(&format!("t{i}"), "s", i, 400, 0))
        .collect();
    let d = schedule(&nodes, &tasks);
    assert_eq!(
        placed(&d),
        vec![
            ("t1", Some("n1")),
            ("t2", Some("n2")),
            ("t3", Some("n1")),
            ("t4", Some("n2")),
            ("t5", None),
        ]
    );
    assert_eq!(
        d[4].error,
        "no suitable node (insufficient memory on 2 nodes)"
    );
    // Across groups (another service) too.
    let mut tasks = tasks;
    tasks.push(task("u1", "t", 1, 0, 300));
    tasks.push(task("u2", "t", 2, 0, 800));
    let d = schedule(&nodes, &tasks);
    let u: Vec<_> = placed(&d)
        .into_iter()
        .filter(|(id, _)| id.starts_with('u'))
        .collect();
    assert_eq!(u, vec![("u1", Some("n1")), ("u2", Some("n2"))]);
}

#[test]
fn spreads_to_the_least_loaded_node() {
    let nodes = [ready("n1"), ready("n2"), ready("n3")];
    let existing = vec![
        on(task("e1", "other", 1, 0, 0), "n1", TaskState::Running),
        on(task("e2", "other", 2, 0, 0), "n1", TaskState::Running),
        on(task("e3", "other", 3, 0, 0), "n2", TaskState::Running),
        // Terminal: not load.
        on(task("e4", "other", 4, 0, 0), "n3", TaskState::Complete),
        on(task("e5", "other", 5, 0, 0), "n3", TaskState::Shutdown),
    ];
    let mut tasks = existing;
    tasks.extend((1..=4).map(|i| task(&format!("t{i}"), "s", i, 0, 0)));
    let d = schedule(&nodes, &tasks);
    assert_eq!(
        placed(&d),
        vec![
            ("t1", Some("n3")),
            ("t2", Some("n2")),
            ("t3", Some("n3")),
            ("t4", Some("n1")),
        ]
    );
}

#[test]
fn ties_go_to_the_node_with_fewer_tasks_of_the_service_then_the_lower_id() {
    let nodes = [ready("n1"), ready("n2"), ready("n3")];
    let tasks = vec![
        on(task("a", "s", 1, 0, 0), "n1", TaskState::Running),
        on(task("b", "other", 1, 0, 0), "n2", TaskState::Running),
        on(task("c", "other", 2, 0, 0), "n3", TaskState::Running),
        task("t", "s", 2, 0, 0),
    ];
    let d = schedule(&nodes, &tasks);
    assert_eq!(placed(&d), vec![("t", Some("n2"))]);
}

#[test]
fn the_result_does_not_depend_on_input_order() {
    let nodes = [ready("n3"), ready("n1"), ready("n2")];
    let mut tasks: Vec<Task> = (1..=7)
        .map(|i| {
            task(
                &format!("t{i}"),
                if i % 2 == 0 { "a" } else { "b" },
                i,
                0,
                0,
            )
        })
        .collect();
    let first = schedule(&nodes, &tasks);
    tasks.reverse();
    let mut reversed_nodes = nodes.to_vec();
    reversed_nodes.reverse();
    assert_eq!(schedule(&reversed_nodes, &tasks), first);
}

#[test]
fn tasks_on_unknown_nodes_are_not_load() {
    let nodes = [ready("n1"), ready("n2")];
    let tasks = vec![
        on(task("gone", "s", 1, 0, 0), "n0", TaskState::Running),
        task("t", "s", 2, 0, 0),
    ];
    assert_eq!(placed(&schedule(&nodes, &tasks)), vec![("t", Some("n1"))]);
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// The obvious O(tasks × nodes) scheduler, in the same task order: the heap-based one must
/// decide exactly the same.
fn reference(nodes: &[Node], tasks: &[Task]) -> Vec<(String, Option<String>)> {
    let mut ns: Vec<&Node> = nodes.iter().collect();
    ns.sort_by(|a, b| a.id.cmp(&b.id));
    ns.dedup_by(|a, b| a.id == b.id);
    let mut load = vec![0u64; ns.len()];
    let mut reserved = vec![(0i64, 0i64); ns.len()];
    let mut per: HashMap<(String, usize), u64> = HashMap::new();
    for t in tasks
        .iter()
        .filter(|t| !t.node_id.is_empty() && !is_terminal(t))
    {
        if let Some(n) = ns.iter().position(|n| n.id == t.node_id) {
            load[n] += 1;
            let (m, c) = reservation(t);
            reserved[n].0 += m;
            reserved[n].1 += c;
            *per.entry((t.service_id.clone(), n)).or_default() += 1;
        }
    }
    let mut pending: Vec<&Task> = tasks.iter().filter(|t| wants_node(t)).collect();
    pending.sort_by_key(|t| (t.service_id.clone(), reservation(t), t.slot, t.id.clone()));
    let mut out = Vec::new();
    for t in pending {
        let (m, c) = reservation(t);
        let mut best: Option<(u64, u64, usize)> = None;
        for (i, n) in ns.iter().enumerate() {
            if eligible(n).is_err() {
                continue;
            }
            let cap = n
                .description
                .as_ref()
                .and_then(|d| d.resources.as_ref())
                .map(|r| (r.memory_bytes, r.nano_cpus))
                .unwrap_or((0, 0));
            if (m > 0 && cap.0 - reserved[i].0 < m) || (c > 0 && cap.1 - reserved[i].1 < c) {
                continue;
            }
            let key = (
                load[i],
                per.get(&(t.service_id.clone(), i)).copied().unwrap_or(0),
                i,
            );
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        match best {
            Some((_, _, i)) => {
                load[i] += 1;
                reserved[i].0 += m;
                reserved[i].1 += c;
                *per.entry((t.service_id.clone(), i)).or_default() += 1;
                out.push((t.id.clone(), Some(ns[i].id.clone())));
            }
            None => out.push((t.id.clone(), None)),
        }
    }
    out
}

fn arb_node() -> impl Strategy<Value = Node> {
    (
        0usize..8,
        prop_oneof![
            6 => Just(NodeState::Ready),
            1 => Just(NodeState::Down),
            1 => Just(NodeState::Unknown),
        ],
        prop_oneof![
            6 => Just(NodeAvailability::Active),
            1 => Just(NodeAvailability::Drain),
            1 => Just(NodeAvailability::Pause),
        ],
        0i64..10,
        0i64..10,
    )
        .prop_map(|(id, state, availability, mem, cpu)| {
            node(&format!("n{id}"), state, availability, mem * 100, cpu * 100)
        })
}

fn arb_task() -> impl Strategy<Value = Task> {
    (
        0usize..3,
        1u64..20,
        prop_oneof![3 => Just(0i64), 1 => 1i64..400],
        prop_oneof![3 => Just(0i64), 1 => 1i64..400],
        // None: pending; Some: already on a node, in some state.
        proptest::option::weighted(
            0.4,
            (
                0usize..9,
                prop_oneof![Just(TaskState::Running), Just(TaskState::Failed)],
            ),
        ),
    )
        .prop_map(|(svc, slot, mem, cpu, placement)| {
            let t = task("", &format!("s{svc}"), slot, mem, cpu);
            match placement {
                None => t,
                Some((n, state)) => on(t, &format!("n{n}"), state),
            }
        })
}

/// Nodes by id (the first one of a repeated id) and tasks by id.
fn indexed<'a>(
    nodes: &'a [Node],
    tasks: &'a [Task],
) -> (HashMap<&'a str, &'a Node>, HashMap<&'a str, &'a Task>) {
    let mut by_id: HashMap<&str, &Node> = HashMap::new();
    for n in nodes {
        by_id.entry(n.id.as_str()).or_insert(n);
    }
    let tasks = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    (by_id, tasks)
}

fn with_ids(mut tasks: Vec<Task>) -> Vec<Task> {
    for (i, t) in tasks.iter_mut().enumerate() {
        t.id = format!("t{i:03}");
    }
    tasks
}

proptest! {
    #[test]
    fn matches_the_naive_scheduler(
        nodes in proptest::collection::vec(arb_node(), 0..8),
        tasks in proptest::collection::vec(arb_task(), 0..40),
    ) {
        let tasks = with_ids(tasks);
        let got: Vec<(String, Option<String>)> = schedule(&nodes, &tasks)
            .into_iter()
            .map(|d| (d.task_id, d.node_id))
            .collect();
        // Unplaced tasks with no previous error always get a decision, so the lists align.
        prop_assert_eq!(got, reference(&nodes, &tasks));
    }

    #[test]
    fn never_places_on_unfit_nodes_or_beyond_resources(
        nodes in proptest::collection::vec(arb_node(), 0..8),
        tasks in proptest::collection::vec(arb_task(), 0..40),
    ) {
        let tasks = with_ids(tasks);
        let decisions = schedule(&nodes, &tasks);
        let (by_id, task_by_id) = indexed(&nodes, &tasks);
        // Final reservations per node.
        let mut reserved: HashMap<&str, (i64, i64)> = HashMap::new();
        for t in tasks.iter().filter(|t| !t.node_id.is_empty() && !is_terminal(t)) {
            let e = reserved.entry(t.node_id.as_str()).or_default();
            e.0 += reservation(t).0;
            e.1 += reservation(t).1;
        }
        let mut asks: HashMap<&str, (bool, bool)> = HashMap::new();
        for d in &decisions {
            let t = task_by_id[d.task_id.as_str()];
            prop_assert!(wants_node(t));
            match &d.node_id {
                Some(n) => {
                    prop_assert!(d.error.is_empty());
                    let node = by_id[n.as_str()];
                    prop_assert!(eligible(node).is_ok(), "placed on {:?}", node);
                    let e = reserved.entry(n.as_str()).or_default();
                    e.0 += reservation(t).0;
                    e.1 += reservation(t).1;
                    let a = asks.entry(n.as_str()).or_default();
                    a.0 |= reservation(t).0 > 0;
                    a.1 |= reservation(t).1 > 0;
                }
                None => prop_assert!(d.error.starts_with("no suitable node (")),
            }
        }
        for (n, (mem, cpu)) in asks {
            let cap = by_id[n].description.as_ref().and_then(|d| d.resources.as_ref()).map(|r| (r.memory_bytes, r.nano_cpus)).unwrap_or_default();
            if mem { prop_assert!(reserved[n].0 <= cap.0, "memory over on {}", n); }
            if cpu { prop_assert!(reserved[n].1 <= cap.1, "cpu over on {}", n); }
        }
        // Whatever was left unplaced fits on no eligible node even now.
        for d in decisions.iter().filter(|d| d.node_id.is_none()) {
            let (m, c) = reservation(task_by_id[d.task_id.as_str()]);
            for (id, node) in &by_id {
                if eligible(node).is_err() { continue; }
                let cap = node.description.as_ref().and_then(|d| d.resources.as_ref()).map(|r| (r.memory_bytes, r.nano_cpus)).unwrap_or_default();
                let r = reserved.get(id).copied().unwrap_or_default();
                prop_assert!((m > 0 && cap.0 - r.0 < m) || (c > 0 && cap.1 - r.1 < c));
            }
        }
    }

    #[test]
    fn spreads_evenly_on_equal_nodes(
        node_count in 1usize..12,
        per_service in proptest::collection::vec(0u64..30, 1..4),
        down in 0usize..3,
    ) {
        let mut nodes: Vec<Node> = (0..node_count).map(|i| ready(&format!("n{i:02}"))).collect();
        nodes.extend((0..down).map(|i| node(&format!("d{i}"), NodeState::Down, NodeAvailability::Active, 8 << 30, 0)));
        let tasks: Vec<Task> = per_service
            .iter()
            .enumerate()
            .flat_map(|(s, &n)| (1..=n).map(move |slot| task(&format!("s{s}.{slot}"), &format!("s{s}"), slot, 0, 0)))
            .collect();
        let decisions = schedule(&nodes, &tasks);
        prop_assert_eq!(decisions.len(), tasks.len());
        let mut load: HashMap<&str, usize> = (0..node_count).map(|i| (nodes[i].id.as_str(), 0)).collect();
        for d in &decisions {
            let n = d.node_id.as_deref();
            prop_assert!(n.is_some_and(|n| n.starts_with('n')), "{:?}", d);
            if let Some(n) = n {
                *load.entry(n).or_default() += 1;
            }
        }
        let max = load.values().max().copied().unwrap_or(0);
        let min = load.values().min().copied().unwrap_or(0);
        prop_assert!(max - min <= 1, "loads {:?}", load);
    }
}

#[test]
fn a_preassigned_task_is_confirmed_on_its_node_or_told_why_not() {
    let mut ready = shoal_proto::Node {
        id: "n1".into(),
        status: Some(shoal_proto::NodeStatus {
            state: shoal_proto::NodeState::Ready as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    ready.set_availability(shoal_proto::NodeAvailability::Active);
    let mut down = ready.clone();
    down.id = "n2".into();
    if let Some(s) = down.status.as_mut() {
        s.set_state(shoal_proto::NodeState::Down);
    }
    let pending = |id: &str, node: &str| {
        let mut t = shoal_proto::Task {
            id: id.into(),
            node_id: node.into(),
            status: Some(shoal_proto::TaskStatus {
                state: shoal_proto::TaskState::Pending as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        t.set_desired_state(shoal_proto::TaskState::Running);
        t
    };
    let decisions = super::schedule(&[ready, down], &[pending("a", "n1"), pending("b", "n2")]);
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[0].node_id.as_deref(), Some("n1"));
    assert_eq!(decisions[1].node_id, None);
    assert!(
        decisions[1].error.contains("not ready"),
        "{}",
        decisions[1].error
    );
}

// ---------------------------------------------------------------------------------------------
// Placement: constraints, host-mode ports, max replicas per node, spread preferences
// ---------------------------------------------------------------------------------------------

fn labelled(id: &str, labels: &[(&str, &str)]) -> Node {
    let mut n = ready(id);
    n.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    n
}

fn placed_with(mut t: Task, placement: shoal_proto::Placement) -> Task {
    if let Some(spec) = t.spec.as_mut() {
        spec.placement = Some(placement);
    }
    t
}

fn constrained(id: &str, slot: u64, constraints: &[&str]) -> Task {
    placed_with(
        task(id, "s", slot, 0, 0),
        shoal_proto::Placement {
            constraints: constraints.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        },
    )
}

fn publishing_host(mut t: Task, port: u32) -> Task {
    if let Some(spec) = t.spec.as_mut() {
        spec.endpoint = Some(shoal_proto::EndpointSpec {
            ports: vec![shoal_proto::PortConfig {
                target_port: 80,
                published_port: port,
                publish_mode: PublishMode::Host as i32,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    t
}

fn max_per_node(t: Task, max: u64) -> Task {
    placed_with(
        t,
        shoal_proto::Placement {
            max_replicas_per_node: max,
            ..Default::default()
        },
    )
}

fn spread(t: Task, descriptors: &[&str]) -> Task {
    placed_with(
        t,
        shoal_proto::Placement {
            preferences: descriptors
                .iter()
                .map(|d| shoal_proto::PlacementPreference {
                    spread: d.to_string(),
                })
                .collect(),
            ..Default::default()
        },
    )
}

fn count_on(decisions: &[Decision]) -> HashMap<String, usize> {
    let mut per: HashMap<String, usize> = HashMap::new();
    for d in decisions {
        if let Some(n) = &d.node_id {
            *per.entry(n.clone()).or_default() += 1;
        }
    }
    per
}

#[test]
fn constraints_keep_tasks_on_matching_nodes() {
    let nodes = [
        labelled("n1", &[("zone", "a")]),
        labelled("n2", &[("zone", "b")]),
        labelled("n3", &[]),
    ];
    let tasks = [
        constrained("t1", 1, &["node.labels.zone==b"]),
        constrained("t2", 2, &["node.labels.zone==b"]),
    ];
    let d = schedule(&nodes, &tasks);
    assert_eq!(placed(&d), vec![("t1", Some("n2")), ("t2", Some("n2"))]);

    let tasks = [constrained("t1", 1, &["node.labels.zone!=b"])];
    assert_eq!(placed(&schedule(&nodes, &tasks)), vec![("t1", Some("n1"))]);

    let tasks = [constrained("t1", 1, &["node.labels.zone==c"])];
    let d = schedule(&nodes, &tasks);
    assert_eq!(d[0].node_id, None);
    assert_eq!(
        d[0].error,
        "no suitable node (scheduling constraints not satisfied on 3 nodes)"
    );
}

#[test]
fn role_constraints_read_the_nodes_role() {
    let mut manager = ready("n2");
    manager.set_role(shoal_proto::NodeRole::Manager);
    let nodes = [ready("n1"), manager];
    let tasks = [
        constrained("t1", 1, &["node.role==manager"]),
        constrained("t2", 2, &["node.role == Manager"]),
    ];
    let d = schedule(&nodes, &tasks);
    assert_eq!(placed(&d), vec![("t1", Some("n2")), ("t2", Some("n2"))]);
}

#[test]
fn a_host_mode_port_is_held_by_one_task_per_node() {
    let nodes = [ready("n1"), ready("n2")];
    let tasks = [
        on(
            publishing_host(task("old", "other", 1, 0, 0), 8080),
            "n1",
            TaskState::Running,
        ),
        publishing_host(task("t1", "s", 1, 0, 0), 8080),
        publishing_host(task("t2", "s", 2, 0, 0), 8080),
        // A port the node chooses (0) never conflicts.
        publishing_host(task("t3", "u", 1, 0, 0), 0),
    ];
    let d = schedule(&nodes, &tasks);
    assert_eq!(
        placed(&d),
        vec![("t1", Some("n2")), ("t2", None), ("t3", Some("n1"))]
    );
    assert_eq!(
        d[1].error,
        "no suitable node (host-mode port already in use on 2 nodes)"
    );
    // A stopped task gave its port back.
    let tasks = [
        on(
            publishing_host(task("old", "other", 1, 0, 0), 8080),
            "n1",
            TaskState::Failed,
        ),
        publishing_host(task("t1", "s", 1, 0, 0), 8080),
        publishing_host(task("t2", "s", 2, 0, 0), 8080),
    ];
    let per = count_on(&schedule(&nodes, &tasks));
    assert_eq!(per.get("n1"), Some(&1));
    assert_eq!(per.get("n2"), Some(&1));
}

#[test]
fn max_replicas_per_node_leaves_the_rest_pending() {
    let nodes = [ready("n1"), ready("n2"), ready("n3")];
    let mut tasks: Vec<Task> = (1..=4)
        .map(|i| max_per_node(task(&format!("t{i}"), "s", i, 0, 0), 1))
        .collect();
    // One already runs on n3.
    tasks[0] = on(tasks[0].clone(), "n3", TaskState::Running);
    tasks.push(max_per_node(task("t5", "s", 5, 0, 0), 1));
    let d = schedule(&nodes, &tasks);
    let per = count_on(&d);
    assert_eq!(per.get("n1"), Some(&1));
    assert_eq!(per.get("n2"), Some(&1));
    assert_eq!(per.get("n3"), None);
    let pending: Vec<&Decision> = d.iter().filter(|d| d.node_id.is_none()).collect();
    assert_eq!(pending.len(), 2);
    assert_eq!(
        pending[0].error,
        "no suitable node (max replicas per node limit exceed on 3 nodes)"
    );
}

#[test]
fn reasons_aggregate_over_every_filter_in_order() {
    let mut n4 = labelled("n4", &[("zone", "b")]);
    n4.description = None; // no resources reported
    let nodes = [
        labelled("n1", &[("zone", "a")]),
        labelled("n2", &[("zone", "a")]),
        labelled("n3", &[("zone", "b")]),
        labelled("n5", &[("zone", "b")]),
        n4,
        node(
            "n6",
            NodeState::Down,
            NodeAvailability::Active,
            8 << 30,
            4_000_000_000,
        ),
    ];
    let rules = |t: Task| {
        placed_with(
            publishing_host(t, 9000),
            shoal_proto::Placement {
                constraints: vec!["node.labels.zone==b".into()],
                max_replicas_per_node: 1,
                ..Default::default()
            },
        )
    };
    let tasks = [
        // n3 holds the port (another service), n5 one task of the service already.
        on(
            publishing_host(task("x", "x", 1, 0, 0), 9000),
            "n3",
            TaskState::Running,
        ),
        on(
            max_per_node(task("t0", "s", 1, 1 << 20, 0), 1),
            "n5",
            TaskState::Running,
        ),
        rules(task("t9", "s", 9, 1 << 20, 0)),
    ];
    let d = schedule(&nodes, &tasks);
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].error,
        "no suitable node (insufficient memory on 1 node; scheduling constraints not satisfied \
         on 2 nodes; host-mode port already in use on 1 node; max replicas per node limit \
         exceed on 1 node; 1 node not ready)"
    );
}

#[test]
fn spread_splits_tasks_evenly_over_label_values() {
    // Zone a: one node; zone b: three; one node without the label: a group of its own.
    let nodes = [
        labelled("n1", &[("zone", "a")]),
        labelled("n2", &[("zone", "b")]),
        labelled("n3", &[("zone", "b")]),
        labelled("n4", &[("zone", "b")]),
        labelled("n5", &[]),
    ];
    let tasks: Vec<Task> = (1..=6)
        .map(|i| spread(task(&format!("t{i}"), "s", i, 0, 0), &["node.labels.zone"]))
        .collect();
    let per = count_on(&schedule(&nodes, &tasks));
    assert_eq!(per.get("n1"), Some(&2));
    assert_eq!(
        per.get("n2").unwrap_or(&0) + per.get("n3").unwrap_or(&0) + per.get("n4").unwrap_or(&0),
        2
    );
    assert_eq!(per.get("n5"), Some(&2));
}

#[test]
fn spread_counts_the_tasks_already_running() {
    let nodes = [
        labelled("n1", &[("zone", "a")]),
        labelled("n2", &[("zone", "b")]),
    ];
    let tasks = vec![
        on(
            spread(task("r1", "s", 1, 0, 0), &["node.labels.zone"]),
            "n1",
            TaskState::Running,
        ),
        on(
            spread(task("r2", "s", 2, 0, 0), &["node.labels.zone"]),
            "n1",
            TaskState::Running,
        ),
        spread(task("t3", "s", 3, 0, 0), &["node.labels.zone"]),
        spread(task("t4", "s", 4, 0, 0), &["node.labels.zone"]),
        spread(task("t5", "s", 5, 0, 0), &["node.labels.zone"]),
    ];
    let d = schedule(&nodes, &tasks);
    assert_eq!(
        placed(&d),
        vec![("t3", Some("n2")), ("t4", Some("n2")), ("t5", Some("n1"))]
    );
}

#[test]
fn nested_spread_preferences_split_within_each_value() {
    let nodes = [
        labelled("n1", &[("dc", "x"), ("rack", "1")]),
        labelled("n2", &[("dc", "x"), ("rack", "2")]),
        labelled("n3", &[("dc", "y"), ("rack", "1")]),
    ];
    let tasks: Vec<Task> = (1..=4)
        .map(|i| {
            spread(
                task(&format!("t{i}"), "s", i, 0, 0),
                &["node.labels.dc", "node.labels.rack"],
            )
        })
        .collect();
    let per = count_on(&schedule(&nodes, &tasks));
    // dc x and y get 2 each; within x, racks 1 and 2 one each.
    assert_eq!(per.get("n1"), Some(&1));
    assert_eq!(per.get("n2"), Some(&1));
    assert_eq!(per.get("n3"), Some(&2));
}

#[test]
fn spread_groups_only_nodes_that_match_the_constraints() {
    let nodes = [
        labelled("n1", &[("zone", "a"), ("tier", "db")]),
        labelled("n2", &[("zone", "b")]),
        labelled("n3", &[("zone", "c"), ("tier", "db")]),
    ];
    let tasks: Vec<Task> = (1..=4)
        .map(|i| {
            placed_with(
                task(&format!("t{i}"), "s", i, 0, 0),
                shoal_proto::Placement {
                    constraints: vec!["node.labels.tier==db".into()],
                    preferences: vec![shoal_proto::PlacementPreference {
                        spread: "node.labels.zone".into(),
                    }],
                    max_replicas_per_node: 0,
                },
            )
        })
        .collect();
    let per = count_on(&schedule(&nodes, &tasks));
    assert_eq!(per.get("n1"), Some(&2));
    assert_eq!(per.get("n3"), Some(&2));
    assert_eq!(per.get("n2"), None);
}

#[test]
fn an_invalid_placement_waits_with_the_reason() {
    let d = schedule(
        &[ready("n1")],
        &[constrained("t1", 1, &["engine.labels.os==linux"])],
    );
    assert_eq!(d[0].node_id, None);
    assert!(
        d[0].error
            .starts_with("no suitable node (invalid placement")
            && d[0].error.contains("engine labels"),
        "{}",
        d[0].error
    );
}

#[test]
fn a_preassigned_task_must_satisfy_constraints_and_ports() {
    let nodes = [labelled("n1", &[("zone", "a")]), ready("n2")];
    let mut global = constrained("g1", 0, &["node.labels.zone==a"]);
    global.node_id = "n2".into();
    let mut fine = constrained("g2", 0, &["node.labels.zone==a"]);
    fine.node_id = "n1".into();
    let mut port = publishing_host(task("g3", "h", 0, 0, 0), 7000);
    port.node_id = "n1".into();
    let holder = on(
        publishing_host(task("x", "x", 1, 0, 0), 7000),
        "n1",
        TaskState::Running,
    );
    let d = schedule(&nodes, &[global, fine, port, holder]);
    assert_eq!(
        placed(&d),
        vec![("g1", None), ("g2", Some("n1")), ("g3", None)]
    );
    assert_eq!(
        d[0].error,
        "no suitable node (scheduling constraints not satisfied on its node)"
    );
    assert_eq!(
        d[2].error,
        "no suitable node (host-mode port already in use on its node)"
    );
}

#[test]
fn tasks_of_one_service_with_different_placements_are_placed_by_their_own() {
    // Mid-update: old tasks may go anywhere, new ones only to zone b.
    let nodes = [
        labelled("n1", &[("zone", "a")]),
        labelled("n2", &[("zone", "b")]),
    ];
    let tasks = [
        task("old", "s", 1, 0, 0),
        constrained("new", 2, &["node.labels.zone==b"]),
        constrained("new2", 3, &["node.labels.zone==b"]),
    ];
    let d = schedule(&nodes, &tasks);
    assert_eq!(
        placed(&d),
        vec![
            ("old", Some("n1")),
            ("new", Some("n2")),
            ("new2", Some("n2"))
        ]
    );
}

fn arb_labelled_node() -> impl Strategy<Value = Node> {
    (
        0usize..8,
        prop_oneof![
            6 => Just(NodeState::Ready),
            1 => Just(NodeState::Down),
        ],
        prop_oneof![
            Just(None),
            Just(Some("a")),
            Just(Some("b")),
            Just(Some("c"))
        ],
        any::<bool>(),
        0i64..10,
    )
        .prop_map(|(id, state, zone, manager, mem)| {
            let mut n = node(
                &format!("n{id}"),
                state,
                NodeAvailability::Active,
                mem * 100,
                0,
            );
            if let Some(z) = zone {
                n.labels.insert("zone".into(), z.into());
            }
            if manager {
                n.set_role(shoal_proto::NodeRole::Manager);
            }
            n
        })
}

fn arb_placed_task() -> impl Strategy<Value = Task> {
    (
        0usize..3,
        1u64..20,
        prop_oneof![3 => Just(0i64), 1 => 1i64..400],
        proptest::option::weighted(
            0.3,
            (
                0usize..9,
                prop_oneof![Just(TaskState::Running), Just(TaskState::Failed)],
            ),
        ),
    )
        .prop_map(|(svc, slot, mem, where_)| {
            // Placement is per service: every task of a service asks the same.
            let placement = match svc {
                0 => shoal_proto::Placement {
                    constraints: vec!["node.labels.zone!=c".into()],
                    max_replicas_per_node: 2,
                    ..Default::default()
                },
                1 => shoal_proto::Placement {
                    constraints: vec!["node.role==worker".into()],
                    preferences: vec![shoal_proto::PlacementPreference {
                        spread: "node.labels.zone".into(),
                    }],
                    max_replicas_per_node: 3,
                },
                _ => shoal_proto::Placement {
                    preferences: vec![shoal_proto::PlacementPreference {
                        spread: "node.labels.zone".into(),
                    }],
                    max_replicas_per_node: 1,
                    ..Default::default()
                },
            };
            let mut t = placed_with(task("", &format!("s{svc}"), slot, mem, 0), placement);
            if svc == 2 {
                t = publishing_host(t, 8080);
            }
            match where_ {
                None => t,
                Some((n, state)) => on(t, &format!("n{n}"), state),
            }
        })
}

proptest! {
    #[test]
    fn placement_rules_always_hold(
        nodes in proptest::collection::vec(arb_labelled_node(), 0..8),
        tasks in proptest::collection::vec(arb_placed_task(), 0..40),
    ) {
        let tasks = with_ids(tasks);
        let decisions = schedule(&nodes, &tasks);
        let (by_id, task_by_id) = indexed(&nodes, &tasks);
        // Non-terminal tasks per (service, node) and host ports per node, after the decisions.
        let mut per: HashMap<(&str, &str), u64> = HashMap::new();
        let mut ports: HashMap<&str, u64> = HashMap::new();
        for t in tasks.iter().filter(|t| !t.node_id.is_empty() && !is_terminal(t)) {
            *per.entry((t.service_id.as_str(), t.node_id.as_str())).or_default() += 1;
        }
        let mut placed_count: HashMap<(&str, &str), u64> = HashMap::new();
        for d in &decisions {
            let Some(n) = d.node_id.as_deref() else { continue };
            let t = task_by_id[d.task_id.as_str()];
            let node = by_id[n];
            let rules = constraint::Rules::parse(t.spec.as_ref().and_then(|s| s.placement.as_ref())).unwrap();
            prop_assert!(rules.admits(node), "{} on {:?}", t.id, node);
            *placed_count.entry((t.service_id.as_str(), n)).or_default() += 1;
            if !host_ports(t).is_empty() {
                *ports.entry(n).or_default() += 1;
            }
        }
        for ((service, n), placed) in &placed_count {
            let max = match *service { "s0" => 2, "s1" => 3, _ => 1 };
            let before = per.get(&(*service, *n)).copied().unwrap_or(0);
            // Never beyond the limit (a node over it already gets none: `placed` counts > 0).
            prop_assert!(before + placed <= max, "{} on {}: {} + {}", service, n, before, placed);
        }
        for (n, placed) in &ports {
            let held = tasks.iter().filter(|t| t.node_id == *n && !is_terminal(t) && !host_ports(t).is_empty()).count() as u64;
            prop_assert!(held + placed <= 1, "port 8080 twice on {}", n);
        }
    }

    #[test]
    fn placement_does_not_depend_on_input_order(
        nodes in proptest::collection::vec(arb_labelled_node(), 0..8),
        tasks in proptest::collection::vec(arb_placed_task(), 0..40),
    ) {
        let tasks = with_ids(tasks);
        let first = schedule(&nodes, &tasks);
        let mut reversed_tasks = tasks.clone();
        reversed_tasks.reverse();
        let mut reversed_nodes = nodes.clone();
        reversed_nodes.reverse();
        // Duplicate node ids: the first in input order wins, so compare on unique ids only.
        let mut seen = std::collections::HashSet::new();
        if nodes.iter().all(|n| seen.insert(n.id.clone())) {
            prop_assert_eq!(schedule(&reversed_nodes, &reversed_tasks), first);
        }
    }
}

/// A task of service `name` (spec name and id alike), sharing `shares`'s network if given.
fn named(id: &str, name: &str, slot: u64, shares: Option<&str>) -> Task {
    let mut t = task(id, name, slot, 0, 0);
    t.spec = Some(SharedSpec::new(ServiceSpec {
        name: name.to_string(),
        container: Some(shoal_proto::ContainerSpec {
            network_mode: shares.map(|s| format!("service:{s}")).unwrap_or_default(),
            ..Default::default()
        }),
        ..Default::default()
    }));
    t
}

#[test]
fn a_task_sharing_a_service_network_goes_where_that_service_runs() {
    let nodes = [ready("n1"), ready("n2"), ready("n3")];
    // The web task is on n2 (the busiest node): the sidecar must go there anyway.
    let web = on(named("w1", "app_web", 1, None), "n2", TaskState::Running);
    let other = on(named("o1", "other", 1, None), "n2", TaskState::Running);
    let side = named("s1", "app_side", 1, Some("app_web"));
    let d = schedule(&nodes, &[web, other, side]);
    assert_eq!(placed(&d), vec![("s1", Some("n2"))]);
}

#[test]
fn a_task_sharing_a_service_network_waits_while_that_service_runs_nowhere() {
    let nodes = [ready("n1"), ready("n2")];
    // A terminal task of the service holds nothing.
    let gone = on(named("w0", "app_web", 1, None), "n1", TaskState::Failed);
    let side = named("s1", "app_side", 1, Some("app_web"));
    let d = schedule(&nodes, &[gone, side]);
    assert_eq!(placed(&d), vec![("s1", None)]);
    assert_eq!(
        d[0].error,
        "no suitable node (no task of the network_mode service on 2 nodes)"
    );
}

#[test]
fn a_service_placed_in_the_same_pass_counts_for_its_sharers() {
    // Groups go by service id: "a_web" is placed before "b_side", which follows it.
    let nodes = [ready("n1"), ready("n2")];
    let busy = on(named("x", "x", 1, None), "n1", TaskState::Running);
    let web = named("w1", "a_web", 1, None);
    let side = named("s1", "b_side", 1, Some("a_web"));
    let d = schedule(&nodes, &[busy, web, side]);
    assert_eq!(placed(&d), vec![("w1", Some("n2")), ("s1", Some("n2"))]);
}

#[test]
fn a_preassigned_task_sharing_a_service_network_needs_it_on_its_node() {
    let nodes = [ready("n1"), ready("n2")];
    let web = on(named("w1", "app_web", 1, None), "n1", TaskState::Running);
    let mut here = named("g1", "app_side", 0, Some("app_web"));
    here.node_id = "n1".into();
    let mut there = named("g2", "app_side", 0, Some("app_web"));
    there.node_id = "n2".into();
    let d = schedule(&nodes, &[web, here, there]);
    assert_eq!(placed(&d), vec![("g1", Some("n1")), ("g2", None)]);
    assert!(
        d[1].error.contains("network_mode service"),
        "{}",
        d[1].error
    );
}
