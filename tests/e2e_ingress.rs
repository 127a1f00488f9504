//! The ingress routing mesh on three test hosts (one network namespace each, see
//! `common::hosts`): a port published in ingress mode answers on every node, also one that runs
//! no task of the service (it forwards over the underlay to a node that has some); a host-mode
//! port only where its task runs; with several replicas, one node's port reaches tasks on
//! several nodes; a dead node's tasks stop getting connections once it is marked down.
//!
//! The client runs in a thread that joined a host's network namespace and connects to that
//! host's own address: a connection from another cluster node's address counts as already
//! forwarded by the mesh (see the ports module docs) and only reaches local tasks.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use common::hosts::{Host, Lab};
use common::require_root;

/// Each task serves its container's hostname.
const SERVE: &str =
    "mkdir -p /www && echo web-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www";

/// The index of the host with node id `node`.
fn host_of_node(lab: &Lab, node: &str) -> usize {
    let nodes = lab.host(0).json(&["node", "ls", "--format", "json"]);
    let addr = nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == node)
        .and_then(|n| n["status"]["addr"].as_str())
        .unwrap_or_else(|| panic!("no node {node}: {nodes}"))
        .to_string();
    lab.hosts()
        .iter()
        .position(|h| h.ip.to_string() == addr)
        .unwrap_or_else(|| panic!("no lab host at {addr}"))
}

/// The hosts (indexes) running a task of `service`.
fn task_hosts(lab: &Lab, service: &str) -> Vec<usize> {
    let out = lab
        .host(0)
        .shoal(&["service", "ps", service, "--format", "json"]);
    let tasks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["desired_state"] == "running" && t["status"]["state"] == "running")
        .filter_map(|t| t["node_id"].as_str())
        .map(|n| host_of_node(lab, n))
        .collect()
}

/// `GET /` to `host`'s own address and `port`, from inside its network namespace; the page's
/// last line, or `None` when nothing answered.
fn get(host: &Host, port: u16) -> Option<String> {
    let ns = format!("/var/run/netns/{}", host.netns);
    let addr = SocketAddrV4::new(host.ip, port);
    std::thread::spawn(move || -> Option<String> {
        let file = std::fs::File::open(&ns).ok()?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(3)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.lines().last().map(|l| l.trim().to_string())
    })
    .join()
    .ok()
    .flatten()
}

fn answers(host: &Host, port: u16) -> bool {
    get(host, port).is_some_and(|p| p.starts_with("web-"))
}

fn create(lab: &Lab, name: &str, publish: &str) {
    lab.host(0).ok(&[
        "service",
        "create",
        "--name",
        name,
        "--replicas",
        "1",
        "--stop-grace-period",
        "1s",
        "-p",
        publish,
        "busybox",
        "sh",
        "-c",
        SERVE,
    ]);
}

#[test]
fn an_ingress_port_answers_on_every_node_and_spreads_over_the_cluster() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::three_ready_nodes_with_busybox();

    // Host mode: only the task's host answers.
    create(&lab, "local", "published=8081,target=80,mode=host");
    lab.wait_for("the host-mode task runs", Duration::from_secs(90), || {
        task_hosts(&lab, "local").len() == 1
    });
    let local = task_hosts(&lab, "local")[0];
    lab.wait_for(
        "the host-mode port answers on its host",
        Duration::from_secs(30),
        || answers(lab.host(local), 8081),
    );
    for i in (0..3).filter(|&i| i != local) {
        assert!(
            get(lab.host(i), 8081).is_none(),
            "host {i} has no task of a host-mode port and must not answer"
        );
    }

    // Ingress: every host answers, those with no task by forwarding.
    create(&lab, "web", "published=8080,target=80");
    lab.wait_for("the ingress task runs", Duration::from_secs(90), || {
        task_hosts(&lab, "web").len() == 1
    });
    let with_task = task_hosts(&lab, "web")[0];
    eprintln!("ingress task on host {with_task}, host-mode task on host {local}");
    for i in 0..3 {
        lab.wait_for(
            &format!("the ingress port answers on host {i} (task on host {with_task})"),
            Duration::from_secs(30),
            || answers(lab.host(i), 8080),
        );
    }

    // Three replicas: one node's port reaches tasks on several nodes.
    lab.host(0).ok(&["service", "scale", "web=3"]);
    lab.wait_for(
        "three web tasks on several hosts",
        Duration::from_secs(90),
        || {
            let hosts = task_hosts(&lab, "web");
            hosts.len() == 3 && hosts.iter().collect::<BTreeSet<_>>().len() >= 2
        },
    );
    let hosts = task_hosts(&lab, "web");
    eprintln!("web tasks on hosts {hosts:?}");
    let probe = (0..3)
        .find(|i| hosts.iter().filter(|h| *h == i).count() <= 1)
        .expect("a host with at most one task");
    lab.wait_for(
        &format!("host {probe}'s port reaches tasks on several hosts"),
        Duration::from_secs(30),
        || {
            let pages: BTreeSet<String> =
                (0..18).filter_map(|_| get(lab.host(probe), 8080)).collect();
            eprintln!("pages from host {probe}: {pages:?}");
            pages.len() >= 2
        },
    );

    // A worker with a web task dies: once it is down, the others stop forwarding to it and
    // every connection is answered.
    let dead = *hosts
        .iter()
        .find(|&&h| h != 0)
        .unwrap_or_else(|| panic!("a web task on a worker: {hosts:?}"));
    let alive: Vec<usize> = (0..3).filter(|&i| i != dead).collect();
    lab.host_mut(dead).kill9();
    lab.wait_for(
        &format!("host {dead} marked down"),
        Duration::from_secs(60),
        || {
            let nodes = lab.host(0).json(&["node", "ls", "--format", "json"]);
            let ip = lab.host(dead).ip.to_string();
            nodes
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n["status"]["addr"] == ip.as_str() && n["status"]["state"] == "down")
        },
    );
    for &i in &alive {
        lab.wait_for(
            &format!("host {i} answers every connection without host {dead}"),
            Duration::from_secs(60),
            || (0..12).all(|_| answers(lab.host(i), 8080)),
        );
    }
}
