//! Integration tests of the container runtime (agent/src/runtime) with the real `shoal` binary
//! as the supervisor helper. Privileged: they need root (namespaces, mounts, cgroups).
//!
//! Each test builds a busybox rootfs from the host's busybox-static in its own tempdir, uses a
//! unique cgroup parent (`shoal-test-<pid>-<n>-<nanos>`), and cleans up everything through a
//! guard, even on panic. Nothing touches any network.

mod common;

use common::rootfs::busybox_layer;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shoal_agent::runtime::{
    read_log, CgroupFs, CgroupVersion, ContainerConfig, ContainerState, ContainerStatus, Limits,
    LogEntry, LogOptions, LogStream, Runtime, RuntimeError, Stage, RELAY_BIN,
};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// One test's world: a rootfs layer, a runtime with its own root and cgroup parent. Dropping it
/// removes every container, the cgroup parent and the tempdir.
struct TestEnv {
    tmp: tempfile::TempDir,
    base: PathBuf,
    parent: String,
    cgroups: CgroupFs,
    rt: Runtime,
}

impl TestEnv {
    fn new() -> TestEnv {
        TestEnv::with_cgroups(CgroupFs::host())
    }

    fn with_cgroups(cgroups: CgroupFs) -> TestEnv {
        // Short paths: overlay options are limited to a page.
        let tmp = tempfile::Builder::new()
            .prefix("shoal-rt")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let base = tmp.path().join("l0");
        busybox_layer(&base);
        let parent = common::unique_name("shoal-test");
        let rt = Runtime::with_cgroups(
            tmp.path().join("c"),
            PathBuf::from(SHOAL),
            parent.clone(),
            cgroups.clone(),
        )
        .expect("runtime");
        TestEnv {
            tmp,
            base,
            parent,
            cgroups,
            rt,
        }
    }

    /// Another runtime over the same state (as a restarted daemon would make).
    fn reopen(&self) -> Runtime {
        Runtime::with_cgroups(
            self.tmp.path().join("c"),
            PathBuf::from(SHOAL),
            self.parent.clone(),
            self.cgroups.clone(),
        )
        .expect("runtime")
    }

    fn config(&self, id: &str, args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            id: id.to_string(),
            name: format!("{id}.1"),
            layers: vec![self.base.clone()],
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: String::new(),
            user: String::new(),
            hostname: String::new(),
            limits: Limits::default(),
            stop_grace: Duration::from_secs(1),
            labels: BTreeMap::from([("test".to_string(), "runtime".to_string())]),
            ..ContainerConfig::default()
        }
    }

    fn sh(&self, id: &str, script: &str) -> ContainerConfig {
        self.config(id, &["sh", "-c", script])
    }

    /// Every cgroup directory a container could have.
    fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        ["memory", "cpu", "cpuacct", "pids"]
            .iter()
            .map(|c| self.rt.cgroup_dir(id, c))
            .collect()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        common::remove_runtime_containers(&self.rt);
    }
}

async fn wait_exit(rt: &Runtime, id: &str) -> shoal_agent::runtime::ExitStatus {
    tokio::time::timeout(Duration::from_secs(30), rt.wait(id))
        .await
        .expect("container did not exit within 30 s")
        .expect("wait")
}

fn lines(entries: &[LogEntry], stream: LogStream) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.s == stream)
        .map(|e| e.l.clone())
        .collect()
}

fn running_pid(state: &ContainerState) -> i32 {
    match state.status {
        ContainerStatus::Running { pid } => pid,
        ref other => panic!("expected running, got {other:?}"),
    }
}

