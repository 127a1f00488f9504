//! scheduler-bench: how long the scheduler takes to place 100,000 pending tasks on 1,000 nodes
//! that already run 100,000 tasks, median of several runs. It shows the cost is not quadratic;
//! the end-to-end scheduling benchmark of the cluster issue builds on it.
//!
//!     cargo run --release -p shoal-bench --bin scheduler-bench -- [RUNS]

use std::time::{Duration, Instant};

use shoal_manager::scheduler::schedule;
use shoal_proto::{
    Node, NodeAvailability, NodeDescription, NodeState, NodeStatus, Resources, ServiceSpec, Task,
    TaskState, TaskStatus,
};

const NODES: usize = 1_000;
const RUNNING: u64 = 100_000;
const PENDING: u64 = 100_000;

fn node(i: usize) -> Node {
    let mut n = Node {
        id: format!("node-{i:04}"),
        description: Some(NodeDescription {
            resources: Some(Resources {
                memory_bytes: 1 << 40,
                nano_cpus: 1 << 40,
                pids: 0,
            }),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: NodeState::Ready as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    n.set_availability(NodeAvailability::Active);
    n
}

fn task(id: String, service: String, slot: u64, node: String, state: TaskState) -> Task {
    let mut t = Task {
        id,
        service_id: service,
        slot,
        node_id: node,
        spec: Some(ServiceSpec {
            reservations: Some(Resources {
                memory_bytes: 1 << 20,
                nano_cpus: 1_000,
                pids: 0,
            }),
            ..Default::default()
        }),
        status: Some(TaskStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    t.set_desired_state(TaskState::Running);
    t
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5)
        .max(1);
    let nodes: Vec<Node> = (0..NODES).map(node).collect();
    let mut tasks: Vec<Task> = (0..RUNNING)
        .map(|i| {
            task(
                format!("r{i}"),
                format!("svc-{}", i % 50),
                i,
                format!("node-{:04}", i as usize % NODES),
                TaskState::Running,
            )
        })
        .collect();
    tasks.extend((0..PENDING).map(|i| {
        task(
            format!("p{i}"),
            format!("new-{}", i % 100),
            i,
            String::new(),
            TaskState::Pending,
        )
    }));
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let decisions = schedule(&nodes, &tasks);
        times.push(start.elapsed());
        let placed = decisions.iter().filter(|d| d.node_id.is_some()).count();
        if placed != PENDING as usize {
            eprintln!("scheduler-bench: only {placed} of {PENDING} tasks were placed");
            std::process::exit(1);
        }
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "scheduler: {PENDING} pending tasks on {NODES} nodes already running {RUNNING}: \
         median {median:?} over {runs} runs (min {:?}, max {:?}), {:.0} tasks/s",
        times[0],
        times[times.len() - 1],
        PENDING as f64 / median.as_secs_f64()
    );
}
