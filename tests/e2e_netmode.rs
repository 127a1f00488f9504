//! Shared network namespaces end to end with a real daemon: `run --network container:X` and
//! compose's `network_mode: service:NAME` put two containers on one namespace (one loopback,
//! one address, one hostname and /etc files); conflicting options are refused with nothing
//! made; the owner's stop stops its joiners; a daemon restart keeps the link; and nothing
//! (veth, netns file, rule) is left once everything is removed.

mod common;

use std::time::Duration;

use common::daemon::TestDaemon;
use common::require_root;

/// A shell loop that exits at once on SIGTERM (sh as PID 1 would ignore it).
const IDLE: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

/// `GET /` on 127.0.0.1:`port` from inside `container`; the body's last line.
fn get_inside(d: &TestDaemon, container: &str, port: u16) -> String {
    let script =
        format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 127.0.0.1 {port} | tail -1");
    d.ok(&["exec", container, "sh", "-c", &script])
        .trim()
        .to_string()
}

/// The daemon's veths and bridges on the host, and its netns files (the warm pool's go with
/// their network).
fn leftovers(d: &TestDaemon) -> Vec<String> {
    let mut found = d.host_links();
    if let Ok(entries) = std::fs::read_dir(d.data_dir().join("run/netns")) {
        found.extend(entries.flatten().map(|e| e.path().display().to_string()));
    }
    found
}

/// Whether the sidecar's task `task` failed because its network's owner went away.
fn failed_for_lost_owner(d: &TestDaemon, task: &str) -> bool {
    let tasks = d.json(&["service", "ps", "sidecar_side", "--format", "json"]);
    tasks.as_array().into_iter().flatten().any(|t| {
        t["id"] == task
            && t["status"]["state"] == "failed"
            && t["status"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("network namespace it shared went away"))
    })
}