/// Live (non-zombie) processes whose command line mentions `needle`.
fn live_processes_mentioning(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test]
async fn exit_code_and_both_streams_are_logged() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let state = env
        .rt
        .create_and_start(env.sh("logs", "echo hi; echo err >&2; printf partial; exit 3"))
        .await
        .expect("start");
    assert_eq!(state.id, "logs");
    assert_eq!(state.name, "logs.1");
    assert_eq!(
        state.labels.get("test").map(String::as_str),
        Some("runtime")
    );
    assert!(state.supervisor_pid.is_some() && state.pid.is_some() && state.started_at.is_some());

    let exit = wait_exit(&env.rt, "logs").await;
    assert_eq!(exit.code, 3);
    assert_eq!(exit.signal, None);
    assert!(!exit.oom_killed && !exit.lost);

    let log = read_log(&env.rt.log_path("logs"), None).expect("log");
    assert_eq!(lines(&log, LogStream::Stdout), ["hi", "partial"]);
    assert_eq!(lines(&log, LogStream::Stderr), ["err"]);
    assert!(log
        .iter()
        .all(|e| e.t >= state.started_at.unwrap_or(0).saturating_sub(1000)));
    // The raw file is JSON lines in the documented shape.
    let raw = fs::read_to_string(env.rt.log_path("logs")).expect("raw log");
    let first: serde_json::Value =
        serde_json::from_str(raw.lines().next().expect("a line")).expect("json");
    assert_eq!(first["s"], "stdout");
    assert_eq!(first["l"], "hi");
    assert!(first["t"].is_u64());
    assert_eq!(
        read_log(&env.rt.log_path("logs"), Some(1))
            .expect("tail")
            .len(),
        1
    );

    // Recorded on disk; the supervisor removed the cgroup before it exited.
    let st = env.rt.state("logs").expect("state");
    assert_eq!(st.status, ContainerStatus::Exited(exit));
    assert!(env.rt.container_dir("logs").join("exit.json").is_file());
    for dir in env.cgroup_dirs("logs") {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    env.rt.remove("logs").await.expect("remove");
    assert!(!env.rt.container_dir("logs").exists());
    env.rt.remove("logs").await.expect("remove is idempotent");
    assert!(matches!(
        env.rt.state("logs"),
        Err(RuntimeError::NotFound { .. })
    ));
}

#[tokio::test]
async fn namespaces_mounts_hostname_and_loopback() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let mut cfg = env.sh(
        "ns",
        "echo pid=$$; hostname; cat /sys/class/net/lo/flags; \
         for d in null zero full random urandom tty; do test -c /dev/$d || echo missing-$d; done; \
         test -L /dev/ptmx && echo ptmx-link; \
         grep -q '^sysfs /sys sysfs ro' /proc/mounts && echo sys-ro; \
         grep -q ' /dev/pts devpts ' /proc/mounts && echo pts; \
         grep -q ' /dev/shm tmpfs ' /proc/mounts && echo shm; \
         grep -q ' / overlay ' /proc/mounts && echo overlay-root; \
         echo ok > /dev/null && echo devnull-ok; \
         echo ready; exec sleep 1000",
    );
    cfg.hostname = "box-1".into();
    let state = env.rt.create_and_start(cfg).await.expect("start");
    let pid = running_pid(&state);
    let log = common::wait_for_line(&env.rt, "ns", "ready").await;
    let out = lines(&log, LogStream::Stdout);
    for want in [
        "pid=1",
        "box-1",
        "0x9",
        "ptmx-link",
        "sys-ro",
        "pts",
        "shm",
        "overlay-root",
        "devnull-ok",
    ] {
        assert!(
            out.iter().any(|l| l == want),
            "{want:?} missing from {out:?}"
        );
    }
    assert!(!out.iter().any(|l| l.starts_with("missing-")), "{out:?}");

    for ns in ["pid", "net", "mnt", "uts", "ipc"] {
        let host = fs::read_link(format!("/proc/self/ns/{ns}")).expect("host ns");
        let container = fs::read_link(format!("/proc/{pid}/ns/{ns}")).expect("container ns");
        assert_ne!(host, container, "{ns} namespace is shared with the host");
    }
    // The overlay lives only in the container's mount namespace.
    let rootfs = env.rt.container_dir("ns").join("rootfs");
    let host_mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !host_mounts.contains(&*rootfs.to_string_lossy()),
        "the container rootfs shows in the host mount table"
    );
    // The init is in the container's cgroup (joined before exec).
    let procs = fs::read_to_string(env.rt.cgroup_path("ns").join("cgroup.procs")).expect("procs");
    assert!(
        procs.lines().any(|l| l == pid.to_string()),
        "{pid} not in {procs}"
    );
    // The workload inherits only stdio, no blocked or ignored signals (Rust ignores SIGPIPE,
    // the supervisor blocks what it forwards), and its stdin is /dev/null.
    let mut fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"]);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    for key in ["SigBlk:", "SigIgn:"] {
        let line = status.lines().find(|l| l.starts_with(key)).expect(key);
        assert!(line.trim_end().ends_with("0000000000000000"), "{line}");
    }
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/fd/0")).expect("stdin"),
        PathBuf::from("/dev/null")
    );
    // The supervisor is not our child: it was double-forked away from the daemon.
    let sup = state.supervisor_pid.expect("supervisor pid");
    let stat = fs::read_to_string(format!("/proc/{sup}/stat")).expect("supervisor stat");
    let ppid: u32 = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .expect("ppid");
    assert_ne!(ppid, std::process::id());

    env.rt.kill("ns", Signal::SIGKILL).expect("kill");
    let exit = wait_exit(&env.rt, "ns").await;
    assert_eq!((exit.code, exit.signal), (137, Some(9)));
    assert!(!common::pid_alive(pid));
    assert!(matches!(
        env.rt.kill("ns", Signal::SIGKILL),
        Err(RuntimeError::NotRunning { .. })
    ));
}

