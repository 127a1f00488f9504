//! Overlay networks end to end on three test hosts (one network namespace each, see
//! `common::hosts`): a stack spread over the hosts talks by name across them, and a dead
//! node's tasks leave DNS as soon as the node is marked down.
//!
//! What a container sees is asked with `shoal exec` on the host that runs it. busybox-static
//! resolves names only through /etc/hosts, so names go through `nslookup` (which asks the
//! container's DNS server) and `nc` connects to the address.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::hosts::{Host, Lab};
use common::require_root;

/// web: 3 replicas, one per host, each serving its container's hostname; db: one replica on the host
/// labelled `role=db`, serving "db".
const STACK: &str = r#"
services:
  web:
    image: busybox
    command: [sh, -c, "mkdir -p /www && echo web-$$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www"]
    stop_grace_period: 1s
    deploy:
      replicas: 3
      placement: { max_replicas_per_node: 1 }
  db:
    image: busybox
    command: [sh, -c, "mkdir -p /www && echo db > /www/index.html && exec httpd -f -p 80 -h /www"]
    stop_grace_period: 1s
    deploy:
      placement: { constraints: [node.labels.role == db] }
"#;

/// A manager and two workers, every node ready with busybox.
fn three_hosts() -> Lab {
    let mut lab = Lab::new();
    lab.add_first_manager();
    lab.add_joined(0, "worker");
    lab.add_joined(0, "worker");
    for h in lab.hosts() {
        h.ok(&["image", "bootstrap", "busybox"]);
    }
    lab.wait_for("three ready nodes", Duration::from_secs(60), || {
        let nodes = lab.host(0).json(&["node", "ls", "--format", "json"]);
        nodes
            .as_array()
            .is_some_and(|n| n.iter().filter(|n| n["status"]["state"] == "ready").count() == 3)
    });
    lab
}

/// The node id of host `i`, as the manager knows it (by the address it comes from).
fn node_of(lab: &Lab, i: usize) -> String {
    let nodes = lab.host(0).json(&["node", "ls", "--format", "json"]);
    let ip = lab.host(i).ip.to_string();
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["status"]["addr"] == ip.as_str())
        .and_then(|n| n["id"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no node at {ip}: {nodes}"))
}

/// A running task of `service`: (node id, container id, overlay address).
fn running(lab: &Lab, service: &str) -> Vec<(String, String, String)> {
    let out = lab.host(0).shoal(&["service", "ps", service, "--format", "json"]);
    let tasks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["desired_state"] == "running" && t["status"]["state"] == "running")
        .map(|t| {
            let address = t["status"]["addresses"][0]["address"]
                .as_str()
                .unwrap_or_default();
            (
                t["node_id"].as_str().unwrap_or_default().to_string(),
                t["status"]["container_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                address.split('/').next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Runs a shell command in a container on host `h`; its output, or `None` when it failed.
fn exec(h: &Host, container: &str, script: &str) -> Option<String> {
    let out = h.shoal(&["exec", container, "sh", "-c", script]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The addresses `name` resolves to from a container (its node's DNS server).
fn lookup(h: &Host, container: &str, name: &str) -> BTreeSet<String> {
    let out = exec(h, container, &format!("nslookup {name} 2>/dev/null")).unwrap_or_default();
    out.lines()
        .filter(|l| l.starts_with("Address") && !l.contains(":53"))
        .filter_map(|l| l.split_whitespace().last())
        .map(str::to_string)
        .collect()
}

/// The page a container gets from `ip:80`.
fn page(h: &Host, container: &str, ip: &str) -> String {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} 80 | tail -1");
    exec(h, container, &script)
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn a_stack_spread_over_three_hosts_talks_by_name_and_drops_a_dead_nodes_tasks() {
    if !require_root() {
        return;
    }
    let mut lab = three_hosts();
    let nodes: Vec<String> = (0..3).map(|i| node_of(&lab, i)).collect();
    lab.host(0)
        .ok(&["node", "update", "--label-add", "role=db", &nodes[2]]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("stack.yaml");
    std::fs::write(&file, STACK).expect("write the stack file");
    let file = file.to_str().expect("utf-8 path");
    lab.host(0)
        .ok(&["stack", "deploy", "--detach", "-c", file, "app"]);

    // Stacks get an overlay network by default.
    let network = lab.host(0).json(&["network", "inspect", "app_default"]);
    assert_eq!(network[0]["spec"]["driver"], "overlay", "{network}");

    lab.wait_for("3 web tasks, one per host, and db", Duration::from_secs(90), || {
        let hosts: BTreeSet<String> = running(&lab, "app_web").into_iter().map(|t| t.0).collect();
        hosts.len() == 3 && running(&lab, "app_db").len() == 1
    });
    let host_of = |node: &str| nodes.iter().position(|n| n == node).expect("a lab node");
    let web = running(&lab, "app_web");
    let db = running(&lab, "app_db").remove(0);
    assert_eq!(host_of(&db.0), 2, "db runs on the labelled host");
    let web_addresses: BTreeSet<String> = web.iter().map(|t| t.2.clone()).collect();
    assert_eq!(web_addresses.len(), 3, "every task has its own overlay address: {web:?}");

    // A web task on a host without db finds db by name and gets its page across hosts.
    let (node, container, _) = web
        .iter()
        .find(|t| host_of(&t.0) == 0)
        .expect("a web task on host 0");
    let from = lab.host(host_of(node));
    lab.wait_for("web on host 0 reaches db by name", Duration::from_secs(30), || {
        lookup(from, container, "db").into_iter().any(|ip| page(from, container, &ip) == "db")
    });

    // db sees every web task (tasks.web) and reaches each, two of them on other hosts.
    let db_host = lab.host(2);
    lab.wait_for("db resolves tasks.web to the 3 tasks", Duration::from_secs(30), || {
        lookup(db_host, &db.1, "tasks.web") == web_addresses
    });
    for ip in &web_addresses {
        let got = page(db_host, &db.1, ip);
        assert!(got.starts_with("web-"), "page of web at {ip} from db: {got:?}\n{}", lab.logs());
    }

    // Host 1 dies: once its node is down, its task's address leaves every answer.
    let dead = web
        .iter()
        .find(|t| host_of(&t.0) == 1)
        .map(|t| t.2.clone())
        .expect("a web task on host 1");
    lab.host_mut(1).kill9();
    lab.wait_for("the dead host's web task out of DNS", Duration::from_secs(30), || {
        !lookup(db_host, &db.1, "tasks.web").contains(&dead)
    });
}
