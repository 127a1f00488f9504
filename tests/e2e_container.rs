//! Docker's local container commands end to end with a real daemon: `run`, `ps`, `logs`,
//! `exec` (exit codes, stdin, a terminal), `stop`/`start`/`restart`, `kill -s`, `pause`,
//! `stats`, `top`, `inspect`, `rm`; `exec` into a service task by its task name; bad input
//! that leaves nothing behind.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::daemon::{TestDaemon, SHOAL};
use common::require_root;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The container named `name` in `ps -a --format json`, if any.
fn container(d: &TestDaemon, name: &str) -> Option<serde_json::Value> {
    d.json(&["ps", "-a", "--format", "json"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .find(|c| c["name"] == name)
}

fn state_of(d: &TestDaemon, name: &str) -> String {
    container(d, name)
        .map(|c| c["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| "gone".into())
}

#[test]
fn standalone_container_lifecycle() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    let script = "echo hello; echo oops >&2; trap 'echo got-usr1' USR1; trap 'exit 0' TERM; \
                  while true; do sleep 0.1; done";
    let id = d.ok(&["run", "-d", "--name", "web", "busybox", "sh", "-c", script]);
    let id = id.trim().to_string();
    assert!(
        id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "run -d prints the id: {id:?}"
    );

    // ps: the table, -q, and JSON.
    let ps = d.ok(&["ps"]);
    let header = ps.lines().next().unwrap_or_default();
    for column in [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ] {
        assert!(header.contains(column), "{ps}");
    }
    let row = ps
        .lines()
        .find(|l| l.contains("web"))
        .expect("web is listed");
    assert!(
        row.contains(&id[..12]) && row.contains("busybox") && row.contains("Up "),
        "{ps}"
    );
    assert!(d.ok(&["ps", "-q"]).lines().any(|l| l == &id[..12]));
    let c = container(&d, "web").expect("web in JSON");
    assert_eq!(c["state"], "running", "{c}");
    assert_eq!(c["standalone"], true, "{c}");
    assert_eq!(c["image"], "busybox", "{c}");

    // logs: stdout to stdout, stderr to stderr; -t adds timestamps; by id prefix too.
    d.wait_for("the first output", Duration::from_secs(10), || {
        d.ok(&["logs", "web"]).contains("hello")
    });
    let out = d.shoal(&["logs", &id[..8]]);
    assert!(stdout(&out).contains("hello"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"));
    let stamped = d.ok(&["logs", "-t", "web"]);
    assert!(
        stamped.starts_with("20") && stamped.contains("Z hello"),
        "{stamped}"
    );
    assert_eq!(d.ok(&["logs", "--tail", "0", "web"]), "");

    // exec: output, exit codes, user, workdir, env, stdin, a terminal.
    assert_eq!(d.ok(&["exec", "web", "echo", "hi"]), "hi\n");
    let out = d.shoal(&["exec", "web", "sh", "-c", "echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "exec's exit code");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    let who = d.ok(&[
        "exec",
        "-u",
        "1234",
        "-w",
        "/tmp",
        "-e",
        "FOO=bar",
        "web",
        "sh",
        "-c",
        "echo $FOO $(pwd) $(id -u)",
    ]);
    assert_eq!(who.trim(), "bar /tmp 1234");
    let piped = d.shoal_with_input(&["exec", "-i", "web", "cat"], b"piped-input\nline 2\n");
    assert!(piped.status.success(), "{piped:?}");
    assert_eq!(stdout(&piped), "piped-input\nline 2\n");
    let tty = d.ok(&["exec", "-t", "web", "tty"]);
    assert!(tty.starts_with("/dev/pts/"), "{tty:?}");
    let err = d.fails(&["exec", "web", "no-such-command"]);
    assert!(err.contains("not found"), "{err}");
    let err = d.fails(&["exec", "nosuch", "true"]);
    assert!(err.contains("no such container"), "{err}");
    assert_eq!(err.lines().count(), 1, "one-line errors: {err}");

    // top and stats.
    let top = d.ok(&["top", "web"]);
    assert!(top.contains("PID") && top.contains("sh -c"), "{top}");
    let stats = d.ok(&["stats", "--no-stream", "web"]);
    assert!(stats.contains("CPU %") && stats.contains("web"), "{stats}");
    let stats = d.ok(&["stats", "--no-stream"]);
    assert!(stats.contains("web"), "every running container: {stats}");

    // kill -s delivers the signal; the container runs on.
    d.ok(&["kill", "-s", "USR1", "web"]);
    d.wait_for("the trapped USR1", Duration::from_secs(10), || {
        d.ok(&["logs", "web"]).contains("got-usr1")
    });
    assert_eq!(state_of(&d, "web"), "running");
    let err = d.fails(&["kill", "-s", "SIGNOPE", "web"]);
    assert!(err.contains("unknown signal"), "{err}");

    // pause / unpause.
    d.ok(&["pause", "web"]);
    assert_eq!(state_of(&d, "web"), "paused");
    assert!(d.ok(&["ps"]).contains("(Paused)"));
    let err = d.fails(&["exec", "web", "true"]);
    assert!(err.contains("paused"), "{err}");
    d.ok(&["unpause", "web"]);
    assert_eq!(state_of(&d, "web"), "running");

    // inspect.
    let inspect = d.json(&["inspect", "web"]);
    assert_eq!(inspect[0]["id"], id.as_str(), "{inspect}");
    assert_eq!(inspect[0]["config"]["args"][0], "sh", "{inspect}");
    let first_pid = inspect[0]["pid"].as_i64().expect("a pid");

    // stop, then start again with the same filesystem and log.
    d.ok(&["exec", "web", "sh", "-c", "echo persisted > /marker"]);
    d.ok(&["stop", "-t", "5", "web"]);
    assert_eq!(state_of(&d, "web"), "exited");
    assert!(
        !d.ok(&["ps"]).contains("web"),
        "ps lists running containers only"
    );
    let all = d.ok(&["ps", "-a"]);
    assert!(all.contains("Exited (0)"), "{all}");
    d.ok(&["start", "web"]);
    assert_eq!(state_of(&d, "web"), "running");
    assert_eq!(d.ok(&["exec", "web", "cat", "/marker"]), "persisted\n");
    d.wait_for("the second start's output", Duration::from_secs(10), || {
        d.ok(&["logs", "web"]).matches("hello").count() == 2
    });
    d.ok(&["restart", "-t", "5", "web"]);
    assert_eq!(state_of(&d, "web"), "running");
    let pid = d.json(&["inspect", "web"])[0]["pid"]
        .as_i64()
        .expect("a pid");
    assert_ne!(pid, first_pid, "a new process");

    // rm: refused while running, done with --force.
    let err = d.fails(&["rm", "web"]);
    assert!(err.contains("stop it first"), "{err}");
    d.ok(&["rm", "-f", "web"]);
    assert!(container(&d, "web").is_none());
    let err = d.fails(&["logs", "web"]);
    assert!(err.contains("no such container"), "{err}");
}

#[test]
fn run_in_the_foreground_exits_with_the_containers_code_and_bad_input_leaves_nothing() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();

    // Foreground with --rm: its output, its exit code, nothing left.
    let out = d.shoal(&["run", "--rm", "busybox", "sh", "-c", "echo out; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(d.ok(&["ps", "-a", "-q"]), "", "--rm leaves nothing");

    // Options reach the container.
    let out = d.ok(&[
        "run",
        "--rm",
        "-e",
        "A=1",
        "-w",
        "/tmp",
        "-u",
        "1234",
        "--memory",
        "64m",
        "--pids-limit",
        "50",
        "--cpus",
        "0.5",
        "busybox",
        "sh",
        "-c",
        "echo $A $(pwd) $(id -u)",
    ]);
    assert_eq!(out.trim(), "1 /tmp 1234");
    let env_file = d.dir.path().join("env");
    std::fs::write(&env_file, "# comment\nFROM_FILE=yes\n").expect("env file");
    let out = d.ok(&[
        "run",
        "--rm",
        "--env-file",
        env_file.to_str().expect("utf-8"),
        "--entrypoint",
        "sh",
        "busybox",
        "-c",
        "echo $FROM_FILE",
    ]);
    assert_eq!(
        out, "yes\n",
        "--entrypoint replaces the image's, the words after the image follow"
    );
    let out = d.ok(&[
        "run",
        "--rm",
        "--read-only",
        "busybox",
        "sh",
        "-c",
        "touch /x || echo ro",
    ]);
    assert!(out.contains("ro"), "{out}");
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "ls",
        "/sys/class/net",
    ]);
    assert_eq!(out.trim(), "lo", "only lo with --network none");

    // Without --rm it stays, exited, under its name.
    let out = d.shoal(&["run", "--name", "once", "busybox", "echo", "hi"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "hi\n");
    let once = container(&d, "once").expect("kept");
    assert_eq!(
        (once["state"].as_str(), once["exit_code"].as_i64()),
        (Some("exited"), Some(0))
    );
    assert_eq!(d.ok(&["logs", "once"]), "hi\n");
    d.ok(&["rm", "once"]);

    // logs -f ends when the container stops.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "short",
        "busybox",
        "sh",
        "-c",
        "echo a; sleep 1; echo b",
    ]);
    assert_eq!(d.ok(&["logs", "-f", "short"]), "a\nb\n");
    d.ok(&["rm", "short"]);

    // Ctrl-C (SIGINT) of an attached run goes to the container, whose exit code follows.
    let child = Command::new(SHOAL)
        .arg("--host")
        .arg(d.socket())
        .args([
            "run",
            "--rm",
            "--name",
            "sig",
            "busybox",
            "sh",
            "-c",
            "trap 'echo got-int; exit 42' INT; echo ready; while true; do sleep 0.1; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run shoal");
    d.wait_for("the container to be ready", Duration::from_secs(10), || {
        d.shoal(&["logs", "sig"]).stdout.starts_with(b"ready")
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let out = child.wait_with_output().expect("run's output");
    assert_eq!(out.status.code(), Some(42), "{out:?}");
    assert_eq!(stdout(&out), "ready\ngot-int\n");

    // Detached with --rm: removed once it exits.
    d.ok(&["run", "-d", "--rm", "busybox", "true"]);
    d.wait_for("the auto-removal", Duration::from_secs(10), || {
        d.ok(&["ps", "-a", "-q"]).is_empty()
    });

    // A generated name.
    let id = d.ok(&["run", "-d", "busybox", "sleep", "1000"]);
    let listed = d.json(&["ps", "--format", "json"]);
    let name = listed[0]["name"].as_str().expect("a name").to_string();
    assert!(name.contains('_'), "adjective_noun: {name}");
    let err = d.fails(&["run", "-d", "--name", &name, "busybox", "true"]);
    assert!(err.contains("already in use"), "{err}");
    d.ok(&["rm", "-f", id.trim()]);

    // Bad input: a clear one-line error, and no container.
    for (args, want) in [
        (
            vec!["run", "--rm", "--entrypoint", "", "busybox"],
            "no command",
        ),
        (vec!["run", "--rm", "nosuchimage", "true"], "no such image"),
        (
            vec!["run", "--rm", "-u", "nosuchuser", "busybox", "true"],
            "nosuchuser",
        ),
        (
            vec!["run", "--rm", "--cap-add", "FLY", "busybox", "true"],
            "unknown capability",
        ),
        (
            vec!["run", "--rm", "--memory", "1k", "busybox", "true"],
            "6 MiB",
        ),
        (
            vec!["run", "--rm", "--memory", "lots", "busybox", "true"],
            "invalid size",
        ),
        (
            vec!["run", "--rm", "--name", "a b", "busybox", "true"],
            "invalid container name",
        ),
        (
            vec!["run", "--rm", "--network", "nosuchnet", "busybox", "true"],
            "no such network",
        ),
        (
            vec!["run", "--rm", "-e", "=x", "busybox", "true"],
            "KEY=VALUE",
        ),
        (vec!["run", "-it", "busybox", "sh"], "shoal exec -it"),
        (
            vec!["run", "--rm", "busybox", "no-such-command"],
            "no-such-command",
        ),
    ] {
        let err = d.fails(&args);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert_eq!(d.ok(&["ps", "-a", "-q"]), "", "{args:?} left a container");
    }
    assert!(
        std::fs::read_dir(d.data_dir().join("containers"))
            .expect("containers dir")
            .next()
            .is_none(),
        "no state dir left"
    );
}

#[test]
fn exec_reaches_a_service_task_by_its_task_name() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::with_busybox();
    d.ok(&[
        "service",
        "create",
        "--name",
        "svc",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sh",
        "-c",
        "echo from-task; exec sleep 1000",
    ]);
    let tasks = d.running_tasks("svc");
    assert_eq!(tasks.len(), 1);
    let task_id = tasks[0]["id"].as_str().expect("task id").to_string();
    let name = format!("svc.1.{task_id}");
    let c = container(&d, &name).expect("the task's container under its task name");
    assert_eq!(c["standalone"], false, "{c}");
    assert_eq!(c["image"], "busybox", "found by its layers: {c}");
    assert!(d.ok(&["ps"]).contains(&name));
    assert!(!d
        .ok(&["exec", &name, "cat", "/etc/hostname"])
        .trim()
        .is_empty());
    assert_eq!(
        d.ok(&["exec", &task_id[..10], "echo", "inside"]),
        "inside\n"
    );
    d.wait_for("the task's output", Duration::from_secs(10), || {
        d.ok(&["logs", &name]).contains("from-task")
    });
    let top = d.ok(&["top", &name]);
    assert!(top.contains("sleep 1000"), "{top}");
    d.ok(&["service", "rm", "svc"]);
    d.wait_for(
        "the task's container to go",
        Duration::from_secs(20),
        || container(&d, &name).is_none(),
    );
}