#[tokio::test]
async fn limits_are_in_the_cgroup_before_exec() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let mut cfg = env.config("lim", &["sleep", "1000"]);
    cfg.limits = Limits {
        memory_bytes: Some(64 << 20),
        nano_cpus: Some(500_000_000),
        pids: Some(20),
    };
    let state = env.rt.create_and_start(cfg).await.expect("start");
    let pid = running_pid(&state);
    let read =
        |p: PathBuf| fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    match env.rt.cgroup_version() {
        CgroupVersion::V1 => {
            let mem = env.rt.cgroup_path("lim");
            assert_eq!(
                read(mem.join("memory.limit_in_bytes")).trim(),
                (64u64 << 20).to_string()
            );
            let cpu = env.rt.cgroup_dir("lim", "cpu");
            assert_eq!(read(cpu.join("cpu.cfs_quota_us")).trim(), "50000");
            assert_eq!(read(cpu.join("cpu.cfs_period_us")).trim(), "100000");
            let pids = env.rt.cgroup_dir("lim", "pids");
            assert_eq!(read(pids.join("pids.max")).trim(), "20");
            for c in ["memory", "cpu", "pids"] {
                let procs = read(env.rt.cgroup_dir("lim", c).join("cgroup.procs"));
                assert!(procs.lines().any(|l| l == pid.to_string()), "{c}: {procs}");
            }
        }
        CgroupVersion::V2 => {
            let dir = env.rt.cgroup_path("lim");
            assert_eq!(
                read(dir.join("memory.max")).trim(),
                (64u64 << 20).to_string()
            );
            assert_eq!(read(dir.join("cpu.max")).trim(), "50000 100000");
            assert_eq!(read(dir.join("pids.max")).trim(), "20");
        }
    }
    // The container's own view of its cgroup membership matches.
    let self_cgroup = read(PathBuf::from(format!("/proc/{pid}/cgroup")));
    assert!(self_cgroup.contains(&env.parent), "{self_cgroup}");

    // Remove kills it and leaves nothing.
    env.rt.remove("lim").await.expect("remove");
    assert!(!common::pid_alive(pid));
    assert!(!env.rt.container_dir("lim").exists());
    for dir in env.cgroup_dirs("lim") {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[tokio::test]
async fn pids_limit_stops_fork_bombs() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let mut cfg = env.sh(
        "pids",
        "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 30 & done; echo spawned; exit 0",
    );
    cfg.limits.pids = Some(5);
    env.rt.create_and_start(cfg).await.expect("start");
    let exit = wait_exit(&env.rt, "pids").await;
    let log = read_log(&env.rt.log_path("pids"), None).expect("log");
    let err = lines(&log, LogStream::Stderr).join("\n");
    assert!(
        err.contains("fork") || err.contains("Resource temporarily unavailable"),
        "expected fork failures on stderr, got {err:?} (exit {exit:?})"
    );
}

#[tokio::test]
async fn memory_limit_oom_kill_is_reported() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    // The shell holds the whole command substitution in memory: far over 16 MiB.
    let mut cfg = env.sh(
        "oom",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}",
    );
    cfg.limits.memory_bytes = Some(16 << 20);
    env.rt.create_and_start(cfg).await.expect("start");
    let exit = wait_exit(&env.rt, "oom").await;
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!((exit.code, exit.signal), (137, Some(9)), "{exit:?}");
}

