//! Integration tests of `Runtime::exec`, pause/unpause, stats, top, kill with any signal and
//! log rotation, with the real `shoal` binary as the supervisor and exec helper. Privileged:
//! they need root (namespaces, mounts, cgroups).
//!
//! Each test builds a busybox rootfs in its own tempdir, uses a unique cgroup parent, and
//! cleans up everything through a guard (containers via `Runtime::remove`, the cgroup parent,
//! the tempdir), even on panic.

mod common;

use common::rootfs::busybox_layer;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shoal_agent::runtime::{
    parse_signal_number, read_log, CgroupFs, CgroupVersion, ContainerConfig, ContainerStatus,
    ExecHandle, ExecSpec, Limits, LogFollower, LogOptions, LogStream, Runtime, RuntimeError, Stage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

struct TestEnv {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    rt: Runtime,
}

impl TestEnv {
    fn new() -> TestEnv {
        let tmp = tempfile::Builder::new()
            .prefix("shoal-ex")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let base = tmp.path().join("l0");
        busybox_layer(&base);
        let parent = common::unique_name("shoal-test");
        let rt = Runtime::with_cgroups(
            tmp.path().join("c"),
            PathBuf::from(SHOAL),
            parent,
            CgroupFs::host(),
        )
        .expect("runtime");
        TestEnv {
            _tmp: tmp,
            base,
            rt,
        }
    }

    fn config(&self, id: &str, args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            id: id.to_string(),
            name: format!("{id}.1"),
            layers: vec![self.base.clone()],
            args: args.iter().map(|s| s.to_string()).collect(),
            stop_grace: Duration::from_secs(1),
            labels: BTreeMap::from([("test".to_string(), "exec".to_string())]),
            ..ContainerConfig::default()
        }
    }

    fn sh(&self, id: &str, script: &str) -> ContainerConfig {
        self.config(id, &["sh", "-c", script])
    }

    async fn start(&self, cfg: ContainerConfig) -> i32 {
        let state = self.rt.create_and_start(cfg).await.expect("start");
        match state.status {
            ContainerStatus::Running { pid } => pid,
            other => panic!("expected running, got {other:?}"),
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        common::remove_runtime_containers(&self.rt);
    }
}

/// Runs `args` in the container; returns (exit code, stdout, stderr).
async fn run(rt: &Runtime, id: &str, spec: ExecSpec) -> (i32, String, String) {
    let mut h = rt.exec(id, spec).await.expect("exec");
    collect(&mut h).await
}

async fn collect(h: &mut ExecHandle) -> (i32, String, String) {
    let mut out = h.take_stdout().expect("stdout");
    let mut err = h.take_stderr().expect("stderr");
    let (mut o, mut e) = (String::new(), String::new());
    let read = async {
        let (a, b) = tokio::join!(out.read_to_string(&mut o), err.read_to_string(&mut e));
        a.expect("read stdout");
        b.expect("read stderr");
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("output within 30 s");
    let code = tokio::time::timeout(Duration::from_secs(30), h.wait())
        .await
        .expect("exit within 30 s")
        .expect("wait");
    (code, o, e)
}

async fn sh(rt: &Runtime, id: &str, script: &str) -> (i32, String, String) {
    run(rt, id, ExecSpec::new(["sh", "-c", script])).await
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} missing in {status}"))
        .trim()
        .to_string()
}

#[tokio::test]
async fn exec_shares_the_containers_namespaces_cgroups_and_security() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let mut cfg = env.config("ex1", &["sleep", "1000"]);
    cfg.hostname = "box-ex".into();
    cfg.env = vec!["A=1".into(), "B=container".into()];
    cfg.cwd = "/tmp".into();
    let pid = env.start(cfg).await;

    let (code, out, _) = sh(&env.rt, "ex1", "hostname; id -u; pwd").await;
    assert_eq!(code, 0);
    assert_eq!(out, "box-ex\n0\n/tmp\n");

    // Same capability sets, seccomp filter and no_new_privs as the container's init.
    let (code, status, _) = run(&env.rt, "ex1", ExecSpec::new(["cat", "/proc/self/status"])).await;
    assert_eq!(code, 0);
    let init = fs::read_to_string(format!("/proc/{pid}/status")).expect("init status");
    for key in [
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
        "Seccomp_filters",
        "Uid",
        "Gid",
    ] {
        assert_eq!(
            status_field(&status, key),
            status_field(&init, key),
            "{key} differs"
        );
    }
    assert_eq!(status_field(&status, "Seccomp"), "2");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    // Its parent is outside the container's pid namespace.
    assert_eq!(status_field(&status, "PPid"), "0");

    // Same namespaces.
    let (_, links, _) = sh(
        &env.rt,
        "ex1",
        "for n in pid net mnt uts ipc; do readlink /proc/self/ns/$n; done",
    )
    .await;
    let want: Vec<String> = ["pid", "net", "mnt", "uts", "ipc"]
        .iter()
        .map(|n| {
            fs::read_link(format!("/proc/{pid}/ns/{n}"))
                .expect("ns link")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(links.lines().collect::<Vec<_>>(), want);

    // Same cgroups (no cgroup namespace: the paths are the host's).
    let (_, cg, _) = run(&env.rt, "ex1", ExecSpec::new(["cat", "/proc/self/cgroup"])).await;
    let init_cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("init cgroup");
    for line in init_cg.lines().filter(|l| {
        ["memory", "pids", "cpu,cpuacct", "devices", "freezer"]
            .iter()
            .any(|c| l.split(':').nth(1) == Some(*c))
    }) {
        assert!(cg.lines().any(|l| l == line), "{line} not in {cg}");
    }

    // The container's processes, not the host's.
    let (_, ps, _) = run(&env.rt, "ex1", ExecSpec::new(["ps", "-o", "pid,args"])).await;
    let procs: Vec<&str> = ps.lines().skip(1).map(str::trim).collect();
    assert!(procs.contains(&"1 sleep 1000"), "pid 1 missing: {ps}");
    assert!(procs.len() <= 3, "host processes visible: {ps}");

    // Environment: the container's, the exec's on top, defaults for the rest.
    let mut spec = ExecSpec::new(["env"]);
    spec.env = vec!["B=exec".into(), "C=3".into()];
    let (_, envs, _) = run(&env.rt, "ex1", spec).await;
    let envs: Vec<&str> = envs.lines().collect();
    for want in ["A=1", "B=exec", "C=3", "HOME=/root", "HOSTNAME=box-ex"] {
        assert!(envs.contains(&want), "{want} missing from {envs:?}");
    }
    assert!(envs.iter().any(|e| e.starts_with("PATH=")), "{envs:?}");

    // Working directory override; exit codes and signals propagate; stderr is separate.
    let mut spec = ExecSpec::new(["sh", "-c", "pwd; echo oops >&2; exit 7"]);
    spec.cwd = "/etc".into();
    assert_eq!(
        run(&env.rt, "ex1", spec).await,
        (7, "/etc\n".into(), "oops\n".into())
    );
    assert_eq!(sh(&env.rt, "ex1", "kill -9 $$").await.0, 137);

    // Not found, in Docker's words; a missing working directory; an unknown user.
    let err = env
        .rt
        .exec("ex1", ExecSpec::new(["foo"]))
        .await
        .expect_err("no foo");
    assert!(
        err.to_string()
            .contains("exec: \"foo\": executable file not found in $PATH"),
        "{err}"
    );
    assert!(
        matches!(
            err,
            RuntimeError::ExecFailed {
                stage: Stage::Exec,
                ..
            }
        ),
        "{err:?}"
    );
    let mut spec = ExecSpec::new(["true"]);
    spec.cwd = "/nope".into();
    let err = env.rt.exec("ex1", spec).await.expect_err("no dir");
    assert!(
        matches!(
            err,
            RuntimeError::ExecFailed {
                stage: Stage::Cwd,
                ..
            }
        ),
        "{err:?}"
    );
    let mut spec = ExecSpec::new(["true"]);
    spec.user = "bob".into();
    let err = env.rt.exec("ex1", spec).await.expect_err("no bob");
    assert!(
        matches!(
            err,
            RuntimeError::ExecFailed {
                stage: Stage::User,
                ..
            }
        ) && err.to_string().contains("unknown user \"bob\""),
        "{err:?}"
    );
    // No helper or exec'd process is left in the cgroup: only the init.
    let top = env.rt.top("ex1").expect("top");
    assert_eq!(top.len(), 1, "{top:?}");
}

#[tokio::test]
async fn exec_as_another_user_and_the_container_user() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    env.start(env.config("ex2", &["sleep", "1000"])).await;
    let mut spec = ExecSpec::new([
        "sh",
        "-c",
        "id -u; id -g; echo $HOME; grep CapEff /proc/self/status",
    ]);
    spec.user = "app".into();
    let (code, out, _) = run(&env.rt, "ex2", spec).await;
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["1000", "1000", "/home/app", "CapEff:\t0000000000000000"]
    );
    let mut spec = ExecSpec::new(["id", "-u"]);
    spec.user = "4242:4343".into();
    assert_eq!(run(&env.rt, "ex2", spec).await.1, "4242\n");

    // A container whose user is `app`: exec runs as `app` by default.
    let mut cfg = env.config("ex3", &["sleep", "1000"]);
    cfg.user = "app".into();
    env.start(cfg).await;
    assert_eq!(
        run(&env.rt, "ex3", ExecSpec::new(["id", "-u"])).await.1,
        "1000\n"
    );
}

