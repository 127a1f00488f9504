//! Networks end to end with a real daemon: services talk by name over a stack's network, DNS
//! follows scaling, networks isolate, and removing everything leaves no link or rule behind.
//!
//! What a container sees is read from its own logs: the client services run a shell loop that
//! prints what `nslookup` and `wget` return.

mod common;

use std::time::Duration;

use common::daemon::TestDaemon;
use common::require_root;

/// Writes `yaml` as a compose file in a temp dir and returns (dir guard, path).
fn compose_file(yaml: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("compose.yaml");
    std::fs::write(&path, yaml).expect("write compose file");
    let path = path.to_str().expect("utf-8 path").to_string();
    (dir, path)
}

/// The web service serves "hello-from-web" with busybox httpd; the probe prints, every
/// 300 ms, how many addresses `tasks.web` has and what `http://web/` answers. (busybox-static's
/// libc resolves only through /etc/hosts, so names go through `nslookup`, which asks the
/// container's DNS server itself, and `nc` connects to the address.)
const APP: &str = r#"
name: netapp
services:
  web:
    image: busybox
    command: [sh, -c, "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www"]
    stop_grace_period: 1s
    deploy: { replicas: 2 }
  probe:
    image: busybox
    stop_grace_period: 1s
    command:
      - sh
      - -c
      - |
        while true; do
          n=$$(nslookup tasks.web 2>/dev/null | grep -v ':53' | grep -c '^Address')
          echo "tasks=$$n"
          ip=$$(nslookup web 2>/dev/null | awk '/^Address: /{print $$2; exit}')
          echo "page=$$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 1 $$ip 80 | tail -1)"
          sleep 0.3
        done
"#;

fn logs(d: &TestDaemon, service: &str) -> String {
    d.ok(&["service", "logs", "--tail", "6", service])
}

#[test]
fn services_of_a_stack_reach_each_other_by_name_and_dns_follows_scaling() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    let (_dir, file) = compose_file(APP);
    d.ok(&["compose", "-f", &file, "up", "--wait"]);

    // Every task has an address on the stack's default network.
    let tasks = d.running_tasks("netapp_web");
    assert_eq!(tasks.len(), 2);
    for t in &tasks {
        let addr = &t["status"]["addresses"][0];
        assert_eq!(addr["network"], "netapp_default", "{t}");
        let cidr = addr["address"].as_str().unwrap_or_default();
        assert!(cidr.starts_with(&format!("10.{}.", d.pool_octet)), "{cidr}");
    }
    let networks = d.ok(&["network", "ls"]);
    assert!(networks.contains("netapp_default"), "{networks}");

    d.wait_for(
        "the probe to reach web by name",
        Duration::from_secs(60),
        || {
            let l = logs(&d, "netapp_probe");
            l.contains("page=hello-from-web") && l.contains("tasks=2")
        },
    );

    // Scale up and down: tasks.web follows.
    d.ok(&["service", "scale", "netapp_web=3"]);
    d.wait_for("tasks.web to list 3 tasks", Duration::from_secs(60), || {
        logs(&d, "netapp_probe").contains("tasks=3")
    });
    d.ok(&["service", "scale", "netapp_web=1"]);
    d.wait_for("tasks.web to list 1 task", Duration::from_secs(60), || {
        logs(&d, "netapp_probe")
            .lines()
            .rfind(|l| l.contains("tasks="))
            .is_some_and(|l| l.ends_with("tasks=1"))
    });

    d.ok(&["compose", "-f", &file, "down"]);
    d.wait_for("the stack network removed", Duration::from_secs(60), || {
        !d.ok(&["network", "ls"]).contains("netapp_default")
    });
}

/// Links and nftables tables of this daemon that exist on the host.
fn leftovers(d: &TestDaemon) -> Vec<String> {
    let mut found = d.host_links();
    let tables = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    found.extend(
        tables
            .lines()
            .filter(|l| l.contains(&d.nft_table))
            .map(str::to_string),
    );
    found
}

