//! Rolling updates under load: a start-first update and a `service rollback` of a published
//! service answer every request, a stop-first update drains slow requests before stopping the
//! old tasks, a drain ends as soon as the task serves nobody (and not before), an update
//! whose tasks never get healthy rolls back by itself, and a stack rollback restores every
//! service (one of them blue-green).

mod common;

use std::time::{Duration, Instant};

use common::daemon::TestDaemon;
use common::load::{check_rolling, get, get_path, Load};
use common::require_root;

/// Load clients, and their pause between requests.
const CLIENTS: usize = 3;
const PAUSE: Duration = Duration::from_millis(2);

/// Serves `$VERSION` on port 80; healthy once httpd answers, and never when VERSION is `bad`.
const HTTPD: &str =
    "mkdir -p /www && echo \"$VERSION\" > /www/index.html && exec httpd -f -p 80 -h /www";
const HEALTH: &str = "test \"$VERSION\" != bad && wget -q -O /dev/null http://127.0.0.1/";

/// Like HTTPD, and `/cgi-bin/slow` answers `$VERSION` after half a second.
const SLOW_HTTPD: &str = "mkdir -p /www/cgi-bin && echo \"$VERSION\" > /www/index.html && { echo '#!/bin/sh'; echo 'sleep 0.5'; echo 'echo Content-Type: text/plain'; echo 'echo'; echo \"echo $VERSION\"; } > /www/cgi-bin/slow && chmod +x /www/cgi-bin/slow && exec httpd -f -p 80 -h /www";

fn create_web(d: &TestDaemon, name: &str, replicas: u32, publish: bool) {
    create_web_with(d, name, replicas, publish, HTTPD);
}

fn create_web_with(d: &TestDaemon, name: &str, replicas: u32, publish: bool, command: &str) {
    let replicas = replicas.to_string();
    let mut args = vec![
        "service",
        "create",
        "--name",
        name,
        "--replicas",
        &replicas,
        "-e",
        "VERSION=v1",
        "--health-cmd",
        HEALTH,
        "--health-interval",
        "200ms",
        "--health-start-interval",
        "100ms",
        "--health-start-period",
        "10s",
        "--health-retries",
        "2",
        "--stop-grace-period",
        "1s",
    ];
    if publish {
        args.extend(["-p", "80"]);
    }
    if command == SLOW_HTTPD {
        // httpd must die at once on its stop signal (as PID 1 it would ignore it and only
        // go with the grace period's SIGKILL, a drain of its own).
        args.push("--init");
    }
    args.extend(["busybox", "sh", "-c", command]);
    d.ok(&args);
}

