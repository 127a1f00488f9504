//! Images without a registry, on three test hosts (see `common/hosts.rs`): an image built on
//! the manager, and one loaded on a worker, run on a third host that had neither, fetched from
//! the node that has each (layers verified, one fetch for two replicas); the manager pins the
//! digest at deploy. And `compose up --build` of a global service on a three-node cluster:
//! built once, run on every node.
//!
//! Only nodes of the cluster get in: the image ports refuse a client without a certificate,
//! and one from another cluster's CA.
//!
//! The wrong-digest case (a peer serving a blob that does not hash to its digest) is refused
//! with the store untouched: see `agent/src/image/peer/tests.rs`, where a lying peer can be
//! made.

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::TestDaemon;
use common::hosts::{Host, Lab};
use common::require_root;
use shoal_proto::image_peer_client::ImagePeerClient;
use shoal_proto::image_peer_directory_client::ImagePeerDirectoryClient;
use shoal_proto::{ListImagePeersRequest, PeerImageRequest};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const CONVERGE: Duration = Duration::from_secs(90);

fn ready_nodes(h: &Host) -> usize {
    let out = h.shoal(&["node", "ls", "--format", "json"]);
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["status"]["state"] == "ready")
        .count()
}

/// A manager and two workers, every one ready; busybox on the manager only.
fn three_hosts() -> Lab {
    let mut lab = Lab::new();
    lab.add_first_manager();
    lab.add_joined(0, "worker");
    lab.add_joined(0, "worker");
    lab.wait_for("three ready nodes", CONVERGE, || {
        ready_nodes(lab.host(0)) == 3
    });
    lab.host(0).ok(&["image", "bootstrap", "busybox"]);
    lab
}

/// A build context: busybox plus a file, printed by the command.
fn context(dir: &Path, motd: &str) -> String {
    std::fs::create_dir_all(dir).expect("context dir");
    std::fs::write(dir.join("motd"), motd).expect("motd");
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nCOPY motd /etc/motd\nCMD [\"sh\", \"-c\", \"cat /etc/motd; exec sleep 100000\"]\n",
    )
    .expect("Dockerfile");
    dir.to_str().expect("utf-8 path").to_string()
}