#[test]
fn networks_isolate_and_nothing_leaks_after_removal() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    d.ok(&["network", "create", "front"]);
    d.ok(&["network", "create", "back", "--subnet", "10.250.7.0/24"]);
    let err = d.fails(&["network", "create", "again", "--subnet", "10.250.7.128/25"]);
    assert!(err.contains("overlaps"), "{err}");
    let err = d.fails(&["network", "create", "front"]);
    assert!(err.contains("already"), "{err}");

    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--network",
        "front",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sh",
        "-c",
        "mkdir -p /www && echo front-page > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    let web_ip = d.running_tasks("web")[0]["status"]["addresses"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
        .expect("web has an address");
    // Same network: by name. Other network: neither the name nor the address answers.
    let probe = |name: &str, network: &str| {
        d.ok(&[
            "service",
            "create",
            "--name",
            name,
            "--network",
            network,
            "--stop-grace-period",
            "1s",
            "busybox",
            "sh",
            "-c",
            &format!(
                "get() {{ printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 \"$1\" 80 | tail -1; }}; \
                 while true; do \
                   ip=$(nslookup web 2>/dev/null | awk '/^Address: /{{print $2; exit}}'); \
                   echo \"name=$(get \"$ip\")\"; echo \"ip=$(get {web_ip})\"; sleep 0.3; \
                 done"
            ),
        ]);
    };
    probe("near", "front");
    probe("far", "back");
    d.wait_for("near reaches web", Duration::from_secs(60), || {
        let l = logs(&d, "near");
        l.contains("name=front-page") && l.contains("ip=front-page")
    });
    // An unknown name goes to the host's resolvers, which may be slow to say no here.
    d.wait_for("far has tried twice", Duration::from_secs(60), || {
        logs(&d, "far").matches("ip=").count() >= 2
    });
    let far = logs(&d, "far");
    assert!(
        !far.contains("front-page"),
        "another network reached web:\n{far}"
    );

    let err = d.fails(&["network", "rm", "front"]);
    assert!(err.contains("in use"), "{err}");
    for s in ["web", "near", "far"] {
        d.ok(&["service", "rm", s]);
    }
    d.ok(&["network", "rm", "front", "back"]);
    // The node removes its bridges once no task needs them.
    d.wait_for("no link and no rule left", Duration::from_secs(60), || {
        leftovers(&d).is_empty()
    });
}

/// `GET /` over a fresh connection to `127.0.0.1:port`; the body's last line.
fn get(port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text.lines().last().unwrap_or_default().to_string())
}

#[test]
fn a_published_port_reaches_every_replica_and_a_clash_is_refused() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    // Container port only: the node picks a free host port.
    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "-p",
        "80",
        "--replicas",
        "2",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sh",
        "-c",
        "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    let tasks = d.running_tasks("web");
    let port = tasks[0]["status"]["ports"][0]["published_port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or_else(|| panic!("no published port in {}", tasks[0]));
    let mut seen = std::collections::HashSet::new();
    d.wait_for(
        "both replicas to answer on the port",
        Duration::from_secs(60),
        || {
            if let Ok(body) = get(port) {
                seen.insert(body);
            }
            seen.len() == 2
        },
    );

    // Another service cannot take the same ingress port: the manager refuses it, naming the
    // owner (as Swarm does).
    let e = d.fails(&[
        "service",
        "create",
        "-d",
        "--name",
        "clash",
        "-p",
        &format!("{port}:80"),
        "busybox",
        "sleep",
        "100",
    ]);
    assert!(e.contains("already published by service web"), "{e}");

    d.ok(&["service", "rm", "web"]);
    d.wait_for("the port to be freed", Duration::from_secs(60), || {
        get(port).is_err()
    });
}

/// Addresses the daemon holds in its network state (containers' endpoints).
fn endpoints(d: &TestDaemon) -> usize {
    let path = d.data_dir().join("network/network.json");
    let state: serde_json::Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    state["containers"].as_object().map_or(0, |c| c.len())
}