fn update_state(d: &TestDaemon, service: &str) -> String {
    let v = d.json(&["service", "inspect", service]);
    v[0]["update_status"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Ids of the running tasks of `service` with VERSION=`version`, sorted.
fn task_ids(d: &TestDaemon, service: &str, version: &str) -> Vec<String> {
    let mut ids: Vec<String> = d
        .running_tasks(service)
        .iter()
        .filter(|t| {
            t["spec"]["container"]["env"]
                .as_array()
                .is_some_and(|e| e.iter().any(|v| v == &format!("VERSION={version}")))
        })
        .filter_map(|t| t["id"].as_str().map(String::from))
        .collect();
    ids.sort();
    ids
}

/// The VERSION of every running task.
fn versions(d: &TestDaemon, service: &str) -> Vec<String> {
    d.running_tasks(service)
        .iter()
        .map(|t| {
            t["spec"]["container"]["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str()?.strip_prefix("VERSION="))
                .collect::<String>()
        })
        .collect()
}

#[test]
fn start_first_update_and_rollback_answer_every_request() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    create_web(&d, "web", 4, true);
    let tasks = d.running_tasks("web");
    assert_eq!(tasks.len(), 4);
    let port = tasks[0]["status"]["ports"][0]["published_port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or_else(|| panic!("no published port in {}", tasks[0]));
    d.wait_for("the port to answer", Duration::from_secs(20), || {
        get(port).is_ok_and(|b| b == "v1")
    });

    let load = Load::start(port, "/", CLIENTS, PAUSE);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let out = d.shoal(&[
        "service",
        "update",
        "--detach=false",
        "--env-add",
        "VERSION=v2",
        "--update-order",
        "start-first",
        "--update-parallelism",
        "1",
        "--update-monitor",
        "500ms",
        "web",
    ]);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let answers = load.finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "update failed: {stderr}\n{}", d.log());
    assert!(stderr.contains("updating: update in progress"), "{stderr}");
    assert!(stderr.contains("completed: update completed"), "{stderr}");
    eprintln!("start-first update of 4 tasks took {took:?}");
    check_rolling(&answers, "v1", "v2");
    assert_eq!(update_state(&d, "web"), "completed");
    assert_eq!(versions(&d, "web"), vec!["v2"; 4]);
    let inspect = d.json(&["service", "inspect", "web"]);
    assert_eq!(inspect[0]["spec"]["update_config"]["order"], "start_first");
    assert!(inspect[0]["previous_spec"]["container"]["env"]
        .as_array()
        .is_some_and(|e| e.iter().any(|v| v == "VERSION=v1")));

    // `service rollback`: back to v1, start-first too (the rollback settings given now).
    d.ok(&[
        "service",
        "update",
        "-d",
        "--rollback-order",
        "start-first",
        "--rollback-monitor",
        "500ms",
        "web",
    ]);
    let load = Load::start(port, "/", CLIENTS, PAUSE);
    std::thread::sleep(Duration::from_millis(300));
    let out = d.shoal(&["service", "rollback", "web"]);
    std::thread::sleep(Duration::from_millis(500));
    let answers = load.finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "rollback failed: {stderr}\n{}",
        d.log()
    );
    check_rolling(&answers, "v2", "v1");
    assert_eq!(update_state(&d, "web"), "rollback_completed");
    assert_eq!(versions(&d, "web"), vec!["v1"; 4]);
    d.ok(&["service", "rm", "web"]);
}

/// The published port of a service's first running task.
fn published_port(d: &TestDaemon, service: &str) -> u16 {
    let tasks = d.running_tasks(service);
    tasks[0]["status"]["ports"][0]["published_port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or_else(|| panic!("no published port in {}", tasks[0]))
}

#[test]
fn a_stop_first_update_drains_slow_requests_before_stopping_old_tasks() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    create_web_with(&d, "slow", 3, true, SLOW_HTTPD);
    let port = published_port(&d, "slow");
    d.wait_for("the slow page to answer", Duration::from_secs(20), || {
        get_path(port, "/cgi-bin/slow").is_ok_and(|b| b == "v1")
    });
    // Every request takes half a second: whenever an old task leaves the backends, requests
    // are in flight to it. The drain lets them finish before its stop signal (with
    // `--update-drain 0s` some of them fail here).
    let load = Load::start(port, "/cgi-bin/slow", 8, PAUSE);
    std::thread::sleep(Duration::from_millis(800));
    let started = Instant::now();
    let out = d.shoal(&[
        "service",
        "update",
        "--detach=false",
        "--env-add",
        "VERSION=v2",
        "--update-order",
        "stop-first",
        "--update-parallelism",
        "1",
        "--update-monitor",
        "300ms",
        "--update-drain",
        "1500ms",
        "slow",
    ]);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(1_200));
    let answers = load.finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "update failed: {stderr}\n{}", d.log());
    eprintln!("stop-first update of 3 slow tasks, 1.5 s drain each, took {took:?}");
    check_rolling(&answers, "v1", "v2");
    // The stopped tasks got the drain period stamped, as the service asked.
    let tasks = d.json(&["service", "ps", "slow", "--format", "json"]);
    let stopped: Vec<&serde_json::Value> = tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["desired_state"] == "shutdown")
        .collect();
    assert_eq!(stopped.len(), 3, "{tasks}");
    assert!(stopped.iter().all(|t| t["drain_ms"] == 1500), "{tasks}");
    d.ok(&["service", "rm", "slow"]);
}

/// The state of `service`'s task, while `service ps` lists one (a task scaled away is deleted
/// once its container stopped).
fn listed_state(d: &TestDaemon, service: &str) -> Option<String> {
    let tasks = d.json(&["service", "ps", service, "--format", "json"]);
    let task = tasks.as_array()?.first()?.clone();
    Some(task["status"]["state"].as_str().unwrap_or("").to_string())
}

#[test]
fn a_drain_ends_when_the_task_serves_nobody_and_not_before() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    // A drain period far longer than the test: only the early end can stop these tasks.
    for name in ["idle", "held"] {
        d.ok(&[
            "service",
            "create",
            "--name",
            name,
            "-p",
            "80",
            "--update-drain",
            "10m",
            "--stop-grace-period",
            "1s",
            "--init",
            "busybox",
            "sh",
            "-c",
            HTTPD,
        ]);
    }
    let (idle, held) = (published_port(&d, "idle"), published_port(&d, "held"));
    for port in [idle, held] {
        d.wait_for("the page to answer", Duration::from_secs(20), || {
            get(port).is_ok()
        });
    }
    // A client that connected and has not sent its request yet: the task still serves it.
    let client = std::net::TcpStream::connect(("127.0.0.1", held)).expect("connect to held");
    std::thread::sleep(Duration::from_millis(300));
    for name in ["idle", "held"] {
        d.ok(&["service", "scale", "-d", &format!("{name}=0")]);
    }
    d.wait_for("the idle task to stop", Duration::from_secs(15), || {
        listed_state(&d, "idle").is_none()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        listed_state(&d, "held").as_deref(),
        Some("running"),
        "{}",
        d.log()
    );
    drop(client);
    d.wait_for(
        "the held task to stop once its client left",
        Duration::from_secs(15),
        || listed_state(&d, "held").is_none(),
    );
    for name in ["idle", "held"] {
        d.ok(&["service", "rm", name]);
    }
}

