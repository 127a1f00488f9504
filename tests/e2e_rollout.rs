//! Rolling updates under load: a start-first update and a `service rollback` of a published
//! service answer every request, an update whose tasks never get healthy rolls back by itself.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::TestDaemon;
use common::require_root;

/// Serves `$VERSION` on port 80; healthy once httpd answers, and never when VERSION is `bad`.
const HTTPD: &str =
    "mkdir -p /www && echo \"$VERSION\" > /www/index.html && exec httpd -f -p 80 -h /www";
const HEALTH: &str = "test \"$VERSION\" != bad && wget -q -O /dev/null http://127.0.0.1/";

fn create_web(d: &TestDaemon, name: &str, replicas: u32, publish: bool) {
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
    args.extend(["busybox", "sh", "-c", HTTPD]);
    d.ok(&args);
}

/// `GET /` over a fresh connection to `127.0.0.1:port`: the body's last line.
fn get(port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    if !text.starts_with("HTTP/1.") || !text.contains(" 200 ") {
        return Err(std::io::Error::other(format!("bad answer {text:?}")));
    }
    Ok(text.lines().last().unwrap_or_default().trim().to_string())
}

/// A load generator on loopback: one request after the other (a few ms apart) until stopped,
/// at most `MAX_REQUESTS`.
struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Result<String, String>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const MAX_REQUESTS: usize = 20_000;

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, answers) = (stop.clone(), answers.clone());
            std::thread::spawn(move || {
                for _ in 0..MAX_REQUESTS {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let answer = get(port).map_err(|e| e.to_string());
                    answers.lock().expect("answers").push(answer);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Load {
            stop,
            answers,
            thread: Some(thread),
        }
    }

    /// Stops the load; returns every answer in order.
    fn finish(mut self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the load thread");
        }
        std::mem::take(&mut *self.answers.lock().expect("answers"))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Checks a load run: no failure at all, and the answers go from `from` to `to` for good.
fn check_switch(answers: &[Result<String, String>], from: &str, to: &str) {
    let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    let ok: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    eprintln!(
        "{} requests, {} failed, {} answered {from}, {} answered {to}",
        answers.len(),
        failed.len(),
        ok.iter().filter(|a| a.as_str() == from).count(),
        ok.iter().filter(|a| a.as_str() == to).count()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(answers.len() > 50, "too little load: {}", answers.len());
    assert!(ok.iter().all(|a| a.as_str() == from || a.as_str() == to));
    assert_eq!(ok.first().map(|a| a.as_str()), Some(from));
    let last_from = ok.iter().rposition(|a| a.as_str() == from).unwrap_or(0);
    let first_to = ok.iter().position(|a| a.as_str() == to);
    assert!(first_to.is_some(), "never answered {to}");
    assert!(
        ok[last_from + 1..].iter().all(|a| a.as_str() == to) && last_from + 1 < ok.len(),
        "the answers did not end on {to}"
    );
}

fn update_state(d: &TestDaemon, service: &str) -> String {
    let v = d.json(&["service", "inspect", service]);
    v[0]["update_status"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
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

    let load = Load::start(port);
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
    check_switch(&answers, "v1", "v2");
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
    let load = Load::start(port);
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
    check_switch(&answers, "v2", "v1");
    assert_eq!(update_state(&d, "web"), "rollback_completed");
    assert_eq!(versions(&d, "web"), vec!["v1"; 4]);
    d.ok(&["service", "rm", "web"]);
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
    let deploy = |a: &str, b: &str| {
        let service = |name: &str, version: &str| {
            format!(
                "  {name}:\n    image: busybox\n    command: [sleep, '1000']\n    stop_grace_period: 1s\n    environment: {{ VERSION: {version} }}\n    deploy:\n      replicas: 2\n      update_config: {{ parallelism: 2, order: start-first, monitor: 300ms }}\n      rollback_config: {{ parallelism: 0, monitor: 300ms }}\n"
            )
        };
        let yaml = format!("services:\n{}{}", service("a", a), service("b", b));
        std::fs::write(&file, yaml).expect("write the stack file");
        d.ok(&["stack", "deploy", "-c", &path, "app"]);
    };
    deploy("v1", "v1");
    deploy("v2", "v2");
    for s in ["app_a", "app_b"] {
        d.wait_for("the update to complete", Duration::from_secs(30), || {
            update_state(&d, s) == "completed" && versions(&d, s) == vec!["v2"; 2]
        });
        let inspect = d.json(&["service", "inspect", s]);
        assert_eq!(inspect[0]["spec"]["update_config"]["order"], "start_first");
    }
    d.ok(&["stack", "rollback", "app"]);
    for s in ["app_a", "app_b"] {
        assert_eq!(update_state(&d, s), "rollback_completed");
        d.wait_for("v1 again", Duration::from_secs(20), || {
            versions(&d, s) == vec!["v1"; 2]
        });
    }
    d.ok(&["stack", "rm", "app"]);
}
