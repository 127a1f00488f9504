//! Healthchecks with Swarm's consequences: a task counts as running only once healthy, and a
//! task that turns unhealthy fails (its restart policy decides what happens next).

mod common;

use std::time::Duration;

use common::daemon::TestDaemon;
use common::require_root;

fn tasks(d: &TestDaemon, service: &str) -> Vec<serde_json::Value> {
    d.json(&["service", "ps", service, "--format", "json"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_task_runs_once_healthy_and_fails_when_unhealthy() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    // Ready after a second: starting until then, running and healthy after.
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "slow",
        "--health-cmd",
        "test -f /tmp/ready",
        "--health-interval",
        "200ms",
        "--health-start-interval",
        "200ms",
        "--health-start-period",
        "10s",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sh",
        "-c",
        "sleep 1.5; touch /tmp/ready; exec sleep 1000",
    ]);
    d.wait_for("the task to start", Duration::from_secs(10), || {
        tasks(&d, "slow")
            .first()
            .is_some_and(|t| t["status"]["state"] == "starting")
    });
    d.wait_for("the task to be healthy", Duration::from_secs(20), || {
        tasks(&d, "slow").first().is_some_and(|t| {
            t["status"]["state"] == "running" && t["status"]["health"] == "healthy"
        })
    });

    // Never healthy: after the retries the task fails and says why.
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "sick",
        "--health-cmd",
        "echo not today; false",
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        "--restart-condition",
        "none",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sleep",
        "1000",
    ]);
    d.wait_for(
        "the task to fail as unhealthy",
        Duration::from_secs(20),
        || {
            tasks(&d, "sick").first().is_some_and(|t| {
                t["status"]["state"] == "failed"
                    && t["status"]["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("unhealthy") && e.contains("not today"))
            })
        },
    );
    let err = d.fails(&[
        "service",
        "create",
        "--name",
        "bad",
        "--log-opt",
        "compress=true",
        "busybox",
        "true",
    ]);
    assert!(err.contains("compress"), "{err}");
}