#[tokio::test]
async fn user_env_and_workdir() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let script = "id -u; id -g; id -G; echo home=$HOME; echo foo=$FOO; pwd; echo path=$PATH";

    let mut cfg = env.sh("u1", script);
    cfg.user = "nobody".into();
    env.rt.create_and_start(cfg).await.expect("start nobody");
    assert_eq!(wait_exit(&env.rt, "u1").await.code, 0);
    let out = lines(
        &read_log(&env.rt.log_path("u1"), None).expect("log"),
        LogStream::Stdout,
    );
    assert_eq!(out[..4], ["65534", "65534", "65534", "home=/nonexistent"]);
    assert_eq!(out[5], "/");
    assert_eq!(
        out[6],
        "path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );

    let mut cfg = env.sh("u2", script);
    cfg.user = "app".into();
    cfg.env = vec!["FOO=bar baz".into(), "PATH=/bin".into()];
    cfg.cwd = "/work/dir".into();
    env.rt.create_and_start(cfg).await.expect("start app");
    assert_eq!(wait_exit(&env.rt, "u2").await.code, 0);
    let out = lines(
        &read_log(&env.rt.log_path("u2"), None).expect("log"),
        LogStream::Stdout,
    );
    assert_eq!(
        out,
        [
            "1000",
            "1000",
            "1000 10",
            "home=/home/app",
            "foo=bar baz",
            "/work/dir",
            "path=/bin"
        ]
    );

    let mut cfg = env.sh("u3", "id -u; id -g; id -G");
    cfg.user = "12345:54321".into();
    env.rt.create_and_start(cfg).await.expect("numeric user");
    assert_eq!(wait_exit(&env.rt, "u3").await.code, 0);
    let out = lines(
        &read_log(&env.rt.log_path("u3"), None).expect("log"),
        LogStream::Stdout,
    );
    assert_eq!(out, ["12345", "54321", "54321"]);
}

#[tokio::test]
async fn layers_stack_and_writes_stay_in_the_container() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let top = env.tmp.path().join("l1");
    fs::create_dir_all(top.join("etc")).expect("mkdir");
    fs::write(top.join("etc/motd"), "from the top layer\n").expect("motd");
    fs::write(top.join("etc/extra"), "extra\n").expect("extra");
    let mut cfg = env.sh(
        "ov",
        "cat /etc/motd; cat /etc/extra; echo new > /tmp/x; echo changed > /etc/motd; rm /bin/vi; echo done",
    );
    cfg.layers.push(top.clone());
    env.rt.create_and_start(cfg).await.expect("start");
    assert_eq!(wait_exit(&env.rt, "ov").await.code, 0);
    let out = lines(
        &read_log(&env.rt.log_path("ov"), None).expect("log"),
        LogStream::Stdout,
    );
    assert_eq!(out, ["from the top layer", "extra", "done"]);
    // The layers are untouched; the writes went to the container's upper dir.
    assert_eq!(
        fs::read_to_string(top.join("etc/motd")).expect("motd"),
        "from the top layer\n"
    );
    assert!(fs::symlink_metadata(env.base.join("bin/vi")).is_ok());
    let upper = env.rt.container_dir("ov").join("upper");
    assert_eq!(
        fs::read_to_string(upper.join("tmp/x")).expect("upper"),
        "new\n"
    );
}

