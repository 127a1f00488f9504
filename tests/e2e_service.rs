//! End to end: a real `shoal daemon`, the real CLI, real containers (run as root).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::daemon::{cgroup_dirs, TestDaemon};
use common::require_root;

const CONVERGE: Duration = Duration::from_secs(30);

fn ns(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/ns/{kind}: {e}"))
}

fn pids(tasks: &[serde_json::Value]) -> Vec<String> {
    tasks
        .iter()
        .map(|t| {
            t["status"]["pid"]
                .as_u64()
                .expect("a running task has a pid")
                .to_string()
        })
        .collect()
}

fn alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The memory cgroup directory of a process (v1) or its unified cgroup (v2).
fn memory_limit_of(pid: &str) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup file");
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if controllers.split(',').any(|c| c == "memory") {
            let file = format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes");
            return std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        if controllers.is_empty()
            && std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        {
            let file = format!("/sys/fs/cgroup{path}/memory.max");
            return std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
    panic!("process {pid} is in no memory cgroup:\n{cgroups}");
}

#[test]
fn replicated_service_runs_isolated_limited_scales_and_leaves_nothing() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--memory",
        "64m",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sleep",
        "1000",
    ]);
    let tasks = d.running_tasks("web");
    assert_eq!(tasks.len(), 3, "create waits until 3 tasks run");

    // Each in its own pid, net and mount namespace, with the memory limit in its cgroup.
    let first_pids = pids(&tasks);
    for kind in ["pid", "net", "mnt", "uts", "ipc"] {
        let mine = ns("self", kind);
        let theirs: HashSet<String> = first_pids.iter().map(|p| ns(p, kind)).collect();
        assert_eq!(theirs.len(), 3, "every task has its own {kind} namespace");
        assert!(
            !theirs.contains(&mine),
            "no task shares the host's {kind} namespace"
        );
    }
    for pid in &first_pids {
        assert_eq!(memory_limit_of(pid).trim(), (64u64 << 20).to_string());
    }

    // The table output names the service and its replicas.
    let ls = d.ok(&["service", "ls"]);
    assert!(
        ls.contains("web") && ls.contains("3/3"),
        "service ls:\n{ls}"
    );

    // Scale up, then down.
    d.ok(&["service", "scale", "web=5"]);
    assert_eq!(d.running_tasks("web").len(), 5);
    d.ok(&["service", "scale", "web=1"]);
    d.wait_for("scale down to 1", CONVERGE, || {
        d.running_tasks("web").len() == 1
    });
    let remaining = pids(&d.running_tasks("web"));
    let all_pids: HashSet<String> = first_pids.iter().chain(&remaining).cloned().collect();
    d.wait_for("scaled-down containers to exit", CONVERGE, || {
        all_pids.iter().filter(|p| alive(p)).count() == 1
    });

    // Remove: no process, container dir, mount or cgroup is left.
    d.ok(&["service", "rm", "web"]);
    let containers = d.data_dir().join("containers");
    d.wait_for("every container removed", CONVERGE, || {
        std::fs::read_dir(&containers)
            .map(|e| e.count() == 0)
            .unwrap_or(true)
    });
    assert!(
        all_pids.iter().all(|p| !alive(p)),
        "no container process survives rm"
    );
    // A stopped container's network namespace is deleted in the background, soon after. The
    // node's warm namespaces (`run/netns/pool:*`) belong to the network, not to a container:
    // they stay for the next start, and go with the network.
    let data = d.data_dir().display().to_string();
    let pool = d.data_dir().join("run/netns/pool:").display().to_string();
    let leftovers = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .filter(|m| m.contains(&data) && !m.contains(&pool))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    d.wait_for("no mount under the data dir to remain", CONVERGE, || {
        leftovers().is_empty()
    });
    for dir in cgroup_dirs(&d.cgroup_parent) {
        let children: Vec<_> = std::fs::read_dir(&dir)
            .expect("cgroup dir")
            .flatten()
            .filter(|e| e.path().is_dir())
            .collect();
        assert!(
            children.is_empty(),
            "cgroups left under {}: {children:?}",
            dir.display()
        );
    }
    let ls = d.ok(&["service", "ls", "-q"]);
    assert!(ls.trim().is_empty(), "no service is left: {ls}");
}

