//! Placement on three test hosts (a manager and two workers, see `common::hosts`):
//! constraints on node labels and roles, `--replicas-max-per-node` leaving a task pending with
//! Swarm's reason, a constraint changed by `service update`, and global and replicated
//! services that follow node labels as they are added and removed.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::hosts::Lab;
use common::require_root;

const WAIT: Duration = Duration::from_secs(90);

/// The nodes (ids) running a task of `service`, one entry per task.
fn running_on(lab: &Lab, service: &str) -> Vec<String> {
    let mut nodes: Vec<String> = lab
        .host(0)
        .running_tasks(service)
        .iter()
        .filter_map(|t| t["node_id"].as_str().map(str::to_string))
        .collect();
    nodes.sort();
    nodes
}

/// `service create` with a short stop grace period and a task that sleeps; `extra` goes before
/// the image.
fn create(lab: &Lab, name: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "service",
        "create",
        "--name",
        name,
        "--stop-grace-period",
        "1s",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["busybox", "sleep", "3600"]);
    lab.host(0).ok(&args)
}

#[test]
fn constraints_max_replicas_and_global_services_follow_node_labels() {
    if !require_root() {
        return;
    }
    let lab = Lab::three_ready_nodes_with_busybox();
    let manager = lab.node_id(0, 0);
    let w1 = lab.node_id(0, 1);
    let w2 = lab.node_id(0, 2);
    lab.host(0)
        .ok(&["node", "update", "--label-add", "zone=b", w1.as_str()]);

    // A label constraint: both tasks on the labelled worker.
    create(
        &lab,
        "inzone",
        &["--replicas", "2", "--constraint", "node.labels.zone==b"],
    );
    lab.wait_for("two inzone tasks running", WAIT, || {
        running_on(&lab, "inzone").len() == 2
    });
    assert_eq!(running_on(&lab, "inzone"), vec![w1.clone(), w1.clone()]);
    let inspect = lab.host(0).ok(&["service", "inspect", "inzone"]);
    assert!(inspect.contains("node.labels.zone==b"), "{inspect}");

    // A role constraint: on the manager.
    create(
        &lab,
        "onmanager",
        &["--replicas", "2", "--constraint", "node.role==manager"],
    );
    lab.wait_for("two onmanager tasks running", WAIT, || {
        running_on(&lab, "onmanager").len() == 2
    });
    assert_eq!(
        running_on(&lab, "onmanager"),
        vec![manager.clone(), manager.clone()]
    );

    // A constraint changed by `service update` replaces the tasks where it now allows.
    lab.host(0).ok(&[
        "service",
        "update",
        "--constraint-rm",
        "node.labels.zone==b",
        "--constraint-add",
        "node.role==manager",
        "inzone",
    ]);
    lab.wait_for("inzone's tasks moved to the manager", WAIT, || {
        running_on(&lab, "inzone") == vec![manager.clone(), manager.clone()]
    });

    // A bad constraint is refused with one line, before anything is made.
    let err = lab.host(0).fails(&[
        "service",
        "create",
        "--name",
        "bad",
        "--constraint",
        "node.colour==red",
        "busybox",
    ]);
    assert!(err.contains("unknown key"), "{err}");
    let err = lab.host(0).fails(&[
        "service",
        "update",
        "--constraint-add",
        "engine.labels.disk==ssd",
        "inzone",
    ]);
    assert!(err.contains("engine labels are not supported"), "{err}");

    // One task per node at most: three run on distinct nodes, the fourth waits with the reason.
    create(
        &lab,
        "capped",
        &[
            "--replicas",
            "4",
            "--replicas-max-per-node",
            "1",
            "--detach",
        ],
    );
    lab.wait_for("three capped tasks running", WAIT, || {
        running_on(&lab, "capped").len() == 3
    });
    let nodes: BTreeSet<String> = running_on(&lab, "capped").into_iter().collect();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let reason = "no suitable node (max replicas per node limit exceed on 3 nodes)";
    lab.wait_for(
        "the fourth capped task pending with its reason",
        WAIT,
        || {
            let tasks = lab
                .host(0)
                .json(&["service", "ps", "capped", "--format", "json"]);
            tasks.as_array().into_iter().flatten().any(|t| {
                t["desired_state"] == "running"
                    && t["status"]["state"] == "pending"
                    && t["scheduling_error"] == reason
            })
        },
    );
    let table = lab.host(0).ok(&["service", "ps", "capped"]);
    assert!(
        table.contains("no suitable node (max replicas per node"),
        "{table}"
    );

    // A global service on the zone=b nodes only, following the labels.
    create(
        &lab,
        "agent",
        &[
            "--mode",
            "global",
            "--constraint",
            "node.labels.zone==b",
            "--detach",
        ],
    );
    lab.wait_for("the global task on w1", WAIT, || {
        running_on(&lab, "agent") == vec![w1.clone()]
    });
    lab.host(0)
        .ok(&["node", "update", "--label-add", "zone=b", w2.as_str()]);
    let mut both = vec![w1.clone(), w2.clone()];
    both.sort();
    lab.wait_for("a global task on w2 once it is labelled", WAIT, || {
        running_on(&lab, "agent") == both
    });
    lab.host(0)
        .ok(&["node", "update", "--label-rm", "zone", w1.as_str()]);
    lab.wait_for("w1's global task shut down once unlabelled", WAIT, || {
        running_on(&lab, "agent") == vec![w2.clone()]
    });
    assert!(
        !running_on(&lab, "agent").contains(&manager),
        "the manager has no zone label"
    );

    // A replicated task whose node stops matching is shut down and waits for a node that does.
    create(
        &lab,
        "follow",
        &["--replicas", "1", "--constraint", "node.labels.zone==b"],
    );
    assert_eq!(running_on(&lab, "follow"), vec![w2.clone()]);
    lab.host(0)
        .ok(&["node", "update", "--label-rm", "zone", w2.as_str()]);
    let reason = "no suitable node (scheduling constraints not satisfied on 3 nodes)";
    lab.wait_for(
        "follow's task leaves w2 and waits with its reason",
        WAIT,
        || {
            let tasks = lab
                .host(0)
                .json(&["service", "ps", "follow", "--format", "json"]);
            running_on(&lab, "follow").is_empty()
                && tasks
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| t["desired_state"] == "running" && t["scheduling_error"] == reason)
        },
    );
}
