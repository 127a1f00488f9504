//! Several managers (HA): three managers that joined with the manager token, and a worker.
//! Writes on a follower are forwarded to the leader and seen at once on every manager; the
//! leader is killed and another takes over within seconds, writes go on, the dead manager's
//! tasks move, and the old leader catches up when it returns; with a majority gone, writes
//! fail at once with a message that says so, and work again once the managers are back.
//!
//! All on loopback (each daemon its own port and data dir).

mod common;

use std::time::{Duration, Instant};

use common::daemon::TestDaemon;
use common::require_root;

fn start_manager(seed: &TestDaemon) -> TestDaemon {
    let token = seed.ok(&["join-token", "manager", "-q"]).trim().to_string();
    TestDaemon::start_with(vec![
        "--join".into(),
        seed.manager_addr(),
        "--token".into(),
        token,
    ])
}

fn info(d: &TestDaemon) -> serde_json::Value {
    d.json(&["info", "--format", "json"])
}

fn node_id(d: &TestDaemon) -> String {
    info(d)["node_id"].as_str().unwrap_or_default().to_string()
}

fn is_leader(d: &TestDaemon) -> bool {
    let out = d.shoal(&["info", "--format", "json"]);
    out.status.success()
        && serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|v| v["is_leader"] == true)
}

fn last_applied(d: &TestDaemon) -> u64 {
    info(d)["raft_last_applied"].as_u64().unwrap_or(0)
}