#[tokio::test]
async fn exec_with_a_terminal_in_the_container() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    env.start(env.config("tty", &["sleep", "1000"])).await;
    let mut spec = ExecSpec::new(["sh"]);
    spec.tty = true;
    spec.stdin = true;
    spec.console_size = Some((24, 80));
    let mut h = env.rt.exec("tty", spec).await.expect("exec");
    assert!(h.tty());
    assert!(
        h.take_stderr().is_none(),
        "a terminal has no separate stderr"
    );
    let mut input = h.take_stdin().expect("stdin");
    let mut output = h.take_stdout().expect("terminal");
    let mut seen = String::new();
    async fn until(out: &mut shoal_agent::runtime::ExecStream, seen: &mut String, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 1024];
        while !seen.contains(want) {
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, out.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{want:?} not seen; terminal so far: {seen:?}"))
                .expect("read terminal");
            assert!(n > 0, "terminal closed before {want:?}; so far: {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    input
        .write_all(b"tty; stty size; echo mark-$((6*7))\n")
        .await
        .expect("write");
    until(&mut output, &mut seen, "mark-42").await;
    assert!(seen.contains("/dev/pts/"), "{seen:?}");
    assert!(seen.contains("24 80"), "{seen:?}");
    h.resize(30, 100).expect("resize");
    input
        .write_all(b"stty size; echo mark-$((7*7))\n")
        .await
        .expect("write");
    until(&mut output, &mut seen, "mark-49").await;
    assert!(seen.contains("30 100"), "{seen:?}");
    // The terminal is the container's: its devpts, its /dev/pts/N.
    input
        .write_all(b"ls /dev/pts; exit 3\n")
        .await
        .expect("write");
    let code = tokio::time::timeout(Duration::from_secs(15), h.wait())
        .await
        .expect("exit")
        .expect("wait");
    assert_eq!(code, 3);
    // After the exit the terminal reads as EOF.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), output.read_to_end(&mut rest))
        .await
        .expect("eof")
        .expect("read");
}

#[tokio::test]
async fn exec_stdin_is_piped_and_closes() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    env.start(env.config("in", &["sleep", "1000"])).await;
    let mut spec = ExecSpec::new(["cat"]);
    spec.stdin = true;
    let mut h = env.rt.exec("in", spec).await.expect("exec");
    let mut stdin = h.take_stdin().expect("stdin");
    let data: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let writer = {
        let data = data.clone();
        async move {
            stdin.write_all(&data).await.expect("write");
            stdin.shutdown().await.expect("close");
        }
    };
    let mut out = h.take_stdout().expect("stdout");
    let mut got = Vec::new();
    let (_, r) = tokio::join!(writer, out.read_to_end(&mut got));
    r.expect("read");
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    assert_eq!(h.wait().await.expect("wait"), 0);

    // Without stdin the process reads /dev/null.
    assert_eq!(
        run(&env.rt, "in", ExecSpec::new(["cat"])).await,
        (0, String::new(), String::new())
    );
}