/// `ps -a --format json`, one entry per container.
fn containers(d: &TestDaemon) -> Vec<serde_json::Value> {
    d.json(&["ps", "-a", "--format", "json"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn by_name(d: &TestDaemon, prefix: &str) -> Vec<serde_json::Value> {
    containers(d)
        .into_iter()
        .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .collect()
}

#[test]
fn run_with_container_network_shares_loopback_address_hostname_and_etc_files() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    d.ok(&["network", "create", "appnet"]);
    let srv_id = d
        .ok(&[
            "run",
            "-d",
            "--name",
            "srv",
            "--network",
            "appnet",
            "busybox",
            "sh",
            "-c",
            "mkdir -p /www && echo from-srv > /www/index.html && exec httpd -f -p 8080 -h /www",
        ])
        .trim()
        .to_string();
    let side_id = d
        .ok(&[
            "run",
            "-d",
            "--name",
            "side",
            "--network",
            "container:srv",
            "busybox",
            "sh",
            "-c",
            IDLE,
        ])
        .trim()
        .to_string();
    d.wait_for("srv's server", Duration::from_secs(30), || {
        get_inside(&d, "srv", 8080) == "from-srv"
    });
    // The joiner reaches srv's server on loopback: one namespace.
    assert_eq!(get_inside(&d, "side", 8080), "from-srv");
    // Same addresses, same hostname, same /etc files.
    for command in [
        "ip -4 -o addr show | awk '{print $2, $4}'",
        "hostname",
        "cat /etc/hosts",
        "cat /etc/resolv.conf",
    ] {
        let srv = d.ok(&["exec", "srv", "sh", "-c", command]);
        let side = d.ok(&["exec", "side", "sh", "-c", command]);
        assert_eq!(srv, side, "{command}");
    }
    let addrs = d.ok(&["exec", "side", "sh", "-c", "ip -4 -o addr show"]);
    assert!(addrs.contains("eth0"), "srv's address is seen: {addrs}");
    // ps and inspect say whose namespace it is, as Docker's HostConfig.NetworkMode.
    let side = by_name(&d, "side");
    assert_eq!(side[0]["network"], format!("container:{srv_id}"));
    let inspected = d.json(&["inspect", "side"]);
    assert_eq!(inspected[0]["network"], format!("container:{srv_id}"));
    // By id prefix too.
    let short = &srv_id[..8];
    let third = d.ok(&[
        "run",
        "--rm",
        "--network",
        &format!("container:{short}"),
        "busybox",
        "sh",
        "-c",
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 127.0.0.1 8080 | tail -1",
    ]);
    assert_eq!(third.trim(), "from-srv");

    // Refused, with Docker's reason, and nothing made.
    let stopped = d.ok(&[
        "run",
        "-d",
        "--name",
        "stopped",
        "--network",
        "none",
        "busybox",
        "true",
    ]);
    d.wait_for("a container that exited", Duration::from_secs(30), || {
        by_name(&d, "stopped")[0]["state"] == "exited"
    });
    let before = containers(&d).len();
    for (args, expected) in [
        (vec!["--network", "container:nosuch"], "no such container"),
        (vec!["--network", "container:stopped"], "is not running"),
        (
            vec!["--network", "container:srv", "-p", "8081:80"],
            "conflicting options: published ports",
        ),
        (
            vec!["--network", "container:srv", "--hostname", "h"],
            "conflicting options: hostname",
        ),
    ] {
        let mut run = vec!["run", "-d"];
        run.extend(args);
        run.extend(["busybox", "true"]);
        let err = d.fails(&run);
        assert!(err.contains(expected), "{run:?}: {err}");
    }
    assert_eq!(
        containers(&d).len(),
        before,
        "a refused run left a container"
    );
    d.ok(&["rm", stopped.trim()]);

    // An owner with `none` or `host`: the joiner gets the same.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "lo-only",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        IDLE,
    ]);
    let links = d.ok(&[
        "run",
        "--rm",
        "--network",
        "container:lo-only",
        "busybox",
        "sh",
        "-c",
        "ip -o link show | awk -F': ' '{print $2}'",
    ]);
    assert_eq!(links.trim(), "lo", "only lo with a `none` owner");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "on-host",
        "--network",
        "host",
        "busybox",
        "sh",
        "-c",
        IDLE,
    ]);
    // The host's default-route interface (other tests add and remove veths meanwhile: the
    // lists are not compared whole).
    let route = std::process::Command::new("ip")
        .args(["route", "show", "default"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let uplink = route
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .unwrap_or("lo")
        .to_string();
    let seen = d.ok(&[
        "run",
        "--rm",
        "--network",
        "container:on-host",
        "busybox",
        "cat",
        "/proc/net/dev",
    ]);
    assert!(
        seen.lines()
            .any(|l| l.trim_start().starts_with(&format!("{uplink}:"))),
        "the host's {uplink} is not seen: {seen}"
    );
    d.ok(&["rm", "-f", "lo-only", "on-host"]);

    // Removing srv stops the joiner first (its address goes back with srv).
    d.ok(&["rm", "-f", "srv"]);
    let side = by_name(&d, "side");
    assert_eq!(side[0]["state"], "exited", "{side:?}");
    // Its namespace is gone: it does not start again.
    let err = d.fails(&["start", "side"]);
    assert!(err.contains("remove it and run it again"), "{err}");
    d.ok(&["rm", &side_id]);
    d.ok(&["network", "rm", "appnet"]);
    d.wait_for(
        "no link or netns file left",
        Duration::from_secs(60),
        || leftovers(&d).is_empty(),
    );
}

/// web serves on port 80; side shares web's namespace and prints, every 300 ms, what
/// `http://127.0.0.1/` answers and its hostname. Both restart after any exit (Compose's
/// default, `no`, would leave them stopped).
const SIDECAR: &str = r#"
name: sidecar
services:
  web:
    image: busybox
    command: [sh, -c, "mkdir -p /www && echo hello-web > /www/index.html && exec httpd -f -p 80 -h /www"]
    stop_grace_period: 1s
    restart: always
  side:
    image: busybox
    network_mode: service:web
    stop_grace_period: 1s
    restart: always
    command:
      - sh
      - -c
      - |
        trap 'exit 0' TERM
        while true; do
          echo "page=$$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 1 127.0.0.1 80 | tail -1) host=$$(hostname)"
          sleep 0.3
        done
"#;

#[test]
fn compose_service_network_mode_shares_the_namespace_and_follows_its_owner() {
    if !require_root() {
        return;
    }
    let mut d = TestDaemon::with_busybox();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("compose.yaml");
    std::fs::write(&file, SIDECAR).expect("write compose file");
    let file = file.to_str().expect("utf-8 path").to_string();
    d.ok(&["compose", "-f", &file, "up", "--wait"]);

    let web_host = |d: &TestDaemon| {
        let web = by_name(d, "sidecar_web.");
        let running: Vec<_> = web.iter().filter(|c| c["state"] == "running").collect();
        running
            .first()
            .and_then(|c| c["id"].as_str())
            .map(|id| d.ok(&["exec", id, "hostname"]).trim().to_string())
    };
    let host = web_host(&d).expect("a running web container");
    d.wait_for(
        "side to reach web on loopback",
        Duration::from_secs(60),
        || {
            d.ok(&["service", "logs", "--tail", "3", "sidecar_side"])
                .contains(&format!("page=hello-web host={host}"))
        },
    );
    // The sidecar has no address of its own, and started once: after web (the implicit
    // depends_on), not failing first for want of it.
    let side = d.running_tasks("sidecar_side");
    assert_eq!(side.len(), 1);
    let attempts = d.json(&["service", "ps", "sidecar_side", "--format", "json"]);
    assert_eq!(attempts.as_array().map(Vec::len), Some(1), "{attempts}");
    let addresses = &side[0]["status"]["addresses"];
    assert!(
        addresses.as_array().is_none_or(|a| a.is_empty()),
        "{addresses}"
    );

    // A daemon restart adopts both and keeps their link.
    d.kill9();
    d.spawn();
    d.wait_for("both adopted", Duration::from_secs(60), || {
        d.running_tasks("sidecar_web").len() == 1 && d.running_tasks("sidecar_side").len() == 1
    });
    let side_task = d.running_tasks("sidecar_side")[0]["id"]
        .as_str()
        .map(str::to_string)
        .expect("task id");

    // web stops: side is stopped first, failed, saying whose network went away.
    let web = by_name(&d, "sidecar_web.");
    let web_id = web[0]["id"].as_str().expect("web id").to_string();
    d.ok(&["stop", &web_id]);
    d.wait_for("side stopped with web", Duration::from_secs(60), || {
        failed_for_lost_owner(&d, &side_task)
    });
    // The orchestrator brings both back, sharing again.
    let back_on_new_web = |d: &TestDaemon, old: &str| {
        web_host(d).is_some_and(|h| {
            h != old
                && d.ok(&["service", "logs", "--tail", "3", "sidecar_side"])
                    .contains(&format!("page=hello-web host={h}"))
        })
    };
    d.wait_for("side back on the new web", Duration::from_secs(90), || {
        back_on_new_web(&d, &host)
    });

    // web dies while the daemon is down: on restart the sidecar is not adopted into a
    // namespace whose owner is gone; it fails saying why, and both come back.
    let host = web_host(&d).expect("a running web container");
    let web_pid = by_name(&d, "sidecar_web.")
        .iter()
        .find(|c| c["state"] == "running")
        .and_then(|c| c["pid"].as_i64())
        .expect("web's pid");
    let side_task = d.running_tasks("sidecar_side")[0]["id"]
        .as_str()
        .map(str::to_string)
        .expect("task id");
    d.kill9();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(web_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill web");
    d.wait_for("web gone", Duration::from_secs(10), || {
        !common::pid_alive(web_pid as i32)
    });
    d.spawn();
    d.wait_for("the orphaned side failed", Duration::from_secs(60), || {
        failed_for_lost_owner(&d, &side_task)
    });
    d.wait_for(
        "side back after the restart",
        Duration::from_secs(90),
        || back_on_new_web(&d, &host),
    );

    d.ok(&["compose", "-f", &file, "down"]);
    d.wait_for("everything removed", Duration::from_secs(60), || {
        containers(&d).is_empty() && leftovers(&d).is_empty()
    });
}