/// `(node id, task id)` of the running tasks of `service`.
fn running(d: &TestDaemon, service: &str) -> Vec<(String, String)> {
    let mut tasks: Vec<(String, String)> = d
        .running_tasks(service)
        .into_iter()
        .map(|t| {
            (
                t["node_id"].as_str().unwrap_or_default().to_string(),
                t["id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    tasks.sort();
    tasks
}

fn create(d: &TestDaemon, name: &str, replicas: &str) -> std::process::Output {
    d.shoal(&[
        "service",
        "create",
        "--detach",
        "--name",
        name,
        "--replicas",
        replicas,
        "--stop-grace-period",
        "1s",
        "busybox",
        "sleep",
        "1000",
    ])
}

#[test]
fn three_managers_survive_a_leader_kill_and_say_when_quorum_is_lost() {
    if !require_root() {
        return;
    }
    let mut m = vec![TestDaemon::start()];
    m.push(start_manager(&m[0]));
    m.push(start_manager(&m[0]));
    let worker = TestDaemon::start_worker(&m[0]);
    for d in m.iter().chain([&worker]) {
        d.ok(&["image", "bootstrap", "busybox"]);
    }

    // Four nodes, three of them managers: one leader, two reachable.
    m[0].wait_for("4 ready nodes, 3 managers", Duration::from_secs(30), || {
        let nodes = m[0].json(&["node", "ls", "--format", "json"]);
        let nodes = nodes.as_array().cloned().unwrap_or_default();
        let ready = nodes
            .iter()
            .filter(|n| n["status"]["state"] == "ready")
            .count();
        let leaders = nodes
            .iter()
            .filter(|n| n["manager_status"]["leader"] == true)
            .count();
        let reachable = nodes
            .iter()
            .filter(|n| n["manager_status"]["reachability"] == "reachable")
            .count();
        ready == 4 && leaders == 1 && reachable == 3
    });
    let table = m[1].ok(&["node", "ls"]);
    assert_eq!(table.matches("Leader").count(), 1, "{table}");
    assert_eq!(table.matches("Reachable").count(), 2, "{table}");
    assert!(is_leader(&m[0]), "the first manager leads");

    // A write on a follower is forwarded; every manager sees it at once.
    let out = create(&m[1], "web", "4");
    assert!(
        out.status.success(),
        "create on a follower: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        m[1].log()
    );
    for d in &m {
        let ls = d.ok(&["service", "ls", "-q"]);
        assert_eq!(
            ls.lines().count(),
            1,
            "service ls right after the write: {ls}"
        );
        d.ok(&["service", "inspect", "web"]);
    }
    m[1].wait_for("4 running replicas", Duration::from_secs(30), || {
        running(&m[1], "web").len() == 4
    });

    // Kill the leader: another manager leads within a few seconds and takes writes.
    let dead_node = node_id(&m[0]);
    let killed = Instant::now();
    m[0].kill9();
    let mut first_write = None;
    while killed.elapsed() < Duration::from_secs(15) {
        if create(&m[2], "after-failover", "1").status.success() {
            first_write = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let first_write = first_write.unwrap_or_else(|| {
        panic!(
            "no write succeeded within 15 s of the leader's death:\n{}",
            m[2].log()
        )
    });
    eprintln!("leader kill -9 → first successful write: {first_write:?}");
    assert!(first_write < Duration::from_secs(5), "{first_write:?}");
    assert!(
        is_leader(&m[1]) || is_leader(&m[2]),
        "a surviving manager leads"
    );

    // The dead manager's tasks run elsewhere.
    m[1].wait_for(
        "the dead manager's tasks rescheduled",
        Duration::from_secs(30),
        || {
            let now = running(&m[1], "web");
            now.len() == 4 && now.iter().all(|(node, _)| *node != dead_node)
        },
    );

    // The old leader comes back and catches up.
    m[0].spawn();
    m[0].wait_for("the old leader caught up", Duration::from_secs(30), || {
        let applied = last_applied(&m[0]);
        let leader = m.iter().skip(1).find(|d| is_leader(d));
        leader.is_some_and(|l| last_applied(l) == applied)
            && m[0].ok(&["service", "ls", "-q"]).lines().count() == 2
    });

    // The worker's tasks survive what follows: record them.
    let worker_node = node_id_of_worker(&m[1]);
    let on_worker = |d: &TestDaemon| -> Vec<String> {
        running(d, "web")
            .into_iter()
            .filter(|(n, _)| *n == worker_node)
            .map(|(_, t)| t)
            .collect()
    };
    let worker_tasks = on_worker(&m[1]);

    // Kill a majority: a write on the survivor fails at once, and says why.
    let survivor = (0..3).find(|&i| !is_leader(&m[i])).expect("a follower");
    let doomed: Vec<usize> = (0..3).filter(|&i| i != survivor).collect();
    for &i in &doomed {
        m[i].kill9();
    }
    std::thread::sleep(Duration::from_millis(1_500));
    let started = Instant::now();
    let out = create(&m[survivor], "no-quorum", "1");
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "a write without quorum must fail");
    assert!(
        err.contains("1 of 3 managers reachable") && err.contains("majority"),
        "{err}"
    );
    assert!(took < Duration::from_secs(2), "failed fast: {took:?}");
    eprintln!("write without quorum failed in {took:?}: {}", err.trim());

    // Restore: writes work again, and the worker's containers kept running throughout.
    for &i in &doomed {
        m[i].spawn();
    }
    m[survivor].wait_for("writes work again", Duration::from_secs(30), || {
        create(&m[survivor], "restored", "1").status.success()
    });
    for d in &m {
        d.wait_for(
            "every manager sees the restored write",
            Duration::from_secs(10),
            || d.ok(&["service", "ls", "-q"]).lines().count() == 3,
        );
    }
    let after = on_worker(&m[survivor]);
    assert!(
        worker_tasks.iter().all(|t| after.contains(t)),
        "the worker's tasks kept running: before {worker_tasks:?}, after {after:?}"
    );
    drop(worker);
}

fn node_id_of_worker(d: &TestDaemon) -> String {
    let nodes = d.json(&["node", "ls", "--format", "json"]);
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
fn force_new_cluster_recovers_a_surviving_manager() {
    if !require_root() {
        return;
    }
    let mut m = vec![TestDaemon::start()];
    m.push(start_manager(&m[0]));
    m.push(start_manager(&m[0]));
    m[0].ok(&["image", "bootstrap", "busybox"]);
    let out = create(&m[0], "before", "0");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lost: Vec<String> = m[1..].iter().map(node_id).collect();

    // Two of three managers are gone for good.
    m[1].kill9();
    m[2].kill9();
    m[0].wait_for(
        "the quorum loss is noticed",
        Duration::from_secs(10),
        || {
            let err = String::from_utf8_lossy(&create(&m[0], "x", "0").stderr).to_string();
            err.contains("1 of 3 managers reachable")
        },
    );

    // Recover from the survivor's data: a one-manager cluster with everything it had.
    m[0].kill9();
    m[0].spawn_once_with(&["--force-new-cluster"]);
    m[0].wait_for("writes work again", Duration::from_secs(20), || {
        create(&m[0], "after", "0").status.success()
    });
    let services = m[0].ok(&["service", "ls"]);
    assert!(
        services.contains("before") && services.contains("after"),
        "{services}"
    );
    assert!(is_leader(&m[0]));
    let table = m[0].ok(&["node", "ls"]);
    assert_eq!(table.matches("Unreachable").count(), 2, "{table}");
    for id in &lost {
        m[0].ok(&["node", "rm", "--force", id]);
    }
    let nodes = m[0].ok(&["node", "ls", "-q"]);
    assert_eq!(nodes.lines().count(), 1, "{nodes}");
    // A plain restart keeps the new membership.
    m[0].kill9();
    m[0].spawn();
    m[0].wait_for("writes after a restart", Duration::from_secs(20), || {
        create(&m[0], "restarted", "0").status.success()
    });
}