#[test]
fn fifty_containers_come_and_go_without_leaking_links_rules_or_addresses() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    d.ok(&["network", "create", "churn"]);
    d.ok(&[
        "service",
        "create",
        "--name",
        "c",
        "--network",
        "churn",
        "-p",
        "80",
        "--replicas",
        "0",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sleep",
        "1000",
    ]);
    // 5 rounds of 10: 50 containers made and removed.
    for _ in 0..5 {
        d.ok(&["service", "scale", "c=10"]);
        d.wait_for("10 running", Duration::from_secs(60), || {
            d.running_tasks("c").len() == 10
        });
        d.ok(&["service", "scale", "c=0"]);
        d.wait_for("none running", Duration::from_secs(60), || {
            d.running_tasks("c").is_empty()
        });
        // Stopped containers stay (as task history) but hold no address.
        d.wait_for("no endpoint held", Duration::from_secs(60), || {
            endpoints(&d) == 0
        });
    }
    d.ok(&["service", "rm", "c"]);
    d.wait_for("every endpoint released", Duration::from_secs(60), || {
        endpoints(&d) == 0
            && !d
                .data_dir()
                .join("run/netns")
                .read_dir()
                .is_ok_and(|mut e| e.next().is_some())
    });
    // Nothing needs the network on this node any more: its bridge and rules go too.
    d.wait_for("no link and no rule left", Duration::from_secs(60), || {
        leftovers(&d).is_empty() && nft_rules(&d).is_empty()
    });
}

/// This daemon's nftables rules, as text.
fn nft_rules(d: &TestDaemon) -> String {
    let out = std::process::Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // Keep only our tables' blocks.
    let mut keep = String::new();
    let mut inside = false;
    for line in out.lines() {
        if line.starts_with("table ") {
            inside = line.contains(&d.nft_table);
        }
        if inside {
            keep.push_str(line);
            keep.push('\n');
        }
    }
    keep
}

/// A free TCP port on loopback (the kernel's pick; nothing holds it afterwards).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn standalone_containers_join_networks_publish_ports_and_keep_volume_data() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    d.ok(&["network", "create", "appnet"]);
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--network",
        "appnet",
        "-p",
        &publish,
        "-v",
        "webdata:/www",
        "busybox",
        "sh",
        "-c",
        "echo from-volume > /www/index.html; exec httpd -f -p 80 -h /www",
    ]);
    d.wait_for("the published port", Duration::from_secs(30), || {
        get(port).is_ok_and(|body| body == "from-volume")
    });
    // Another container on the network finds it by name. One lookup and one 2 s connect
    // per try: under load a UDP answer or the connect can be late, so the test tries again.
    d.wait_for("srv reached by name", Duration::from_secs(30), || {
        d.ok(&[
            "run",
            "--rm",
            "--network",
            "appnet",
            "busybox",
            "sh",
            "-c",
            "ip=$(nslookup srv 2>/dev/null | awk '/^Address: /{print $2; exit}'); \
             printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 \"$ip\" 80 | tail -1",
        ])
        .trim()
            == "from-volume"
    });
    d.ok(&["rm", "-f", "srv"]);
    assert!(get(port).is_err(), "the port is closed with its container");
    // The named volume outlives the container.
    let kept = d.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "webdata:/data:ro",
        "busybox",
        "cat",
        "/data/index.html",
    ]);
    assert_eq!(kept, "from-volume\n");
    d.ok(&["volume", "rm", "webdata"]);
    d.ok(&["network", "rm", "appnet"]);
    d.wait_for("no link and no rule left", Duration::from_secs(60), || {
        leftovers(&d).is_empty()
    });
    // An unknown network: a clear error and no container.
    let err = d.fails(&["run", "--rm", "--network", "nosuchnet", "busybox", "true"]);
    assert!(err.contains("nosuchnet"), "{err}");
    assert_eq!(d.ok(&["ps", "-a", "-q"]), "");
}