#[test]
fn kill_9_and_restart_recovers_services_without_duplicates() {
    if !require_root() {
        return;
    }
    let mut d = TestDaemon::with_busybox();
    let cluster = d.json(&["info", "--format", "json"])["cluster"]["id"].clone();
    d.ok(&[
        "service",
        "create",
        "--name",
        "db",
        "--replicas",
        "2",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sleep",
        "1000",
    ]);
    let before: HashSet<String> = pids(&d.running_tasks("db")).into_iter().collect();
    let service_id = d.json(&["service", "inspect", "db"])[0]["id"].clone();

    d.kill9();
    assert!(
        before.iter().all(|p| alive(p)),
        "containers outlive the daemon"
    );
    d.spawn();

    // Same cluster, same service, same containers: adopted, not duplicated.
    assert_eq!(
        d.json(&["info", "--format", "json"])["cluster"]["id"],
        cluster
    );
    assert_eq!(d.json(&["service", "inspect", "db"])[0]["id"], service_id);
    d.wait_for("2 running tasks after restart", CONVERGE, || {
        d.running_tasks("db").len() == 2
    });
    let after: HashSet<String> = pids(&d.running_tasks("db")).into_iter().collect();
    assert_eq!(before, after, "the running containers were adopted");
    let containers = std::fs::read_dir(d.data_dir().join("containers"))
        .expect("containers dir")
        .count();
    assert_eq!(containers, 2, "no duplicate container was made");

    // A container that exits while the daemon is down is noticed and replaced.
    d.kill9();
    let victim = before.iter().next().cloned().expect("a pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.parse().expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill a container");
    d.spawn();
    d.wait_for("the dead replica replaced", CONVERGE, || {
        let running = pids(&d.running_tasks("db"));
        running.len() == 2 && !running.contains(&victim)
    });
    d.ok(&["service", "rm", "db"]);
}

#[test]
fn bad_input_is_refused_and_creates_nothing() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start();
    let mut errors = Vec::new();
    let mut refused = |args: &[&str], expected: &str| {
        let err = d.fails(args);
        assert!(
            err.contains(expected),
            "{args:?} should say {expected:?}: {err}"
        );
        errors.push(err);
    };
    refused(
        &["service", "create", "--name", "x", "nosuchimage"],
        "nosuchimage",
    );
    refused(
        &[
            "service", "create", "--name", "x", "--memory", "lots", "busybox",
        ],
        "invalid size",
    );
    refused(
        &[
            "service",
            "create",
            "--name",
            "x",
            "--replicas",
            "-1",
            "busybox",
        ],
        "0 or more",
    );
    refused(&["service", "scale", "nosuch=2"], "no such service");
    d.ok(&["image", "bootstrap", "busybox"]);
    d.ok(&[
        "service",
        "create",
        "--name",
        "x",
        "-d",
        "--replicas",
        "0",
        "busybox",
        "true",
    ]);
    let err = d.fails(&["service", "create", "--name", "x", "busybox", "true"]);
    assert!(err.contains("already in use"), "{err}");
    errors.push(err);
    for err in &errors {
        assert_eq!(err.trim().lines().count(), 1, "errors are one line: {err}");
    }
    let services = d.ok(&["service", "ls", "-q"]);
    assert_eq!(
        services.lines().count(),
        1,
        "only the one good service exists"
    );
}

#[test]
fn logs_and_exit_codes_reach_the_cli() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "job",
        "--restart-condition",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo hello-from-task; echo oops >&2; exit 3",
    ]);
    d.wait_for("the task to fail with exit 3", CONVERGE, || {
        let tasks = d.json(&["service", "ps", "job", "--format", "json"]);
        tasks[0]["status"]["exit_code"] == 3
    });
    let tasks = d.json(&["service", "ps", "job", "--format", "json"]);
    assert_eq!(
        tasks.as_array().map(Vec::len),
        Some(1),
        "restart none: no new task"
    );
    assert!(tasks[0]["status"]["error"]
        .as_str()
        .unwrap_or("")
        .contains("non-zero exit (3)"));
    let out = d.shoal(&["service", "logs", "job"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("hello-from-task"), "stdout: {stdout}");
    assert!(stderr.contains("oops"), "stderr: {stderr}");
    d.ok(&["service", "rm", "job"]);
}

