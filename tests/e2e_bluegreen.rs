//! Blue-green rollouts under load, on a real daemon: the switch answers every request and no
//! client reaches blue after it (published port and DNS alike); a rollback after the switch
//! swaps back to the very tasks kept; a green that never gets healthy never gets traffic and
//! the update rolls back by itself; manual promotion waits for `service promote`, after the
//! verification passed.

mod common;

use std::time::{Duration, Instant};

use common::daemon::TestDaemon;
use common::load::{check_steady, check_switch, get, Load};
use common::require_root;

/// Load clients, and their pause between requests.
const CLIENTS: usize = 3;
const PAUSE: Duration = Duration::from_millis(2);

/// Serves `$VERSION` on port 80; healthy once httpd answers, and never when VERSION is `bad`.
const HTTPD: &str =
    "mkdir -p /www && echo \"$VERSION\" > /www/index.html && exec httpd -f -p 80 -h /www";
const HEALTH: &str = "test \"$VERSION\" != bad && wget -q -O /dev/null http://127.0.0.1/";

/// Every 0.2 s: the versions answering at each address `tasks.web` resolves to, on one line
/// (`dns= v1 v1`). The name is looked up through the node's DNS server.
const PROBE: &str = "while true; do out=''; for ip in $(nslookup tasks.web 2>/dev/null | grep -v ':53' | awk '/^Address: /{print $2}'); do out=\"$out $(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 $ip 80 | tail -1)\"; done; echo \"dns=$out\"; sleep 0.2; done";

/// Like HTTPD, but a task with VERSION=flaky falls sick 3 s after its start: its healthcheck
/// (FLAKY_HEALTH) fails from then on, while it goes on serving.
const FLAKY_HTTPD: &str = "if [ \"$VERSION\" = flaky ]; then (sleep 3; touch /tmp/sick) & fi; mkdir -p /www && echo \"$VERSION\" > /www/index.html && exec httpd -f -p 80 -h /www";
const FLAKY_HEALTH: &str = "test ! -e /tmp/sick && wget -q -O /dev/null http://127.0.0.1/";

fn create_web(d: &TestDaemon, replicas: u32) -> u16 {
    create_web_with(d, replicas, HTTPD, HEALTH)
}

fn create_web_with(d: &TestDaemon, replicas: u32, command: &str, health: &str) -> u16 {
    let replicas = replicas.to_string();
    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        &replicas,
        "-e",
        "VERSION=v1",
        "--health-cmd",
        health,
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
        "-p",
        "80",
        "busybox",
        "sh",
        "-c",
        command,
    ]);
    let tasks = d.running_tasks("web");
    assert_eq!(tasks.len(), replicas.parse::<usize>().unwrap_or(0));
    let port = tasks[0]["status"]["ports"][0]["published_port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or_else(|| panic!("no published port in {}", tasks[0]));
    d.wait_for("the port to answer", Duration::from_secs(20), || {
        get(port).is_ok_and(|b| b == "v1")
    });
    port
}

fn version_of(task: &serde_json::Value) -> String {
    task["spec"]["container"]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str()?.strip_prefix("VERSION="))
        .collect()
}

/// Running tasks of `web` with `version`: (id, held out of rotation), sorted.
fn tasks_of(d: &TestDaemon, version: &str) -> Vec<(String, bool)> {
    let mut tasks: Vec<(String, bool)> = d
        .running_tasks("web")
        .iter()
        .filter(|t| version_of(t) == version)
        .map(|t| {
            (
                t["id"].as_str().unwrap_or_default().to_string(),
                t["out_of_rotation"] == true,
            )
        })
        .collect();
    tasks.sort();
    tasks
}

fn status(d: &TestDaemon) -> serde_json::Value {
    d.json(&["service", "inspect", "web"])[0]["update_status"].clone()
}

/// The probe's `dns=` lines so far, from its first complete view of blue on: the versions
/// behind the addresses of one lookup each. (A page fetch that timed out on a loaded machine
/// leaves a version out; a lookup never mixes them.)
fn dns_lines(d: &TestDaemon) -> Vec<Vec<String>> {
    let lines: Vec<Vec<String>> = d
        .ok(&["service", "logs", "probe"])
        .lines()
        .filter_map(|l| l.split_once("dns="))
        .map(|(_, v)| v.split_whitespace().map(String::from).collect())
        .collect();
    let first = lines
        .iter()
        .position(|l| l == &["v1"; 4])
        .unwrap_or(lines.len());
    lines[first..].to_vec()
}