/// The image ids a host has.
fn image_ids(h: &Host) -> Vec<String> {
    h.ok(&["image", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect()
}

fn image_id(h: &Host, image: &str) -> Option<String> {
    let out = h.shoal(&["image", "inspect", image]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v[0]["Id"].as_str().map(str::to_string)
}

/// `(node id, state)` of the service's tasks that should run.
fn tasks(h: &Host, service: &str) -> Vec<(String, String, String)> {
    let out = h.shoal(&["service", "ps", service, "--format", "json"]);
    let tasks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["desired_state"] == "running")
        .map(|t| {
            (
                t["node_id"].as_str().unwrap_or_default().to_string(),
                t["status"]["state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                t["status"]["error"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// What the service's tasks running on host `on` printed (read there: `service logs` reads
/// the logs of the manager's own node).
fn output_on(lab: &Lab, on: usize, service: &str) -> String {
    let out = lab
        .host(0)
        .shoal(&["service", "ps", service, "--format", "json"]);
    let tasks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let node = lab.node_id(0, on);
    tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["node_id"] == node.as_str() && t["status"]["state"] == "running")
        .filter_map(|t| t["id"].as_str())
        .map(|id| String::from_utf8_lossy(&lab.host(on).shoal(&["logs", id]).stdout).into_owned())
        .collect()
}

fn running_on(h: &Host, service: &str) -> Vec<String> {
    tasks(h, service)
        .into_iter()
        .filter(|(_, state, _)| state == "running")
        .map(|(node, _, _)| node)
        .collect()
}

#[test]
fn an_image_built_or_loaded_on_one_node_runs_on_another_with_no_registry() {
    if !require_root() {
        return;
    }
    let lab = three_hosts();
    let (manager, worker, target) = (lab.host(0), lab.host(1), lab.host(2));
    let work = tempfile::tempdir().expect("tempdir");

    // Built on the manager (host 1).
    manager.ok(&[
        "build",
        "-t",
        "peerapp:v1",
        &context(&work.path().join("app"), "built on host 1\n"),
    ]);
    let built = image_id(manager, "peerapp:v1").expect("built");
    // Loaded on a worker (host 2) only: built on host 1, saved, removed there, loaded there.
    manager.ok(&[
        "build",
        "-t",
        "peerload:v1",
        &context(&work.path().join("load"), "loaded on host 2\n"),
    ]);
    let archive = work.path().join("peerload.tar");
    manager.ok(&[
        "image",
        "save",
        "-o",
        archive.to_str().expect("path"),
        "peerload:v1",
    ]);
    manager.ok(&["image", "rm", "peerload:v1"]);
    worker.ok(&["image", "load", "-i", archive.to_str().expect("path")]);
    let loaded = image_id(worker, "peerload:v1").expect("loaded");
    assert_eq!(image_id(manager, "peerload:v1"), None);
    assert!(image_ids(target).is_empty(), "host 3 starts with no image");

    // Every node says where it serves its images.
    let target_id = lab.node_id(0, 2);
    let inspect = manager.json(&["node", "inspect", &target_id, "--format", "json"]);
    assert_eq!(
        inspect[0]["description"]["peer_addr"],
        format!("{}:{}", target.ip, common::hosts::MANAGER_PORT).as_str(),
        "{inspect}"
    );

    // Hosts 1 and 2 take no tasks: whatever is deployed runs on host 3.
    for i in [0, 1] {
        manager.ok(&[
            "node",
            "update",
            "--availability",
            "drain",
            &lab.node_id(0, i),
        ]);
    }

    // Two replicas of the image built on host 1: both on host 3, one fetch between them.
    manager.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "built",
        "--replicas",
        "2",
        "--stop-grace-period",
        "1s",
        "peerapp:v1",
    ]);
    let service = manager.json(&["service", "inspect", "built"]);
    let pinned = service[0]["spec"]["container"]["image_digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let repo_digests = manager.json(&["image", "inspect", "peerapp:v1"])[0]["RepoDigests"].clone();
    assert!(
        pinned.starts_with("sha256:") && repo_digests[0] == format!("peerapp@{pinned}").as_str(),
        "the manager pins the digest of the image as the deploying node has it: {pinned} vs \
         {repo_digests}"
    );
    lab.wait_for("two replicas running on host 3", CONVERGE, || {
        let on = running_on(manager, "built");
        on.len() == 2 && on.iter().all(|n| *n == target_id)
    });
    lab.wait_for("the built image's output on host 3", CONVERGE, || {
        output_on(&lab, 2, "built")
            .matches("built on host 1")
            .count()
            == 2
    });
    assert_eq!(
        image_id(target, "peerapp:v1").as_deref(),
        Some(built.as_str()),
        "host 3 lists the image, with the same id"
    );
    let fetches = target
        .log()
        .lines()
        .filter(|l| l.contains("fetched image from a peer") && l.contains("peerapp:v1"))
        .count();
    assert_eq!(fetches, 1, "two tasks, one fetch:\n{}", target.log());

    // The image loaded on worker host 2, deployed through the manager, which lacks it: the
    // manager pins it as host 2 has it, and host 3 fetches it from host 2's own port.
    manager.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "loaded",
        "--stop-grace-period",
        "1s",
        "peerload:v1",
    ]);
    lab.wait_for("the loaded image running on host 3", CONVERGE, || {
        running_on(manager, "loaded") == vec![target_id.clone()]
    });
    lab.wait_for("the loaded image's output on host 3", CONVERGE, || {
        output_on(&lab, 2, "loaded").contains("loaded on host 2")
    });
    assert_eq!(
        image_id(target, "peerload:v1").as_deref(),
        Some(loaded.as_str())
    );
    let worker_id = lab.node_id(0, 1);
    assert!(
        target
            .log()
            .lines()
            .any(|l| l.contains("fetched image from a peer")
                && l.contains("peerload:v1")
                && l.contains(&worker_id)),
        "fetched from the worker:\n{}",
        target.log()
    );
    assert_eq!(
        image_id(manager, "peerload:v1"),
        None,
        "nothing went to the manager"
    );

    // An image no node has: refused at create, saying so.
    let err = manager.fails(&["service", "create", "--name", "ghost", "peerghost:v1"]);
    assert!(
        err.contains("peerghost:v1") && err.contains("no other node"),
        "{err}"
    );
    manager.ok(&["service", "rm", "built", "loaded"]);
}

#[test]
fn compose_up_build_runs_a_global_service_on_every_node_without_a_registry() {
    if !require_root() {
        return;
    }
    let lab = three_hosts();
    let manager = lab.host(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let project = format!("peer{}", common::random_u64() % 100_000);
    context(&dir.path().join("web"), "built by compose on host 1\n");
    let file = dir.path().join("compose.yaml");
    std::fs::write(
        &file,
        format!(
            "name: {project}\nservices:\n  web:\n    build: ./web\n    init: true\n    \
             stop_grace_period: 1s\n    deploy:\n      mode: global\n"
        ),
    )
    .expect("compose file");
    let file_s = file.to_str().expect("path");
    let out = manager.shoal(&["compose", "-f", file_s, "up", "-d", "--build"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.logs()
    );
    let service = format!("{project}_web");
    let nodes: Vec<String> = (0..3).map(|i| lab.node_id(0, i)).collect();
    lab.wait_for("the service running on all three nodes", CONVERGE, || {
        let mut on = running_on(manager, &service);
        on.sort();
        let mut all = nodes.clone();
        all.sort();
        on == all
    });
    let image = format!("{project}-web");
    let built = image_id(manager, &image).expect("built on host 1");
    for h in lab.hosts() {
        assert_eq!(
            image_id(h, &image).as_deref(),
            Some(built.as_str()),
            "host {} runs the image built on host 1",
            h.index
        );
    }
    for i in 0..3 {
        lab.wait_for(
            &format!("the task's output on host {}", i + 1),
            CONVERGE,
            || output_on(&lab, i, &service).contains("built by compose on host 1"),
        );
    }
    manager.ok(&["compose", "-f", file_s, "down"]);
}

/// A channel to `addr` whose certificate must name `server`, trusting `d`'s cluster CA, with
/// `identity` (or none).
async fn channel_to(
    d: &TestDaemon,
    addr: &str,
    server: &str,
    identity: Option<Identity>,
) -> Result<Channel, tonic::transport::Error> {
    let ca = std::fs::read_to_string(d.data_dir().join("certs/ca.crt")).expect("ca.crt");
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(server);
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
}

fn identity_of(d: &TestDaemon) -> Identity {
    let dir = d.data_dir().join("certs");
    Identity::from_pem(
        std::fs::read_to_string(dir.join("node.crt")).expect("node.crt"),
        std::fs::read_to_string(dir.join("node.key")).expect("node.key"),
    )
}

/// A certificate and key from a CA that is not the cluster's, naming `node`.
fn foreign_identity(node: &str) -> Identity {
    let other = shoal_manager::ca::ClusterCa::generate("other", shoal_proto::now_ms() / 1000)
        .expect("another CA");
    let (key_pem, csr_pem) = shoal_manager::ca::node_key_and_csr(node).expect("csr");
    let cert = other
        .sign_csr(
            &csr_pem,
            node,
            shoal_manager::ca::Role::Manager,
            shoal_proto::now_ms() / 1000,
            1,
        )
        .expect("signed");
    Identity::from_pem(cert, key_pem)
}

/// GetImage through `channel` (or the connection's own failure): Ok when served.
async fn get_busybox(channel: Result<Channel, tonic::transport::Error>) -> Result<(), String> {
    let channel = channel.map_err(|e| format!("connect: {e}"))?;
    ImagePeerClient::new(channel)
        .get_image(PeerImageRequest {
            reference: "busybox".into(),
        })
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[test]
fn the_image_ports_serve_only_nodes_of_the_cluster() {
    if !require_root() {
        return;
    }
    let manager = TestDaemon::with_busybox();
    let worker = TestDaemon::start_worker(&manager);
    worker.ok(&["image", "bootstrap", "busybox"]);
    let nodes = manager.json(&["node", "ls", "--format", "json"]);
    let find = |role: &str| {
        nodes
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["role"] == role)
            .cloned()
            .unwrap_or_else(|| panic!("no {role} in {nodes}"))
    };
    let (m, w) = (find("manager"), find("worker"));
    let manager_id = m["id"].as_str().expect("id").to_string();
    let worker_id = w["id"].as_str().expect("id").to_string();
    let worker_addr = w["description"]["peer_addr"].as_str().expect("peer_addr");
    assert_eq!(
        m["description"]["peer_addr"].as_str(),
        Some(manager.manager_addr().as_str()),
        "a manager serves its images on its manager port"
    );
    let manager_addr = manager.manager_addr();

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // A node's certificate: served by both, each known by its node id.
        let ok = get_busybox(
            channel_to(
                &manager,
                worker_addr,
                &worker_id,
                Some(identity_of(&manager)),
            )
            .await,
        )
        .await;
        assert_eq!(ok, Ok(()), "the manager fetches from the worker");
        let ok = get_busybox(
            channel_to(
                &worker,
                &manager_addr,
                &manager_id,
                Some(identity_of(&worker)),
            )
            .await,
        )
        .await;
        assert_eq!(ok, Ok(()), "the worker fetches from the manager");
        // The directory lists the others, not the caller.
        let channel = channel_to(
            &worker,
            &manager_addr,
            "swarm-manager.shoal",
            Some(identity_of(&worker)),
        )
        .await
        .expect("connect");
        let peers = ImagePeerDirectoryClient::new(channel)
            .list_image_peers(ListImagePeersRequest {})
            .await
            .expect("directory")
            .into_inner()
            .peers;
        let listed: Vec<(&str, &str)> = peers
            .iter()
            .map(|p| (p.node_id.as_str(), p.addr.as_str()))
            .collect();
        assert_eq!(listed, vec![(manager_id.as_str(), manager_addr.as_str())]);

        // No certificate: refused at the worker's handshake, and by the manager's services.
        for (addr, name) in [
            (worker_addr, worker_id.as_str()),
            (&manager_addr, manager_id.as_str()),
        ] {
            let refused = get_busybox(channel_to(&manager, addr, name, None).await).await;
            assert!(
                refused.is_err(),
                "{addr} served a client without a certificate"
            );
        }
        let no_cert = channel_to(&manager, &manager_addr, "swarm-manager.shoal", None)
            .await
            .expect("the manager port takes joiners without certificates");
        let status = ImagePeerDirectoryClient::new(no_cert)
            .list_image_peers(ListImagePeersRequest {})
            .await
            .expect_err("the directory needs a certificate");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        // Another cluster's certificate: refused by both.
        for (addr, name) in [
            (worker_addr, worker_id.as_str()),
            (&manager_addr, manager_id.as_str()),
        ] {
            let refused =
                get_busybox(channel_to(&manager, addr, name, Some(foreign_identity("x"))).await)
                    .await;
            assert!(refused.is_err(), "{addr} served another cluster's node");
        }
        // A node that names itself as another is caught by the caller's name check.
        let wrong = get_busybox(
            channel_to(
                &manager,
                worker_addr,
                &manager_id,
                Some(identity_of(&manager)),
            )
            .await,
        )
        .await;
        assert!(
            wrong.is_err(),
            "the worker's certificate does not name the manager"
        );
    });
}