#[tokio::test]
async fn stop_escalates_to_sigkill_and_honours_sigterm_handlers() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    // sleep as PID 1 has no SIGTERM handler: the kernel drops the signal, so SIGKILL it is.
    env.rt
        .create_and_start(env.config("stubborn", &["sleep", "1000"]))
        .await
        .expect("start");
    let t0 = Instant::now();
    env.rt
        .stop("stubborn", Duration::from_millis(300))
        .await
        .expect("stop");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let exit = wait_exit(&env.rt, "stubborn").await;
    assert_eq!((exit.code, exit.signal), (137, Some(9)));
    // Stopping an exited container is fine.
    env.rt
        .stop("stubborn", Duration::from_millis(300))
        .await
        .expect("stop again");

    // A shell with a TERM trap exits cleanly within the grace period.
    env.rt
        .create_and_start(env.sh(
            "polite",
            "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
        ))
        .await
        .expect("start");
    common::wait_for_line(&env.rt, "polite", "ready").await;
    let t0 = Instant::now();
    env.rt
        .stop("polite", Duration::from_secs(20))
        .await
        .expect("stop");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let exit = wait_exit(&env.rt, "polite").await;
    assert_eq!((exit.code, exit.signal), (0, None));
    let out = lines(
        &read_log(&env.rt.log_path("polite"), None).expect("log"),
        LogStream::Stdout,
    );
    assert_eq!(out.last().map(String::as_str), Some("bye"));

    // A SIGTERM to the supervisor is forwarded to the container, whose exit is still recorded.
    let state = env
        .rt
        .create_and_start(env.sh(
            "fwd",
            "trap 'exit 5' TERM; echo ready; while true; do sleep 0.1; done",
        ))
        .await
        .expect("start");
    common::wait_for_line(&env.rt, "fwd", "ready").await;
    let sup = state.supervisor_pid.expect("supervisor");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sup), Signal::SIGTERM).expect("SIGTERM");
    let exit = wait_exit(&env.rt, "fwd").await;
    assert_eq!((exit.code, exit.lost), (5, false));
}

#[tokio::test]
async fn containers_outlive_the_runtime_and_are_adopted() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let first = env.reopen();
    let started = first
        .create_and_start(env.sh(
            "adopt",
            "trap 'exit 7' USR1; echo trapped; while true; do sleep 0.05; done",
        ))
        .await
        .expect("start");
    let pid = running_pid(&started);
    // The start returns once the shell is exec'd, before it has set its trap: a signal sent
    // in between is the shell's business (busybox ash can lose it). Wait for the trap.
    common::wait_for_line(&first, "adopt", "trapped").await;
    drop(first);
    assert!(
        common::pid_alive(pid),
        "the container died with its runtime"
    );

    let second = env.reopen();
    let list = second.list().expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, "adopt");
    assert_eq!(list[0].status, ContainerStatus::Running { pid });
    assert_eq!(list[0].config.args[0], "sh");
    // Signal it through the new runtime, and wait from there: the real exit code comes back.
    second
        .kill("adopt", Signal::SIGUSR1)
        .expect("signal the adopted container");
    let exit = wait_exit(&second, "adopt").await;
    assert_eq!(exit.code, 7);
    assert!(!exit.lost);
    assert_eq!(
        second.state("adopt").expect("state").status,
        ContainerStatus::Exited(exit)
    );
}

/// The executable a process runs (`/proc/PID/exe`).
fn exe_of(pid: i32) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/exe")).expect("read /proc/PID/exe")
}

/// Once the container runs, its supervisor is `shoal-relay` (same pid, exec'd), and logs with
/// rotation, forwarded signals, the exit code and adoption by a new runtime all work through it.
#[tokio::test]
async fn the_supervisor_becomes_the_relay() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let first = env.reopen();
    let mut cfg = env.sh(
        "relay",
        "trap 'echo term; exit 5' TERM; i=0; while [ $i -lt 200 ]; do          echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done; echo err >&2; echo ready;          while true; do sleep 0.05; done",
    );
    cfg.logging = LogOptions {
        max_size: Some(4096),
        max_files: Some(2),
    };
    let started = first.create_and_start(cfg).await.expect("start");
    let sup = started.supervisor_pid.expect("supervisor pid");
    let pid = running_pid(&started);
    common::wait_for_line(&first, "relay", "ready").await;
    let relay = Path::new(SHOAL).with_file_name(RELAY_BIN);
    assert_eq!(exe_of(sup), relay, "the supervisor did not exec the relay");
    // The init is still the relay's child.
    let ppid = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
        });
    assert_eq!(ppid, Some(sup));
    // Rotated at 4 KiB into log.json.1; the live file stays under the limit.
    let log_path = first.log_path("relay");
    let live = fs::metadata(&log_path).expect("log").len();
    assert!(live <= 4096, "log.json is {live} bytes");
    assert!(log_path.with_file_name("log.json.1").is_file());
    let log = read_log(&log_path, None).expect("log");
    assert_eq!(lines(&log, LogStream::Stderr), ["err"]);
    assert!(lines(&log, LogStream::Stdout).contains(&"line-199-xxxxxxxxxxxxxxxxxxxxxxxx".into()));
    drop(first);

    // A new runtime (a restarted daemon) adopts the container: pid and start time still match.
    let second = env.reopen();
    let list = second.list().expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].status, ContainerStatus::Running { pid });
    assert_eq!(list[0].supervisor_pid, Some(sup));
    // SIGTERM to the relay is forwarded to the init.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sup), Signal::SIGTERM)
        .expect("signal the relay");
    let exit = wait_exit(&second, "relay").await;
    assert_eq!((exit.code, exit.signal, exit.lost), (5, None, false));
    let log = read_log(&log_path, None).expect("log");
    assert_eq!(
        lines(&log, LogStream::Stdout).last().map(String::as_str),
        Some("term")
    );
    for dir in env.cgroup_dirs("relay") {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    let sup_log = fs::read_to_string(second.container_dir("relay").join("supervisor.log"))
        .expect("supervisor.log");
    assert!(!sup_log.contains("in-process"), "{sup_log}");
}