#[test]
fn imported_rootfs_tarball_runs_from_a_file_and_from_stdin() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start();
    // A rootfs like `docker export` gives: busybox and its applets.
    let rootfs = d.dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs/bin");
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "echo", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("symlink");
    }
    std::fs::write(rootfs.join("marker"), "imported-image\n").expect("marker");
    let tarball = d.dir.path().join("rootfs.tar");
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success());

    d.ok(&[
        "image",
        "import",
        tarball.to_str().expect("utf-8 path"),
        "--name",
        "mybox:1",
    ]);
    let piped = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} --host {} image import - --name piped < {}",
            common::daemon::SHOAL,
            d.socket().display(),
            tarball.display()
        ))
        .output()
        .expect("import from stdin");
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    let images = d.ok(&["image", "ls"]);
    assert!(
        images.contains("mybox") && images.contains("piped"),
        "{images}"
    );

    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "cat",
        "--restart-condition",
        "none",
        "mybox:1",
        "cat",
        "/marker",
    ]);
    d.wait_for("the task to complete", CONVERGE, || {
        d.json(&["service", "ps", "cat", "--format", "json"])[0]["status"]["state"] == "complete"
    });
    let logs = d.ok(&["service", "logs", "cat"]);
    assert!(logs.contains("imported-image"), "{logs}");
    d.ok(&["service", "rm", "cat"]);
}

#[test]
fn logs_follow_picks_up_restarted_tasks() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "tick",
        "--restart-delay",
        "100ms",
        "busybox",
        "sh",
        "-c",
        "echo tick-$(hostname); sleep 0.3",
    ]);
    // Follow for a while: lines of several successive tasks must arrive.
    let out = std::process::Command::new("timeout")
        .args(["3", common::daemon::SHOAL, "--host"])
        .arg(d.socket())
        .args(["service", "logs", "-f", "tick"])
        .output()
        .expect("logs -f");
    let text = String::from_utf8_lossy(&out.stdout);
    let tasks: HashSet<&str> = text.lines().filter(|l| l.contains("tick-")).collect();
    assert!(
        tasks.len() >= 3,
        "lines from several restarts arrive while following:\n{text}"
    );
    d.ok(&["service", "rm", "tick"]);
}

#[test]
fn service_update_replaces_tasks_with_the_new_spec() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    d.ok(&[
        "service",
        "create",
        "--name",
        "up",
        "--replicas",
        "2",
        "-e",
        "COLOR=blue",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sh",
        "-c",
        "echo color=$COLOR; exec sleep 1000",
    ]);
    let before: HashSet<String> = pids(&d.running_tasks("up")).into_iter().collect();
    // `update` waits until the new tasks run, so the check right after it is exact.
    d.ok(&["service", "update", "--env-add", "COLOR=green", "up"]);
    let after = d.running_tasks("up");
    assert_eq!(after.len(), 2);
    assert!(after
        .iter()
        .all(|t| t["spec"]["container"]["env"][0] == "COLOR=green"));
    let after_pids: HashSet<String> = pids(&after).into_iter().collect();
    assert!(before.is_disjoint(&after_pids), "every task was replaced");
    d.wait_for("the new tasks' output", CONVERGE, || {
        d.ok(&["service", "logs", "up"])
            .matches("color=green")
            .count()
            == 2
    });
    // Scaling alone keeps the running tasks.
    d.ok(&["service", "update", "--replicas", "3", "up"]);
    let scaled: HashSet<String> = pids(&d.running_tasks("up")).into_iter().collect();
    assert!(
        after_pids.is_subset(&scaled),
        "scaling does not replace tasks"
    );
    let err = d.fails(&["service", "update", "--env-add", "=x", "up"]);
    assert!(err.contains("KEY=VALUE"), "{err}");
    d.ok(&["service", "rm", "up"]);
}