#[tokio::test]
async fn exec_dies_with_the_container_and_needs_it_running() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let pid = env.start(env.config("die", &["sleep", "1000"])).await;
    let mut h = env
        .rt
        .exec("die", ExecSpec::new(["sleep", "1000"]))
        .await
        .expect("exec");
    let exec_pid = h.pid();
    assert!(fs::metadata(format!("/proc/{exec_pid}")).is_ok());
    assert_ne!(exec_pid, pid);
    env.rt.kill("die", Signal::SIGKILL).expect("kill");
    let code = tokio::time::timeout(Duration::from_secs(15), h.wait())
        .await
        .expect("the exec'd process died with the container")
        .expect("wait");
    assert_eq!(code, 137);
    tokio::time::timeout(Duration::from_secs(15), env.rt.wait("die"))
        .await
        .expect("exit")
        .expect("wait");
    let err = env
        .rt
        .exec("die", ExecSpec::new(["true"]))
        .await
        .expect_err("stopped");
    assert!(matches!(err, RuntimeError::NotRunning { .. }), "{err:?}");
    let err = env
        .rt
        .exec("nope", ExecSpec::new(["true"]))
        .await
        .expect_err("missing");
    assert!(matches!(err, RuntimeError::NotFound { .. }), "{err:?}");
}