/// Without `shoal-relay` beside the binary, the supervisor relays in-process and says so.
#[tokio::test]
async fn without_the_relay_the_supervisor_relays_in_process() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    // A hard link of shoal alone in a directory of its own (same filesystem as target/).
    let bin_dir = tempfile::Builder::new()
        .prefix("no-relay")
        .tempdir_in(Path::new(SHOAL).parent().expect("target dir"))
        .expect("tempdir");
    let helper = bin_dir.path().join("shoal");
    fs::hard_link(SHOAL, &helper).expect("hard link shoal");
    let rt = Runtime::with_cgroups(
        env.tmp.path().join("c"),
        helper.clone(),
        env.parent.clone(),
        env.cgroups.clone(),
    )
    .expect("runtime");
    let started = rt
        .create_and_start(env.sh(
            "inproc",
            "echo hi; echo ready; while true; do sleep 0.05; done",
        ))
        .await
        .expect("start");
    let sup = started.supervisor_pid.expect("supervisor pid");
    common::wait_for_line(&rt, "inproc", "ready").await;
    assert_eq!(exe_of(sup), helper);
    rt.kill("inproc", Signal::SIGKILL).expect("kill");
    let exit = wait_exit(&rt, "inproc").await;
    assert_eq!((exit.code, exit.lost), (137, false));
    let log = read_log(&rt.log_path("inproc"), None).expect("log");
    assert_eq!(lines(&log, LogStream::Stdout), ["hi", "ready"]);
    let sup_log = fs::read_to_string(rt.container_dir("inproc").join("supervisor.log"))
        .expect("supervisor.log");
    assert_eq!(
        sup_log.matches("relaying in-process").count(),
        1,
        "{sup_log}"
    );
}

