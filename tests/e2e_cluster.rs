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

    // Removing the dead node revokes it: restarted, it cannot come back.
    let worker_id = worker_node_id(&manager);
    manager.ok(&["node", "rm", &worker_id]);
    worker.spawn();
    std::thread::sleep(Duration::from_secs(2));
    let nodes = manager.json(&["node", "ls", "--format", "json"]);
    assert_eq!(
        nodes.as_array().map(Vec::len),
        Some(1),
        "the removed node stays out: {nodes}"
    );
    assert!(
        worker.log().contains("was removed from the cluster"),
        "{}",
        worker.log()
    );
}

fn worker_node_id(manager: &TestDaemon) -> String {
    let nodes = manager.json(&["node", "ls", "--format", "json"]);
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["role"] == "worker")
        .and_then(|n| n["id"].as_str())
        .map(str::to_string)
        .expect("a worker node")
}

#[test]
fn draining_a_node_moves_its_tasks_and_a_live_node_needs_force_to_go() {
    if !require_root() {
        return;
    }
    let manager = TestDaemon::start();
    let worker = TestDaemon::start_worker(&manager);
    manager.ok(&["image", "bootstrap", "busybox"]);
    worker.ok(&["image", "bootstrap", "busybox"]);
    manager.wait_for("both nodes ready", Duration::from_secs(20), || {
        manager.ok(&["node", "ls", "-q"]).lines().count() == 2
    });
    manager.ok(&[
        "service",
        "create",
        "--name",
        "d",
        "--replicas",
        "4",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sleep",
        "1000",
    ]);
    assert_eq!(tasks_per_node(&manager, "d").len(), 2);
    let worker_id = worker_node_id(&manager);
    manager.ok(&[
        "node",
        "update",
        "--availability",
        "drain",
        "--label-add",
        "zone=a",
        &worker_id,
    ]);
    let inspected = manager.json(&["node", "inspect", &worker_id]);
    assert_eq!(inspected[0]["availability"], "drain");
    assert_eq!(inspected[0]["labels"]["zone"], "a");
    manager.wait_for(
        "the drained node's tasks moved",
        Duration::from_secs(20),
        || {
            let now = tasks_per_node(&manager, "d");
            now.len() == 1 && !now.contains_key(&worker_id) && now.values().sum::<usize>() == 4
        },
    );
    let err = manager.fails(&["node", "rm", &worker_id]);
    assert!(err.contains("--force"), "{err}");
    manager.ok(&["service", "rm", "d"]);
}