fn last_dns_line(d: &TestDaemon) -> Option<Vec<String>> {
    dns_lines(d).last().cloned()
}

#[test]
fn a_switch_answers_every_request_never_reaches_blue_again_and_rolls_back_at_once() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    let port = create_web(&d, 4);
    d.ok(&[
        "service",
        "create",
        "--name",
        "probe",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sh",
        "-c",
        PROBE,
    ]);
    d.wait_for("the probe to see blue", Duration::from_secs(60), || {
        last_dns_line(&d).is_some_and(|l| l == ["v1"; 4])
    });
    let blue = tasks_of(&d, "v1");

    let load = Load::start(port, "/", CLIENTS, PAUSE);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let out = d.shoal(&[
        "service",
        "update",
        "--detach=false",
        "--env-add",
        "VERSION=v2",
        "--update-strategy",
        "blue-green",
        "--update-monitor",
        "500ms",
        "--update-keep-blue",
        "5m",
        "web",
    ]);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let answers = load.finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "update failed: {stderr}\n{}", d.log());
    assert!(stderr.contains("starting green beside blue"), "{stderr}");
    assert!(
        stderr.contains("traffic switched to green (4 tasks)"),
        "{stderr}"
    );
    assert!(stderr.contains("completed: update completed"), "{stderr}");
    eprintln!("blue-green update of 4 tasks took {took:?}");
    check_switch(&answers, "v1", "v2");

    // Blue runs on, the same tasks, out of rotation; green serves.
    let held: Vec<(String, bool)> = blue.iter().map(|(id, _)| (id.clone(), true)).collect();
    assert_eq!(tasks_of(&d, "v1"), held);
    assert!(tasks_of(&d, "v2").iter().all(|(_, out)| !out));
    assert_eq!(status(&d)["state"], "completed");
    assert_eq!(status(&d)["phase"], "switched");
    let ps = d.ok(&["service", "ps", "web"]);
    assert!(
        ps.starts_with("Update status: completed (blue-green: switched), completed "),
        "{ps}"
    );
    assert_eq!(ps.matches("(out of rotation)").count(), 4, "{ps}");
    // DNS switched with the port: the probe went from all blue to all green, never a mix.
    d.wait_for("the probe to see green", Duration::from_secs(90), || {
        last_dns_line(&d).is_some_and(|l| l == ["v2"; 4])
    });
    let lines = dns_lines(&d);
    let switched = lines
        .iter()
        .position(|l| l.iter().any(|v| v == "v2"))
        .unwrap_or(lines.len());
    assert!(
        lines[..switched]
            .iter()
            .all(|l| l.iter().all(|v| v == "v1"))
            && lines[switched..]
                .iter()
                .all(|l| l.iter().all(|v| v == "v2")),
        "the names moved from blue to green in one step: {lines:?}"
    );

    // `service rollback`: the kept blue takes the traffic back, no task started.
    let load = Load::start(port, "/", CLIENTS, PAUSE);
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let out = d.shoal(&["service", "rollback", "web"]);
    let returned = asked.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let answers = load.finish();
    assert!(
        out.status.success(),
        "rollback failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let first_blue = check_switch(&answers, "v2", "v1");
    eprintln!(
        "rollback after the switch: traffic back on blue {:?} after `service rollback` began (the command returned after {returned:?}, with the monitor window)",
        first_blue.saturating_duration_since(asked)
    );
    let blue_back: Vec<(String, bool)> = blue.iter().map(|(id, _)| (id.clone(), false)).collect();
    assert_eq!(tasks_of(&d, "v1"), blue_back, "the very tasks kept");
    assert!(tasks_of(&d, "v2").iter().all(|(_, out)| *out), "green kept");
    assert_eq!(status(&d)["state"], "rollback_completed");
    d.ok(&["service", "rm", "web", "probe"]);
}