#[tokio::test]
async fn a_vanished_supervisor_is_reported_as_lost() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let state = env
        .rt
        .create_and_start(env.config("lost", &["sleep", "1000"]))
        .await
        .expect("start");
    let pid = running_pid(&state);
    let sup = state.supervisor_pid.expect("supervisor");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sup), Signal::SIGKILL)
        .expect("kill supervisor");
    let exit = wait_exit(&env.rt, "lost").await;
    assert!(exit.lost, "{exit:?}");
    assert_eq!(exit.code, 255);
    // The init had the supervisor as its parent-death signal source.
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::pid_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !common::pid_alive(pid),
        "the container outlived its supervisor"
    );
    env.rt.remove("lost").await.expect("remove");
    for dir in env.cgroup_dirs("lost") {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[tokio::test]
async fn bad_inputs_fail_clearly_and_leave_nothing() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let assert_clean = |id: &str| {
        assert!(
            !env.rt.container_dir(id).exists(),
            "state dir of {id} left behind"
        );
        for dir in env.cgroup_dirs(id) {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
        let dir = env.rt.container_dir(id);
        let procs = live_processes_mentioning(&dir.to_string_lossy());
        assert!(procs.is_empty(), "processes of {id} left behind: {procs:?}");
    };

    // argv[0] not in the image.
    let err = env
        .rt
        .create_and_start(env.config("nocmd", &["no-such-cmd", "x"]))
        .await
        .expect_err("missing command");
    let msg = err.to_string();
    assert!(
        msg.contains("exec \"no-such-cmd\": no such file in the image's PATH"),
        "{msg}"
    );
    assert!(
        matches!(
            err,
            RuntimeError::StartFailed {
                stage: Stage::Exec,
                ..
            }
        ),
        "{err:?}"
    );
    assert_clean("nocmd");

    // An absolute path that does not exist.
    let err = env
        .rt
        .create_and_start(env.config("noabs", &["/opt/app/run"]))
        .await
        .expect_err("missing binary");
    assert!(
        err.to_string().contains("\"/opt/app/run\": no such file"),
        "{err}"
    );
    assert_clean("noabs");

    // An unknown user.
    let mut cfg = env.config("nouser", &["true"]);
    cfg.user = "ghost".into();
    let err = env
        .rt
        .create_and_start(cfg)
        .await
        .expect_err("unknown user");
    assert!(
        matches!(
            err,
            RuntimeError::StartFailed {
                stage: Stage::User,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("unknown user \"ghost\""), "{err}");
    assert_clean("nouser");

    // An unknown group.
    let mut cfg = env.config("nogroup", &["true"]);
    cfg.user = "app:ghosts".into();
    let err = env
        .rt
        .create_and_start(cfg)
        .await
        .expect_err("unknown group");
    assert!(
        err.to_string().contains("unknown group \"ghosts\""),
        "{err}"
    );
    assert_clean("nogroup");

    // A layer that does not exist, an empty command, a bad id: refused before anything runs.
    let mut cfg = env.config("nolayer", &["true"]);
    cfg.layers.push(env.tmp.path().join("missing"));
    let err = env
        .rt
        .create_and_start(cfg)
        .await
        .expect_err("missing layer");
    assert!(matches!(err, RuntimeError::InvalidConfig { .. }), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert_clean("nolayer");
    let err = env
        .rt
        .create_and_start(env.config("noargs", &[]))
        .await
        .expect_err("no args");
    assert!(err.to_string().contains("no command"), "{err}");
    assert_clean("noargs");
    let err = env
        .rt
        .create_and_start(env.config("../evil", &["true"]))
        .await
        .expect_err("bad id");
    assert!(matches!(err, RuntimeError::InvalidConfig { .. }), "{err:?}");

    // The same id twice: the second start is refused, the first keeps running.
    let state = env
        .rt
        .create_and_start(env.config("twice", &["sleep", "1000"]))
        .await
        .expect("first");
    let err = env
        .rt
        .create_and_start(env.config("twice", &["sleep", "1000"]))
        .await
        .expect_err("duplicate");
    assert!(matches!(err, RuntimeError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(env.rt.state("twice").expect("state").status, state.status);
    env.rt.remove("twice").await.expect("remove");
    assert_clean("twice");

    // A helper that is not the shoal binary: a clear error, nothing left.
    let wrong = Runtime::new(
        env.tmp.path().join("c"),
        PathBuf::from("/bin/true"),
        env.parent.clone(),
    )
    .expect("runtime");
    let err = wrong
        .create_and_start(env.config("nohelper", &["true"]))
        .await
        .expect_err("wrong helper");
    assert!(matches!(err, RuntimeError::Supervisor { .. }), "{err:?}");
    assert!(
        err.to_string().contains("without reporting the start"),
        "{err}"
    );
    assert_clean("nohelper");

    // Nothing of the failures shows in the listing.
    assert!(env.rt.list().expect("list").is_empty());
}

/// Kills a child process (the helper "daemon") when dropped, so a failing test leaves none.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Not a test of its own: the "daemon" of `containers_survive_kill_9_of_the_daemon`, run in a
/// child process (this test binary re-executed) that the test kills with SIGKILL. Without its
/// environment variables it does nothing.
#[tokio::test]
async fn helper_daemon_process() {
    let (Ok(root), Ok(parent), Ok(layer)) = (
        std::env::var("SHOAL_RT_HELPER_ROOT"),
        std::env::var("SHOAL_RT_HELPER_CGROUP_PARENT"),
        std::env::var("SHOAL_RT_HELPER_LAYER"),
    ) else {
        return;
    };
    let rt = Runtime::new(PathBuf::from(root), PathBuf::from(SHOAL), parent).expect("runtime");
    let cfg = ContainerConfig {
        id: "survivor".into(),
        name: "survivor".into(),
        layers: vec![PathBuf::from(layer)],
        args: [
            "sh",
            "-c",
            "trap 'exit 9' USR1; while true; do sleep 0.05; done",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        env: vec![],
        cwd: String::new(),
        user: String::new(),
        hostname: String::new(),
        limits: Limits {
            pids: Some(50),
            ..Limits::default()
        },
        stop_grace: Duration::from_secs(1),
        labels: BTreeMap::new(),
        ..ContainerConfig::default()
    };
    let state = rt.create_and_start(cfg).await.expect("start");
    println!("STARTED {}", state.pid.unwrap_or(0));
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test]
async fn containers_survive_kill_9_of_the_daemon() {
    if !common::require_root() {
        return;
    }
    use std::io::BufRead;
    let env = TestEnv::new();
    let exe = std::env::current_exe().expect("test binary");
    let mut daemon = KillOnDrop(
        Command::new(exe)
            .args([
                "helper_daemon_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SHOAL_RT_HELPER_ROOT", env.tmp.path().join("c"))
            .env("SHOAL_RT_HELPER_CGROUP_PARENT", &env.parent)
            .env("SHOAL_RT_HELPER_LAYER", &env.base)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the helper daemon"),
    );
    let stdout = daemon.0.stdout.take().expect("stdout");
    let pid: i32 = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest prints "test helper_daemon_process ... " before it on the same line.
        .find_map(|l| {
            l.split("STARTED ")
                .nth(1)
                .and_then(|p| p.trim().parse().ok())
        })
        .expect("the helper daemon did not start its container");
    assert!(pid > 0);

    // kill -9 the daemon: the container lives on.
    daemon.0.kill().expect("SIGKILL the daemon");
    daemon.0.wait().expect("reap the daemon");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(common::pid_alive(pid), "the container died with its daemon");

    // A new daemon adopts it and gets its real exit code.
    let rt = env.reopen();
    let list = rt.list().expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].status, ContainerStatus::Running { pid });
    rt.kill("survivor", Signal::SIGUSR1).expect("signal");
    let exit = wait_exit(&rt, "survivor").await;
    assert_eq!((exit.code, exit.lost), (9, false));
}

/// cgroup v2 against the real kernel: on a hybrid host (this machine kind) the `unified` tree
/// has no controllers, so a container runs there without limits, and a limit is refused with
/// a clear error. (On a pure v2 host every other test already runs on v2.)
#[tokio::test]
async fn cgroup_v2_on_the_unified_tree() {
    if !common::require_root() {
        return;
    }
    let unified = Path::new("/sys/fs/cgroup/unified");
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        || !unified.join("cgroup.procs").exists()
    {
        eprintln!("skipping: not a hybrid cgroup host (the other tests cover this host's version)");
        return;
    }
    let env = TestEnv::with_cgroups(CgroupFs::new(unified.to_path_buf(), CgroupVersion::V2));
    assert_eq!(env.rt.cgroup_version(), CgroupVersion::V2);
    let state = env
        .rt
        .create_and_start(env.config("v2", &["sleep", "1000"]))
        .await
        .expect("start on v2");
    let pid = running_pid(&state);
    let dir = env.rt.cgroup_path("v2");
    assert_eq!(dir, unified.join(&env.parent).join("v2"));
    let procs = fs::read_to_string(dir.join("cgroup.procs")).expect("procs");
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    assert!(
        own.lines().any(|l| l == format!("0::/{}/v2", env.parent)),
        "{own}"
    );
    env.rt
        .stop("v2", Duration::from_millis(100))
        .await
        .expect("stop");
    assert_eq!(wait_exit(&env.rt, "v2").await.code, 137);
    assert!(!dir.exists(), "the supervisor left its v2 cgroup");

    let available = fs::read_to_string(unified.join("cgroup.controllers")).unwrap_or_default();
    if !available.split_whitespace().any(|c| c == "memory") {
        let mut cfg = env.config("v2mem", &["true"]);
        cfg.limits.memory_bytes = Some(64 << 20);
        let err = env
            .rt
            .create_and_start(cfg)
            .await
            .expect_err("no memory controller");
        assert!(
            matches!(
                err,
                RuntimeError::StartFailed {
                    stage: Stage::Cgroup,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("v2") && msg.contains("\"memory\""), "{msg}");
        assert!(!env.rt.container_dir("v2mem").exists());
        assert!(!env.rt.cgroup_path("v2mem").exists());
    }
}
