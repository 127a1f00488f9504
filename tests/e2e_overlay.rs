//! Overlay networks end to end on three test hosts (one network namespace each, see
//! `common::hosts`): a stack spread over the hosts talks by name across them (task names,
//! `tasks.<service>`, the service's virtual IP), and a dead node's tasks leave DNS as soon as
//! the node is marked down.
//!
//! What a container sees is asked with `shoal exec` on the host that runs it. busybox-static
//! resolves names only through /etc/hosts, so names go through `nslookup` (which asks the
//! container's DNS server) and `nc` connects to the address.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::hosts::{Host, Lab};
use common::require_root;

/// web: 3 replicas (spread over the hosts), each serving its container's hostname; db: one
/// replica, serving "db".
const STACK: &str = r#"
services:
  web:
    image: busybox
    command: [sh, -c, "mkdir -p /www && echo web-$$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www"]
    stop_grace_period: 1s
    deploy:
      replicas: 3
  db:
    image: busybox
    command: [sh, -c, "mkdir -p /www && echo db > /www/index.html && exec httpd -f -p 80 -h /www"]
    stop_grace_period: 1s
"#;

/// A running task of `service`: (node id, container id, overlay address).
fn running(lab: &Lab, service: &str) -> Vec<(String, String, String)> {
    let out = lab
        .host(0)
        .shoal(&["service", "ps", service, "--format", "json"]);
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
    let mut lab = Lab::three_ready_nodes_with_busybox();
    let nodes: Vec<String> = (0..3).map(|i| lab.node_id(0, i)).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("stack.yaml");
    std::fs::write(&file, STACK).expect("write the stack file");
    let file = file.to_str().expect("utf-8 path");
    lab.host(0)
        .ok(&["stack", "deploy", "--detach", "-c", file, "app"]);

    // Stacks get an overlay network by default.
    let network = lab.host(0).json(&["network", "inspect", "app_default"]);
    assert_eq!(network[0]["spec"]["driver"], "overlay", "{network}");

    let host_of = |node: &str| nodes.iter().position(|n| n == node).expect("a lab node");
    lab.wait_for(
        "3 web tasks on several hosts, and db",
        Duration::from_secs(90),
        || {
            let hosts: BTreeSet<String> =
                running(&lab, "app_web").into_iter().map(|t| t.0).collect();
            hosts.len() >= 2
                && running(&lab, "app_web").len() == 3
                && running(&lab, "app_db").len() == 1
        },
    );
    let web = running(&lab, "app_web");
    let db = running(&lab, "app_db").remove(0);
    let db_host = host_of(&db.0);
    let web_addresses: BTreeSet<String> = web.iter().map(|t| t.2.clone()).collect();
    assert_eq!(
        web_addresses.len(),
        3,
        "every task has its own overlay address: {web:?}"
    );

    // A web task on another host than db's finds db by name and gets its page across hosts.
    let (node, container, _) = web
        .iter()
        .find(|t| host_of(&t.0) != db_host)
        .expect("a web task away from db");
    let from = lab.host(host_of(node));
    lab.wait_for(
        "web reaches db on another host by name",
        Duration::from_secs(30),
        || {
            let ips = lookup(from, container, "db");
            let pages: Vec<String> = ips.iter().map(|ip| page(from, container, ip)).collect();
            pages.iter().any(|p| p == "db")
        },
    );

    // db sees every web task (tasks.web) and reaches each, some on other hosts.
    lab.wait_for(
        "db resolves tasks.web to the 3 tasks",
        Duration::from_secs(30),
        || lookup(lab.host(db_host), &db.1, "tasks.web") == web_addresses,
    );
    for ip in &web_addresses {
        let got = page(lab.host(db_host), &db.1, ip);
        assert!(
            got.starts_with("web-"),
            "page of web at {ip} from db: {got:?}\n{}",
            lab.logs()
        );
    }
    // The service name is its virtual IP, which reaches the web tasks.
    let vip = lookup(lab.host(db_host), &db.1, "web");
    assert_eq!(vip.len(), 1, "web resolves to one virtual IP: {vip:?}");
    let vip = vip.into_iter().next().expect("one");
    assert!(
        !web_addresses.contains(&vip),
        "{vip} is not a task's address"
    );
    let pages: BTreeSet<String> = (0..12)
        .map(|_| page(lab.host(db_host), &db.1, &vip))
        .collect();
    assert!(
        pages.iter().all(|p| p.starts_with("web-")) && pages.len() >= 2,
        "connections to the VIP reach several web tasks: {pages:?}"
    );

    // A worker host with a web task and not db dies: once its node is down, its task's
    // address leaves every answer.
    let (dead_node, _, dead) = web
        .iter()
        .find(|t| ![0, db_host].contains(&host_of(&t.0)))
        .cloned()
        .unwrap_or_else(|| panic!("a web task on a worker without db: {web:?}, db on {db_host}"));
    lab.host_mut(host_of(&dead_node)).kill9();
    lab.wait_for(
        "the dead host's web task out of DNS",
        Duration::from_secs(30),
        || !lookup(lab.host(db_host), &db.1, "tasks.web").contains(&dead),
    );
}