#[test]
fn an_update_that_never_gets_healthy_rolls_back_by_itself() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    create_web(&d, "app", 2, false);
    assert_eq!(versions(&d, "app"), vec!["v1"; 2]);
    let err = d.fails(&[
        "service",
        "update",
        "--env-add",
        "VERSION=bad",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "500ms",
        "app",
    ]);
    assert!(err.contains("rolled back"), "{err}");
    assert!(
        err.contains("update rolled back due to failure or early termination of task"),
        "{err}"
    );
    assert_eq!(update_state(&d, "app"), "rollback_completed");
    d.wait_for("two v1 tasks", Duration::from_secs(20), || {
        versions(&d, "app") == vec!["v1"; 2]
    });
    // The failed spec is kept as the previous one; nothing of it runs.
    let inspect = d.json(&["service", "inspect", "app"]);
    assert!(inspect[0]["previous_spec"]["container"]["env"]
        .as_array()
        .is_some_and(|e| e.iter().any(|v| v == "VERSION=bad")));
    // No previous spec at all: a clear error.
    create_web(&d, "fresh", 1, false);
    let err = d.fails(&["service", "rollback", "fresh"]);
    assert!(err.contains("no previous spec"), "{err}");
    d.ok(&["service", "rm", "app", "fresh"]);
}

#[test]
fn stack_rollback_returns_every_changed_service_to_its_previous_deployment() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("stack.yaml");
    let path = file.to_str().expect("utf-8 path").to_string();
    // Both services roll out start-first, two at a time, settled after 300 ms.
    // Service b is blue-green: its rollback is a switch back to the kept tasks.
    let deploy = |a: &str, b: &str| {
        let service = |name: &str, version: &str, extra: &str| {
            format!(
                "  {name}:\n    image: busybox\n    command: [sleep, '1000']\n    stop_grace_period: 1s\n    environment: {{ VERSION: {version} }}\n    deploy:\n      replicas: 2\n      update_config: {{ parallelism: 2, order: start-first, monitor: 300ms{extra} }}\n      rollback_config: {{ parallelism: 0, monitor: 300ms }}\n"
            )
        };
        let yaml = format!(
            "services:\n{}{}",
            service("a", a, ""),
            service("b", b, ", x-strategy: blue-green, x-keep-blue: 2m")
        );
        std::fs::write(&file, yaml).expect("write the stack file");
        d.ok(&["stack", "deploy", "-c", &path, "app"]);
    };
    deploy("v1", "v1");
    deploy("v2", "v2");
    d.wait_for("a's update to complete", Duration::from_secs(30), || {
        update_state(&d, "app_a") == "completed" && versions(&d, "app_a") == vec!["v2"; 2]
    });
    d.wait_for("b's switch to complete", Duration::from_secs(30), || {
        update_state(&d, "app_b") == "completed"
    });
    let inspect = d.json(&["service", "inspect", "app_a"]);
    assert_eq!(inspect[0]["spec"]["update_config"]["order"], "start_first");
    let inspect = d.json(&["service", "inspect", "app_b"]);
    assert_eq!(
        inspect[0]["spec"]["update_config"]["strategy"],
        "blue_green"
    );
    assert_eq!(inspect[0]["update_status"]["phase"], "switched");
    // b's blue runs on, out of rotation, beside green.
    let mut b = versions(&d, "app_b");
    b.sort();
    assert_eq!(b, ["v1", "v1", "v2", "v2"]);
    let blue_ids = task_ids(&d, "app_b", "v1");
    d.ok(&["stack", "rollback", "app"]);
    for s in ["app_a", "app_b"] {
        assert_eq!(update_state(&d, s), "rollback_completed");
    }
    d.wait_for("a on v1 again", Duration::from_secs(20), || {
        versions(&d, "app_a") == vec!["v1"; 2]
    });
    // b switched back to the very tasks it kept.
    assert_eq!(task_ids(&d, "app_b", "v1"), blue_ids);
    let tasks = d.json(&["service", "ps", "app_b", "--format", "json"]);
    for t in tasks.as_array().into_iter().flatten() {
        if t["desired_state"] == "running" {
            let v1 = t["spec"]["container"]["env"]
                .as_array()
                .is_some_and(|e| e.iter().any(|v| v == "VERSION=v1"));
            assert_eq!(t["out_of_rotation"] == true, !v1, "{t}");
        }
    }
    d.ok(&["stack", "rm", "app"]);
}