#[test]
fn a_green_that_never_gets_healthy_never_gets_traffic_and_rolls_back() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    let port = create_web(&d, 2);
    let blue = tasks_of(&d, "v1");
    let load = Load::start(port, "/", CLIENTS, PAUSE);
    std::thread::sleep(Duration::from_millis(300));
    let err = d.fails(&[
        "service",
        "update",
        "--env-add",
        "VERSION=bad",
        "--update-strategy",
        "blue-green",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "500ms",
        "web",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let answers = load.finish();
    assert!(err.contains("rolled back"), "{err}");
    assert!(
        err.contains("blue-green update rolled back before the switch: green task"),
        "{err}"
    );
    assert!(err.contains("container unhealthy"), "{err}");
    check_steady(&answers, "v1");
    assert_eq!(tasks_of(&d, "v1"), blue, "blue untouched");
    assert_eq!(status(&d)["state"], "rollback_completed");
    d.wait_for("green to be gone", Duration::from_secs(30), || {
        tasks_of(&d, "bad").is_empty()
    });
    d.ok(&["service", "rm", "web"]);
}

#[test]
fn manual_promotion_waits_for_the_verified_green_and_service_promote() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    let port = create_web(&d, 2);
    let err = d.fails(&["service", "promote", "web"]);
    assert!(
        err.contains("no blue-green update is waiting for promotion"),
        "{err}"
    );
    let out = d.shoal(&[
        "service",
        "update",
        "--detach=false",
        "--env-add",
        "VERSION=v2",
        "--update-strategy",
        "blue-green",
        "--update-promote",
        "manual",
        "--update-verify-cmd",
        "wget -q -O- http://127.0.0.1/ | grep -qx v2",
        "--update-monitor",
        "300ms",
        "web",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "update failed: {stderr}\n{}", d.log());
    assert!(
        stderr.contains("switch with `shoal service promote web`"),
        "{stderr}"
    );
    assert_eq!(status(&d)["phase"], "ready");
    // Green is verified and ready, out of rotation; blue has every request.
    let tasks = d.running_tasks("web");
    let green: Vec<&serde_json::Value> = tasks.iter().filter(|t| version_of(t) == "v2").collect();
    assert_eq!(green.len(), 2);
    assert!(
        green
            .iter()
            .all(|t| t["out_of_rotation"] == true && t["status"]["verify"] == "passed"),
        "{tasks:?}"
    );
    let load = Load::start(port, "/", CLIENTS, PAUSE);
    std::thread::sleep(Duration::from_millis(1_000));
    check_steady(&load.finish(), "v1");

    let load = Load::start(port, "/", CLIENTS, PAUSE);
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let out = d.shoal(&["service", "promote", "web"]);
    let returned = asked.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let answers = load.finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promote failed: {stderr}\n{}",
        d.log()
    );
    let first_green = check_switch(&answers, "v1", "v2");
    eprintln!(
        "promote: first request answered by green began {:?} after `service promote` began (the command returned after {returned:?})",
        first_green.saturating_duration_since(asked)
    );
    assert_eq!(status(&d)["phase"], "switched");
    d.wait_for("the update to complete", Duration::from_secs(20), || {
        status(&d)["state"] == "completed"
    });
    d.ok(&["service", "rm", "web"]);
}

#[test]
fn a_green_that_turns_unhealthy_after_the_switch_sends_traffic_back_to_blue() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    let port = create_web_with(&d, 2, FLAKY_HTTPD, FLAKY_HEALTH);
    let blue = tasks_of(&d, "v1");
    let load = Load::start(port, "/", CLIENTS, PAUSE);
    std::thread::sleep(Duration::from_millis(300));
    let err = d.fails(&[
        "service",
        "update",
        "--env-add",
        "VERSION=flaky",
        "--update-strategy",
        "blue-green",
        "--update-monitor",
        "30s",
        "web",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let clients = load.finish();
    assert!(
        err.contains("failed within the monitor window after the switch")
            && err.contains("traffic back to blue"),
        "{err}"
    );
    // Every request answered; each client went v1, then flaky, then v1 for good.
    let all: Vec<&common::load::Answer> = clients.iter().flatten().collect();
    let failed: Vec<&String> = all.iter().filter_map(|a| a.result.as_ref().err()).collect();
    eprintln!("{} requests, {} failed", all.len(), failed.len());
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    for (i, answers) in clients.iter().enumerate() {
        let mut runs: Vec<&str> = Vec::new();
        for a in answers.iter().filter_map(|a| a.result.as_deref().ok()) {
            if runs.last() != Some(&a) {
                runs.push(a);
            }
        }
        assert_eq!(runs, ["v1", "flaky", "v1"], "client {i}");
    }
    // The very blue tasks serve again; the sick green goes.
    let back: Vec<(String, bool)> = blue.iter().map(|(id, _)| (id.clone(), false)).collect();
    assert_eq!(tasks_of(&d, "v1"), back);
    assert_eq!(status(&d)["state"], "rollback_completed");
    d.wait_for("green to be gone", Duration::from_secs(30), || {
        tasks_of(&d, "flaky").is_empty()
    });
    d.ok(&["service", "rm", "web"]);
}
