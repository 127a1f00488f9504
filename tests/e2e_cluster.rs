//! Two real daemons on this host: a manager and a worker that joined it with a token. Tasks
//! spread over both; when the worker dies, its tasks are rescheduled on the manager.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::daemon::TestDaemon;
use common::require_root;

fn tasks_per_node(d: &TestDaemon, service: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for t in d.running_tasks(service) {
        let node = t["node_id"].as_str().unwrap_or_default().to_string();
        *counts.entry(node).or_default() += 1;
    }
    counts
}

#[test]
fn a_worker_joins_runs_tasks_and_its_tasks_move_when_it_dies() {
    if !require_root() {
        return;
    }
    let manager = TestDaemon::start();
    let mut worker = TestDaemon::start_worker(&manager);
    manager.ok(&["image", "bootstrap", "busybox"]);
    worker.ok(&["image", "bootstrap", "busybox"]);
    let err = worker.fails(&["service", "ls"]);
    assert!(err.contains("not a manager"), "{err}");

    manager.wait_for("both nodes ready", Duration::from_secs(20), || {
        let nodes = manager.json(&["node", "ls", "--format", "json"]);
        nodes
            .as_array()
            .is_some_and(|n| n.len() == 2 && n.iter().all(|n| n["status"]["state"] == "ready"))
    });
    let nodes = manager.json(&["node", "ls", "--format", "json"]);
    let roles: Vec<&str> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["role"].as_str())
        .collect();
    assert!(
        roles.contains(&"worker") && roles.contains(&"manager"),
        "{roles:?}"
    );

    manager.ok(&[
        "service",
        "create",
        "--name",
        "spread",
        "--replicas",
        "4",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sleep",
        "1000",
    ]);
    let spread = tasks_per_node(&manager, "spread");
    assert_eq!(spread.len(), 2, "tasks run on both nodes: {spread:?}");
    assert!(
        spread.values().all(|&n| n == 2),
        "spread evenly: {spread:?}"
    );

    // The worker dies: within a few heartbeats its node is down and its tasks run elsewhere.
    let manager_node = manager.json(&["info", "--format", "json"])["node_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let killed = Instant::now();
    worker.kill9();
    manager.wait_for(
        "tasks rescheduled on the manager",
        Duration::from_secs(20),
        || {
            let now = tasks_per_node(&manager, "spread");
            now.len() == 1 && now.get(&manager_node) == Some(&4)
        },
    );
    eprintln!(
        "worker kill -9 → its tasks running on the manager: {:?}",
        killed.elapsed()
    );
    manager.ok(&["service", "rm", "spread"]);
}
