//! `node promote`, `node demote` and `node rm` of a manager, on test hosts (see
//! `common/hosts.rs`): a promoted worker gets a manager certificate, restarts as a manager and
//! joins the Raft membership; a demoted manager leaves it, gets a worker certificate and
//! restarts as a worker; the last manager and a change that would lose the quorum are refused;
//! `node rm --force` of a manager takes it out of the membership.

mod common;

use std::time::Duration;

use common::hosts::{Host, Lab};
use common::require_root;
use shoal_manager::ca::Role;

/// The role in host `i`'s own certificate (its OU).
fn cert_role(h: &Host) -> Option<Role> {
    let pem = std::fs::read_to_string(h.data_dir().join("certs/node.crt")).ok()?;
    shoal_manager::ca::identity_of(&pem).ok().map(|id| id.role)
}

/// (managers reachable, leaders, ready nodes) as host `via` sees them; None if it cannot say.
fn view(lab: &Lab, via: usize) -> Option<(usize, usize, usize)> {
    let out = lab.host(via).shoal(&["node", "ls", "--format", "json"]);
    if !out.status.success() {
        return None;
    }
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let nodes = nodes.as_array()?;
    let count = |f: &dyn Fn(&serde_json::Value) -> bool| nodes.iter().filter(|n| f(n)).count();
    Some((
        count(&|n| n["manager_status"]["reachability"] == "reachable"),
        count(&|n| n["manager_status"]["leader"] == true),
        count(&|n| n["status"]["state"] == "ready"),
    ))
}

fn is_manager(h: &Host) -> bool {
    h.shoal(&["service", "ls", "-q"]).status.success()
}

#[test]
fn workers_are_promoted_and_managers_demoted_with_new_certificates() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    lab.add_first_manager();
    lab.add_joined(0, "worker");
    lab.add_joined(0, "worker");
    lab.wait_for("three ready nodes", Duration::from_secs(60), || {
        view(&lab, 0) == Some((1, 1, 3))
    });
    assert_eq!(cert_role(lab.host(1)), Some(Role::Worker));
    let ids: Vec<String> = (0..3).map(|i| lab.node_id(0, i)).collect();

    // Promote both workers: each restarts as a manager and joins the Raft membership.
    let out = lab.host(0).ok(&["node", "promote", &ids[1], &ids[2]]);
    assert!(out.contains("promoted to a manager"), "{out}");
    lab.wait_for(
        "three managers, all reachable",
        Duration::from_secs(90),
        || view(&lab, 0) == Some((3, 1, 3)) && is_manager(lab.host(1)) && is_manager(lab.host(2)),
    );
    assert_eq!(cert_role(lab.host(1)), Some(Role::Manager));
    assert_eq!(cert_role(lab.host(2)), Some(Role::Manager));
    // The new managers take writes (forwarded to the leader).
    lab.host(2)
        .ok(&["node", "update", "--label-add", "promoted=yes", &ids[2]]);

    // With one manager down, demoting another would lose the quorum: refused, nothing
    // changes.
    lab.host_mut(2).kill9();
    lab.wait_for("the dead manager noticed", Duration::from_secs(30), || {
        view(&lab, 0).is_some_and(|(reachable, _, _)| reachable == 2)
    });
    let err = lab.host(0).fails(&["node", "demote", &ids[1]]);
    assert!(err.contains("would lose the quorum"), "{err}");
    lab.host_mut(2).restart();
    lab.wait_for(
        "three managers again, as each sees it",
        Duration::from_secs(60),
        || (0..3).all(|i| view(&lab, i) == Some((3, 1, 3))),
    );

    // Demote the first manager (the leader) through another one: it leaves the membership,
    // gets a worker certificate and restarts as a worker.
    let out = lab.host(1).ok(&["node", "demote", &ids[0]]);
    assert!(out.contains("demoted"), "{out}");
    lab.wait_for(
        "the old leader runs as a worker",
        Duration::from_secs(90),
        || {
            cert_role(lab.host(0)) == Some(Role::Worker)
                && !is_manager(lab.host(0))
                && view(&lab, 1) == Some((2, 1, 3))
        },
    );
    let err = lab.host(0).fails(&["service", "ls"]);
    assert!(err.contains("not a manager"), "{err}");
    let nodes = lab
        .host(1)
        .json(&["node", "inspect", &ids[0], "--format", "json"]);
    assert_eq!(nodes[0]["role"], "worker", "{nodes}");
    assert!(nodes[0]["manager_status"].is_null(), "{nodes}");

    // `node rm --force` of a live manager takes it out of the membership: with it gone for
    // good, the last manager still commits on its own.
    lab.host(1).ok(&["node", "rm", "--force", &ids[2]]);
    lab.host_mut(2).kill9();
    lab.wait_for(
        "a write with one manager left",
        Duration::from_secs(30),
        || {
            lab.host(1)
                .shoal(&["node", "update", "--label-add", "alone=yes", &ids[1]])
                .status
                .success()
        },
    );
    let managers = lab.host(1).json(&["node", "ls", "--format", "json"]);
    let count = managers
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| !n["manager_status"].is_null())
        .count();
    assert_eq!(count, 1, "{managers}");

    // The last manager cannot be demoted.
    let err = lab.host(1).fails(&["node", "demote", &ids[1]]);
    assert!(err.contains("last manager"), "{err}");
}
