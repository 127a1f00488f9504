//! Faults on a real cluster: every node a `shoal daemon` on a test host of its own (see
//! `common/hosts.rs`), so that a host can be killed, cut off or restarted while the others go
//! on. Leader kills (with catch-up by snapshot), a partitioned leader, a dead worker, twenty
//! leader kills that must not lose one acknowledged write, and agents left without managers.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::hosts::{namespaces_named, Host, Lab};
use common::require_root;

/// Small Raft snapshots, so that a manager that was away a few dozen writes catches up by
/// snapshot rather than from the log.
const SNAPSHOT_EVERY: &str = "20,0";

fn info(h: &Host) -> Option<serde_json::Value> {
    let out = h.shoal(&["info", "--format", "json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn is_leader(h: &Host) -> bool {
    info(h).is_some_and(|i| i["is_leader"] == true)
}

fn last_applied(h: &Host) -> u64 {
    info(h)
        .and_then(|i| i["raft_last_applied"].as_u64())
        .unwrap_or(0)
}

fn raft_term(h: &Host) -> u64 {
    info(h).and_then(|i| i["raft_term"].as_u64()).unwrap_or(0)
}

/// The index of the host that leads, among `candidates`.
fn leader_among(lab: &Lab, candidates: &[usize]) -> Option<usize> {
    candidates.iter().copied().find(|&i| is_leader(lab.host(i)))
}

/// `node ls` as `h` sees it: (ready nodes, managers reachable, leaders).
fn cluster_view(h: &Host) -> Option<(usize, usize, usize)> {
    let out = h.shoal(&["node", "ls", "--format", "json"]);
    if !out.status.success() {
        return None;
    }
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let nodes = nodes.as_array()?;
    let count = |f: &dyn Fn(&serde_json::Value) -> bool| nodes.iter().filter(|n| f(n)).count();
    Some((
        count(&|n| n["status"]["state"] == "ready"),
        count(&|n| n["manager_status"]["reachability"] == "reachable"),
        count(&|n| n["manager_status"]["leader"] == true),
    ))
}

/// Three managers and `workers` workers, each joined with its token; busybox on every host.
fn cluster(lab: &mut Lab, workers: usize) {
    lab.add_first_manager();
    lab.add_joined(0, "manager");
    lab.add_joined(0, "manager");
    for _ in 0..workers {
        lab.add_joined(0, "worker");
    }
    for h in lab.hosts() {
        h.ok(&["image", "bootstrap", "busybox"]);
    }
    let total = 3 + workers;
    lab.wait_for(
        "every node ready, three managers reachable, one leader",
        Duration::from_secs(60),
        || cluster_view(lab.host(0)) == Some((total, 3, 1)),
    );
}

/// A label write on `node` through `h`: one Raft entry. True when acknowledged.
fn label(h: &Host, node: &str, key: &str) -> bool {
    let out = h.shoal(&["node", "update", "--label-add", &format!("{key}=1"), node]);
    if !out.status.success() {
        eprintln!(
            "label {key} through host {}: {}",
            h.index,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    out.status.success()
}

/// The labels of `node` as `h` reads them (after its read barrier).
fn labels(h: &Host, node: &str) -> Option<BTreeMap<String, String>> {
    let out = h.shoal(&["node", "inspect", node, "--format", "json"]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let labels = v[0]["labels"].as_object()?;
    Some(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect(),
    )
}

/// `(node id, task id)` of the running tasks of `service`.
fn running(h: &Host, service: &str) -> Vec<(String, String)> {
    let out = h.shoal(&["service", "ps", service, "--format", "json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let tasks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut running: Vec<(String, String)> = tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["desired_state"] == "running" && t["status"]["state"] == "running")
        .map(|t| {
            (
                t["node_id"].as_str().unwrap_or_default().to_string(),
                t["id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    running.sort();
    running
}

fn create_service(h: &Host, name: &str, replicas: usize) {
    h.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        name,
        "--replicas",
        &replicas.to_string(),
        "--stop-grace-period",
        "1s",
        "busybox",
        "sleep",
        "100000",
    ]);
}

#[test]
fn leader_kill_elects_a_new_leader_and_the_old_one_catches_up_by_snapshot() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    lab.env = vec![("SHOAL_SNAPSHOT_EVERY".into(), SNAPSHOT_EVERY.into())];
    cluster(&mut lab, 2);
    let managers = [0, 1, 2];
    let old = leader_among(&lab, &managers).expect("a leader");
    let survivors: Vec<usize> = managers.iter().copied().filter(|&i| i != old).collect();
    let target = lab.node_id(old, 3);

    // Kill the leader: a surviving manager leads and takes writes.
    let killed = Instant::now();
    lab.host_mut(old).kill9();
    lab.wait_for(
        "a write after the leader's death",
        Duration::from_secs(20),
        || label(lab.host(survivors[0]), &target, "after-kill"),
    );
    eprintln!(
        "leader kill -9 → first acknowledged write: {:?}",
        killed.elapsed()
    );
    let new = leader_among(&lab, &survivors).expect("a surviving manager leads");

    // Far more writes than a snapshot covers: the new leader compacts its log past the point
    // the old leader stopped at.
    for i in 0..60 {
        assert!(
            label(lab.host(survivors[i % 2]), &target, &format!("w{i}")),
            "write {i} while the old leader is down\n{}",
            lab.logs()
        );
    }

    // The old leader returns, rejoins, and catches up by installing the leader's snapshot.
    lab.host_mut(old).restart();
    lab.wait_for("the old leader caught up", Duration::from_secs(60), || {
        let l = last_applied(lab.host(new));
        l > 0
            && last_applied(lab.host(old)) >= l
            && labels(lab.host(old), &target).is_some_and(|l| l.contains_key("w59"))
    });
    assert!(
        lab.host(old)
            .log()
            .contains("snapshot installed from the leader"),
        "the old leader caught up by snapshot:\n{}",
        lab.host(old).log()
    );
    lab.wait_for(
        "three managers reachable again",
        Duration::from_secs(30),
        || {
            cluster_view(lab.host(new))
                .is_some_and(|(_, reachable, leaders)| reachable == 3 && leaders == 1)
        },
    );
    let all = labels(lab.host(old), &target).expect("labels");
    assert!(
        (0..60).all(|i| all.contains_key(&format!("w{i}"))) && all.contains_key("after-kill"),
        "every acknowledged write is on the returning manager: {all:?}"
    );
    drop(lab);
}

/// Drains the three managers (hosts 0–2), so that services run on the workers only.
fn drain_managers(lab: &Lab) {
    for i in 0..3 {
        let id = lab.node_id(0, i);
        lab.host(0)
            .ok(&["node", "update", "--availability", "drain", &id]);
    }
}

#[test]
fn a_dead_workers_tasks_run_elsewhere() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    cluster(&mut lab, 2);
    drain_managers(&lab);
    create_service(lab.host(1), "web", 4);
    lab.wait_for(
        "4 replicas on the two workers",
        Duration::from_secs(60),
        || {
            let now = running(lab.host(0), "web");
            let nodes: std::collections::BTreeSet<&String> = now.iter().map(|(n, _)| n).collect();
            now.len() == 4 && nodes.len() == 2
        },
    );
    let dead = lab.node_id(0, 3);
    let killed = Instant::now();
    lab.host_mut(3).kill9();
    lab.wait_for(
        "the dead worker's tasks running on the other worker",
        Duration::from_secs(60),
        || {
            let now = running(lab.host(2), "web");
            now.len() == 4 && now.iter().all(|(n, _)| *n != dead)
        },
    );
    eprintln!(
        "worker kill -9 → its tasks running elsewhere: {:?}",
        killed.elapsed()
    );
    let nodes = lab
        .host(0)
        .json(&["node", "inspect", &dead, "--format", "json"]);
    assert_eq!(nodes[0]["status"]["state"], "down", "{nodes}");
}

#[test]
fn a_partitioned_leader_cannot_commit_and_healing_leaves_one_history() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    cluster(&mut lab, 0);
    let old = leader_among(&lab, &[0, 1, 2]).expect("a leader");
    let majority: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let target = lab.node_id(old, majority[0]);

    // Cut the leader off. Every write on its side fails, and soon says why in plain words.
    lab.host(old).cut_link();
    let cut = Instant::now();
    let mut minority_writes = Vec::new();
    let mut said_why = None;
    while cut.elapsed() < Duration::from_secs(20) {
        let key = format!("minority{}", minority_writes.len());
        let out = lab.host(old).shoal(&[
            "node",
            "update",
            "--label-add",
            &format!("{key}=1"),
            &target,
        ]);
        assert!(
            !out.status.success(),
            "a write on the cut-off leader was acknowledged\n{}",
            lab.logs()
        );
        minority_writes.push(key);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if err.contains("managers reachable") {
            said_why = Some(err);
            break;
        }
    }
    let said_why = said_why.unwrap_or_else(|| {
        panic!(
            "no write on the minority said the quorum is lost\n{}",
            lab.logs()
        )
    });
    eprintln!("minority write: {}", said_why.trim());
    assert!(said_why.contains("1 of 3 managers reachable"), "{said_why}");

    // The majority elects a leader and goes on.
    lab.wait_for("a write on the majority", Duration::from_secs(20), || {
        label(lab.host(majority[0]), &target, "majority0")
    });
    for i in 1..10 {
        assert!(
            label(lab.host(majority[i % 2]), &target, &format!("majority{i}")),
            "majority write {i}\n{}",
            lab.logs()
        );
    }
    let new = leader_among(&lab, &majority).expect("the majority has a leader");
    let term_before_heal = raft_term(lab.host(new));

    // Heal: one history on all three, the majority's writes in it, the minority's not.
    lab.host(old).restore_link();
    lab.wait_for(
        "the three managers converge",
        Duration::from_secs(30),
        || {
            let views: Vec<Option<BTreeMap<String, String>>> =
                (0..3).map(|i| labels(lab.host(i), &target)).collect();
            let applied: Vec<u64> = (0..3).map(|i| last_applied(lab.host(i))).collect();
            views.iter().all(|v| v.is_some() && *v == views[0])
                && applied.iter().all(|&a| a == applied[0])
        },
    );
    let history = labels(lab.host(old), &target).expect("labels");
    for i in 0..10 {
        assert!(history.contains_key(&format!("majority{i}")), "{history:?}");
    }
    for key in &minority_writes {
        assert!(
            !history.contains_key(key),
            "an unacknowledged minority write survived: {key} in {history:?}"
        );
    }
    assert!(label(lab.host(old), &target, "after-heal"));
    let after = leader_among(&lab, &[0, 1, 2]);
    let term_after_heal = raft_term(lab.host(new));
    eprintln!(
        "returning partitioned leader: leader {} → {}, term {term_before_heal} → {term_after_heal} ({})",
        new,
        after.map(|a| a.to_string()).unwrap_or("none".into()),
        if after == Some(new) && term_after_heal == term_before_heal {
            "no needless election"
        } else {
            "a needless election"
        }
    );

    // The same for a cut-off follower, which keeps starting elections it cannot win and so
    // returns with an inflated term (openraft 0.9 has no PreVote): measured, not asserted.
    let leader = after.unwrap_or(new);
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let term_before = raft_term(lab.host(leader));
    lab.host(follower).cut_link();
    std::thread::sleep(Duration::from_secs(3));
    let follower_term = raft_term(lab.host(follower));
    lab.host(follower).restore_link();
    lab.wait_for("the follower is back", Duration::from_secs(30), || {
        cluster_view(lab.host(leader)).is_some_and(|(_, r, l)| r == 3 && l == 1)
            || cluster_view(lab.host(follower)).is_some_and(|(_, r, l)| r == 3 && l == 1)
    });
    std::thread::sleep(Duration::from_secs(1));
    let leader_after = leader_among(&lab, &[0, 1, 2]);
    let term_after = leader_after.map(|l| raft_term(lab.host(l))).unwrap_or(0);
    eprintln!(
        "returning partitioned follower (term {follower_term} while cut off): leader {leader} → {}, term {term_before} → {term_after} ({})",
        leader_after.map(|a| a.to_string()).unwrap_or("none".into()),
        if leader_after == Some(leader) && term_after == term_before {
            "no needless election"
        } else {
            "a needless election"
        }
    );
    lab.wait_for(
        "a write after the follower returned",
        Duration::from_secs(20),
        || label(lab.host(follower), &target, "after-follower"),
    );
}

#[test]
fn no_acknowledged_write_is_lost_across_20_leader_kills() {
    if !require_root() {
        return;
    }
    const KILLS: usize = 20;
    let mut lab = Lab::new();
    lab.env = vec![("SHOAL_SNAPSHOT_EVERY".into(), SNAPSHOT_EVERY.into())];
    cluster(&mut lab, 0);
    let target = lab.node_id(0, 0);
    let sockets: Vec<std::path::PathBuf> = lab.hosts().iter().map(|h| h.socket()).collect();

    // A client writes all along, to any manager, and logs what was acknowledged.
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (acknowledged, stop, target) = (acknowledged.clone(), stop.clone(), target.clone());
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let key = format!("k{n}");
                let out = std::process::Command::new(common::daemon::SHOAL)
                    .arg("--host")
                    .arg(&sockets[n % sockets.len()])
                    .args([
                        "node",
                        "update",
                        "--label-add",
                        &format!("{key}=1"),
                        &target,
                    ])
                    .stdin(std::process::Stdio::null())
                    .output();
                if out.is_ok_and(|o| o.status.success()) {
                    acknowledged
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(key);
                }
                n += 1;
            }
        })
    };
    let acked = || {
        acknowledged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    };
    let check = |lab: &Lab, i: usize, acked: &[String]| {
        let mut seen = None;
        lab.wait_for("a read of the labels", Duration::from_secs(20), || {
            seen = labels(lab.host(i), &target);
            seen.is_some()
        });
        let seen = seen.unwrap_or_default();
        let lost: Vec<&String> = acked.iter().filter(|k| !seen.contains_key(*k)).collect();
        assert!(
            lost.is_empty(),
            "acknowledged writes lost (read on host {i}): {lost:?}\n{}",
            lab.logs()
        );
    };

    for kill in 0..KILLS {
        lab.wait_for("three healthy managers", Duration::from_secs(60), || {
            (0..3).all(|i| cluster_view(lab.host(i)).is_some_and(|(_, r, l)| r == 3 && l == 1))
        });
        let leader = leader_among(&lab, &[0, 1, 2]).expect("a leader");
        let before = acked().len();
        lab.host_mut(leader).kill9();
        // Writes go on without it...
        lab.wait_for(
            "writes acknowledged after the kill",
            Duration::from_secs(30),
            || acked().len() >= before + 3,
        );
        // ...and none acknowledged so far is missing.
        let survivor = (0..3).find(|&i| i != leader).expect("a survivor");
        check(&lab, survivor, &acked());
        lab.host_mut(leader).restart();
        eprintln!(
            "kill {}: {} writes acknowledged so far",
            kill + 1,
            acked().len()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().expect("the writer thread");
    let all = acked();
    assert!(all.len() >= KILLS * 3, "{} writes", all.len());
    lab.wait_for("three healthy managers", Duration::from_secs(60), || {
        (0..3).all(|i| cluster_view(lab.host(i)).is_some_and(|(_, r, l)| r == 3 && l == 1))
    });
    for i in 0..3 {
        check(&lab, i, &all);
    }
    eprintln!(
        "{} acknowledged writes, none lost across {KILLS} leader kills",
        all.len()
    );
}

/// The containers of the worker on host `i` that run: (id, pid).
fn containers(lab: &Lab, i: usize) -> Vec<(String, i64)> {
    let list = lab.host(i).json(&["ps", "--no-trunc", "--format", "json"]);
    let mut running: Vec<(String, i64)> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["state"] == "running")
        .map(|c| {
            (
                c["id"].as_str().unwrap_or_default().to_string(),
                c["pid"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    running.sort();
    running
}

#[test]
fn agents_keep_their_containers_while_no_manager_answers() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    cluster(&mut lab, 1);
    drain_managers(&lab);
    create_service(lab.host(0), "keep", 2);
    lab.wait_for("2 replicas on the worker", Duration::from_secs(60), || {
        running(lab.host(0), "keep").len() == 2
    });
    let tasks = running(lab.host(0), "keep");
    lab.wait_for(
        "the worker runs 2 containers",
        Duration::from_secs(30),
        || containers(&lab, 3).len() == 2,
    );
    let before = containers(&lab, 3);

    // Every manager frozen, then every manager dead: the worker's containers run on.
    for i in 0..3 {
        lab.host(i).freeze();
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        containers(&lab, 3),
        before,
        "containers while the managers are frozen"
    );
    for i in 0..3 {
        lab.host(i).thaw();
    }
    lab.wait_for("a leader after the thaw", Duration::from_secs(30), || {
        cluster_view(lab.host(0)).is_some_and(|(ready, r, l)| ready == 4 && r == 3 && l == 1)
    });
    assert_eq!(
        running(lab.host(0), "keep"),
        tasks,
        "the same tasks run after the managers thawed"
    );

    for i in 0..3 {
        lab.host_mut(i).kill9();
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        containers(&lab, 3),
        before,
        "containers while no manager runs"
    );
    for i in 0..3 {
        lab.host_mut(i).restart();
    }
    // The worker finds the managers again and reconciles: the same tasks, the same
    // processes, nothing rescheduled.
    lab.wait_for(
        "the worker back in the cluster",
        Duration::from_secs(60),
        || cluster_view(lab.host(0)).is_some_and(|(ready, r, l)| ready == 4 && r == 3 && l == 1),
    );
    // `service ps` may fail for a moment while the restarted managers settle: wait for the
    // same tasks (a replacement would never match), then hold them a while.
    lab.wait_for("the same tasks running", Duration::from_secs(20), || {
        running(lab.host(0), "keep") == tasks
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        running(lab.host(0), "keep"),
        tasks,
        "the same tasks run\n{}",
        lab.logs()
    );
    assert_eq!(containers(&lab, 3), before, "the same containers run");
}

#[test]
fn the_harness_leaves_no_namespace_behind() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    lab.add_first_manager();
    lab.add_joined(0, "worker");
    let names = lab.namespaces();
    assert_eq!(names.len(), 3, "a switch and two hosts: {names:?}");
    lab.wait_for("both nodes ready", Duration::from_secs(30), || {
        cluster_view(lab.host(0)).is_some_and(|(ready, _, _)| ready == 2)
    });
    // The worker reaches its manager across the switch, not over loopback.
    let nodes = lab.host(0).json(&["node", "ls", "--format", "json"]);
    let worker_addr = nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["role"] == "worker")
        .map(|n| n["status"]["addr"].as_str().unwrap_or_default().to_string());
    assert_eq!(worker_addr, Some(lab.host(1).ip.to_string()), "{nodes}");
    let prefix = names[0].trim_end_matches("-sw").to_string();
    drop(lab);
    assert_eq!(namespaces_named(&prefix), Vec::<String>::new());
}