fn log_len(rt: &Runtime, id: &str) -> usize {
    read_log(&rt.log_path(id), None).expect("log").len()
}

#[tokio::test]
async fn pause_freezes_unpause_thaws_and_stop_or_kill_still_work() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let pid = env
        .start(env.sh("pz", "while true; do echo tick; sleep 0.05; done"))
        .await;
    common::wait_for_line(&env.rt, "pz", "tick").await;
    assert!(!env.rt.state("pz").expect("state").paused);

    env.rt.pause("pz").expect("pause");
    assert!(env.rt.state("pz").expect("state").paused);
    env.rt.pause("pz").expect("pausing twice is fine");
    let (file, want) = match env.rt.cgroup_version() {
        CgroupVersion::V1 => ("freezer.state", "FROZEN"),
        CgroupVersion::V2 => ("cgroup.freeze", "1"),
    };
    let freezer = env.rt.cgroup_dir("pz", "freezer").join(file);
    assert_eq!(fs::read_to_string(&freezer).expect("read").trim(), want);
    // Nothing runs: the counter stands still (once the supervisor logged what was written
    // before the freeze).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = log_len(&env.rt, "pz");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        log_len(&env.rt, "pz"),
        before,
        "the container ran while paused"
    );
    let err = env
        .rt
        .exec("pz", ExecSpec::new(["true"]))
        .await
        .expect_err("paused");
    assert!(matches!(err, RuntimeError::Paused { .. }), "{err:?}");
    // Serialized state carries it; old state JSON without it still decodes.
    let json = serde_json::to_value(env.rt.state("pz").expect("state")).expect("encode");
    assert_eq!(json["paused"], true);

    env.rt.unpause("pz").expect("unpause");
    assert!(!env.rt.state("pz").expect("state").paused);
    env.rt.unpause("pz").expect("unpausing twice is fine");
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_len(&env.rt, "pz") <= before {
        assert!(Instant::now() < deadline, "no tick after unpause");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Stop of a paused container: thawed, signalled, killed after the grace period (sh as
    // PID 1 ignores SIGTERM).
    env.rt.pause("pz").expect("pause");
    tokio::time::timeout(
        Duration::from_secs(20),
        env.rt.stop("pz", Duration::from_millis(500)),
    )
    .await
    .expect("stop of a paused container finished")
    .expect("stop");
    let exit = env.rt.wait("pz").await.expect("wait");
    assert_eq!(exit.code, 137);
    assert!(fs::metadata(format!("/proc/{pid}/status")).is_err() || !common::pid_alive(pid));
    assert!(matches!(
        env.rt.pause("pz"),
        Err(RuntimeError::NotRunning { .. })
    ));

    // SIGKILL of a paused container kills it.
    env.start(env.config("pk", &["sleep", "1000"])).await;
    env.rt.pause("pk").expect("pause");
    env.rt.kill("pk", Signal::SIGKILL).expect("kill");
    let exit = tokio::time::timeout(Duration::from_secs(15), env.rt.wait("pk"))
        .await
        .expect("a killed paused container exits")
        .expect("wait");
    assert_eq!((exit.code, exit.signal), (137, Some(9)));

    // Remove of a paused container works too.
    env.start(env.config("pr", &["sleep", "1000"])).await;
    env.rt.pause("pr").expect("pause");
    tokio::time::timeout(Duration::from_secs(20), env.rt.remove("pr"))
        .await
        .expect("remove of a paused container finished")
        .expect("remove");
}

#[tokio::test]
async fn stats_and_top() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let mut cfg = env.sh(
        "st",
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo ready; exec sleep 1000",
    );
    cfg.limits = Limits {
        memory_bytes: Some(64 << 20),
        nano_cpus: None,
        pids: Some(50),
    };
    let pid = env.start(cfg).await;
    common::wait_for_line(&env.rt, "st", "ready").await;

    let s1 = env.rt.stats("st").expect("stats");
    assert_eq!(s1.memory_limit, Some(64 << 20));
    assert_eq!(s1.pids_limit, Some(50));
    assert_eq!(s1.pids, 1, "{s1:?}");
    assert!(s1.memory_bytes > 0 && s1.memory_bytes < 64 << 20, "{s1:?}");
    assert!(s1.memory_working_set() <= s1.memory_bytes);
    assert!(s1.cpu_usage_ns > 1_000_000, "the loop used CPU: {s1:?}");
    assert!(
        s1.system_cpu_ns > s1.cpu_usage_ns && s1.online_cpus >= 1,
        "{s1:?}"
    );
    assert!(s1.read_at > 0);
    // Only lo in its own network namespace: nothing counted.
    assert_eq!((s1.net_rx_bytes, s1.net_tx_bytes), (0, 0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s2 = env.rt.stats("st").expect("stats");
    assert!(s2.cpu_usage_ns >= s1.cpu_usage_ns && s2.system_cpu_ns > s1.system_cpu_ns);
    let pct = s2.cpu_percent(&s1);
    assert!(
        (0.0..=100.0 * f64::from(s2.online_cpus)).contains(&pct),
        "{pct}"
    );

    let top = env.rt.top("st").expect("top");
    assert_eq!(top.len(), 1, "{top:?}");
    let p = &top[0];
    assert_eq!(
        (
            p.pid,
            p.container_pid,
            p.uid,
            p.user.as_str(),
            p.cmd.as_str()
        ),
        (pid, Some(1), 0, "root", "sleep 1000")
    );
    assert_eq!(p.state, 'S');

    // An exec'd process shows up, as its user, and counts in the stats.
    let mut spec = ExecSpec::new(["sleep", "500"]);
    spec.user = "app".into();
    let mut h = env.rt.exec("st", spec).await.expect("exec");
    let top = env.rt.top("st").expect("top");
    assert_eq!(top.len(), 2, "{top:?}");
    let e = top.iter().find(|p| p.pid == h.pid()).expect("exec in top");
    assert_eq!((e.user.as_str(), e.cmd.as_str()), ("app", "sleep 500"));
    assert!(e.container_pid.is_some_and(|p| p > 1), "{e:?}");
    assert_eq!(env.rt.stats("st").expect("stats").pids, 2);
    h.signal(Signal::SIGKILL).expect("signal");
    assert_eq!(h.wait().await.expect("wait"), 137);
    assert!(matches!(
        h.signal(Signal::SIGKILL),
        Err(RuntimeError::NotRunning { .. })
    ));

    env.rt.kill("st", Signal::SIGKILL).expect("kill");
    env.rt.wait("st").await.expect("wait");
    assert!(matches!(
        env.rt.stats("st"),
        Err(RuntimeError::NotRunning { .. })
    ));
    assert!(matches!(
        env.rt.top("st"),
        Err(RuntimeError::NotRunning { .. })
    ));
}

#[tokio::test]
async fn kill_takes_any_signal_name_or_number() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let rt3 = parse_signal_number("SIGRTMIN+3").expect("rt signal");
    env.start(env.sh(
        "sig",
        &format!(
            "trap 'echo got-usr1' USR1; trap 'echo got-hup' HUP; trap 'echo got-rt' {rt3}; \
             echo ready; while true; do sleep 0.05; done"
        ),
    ))
    .await;
    common::wait_for_line(&env.rt, "sig", "ready").await;
    for (spec, line) in [
        ("usr1", "got-usr1"),
        ("1", "got-hup"),
        ("RTMIN+3", "got-rt"),
    ] {
        let n = parse_signal_number(spec).expect("parse");
        env.rt.kill_signal_number("sig", n).expect("kill");
        common::wait_for_line(&env.rt, "sig", line).await;
    }
    env.rt
        .kill_signal_number("sig", parse_signal_number("SIGKILL").expect("parse"))
        .expect("kill");
    let exit = tokio::time::timeout(Duration::from_secs(15), env.rt.wait("sig"))
        .await
        .expect("exit")
        .expect("wait");
    assert_eq!(exit.code, 137);
    assert!(matches!(
        env.rt.kill_signal_number("sig", 15),
        Err(RuntimeError::NotRunning { .. })
    ));
}

#[tokio::test]
async fn logs_rotate_and_followers_keep_up() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let mut cfg = env.sh(
        "rot",
        "i=1; while [ $i -le 60 ]; do echo line-$i; i=$((i+1)); sleep 0.02; done",
    );
    cfg.logging = LogOptions {
        max_size: Some(600),
        max_files: Some(3),
    };
    let log = env.rt.log_path("rot");
    let mut follower = LogFollower::new(&log, false);
    env.start(cfg).await;
    let mut followed = Vec::new();
    let waiting = env.rt.wait("rot");
    tokio::pin!(waiting);
    let exit = loop {
        tokio::select! {
            r = &mut waiting => break r.expect("wait"),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {
                followed.extend(follower.read_new().expect("follow"));
            }
        }
    };
    followed.extend(follower.read_new().expect("follow"));
    assert_eq!(exit.code, 0);
    let want: Vec<String> = (1..=60).map(|i| format!("line-{i}")).collect();
    let got: Vec<String> = followed.iter().map(|e| e.l.clone()).collect();
    assert_eq!(
        got, want,
        "the follower lost or repeated lines across rotations"
    );
    assert!(followed.iter().all(|e| e.s == LogStream::Stdout));

    // At most three files, none past the limit; what is kept is the newest, in order.
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", log.display()));
    assert!(rotated(1).is_file() && rotated(2).is_file());
    assert!(!rotated(3).exists());
    for p in [log.clone(), rotated(1), rotated(2)] {
        let len = fs::metadata(&p).expect("file").len();
        assert!(len <= 600, "{} is {len} bytes", p.display());
    }
    let kept: Vec<String> = read_log(&log, None)
        .expect("read")
        .into_iter()
        .map(|e| e.l)
        .collect();
    assert!(kept.len() < 60 && kept.len() > 10, "{kept:?}");
    assert_eq!(kept[..], want[60 - kept.len()..]);
    let tail: Vec<String> = read_log(&log, Some(3))
        .expect("tail")
        .into_iter()
        .map(|e| e.l)
        .collect();
    assert_eq!(tail, ["line-58", "line-59", "line-60"]);
}
