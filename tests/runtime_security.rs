//! The hardening of the container runtime (agent/src/runtime/security.rs), tested from inside
//! real containers: capability sets, no_new_privs and seccomp as `/proc/self/status` shows them,
//! escape probes that must fail in a default container, masked and read-only paths, the device
//! cgroup, and the run options (read-only root, tmpfs, shm, sysctls, ulimits, groups,
//! domainname, oom_score_adj, stop signal, network modes). Privileged: they need root.
//!
//! Syscalls busybox cannot make are probed by a tiny C program, compiled with `gcc -static`
//! (packages `gcc` and `libc6-dev`) into the test's rootfs. Without gcc those probes are skipped
//! with a note, except under `CI=true`, where a missing gcc is a failure.
//!
//! Every test uses its own tempdir and cgroup parent and cleans up through a guard, even on
//! panic. Nothing touches any network: the only network namespaces are the containers' own.

mod common;

use common::rootfs::busybox_layer;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_agent::runtime::{
    read_log, CgroupFs, CgroupVersion, ContainerConfig, ContainerStatus, LogStream, NetworkMode,
    Runtime, RuntimeError, TmpfsMount, Ulimit,
};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// Docker's default capability set as a mask (CapBnd of `docker run busybox`).
const DOCKER_DEFAULT_CAPS: u64 = 0xa8_0425fb;
const CAP_NET_RAW: u64 = 1 << 13;
const CAP_SYS_PTRACE: u64 = 1 << 19;
const CAP_NET_BIND_SERVICE: u64 = 1 << 10;
const EPERM: i32 = 1;
const ENOSYS: i32 = 38;

/// The syscall probe: one argument per probe, prints `name=<errno>` (0 = it succeeded). Every
/// call is harmless even when allowed (NULL pointers, invalid flags or magic numbers).
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>

static void *thread_main(void *arg) { return arg; }

static long probe(const char *n) {
    if (!strcmp(n, "unshare_user")) return syscall(SYS_unshare, CLONE_NEWUSER);
    if (!strcmp(n, "unshare_net")) return syscall(SYS_unshare, CLONE_NEWNET);
    if (!strcmp(n, "clone_newuser") || !strcmp(n, "clone_plain")) {
        long flags = SIGCHLD | (!strcmp(n, "clone_newuser") ? CLONE_NEWUSER : 0);
        long r = syscall(SYS_clone, flags, 0, 0, 0, 0);
        if (r == 0) _exit(0);
        if (r > 0) { waitpid(r, 0, 0); return 0; }
        return r;
    }
    if (!strcmp(n, "clone3")) return syscall(SYS_clone3, 0, 0);
    if (!strcmp(n, "setns")) return syscall(SYS_setns, -1, 0);
    if (!strcmp(n, "mount")) return syscall(SYS_mount, "none", "/mnt", "tmpfs", 0, 0);
    if (!strcmp(n, "umount2")) return syscall(SYS_umount2, "/nonexistent", 0);
    if (!strcmp(n, "pivot_root")) return syscall(SYS_pivot_root, 0, 0);
    if (!strcmp(n, "init_module")) return syscall(SYS_init_module, 0, 0, "");
    if (!strcmp(n, "finit_module")) return syscall(SYS_finit_module, -1, "", 0);
    if (!strcmp(n, "delete_module")) return syscall(SYS_delete_module, "shoal_no_such_mod", O_NONBLOCK);
    if (!strcmp(n, "kexec_load")) return syscall(SYS_kexec_load, 0, 0, 0, 0xdead0000UL);
    if (!strcmp(n, "kexec_file_load")) return syscall(SYS_kexec_file_load, -1, -1, 0, 0, 0xdead0000UL);
    if (!strcmp(n, "reboot")) return syscall(SYS_reboot, 0, 0, 0, 0);
    if (!strcmp(n, "swapon")) return syscall(SYS_swapon, 0, 0);
    if (!strcmp(n, "swapoff")) return syscall(SYS_swapoff, 0);
    if (!strcmp(n, "clock_settime")) return syscall(SYS_clock_settime, CLOCK_REALTIME, 0);
    if (!strcmp(n, "clock_adjtime")) return syscall(SYS_clock_adjtime, CLOCK_REALTIME, 0);
    if (!strcmp(n, "settimeofday")) return syscall(SYS_settimeofday, 0, 0);
    if (!strcmp(n, "adjtimex")) return syscall(SYS_adjtimex, 0);
    if (!strcmp(n, "keyctl")) return syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3, 0);
    if (!strcmp(n, "add_key")) return syscall(SYS_add_key, 0, 0, 0, 0, 0);
    if (!strcmp(n, "request_key")) return syscall(SYS_request_key, 0, 0, 0, 0);
    if (!strcmp(n, "bpf")) return syscall(SYS_bpf, 5 /* PROG_LOAD */, 0, 0);
    if (!strcmp(n, "perf_event_open")) return syscall(SYS_perf_event_open, 0, 0, -1, -1, 0);
    if (!strcmp(n, "userfaultfd")) return syscall(SYS_userfaultfd, 0xffff);
    if (!strcmp(n, "open_by_handle_at")) return syscall(SYS_open_by_handle_at, -1, 0, 0);
    if (!strcmp(n, "ptrace")) return syscall(SYS_ptrace, 0 /* TRACEME */, 0, 0, 0);
    if (!strcmp(n, "process_vm_readv")) return syscall(SYS_process_vm_readv, getpid(), 0, 0, 0, 0, 0);
    if (!strcmp(n, "personality")) {
        long r = syscall(SYS_personality, 0x0400000 /* READ_IMPLIES_EXEC */);
        if (r >= 0) syscall(SYS_personality, 0);
        return r;
    }
    if (!strcmp(n, "personality_query")) return syscall(SYS_personality, 0xffffffffUL);
    if (!strcmp(n, "acct")) return syscall(SYS_acct, (char *)1);
    if (!strcmp(n, "quotactl")) return syscall(SYS_quotactl, 0, 0, 0, 0);
    if (!strcmp(n, "syslog")) return syscall(SYS_syslog, 10 /* SIZE_BUFFER */, 0, 0);
    if (!strcmp(n, "iopl")) return syscall(SYS_iopl, 0);
    if (!strcmp(n, "ioperm")) return syscall(SYS_ioperm, 0, 0, 0);
    if (!strcmp(n, "io_uring_setup")) return syscall(SYS_io_uring_setup, 0, 0);
    if (!strcmp(n, "fsopen")) return syscall(SYS_fsopen, 0, 0);
    if (!strcmp(n, "open_tree")) return syscall(SYS_open_tree, -1, 0, 0);
    if (!strcmp(n, "getpid")) return syscall(SYS_getpid);
    if (!strcmp(n, "thread")) {
        /* glibc tries clone3 first and falls back to clone on ENOSYS. */
        pthread_t t;
        int e = pthread_create(&t, 0, thread_main, 0);
        if (e) { errno = e; return -1; }
        pthread_join(t, 0);
        return 0;
    }
    errno = EINVAL;
    return -1;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        errno = 0;
        long r = probe(argv[i]);
        printf("%s=%d\n", argv[i], r < 0 ? errno : 0);
    }
    return 0;
}
"#;

// A note on mknod: as in Docker, creating a device node is allowed by the device cgroup
// (`b *:* m`); opening it is not. The escape test therefore reads the node it made.

/// The probes a default container must refuse with EPERM (clone3: ENOSYS).
const MUST_BE_EPERM: &[&str] = &[
    "unshare_user",
    "unshare_net",
    "clone_newuser",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "clock_settime",
    "clock_adjtime",
    "settimeofday",
    "adjtimex",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "open_by_handle_at",
    "ptrace",
    "process_vm_readv",
    "personality",
    "acct",
    "quotactl",
    "syslog",
    "iopl",
    "ioperm",
    "io_uring_setup",
    "fsopen",
    "open_tree",
];

/// Compiles the probe into `<layer>/bin/probe`. Returns false (skip) when gcc is missing outside
/// CI; under CI=true a missing gcc fails the test.
fn build_probe(layer: &Path) -> bool {
    let src = layer.join("probe.c");
    fs::write(&src, PROBE_C).expect("write probe.c");
    let out = Command::new("gcc")
        .args(["-static", "-O1", "-pthread", "-o"])
        .arg(layer.join("bin/probe"))
        .arg(&src)
        .output();
    let _ = fs::remove_file(&src);
    match out {
        Ok(o) if o.status.success() => true,
        result => {
            let why = match result {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("gcc -static failed (install gcc and libc6-dev): {why}");
            }
            eprintln!("skipping the syscall probes: gcc -static failed: {why}");
            false
        }
    }
}

/// One test's world; dropping it removes every container, the cgroup parent and the tempdir.
struct TestEnv {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    rt: Runtime,
    probe: bool,
}

impl TestEnv {
    fn new(with_probe: bool) -> TestEnv {
        TestEnv::with_cgroups(CgroupFs::host(), with_probe)
    }

    fn with_cgroups(cgroups: CgroupFs, with_probe: bool) -> TestEnv {
        let tmp = tempfile::Builder::new()
            .prefix("shoal-sec")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let base = tmp.path().join("l0");
        busybox_layer(&base);
        let probe = with_probe && build_probe(&base);
        let parent = common::unique_name("shoal-test-sec");
        let rt = Runtime::with_cgroups(tmp.path().join("c"), PathBuf::from(SHOAL), parent, cgroups)
            .expect("runtime");
        TestEnv {
            _tmp: tmp,
            base,
            rt,
            probe,
        }
    }

    fn sh(&self, id: &str, script: &str) -> ContainerConfig {
        ContainerConfig {
            id: id.to_string(),
            name: format!("{id}.1"),
            layers: vec![self.base.clone()],
            args: ["sh", "-c", script].iter().map(|s| s.to_string()).collect(),
            stop_grace: Duration::from_secs(1),
            ..ContainerConfig::default()
        }
    }

    /// Runs the config to completion: (exit code, stdout lines, stderr lines).
    async fn run(&self, cfg: ContainerConfig) -> (i32, Vec<String>, Vec<String>) {
        let id = cfg.id.clone();
        self.rt.create_and_start(cfg).await.expect("start");
        let exit = tokio::time::timeout(Duration::from_secs(30), self.rt.wait(&id))
            .await
            .expect("container did not exit within 30 s")
            .expect("wait");
        let log = read_log(&self.rt.log_path(&id), None).expect("read log");
        let pick = |s: LogStream| {
            log.iter()
                .filter(|e| e.s == s)
                .map(|e| e.l.clone())
                .collect::<Vec<_>>()
        };
        (exit.code, pick(LogStream::Stdout), pick(LogStream::Stderr))
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        common::remove_runtime_containers(&self.rt);
    }
}

/// `Key:\tvalue` fields of a /proc/<pid>/status dump.
fn status_fields(lines: &[String]) -> BTreeMap<String, String> {
    lines
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn hex_field(fields: &BTreeMap<String, String>, key: &str) -> u64 {
    let v = fields
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing from {fields:?}"));
    u64::from_str_radix(v, 16).unwrap_or_else(|_| panic!("{key}: {v}"))
}

fn host_bounding_set() -> u64 {
    let text = fs::read_to_string("/proc/self/status").expect("status");
    let lines: Vec<String> = text.lines().map(String::from).collect();
    hex_field(&status_fields(&lines), "CapBnd")
}

/// A block device the host really has (major, minor), to try through a fresh node.
fn host_block_device() -> (String, String) {
    let block = fs::read_dir("/sys/dev/block")
        .expect("/sys/dev/block")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .unwrap_or_else(|| "7:0".into());
    let (major, minor) = block.split_once(':').expect("major:minor");
    (major.to_string(), minor.to_string())
}

/// `name=errno` lines of the probe → map.
fn probe_results(lines: &[String]) -> BTreeMap<String, i32> {
    lines
        .iter()
        .filter_map(|l| l.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

#[tokio::test]
async fn default_sets_match_docker_with_no_new_privs_and_seccomp() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new(false);
    let want = DOCKER_DEFAULT_CAPS & host_bounding_set();

    let (code, out, err) = env.run(env.sh("root", "cat /proc/self/status")).await;
    assert_eq!(code, 0, "{err:?}");
    let f = status_fields(&out);
    assert_eq!(hex_field(&f, "CapBnd"), want, "{f:?}");
    assert_eq!(hex_field(&f, "CapEff"), want);
    assert_eq!(hex_field(&f, "CapPrm"), want);
    assert_eq!(hex_field(&f, "CapInh"), 0);
    assert_eq!(hex_field(&f, "CapAmb"), 0);
    assert_eq!(f["NoNewPrivs"], "1");
    assert_eq!(f["Seccomp"], "2");
    assert_eq!(f["Seccomp_filters"], "2");

    // A non-root user: the bounding set only, as Docker does.
    let mut cfg = env.sh("app", "cat /proc/self/status");
    cfg.user = "app".into();
    cfg.cap_add = vec!["NET_BIND_SERVICE".into()];
    let (code, out, err) = env.run(cfg).await;
    assert_eq!(code, 0, "{err:?}");
    let f = status_fields(&out);
    assert_eq!(f["Uid"].split_whitespace().next(), Some("1000"));
    assert_eq!(hex_field(&f, "CapBnd"), want);
    for key in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(hex_field(&f, key), 0, "{key}");
    }
    assert_eq!(f["NoNewPrivs"], "1");
    assert_eq!(f["Seccomp"], "2");
}

#[tokio::test]
async fn cap_add_drop_privileged_and_opt_outs() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new(false);
    let host = host_bounding_set();
    let status = |id: &str| env.sh(id, "cat /proc/self/status");

    let mut cfg = status("tweak");
    cfg.cap_add = vec!["sys_ptrace".into()];
    cfg.cap_drop = vec!["CAP_NET_RAW".into()];
    let (_, out, _) = env.run(cfg).await;
    let f = status_fields(&out);
    let want = ((DOCKER_DEFAULT_CAPS & !CAP_NET_RAW) | CAP_SYS_PTRACE) & host;
    assert_eq!(hex_field(&f, "CapBnd"), want);
    assert_eq!(hex_field(&f, "CapEff"), want);

    let mut cfg = status("dropall");
    cfg.cap_drop = vec!["ALL".into()];
    cfg.cap_add = vec!["net_bind_service".into()];
    let (_, out, _) = env.run(cfg).await;
    let f = status_fields(&out);
    assert_eq!(hex_field(&f, "CapBnd"), CAP_NET_BIND_SERVICE);
    assert_eq!(hex_field(&f, "CapEff"), CAP_NET_BIND_SERVICE);

    // Privileged: every capability the agent has, no filter, nothing masked, /sys writable.
    let mut cfg = env.sh(
        "priv",
        "cat /proc/self/status; grep -q '^sysfs /sys sysfs rw' /proc/mounts && echo sys-rw; \
         grep -q ' /proc/kcore ' /proc/mounts || echo kcore-unmasked",
    );
    cfg.privileged = true;
    let (code, out, err) = env.run(cfg).await;
    assert_eq!(code, 0, "{err:?}");
    let f = status_fields(&out);
    assert_eq!(hex_field(&f, "CapBnd"), host);
    assert_eq!(hex_field(&f, "CapEff"), host);
    assert_eq!(f["Seccomp"], "0");
    assert!(out.contains(&"sys-rw".to_string()), "{out:?}");
    assert!(out.contains(&"kcore-unmasked".to_string()), "{out:?}");

    let mut cfg = status("unconfined");
    cfg.seccomp_unconfined = true;
    let (_, out, _) = env.run(cfg).await;
    let f = status_fields(&out);
    assert_eq!(f["Seccomp"], "0");
    assert_eq!(f["NoNewPrivs"], "1");
    assert_eq!(hex_field(&f, "CapBnd"), DOCKER_DEFAULT_CAPS & host);

    // no_new_privs off: the filter is still installed (before the user switch).
    let mut cfg = status("nnp-off");
    cfg.allow_new_privileges = true;
    cfg.user = "app".into();
    let (code, out, err) = env.run(cfg).await;
    assert_eq!(code, 0, "{err:?}");
    let f = status_fields(&out);
    assert_eq!(f["NoNewPrivs"], "0");
    assert_eq!(f["Seccomp"], "2");
    assert_eq!(hex_field(&f, "CapEff"), 0);
}

#[tokio::test]
async fn unknown_capability_fails_before_anything_is_created() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new(false);
    let mut cfg = env.sh("badcap", "true");
    cfg.cap_add = vec!["NET_ADMIN".into(), "CAP_FLY".into()];
    let err = env.rt.create_and_start(cfg).await.expect_err("bad cap");
    assert!(
        matches!(&err, RuntimeError::InvalidConfig { reason, .. } if reason.contains("unknown capability \"CAP_FLY\"")),
        "{err}"
    );
    assert!(!env.rt.container_dir("badcap").exists());
    assert!(!env.rt.cgroup_dir("badcap", "memory").exists());

    let mut cfg = env.sh("badsysctl", "true");
    cfg.sysctls.insert("kernel.hostname".into(), "x".into());
    let err = env.rt.create_and_start(cfg).await.expect_err("bad sysctl");
    assert!(err.to_string().contains("namespaced"), "{err}");
    assert!(!env.rt.container_dir("badsysctl").exists());
}

#[tokio::test]
async fn escape_probes_fail_in_a_default_container() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new(true);
    let (major, minor) = host_block_device();
    let script = format!(
        "try() {{ name=$1; shift; if \"$@\" >/dev/null 2>&1; then echo \"$name:ESCAPED\"; else echo \"$name:blocked\"; fi; }}
         try mount mount -t tmpfs x /mnt
         try sysrq sh -c 'echo h > /proc/sysrq-trigger'
         try insmod insmod /bin/busybox
         try unshare-user unshare -U true
         try unshare-net unshare -n true
         if date -s \"$(date '+%Y-%m-%d %H:%M:%S')\" 2>&1 | grep -q 'not permitted'; then echo date-set:blocked; else echo date-set:ESCAPED; fi
         try hwclock-set hwclock -w
         if ! mknod /tmp/blk b {major} {minor} 2>/dev/null; then echo read-block:blocked
         elif head -c 1 /tmp/blk 2>&1 >/dev/null | grep -q 'not permitted'; then echo read-block:blocked
         else echo read-block:ESCAPED; fi
         try read-kmem head -c 1 /dev/kmem
         try write-sys sh -c 'echo 1 > /sys/kernel/profiling'
         try write-proc-sys sh -c 'echo 1 > /proc/sys/kernel/ns_last_pid'
         echo pids=$(ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' ')
         echo init=$(tr '\\0' ' ' < /proc/1/cmdline)
         echo root-motd=$(cat /proc/1/root/etc/motd)
         echo kcore=$(wc -c < /proc/kcore)
         echo keys=$(wc -c < /proc/keys)
         echo timer_list=$(wc -c < /proc/timer_list)
         echo acpi=$(ls /proc/acpi | wc -l)
         echo firmware=$(ls /sys/firmware | wc -l)
         grep -E ' /proc/(sys|sysrq-trigger|bus|fs|irq) ' /proc/mounts | cut -d' ' -f2,4
         test -x /bin/probe && /bin/probe {probes} clone3 clone_plain personality_query getpid thread
         echo done"
    ,
        probes = MUST_BE_EPERM.join(" ")
    );
    let (code, out, err) = env.run(env.sh("probe", &script)).await;
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
    assert_eq!(out.last().map(String::as_str), Some("done"), "{out:?}");
    for l in &out {
        assert!(!l.ends_with(":ESCAPED"), "{l} — full output {out:?}");
    }
    let blocked: Vec<&str> = out
        .iter()
        .filter_map(|l| l.strip_suffix(":blocked"))
        .collect();
    for want in [
        "mount",
        "sysrq",
        "insmod",
        "unshare-user",
        "unshare-net",
        "date-set",
        "read-block",
        "write-sys",
        "write-proc-sys",
    ] {
        assert!(blocked.contains(&want), "{want} not probed: {out:?}");
    }
    // The container's pid namespace: its init is the shell, and no host pid shows.
    let pids = out
        .iter()
        .find_map(|l| l.strip_prefix("pids="))
        .expect("pids");
    let visible: Vec<u32> = pids
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    let host_count = fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count();
    // Only the script's own processes (the shell and its pipeline), numbered from 1.
    assert!(
        visible.contains(&1) && visible.len() < 10 && visible.iter().all(|&p| p < 100),
        "host processes are visible in the container: {pids} (the host has {host_count})"
    );
    let init = out
        .iter()
        .find_map(|l| l.strip_prefix("init="))
        .expect("init");
    assert!(init.starts_with("sh -c"), "{init}");
    assert!(
        out.contains(&"root-motd=from the image".to_string()),
        "{out:?}"
    );
    // Masked paths are empty.
    for (want, path) in [
        ("kcore=0", "/proc/kcore"),
        ("keys=0", "/proc/keys"),
        ("timer_list=0", "/proc/timer_list"),
        ("acpi=0", "/proc/acpi"),
        ("firmware=0", "/sys/firmware"),
    ] {
        // Only what this kernel has can be masked.
        if Path::new(path).exists() {
            assert!(out.contains(&want.to_string()), "{want} missing: {out:?}");
        }
    }
    // Read-only paths are read-only mounts.
    for p in [
        "/proc/sys",
        "/proc/sysrq-trigger",
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
    ] {
        if !Path::new(p).exists() {
            continue;
        }
        let line = out
            .iter()
            .find(|l| l.split_whitespace().next() == Some(p))
            .unwrap_or_else(|| panic!("{p} is not a mount: {out:?}"));
        assert!(line.contains(" ro,"), "{line}");
    }

    if env.probe {
        let r = probe_results(&out);
        for name in MUST_BE_EPERM {
            assert_eq!(r.get(*name), Some(&EPERM), "{name}: {r:?}");
        }
        assert_eq!(r.get("clone3"), Some(&ENOSYS), "{r:?}");
        for ok in ["clone_plain", "personality_query", "getpid", "thread"] {
            assert_eq!(r.get(ok), Some(&0), "{ok} should work: {r:?}");
        }
    }
}

#[tokio::test]
async fn seccomp_is_what_blocks_unprivileged_syscalls() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new(true);
    if !env.probe {
        return;
    }
    // Calls the kernel allows without privileges: EPERM under the filter, the kernel's own
    // answer (EFAULT, EBADF, EINVAL or success) without it.
    let probes = [
        "clone3",
        "setns",
        "clock_settime",
        "adjtimex",
        "add_key",
        "keyctl",
        "personality",
        "ptrace",
        "unshare_user",
    ];
    let run = |id: &str, unconfined: bool| {
        let mut cfg = env.sh(id, &format!("/bin/probe {}", probes.join(" ")));
        cfg.seccomp_unconfined = unconfined;
        cfg
    };
    let (_, out, _) = env.run(run("filtered", false)).await;
    let filtered = probe_results(&out);
    let (_, out, _) = env.run(run("unconfined", true)).await;
    let open = probe_results(&out);
    for p in probes {
        let want = if p == "clone3" { ENOSYS } else { EPERM };
        assert_eq!(filtered.get(p), Some(&want), "{p}: {filtered:?}");
        let got = open.get(p).copied().expect(p);
        assert!(
            got != EPERM && got != ENOSYS,
            "{p} without the filter: errno {got}"
        );
    }

    // A capability lifts its syscalls, as in Docker: SYS_PTRACE allows ptrace.
    let mut cfg = env.sh("ptrace", "/bin/probe ptrace keyctl");
    cfg.cap_add = vec!["SYS_PTRACE".into()];
    let (_, out, _) = env.run(cfg).await;
    let r = probe_results(&out);
    assert_eq!(r.get("ptrace"), Some(&0), "{r:?}");
    assert_eq!(r.get("keyctl"), Some(&EPERM), "{r:?}");
}

#[tokio::test]
async fn device_cgroup_allow_list_on_v1() {
    if !common::require_root() {
        return;
    }
    let host = CgroupFs::host();
    if host.version() != CgroupVersion::V1 || !Path::new("/sys/fs/cgroup/devices").is_dir() {
        eprintln!("skipping: no cgroup v1 devices hierarchy on this host");
        return;
    }
    let env = TestEnv::new(false);
    let cfg = env.sh("dev", "echo ready; exec sleep 1000");
    let state = env.rt.create_and_start(cfg).await.expect("start");
    assert!(matches!(state.status, ContainerStatus::Running { .. }));
    let list = fs::read_to_string(env.rt.cgroup_dir("dev", "devices").join("devices.list"))
        .expect("devices.list");
    let mut got: Vec<&str> = list.lines().collect();
    got.sort_unstable();
    let mut want = vec![
        "c *:* m",
        "b *:* m",
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 1:7 rwm",
        "c 1:8 rwm",
        "c 1:9 rwm",
        "c 5:0 rwm",
        "c 5:1 rwm",
        "c 5:2 rwm",
        "c 136:* rwm",
        "c 10:200 rwm",
    ];
    want.sort_unstable();
    assert_eq!(got, want);

    let mut cfg = env.sh("devpriv", "echo ready; exec sleep 1000");
    cfg.privileged = true;
    env.rt
        .create_and_start(cfg)
        .await
        .expect("start privileged");
    let list = fs::read_to_string(env.rt.cgroup_dir("devpriv", "devices").join("devices.list"))
        .expect("devices.list");
    assert_eq!(list.trim(), "a *:* rwm");
}

#[tokio::test]
async fn run_options_work_like_docker() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new(false);
    let script = "touch /rootfile 2>/dev/null && echo root-rw || echo root-ro
        touch /run/x && echo run-rw
        stat -c '%a' /run
        grep ' /run tmpfs ' /proc/mounts | cut -d' ' -f4
        grep ' /dev/shm tmpfs ' /proc/mounts | cut -d' ' -f4
        echo shmmax=$(cat /proc/sys/kernel/shmmax)
        echo port_start=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)
        echo nofile=$(ulimit -n)
        echo groups=$(id -G)
        echo domain=$(cat /proc/sys/kernel/domainname)
        echo oom=$(cat /proc/self/oom_score_adj)";
    let mut cfg = env.sh("opts", script);
    cfg.read_only = true;
    cfg.tmpfs = vec![TmpfsMount {
        path: "/run".into(),
        size: Some(4 << 20),
        mode: Some(0o750),
    }];
    cfg.shm_size = Some(8 << 20);
    cfg.sysctls = BTreeMap::from([
        ("kernel.shmmax".to_string(), "123456789".to_string()),
        (
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "80".to_string(),
        ),
    ]);
    cfg.ulimits = vec![Ulimit {
        name: "nofile".into(),
        soft: 100,
        hard: 200,
    }];
    cfg.group_add = vec!["audio".into(), "4242".into()];
    cfg.domainname = "example.org".into();
    cfg.oom_score_adj = Some(500);
    let (code, out, err) = env.run(cfg).await;
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
    for want in [
        "root-ro",
        "run-rw",
        "750",
        "shmmax=123456789",
        "port_start=80",
        "nofile=100",
        "groups=0 29 4242",
        "domain=example.org",
        "oom=500",
    ] {
        assert!(out.contains(&want.to_string()), "{want} missing: {out:?}");
    }
    assert!(
        out.iter()
            .any(|l| l.starts_with("rw,nosuid,nodev,noexec") && l.contains("size=4096k")),
        "{out:?}"
    );
    assert!(
        out.iter().any(|l| l.contains("size=8192k")),
        "/dev/shm size: {out:?}"
    );
}

#[tokio::test]
async fn stop_signal_and_network_modes() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new(false);
    // Stop signal: the trap only answers SIGQUIT.
    let mut cfg = env.sh(
        "quit",
        "trap 'exit 7' QUIT; echo ready; while true; do sleep 0.05; done",
    );
    cfg.stop_signal = "SIGQUIT".into();
    env.rt.create_and_start(cfg).await.expect("start");
    wait_for(&env.rt, "quit", "ready").await;
    env.rt
        .stop("quit", Duration::from_secs(10))
        .await
        .expect("stop");
    let exit = env.rt.wait("quit").await.expect("wait");
    assert_eq!(exit.code, 7, "{exit:?}");

    // A container in a network namespace of its own, another joining it, one on the host.
    let a = env
        .rt
        .create_and_start(env.sh("net-a", "echo ready; exec sleep 1000"))
        .await
        .expect("start a");
    let ContainerStatus::Running { pid } = a.status else {
        panic!("a is not running: {a:?}");
    };
    let ns_a = fs::read_link(format!("/proc/{pid}/ns/net")).expect("ns a");
    let mut cfg = env.sh(
        "net-b",
        "readlink /proc/self/ns/net; cat /sys/class/net/lo/operstate; ls /sys/class/net",
    );
    cfg.network = NetworkMode::Join(PathBuf::from(format!("/proc/{pid}/ns/net")));
    let (code, out, err) = env.run(cfg).await;
    assert_eq!(code, 0, "{err:?}");
    assert_eq!(
        out.first().map(PathBuf::from),
        Some(ns_a.clone()),
        "{out:?}"
    );
    assert_eq!(
        out.get(1).map(String::as_str),
        Some("unknown"),
        "lo is up: {out:?}"
    );
    assert_eq!(&out[2..], ["lo"]);

    let mut cfg = env.sh("net-host", "readlink /proc/self/ns/net");
    cfg.network = NetworkMode::Host;
    let (code, out, err) = env.run(cfg).await;
    assert_eq!(code, 0, "{err:?}");
    let host_ns = fs::read_link("/proc/self/ns/net").expect("host ns");
    assert_eq!(out.first().map(PathBuf::from), Some(host_ns), "{out:?}");

    // A network namespace that does not exist: a clear error at the network stage.
    let mut cfg = env.sh("net-missing", "true");
    cfg.network = NetworkMode::Join(PathBuf::from("/nonexistent/netns"));
    let err = env
        .rt
        .create_and_start(cfg)
        .await
        .expect_err("missing netns");
    assert!(
        matches!(&err, RuntimeError::StartFailed { stage, .. } if stage.to_string() == "network"),
        "{err}"
    );
    assert!(!env.rt.container_dir("net-missing").exists());
}

#[tokio::test]
async fn cgroup_v2_device_program_allows_only_the_default_devices() {
    if !common::require_root() {
        return;
    }
    let unified = Path::new("/sys/fs/cgroup/unified");
    let v2 = if CgroupFs::host().version() == CgroupVersion::V2 {
        CgroupFs::host()
    } else if unified.join("cgroup.controllers").is_file() {
        CgroupFs::new(unified.to_path_buf(), CgroupVersion::V2)
    } else {
        eprintln!("skipping: no cgroup v2 tree");
        return;
    };
    let env = TestEnv::with_cgroups(v2, false);
    let (major, minor) = host_block_device();
    let script = format!(
        "echo x > /dev/null && echo devnull-ok
         mknod /tmp/null c 1 3 && echo x > /tmp/null && echo mknod-null-ok
         mknod /tmp/p p && echo fifo-ok
         mknod /tmp/blk b {major} {minor} && echo mknod-block-ok
         head -c 1 /tmp/blk 2>&1 >/dev/null | grep -q 'not permitted' && echo block-denied
         mknod /tmp/mem c 1 1 && head -c 1 /tmp/mem 2>&1 >/dev/null | grep -q 'not permitted' && echo mem-denied
         true"
    );
    let (code, out, err) = env.run(env.sh("v2", &script)).await;
    assert_eq!(code, 0, "{err:?}");
    for want in [
        "devnull-ok",
        "mknod-null-ok",
        "fifo-ok",
        "mknod-block-ok",
        "block-denied",
        "mem-denied",
    ] {
        assert!(
            out.contains(&want.to_string()),
            "{want} missing: {out:?} {err:?}"
        );
    }
    let log =
        fs::read_to_string(env.rt.container_dir("v2").join("supervisor.log")).unwrap_or_default();
    assert!(!log.contains("no device cgroup"), "{log}");
}

async fn wait_for(rt: &Runtime, id: &str, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let entries = read_log(&rt.log_path(id), None).expect("read log");
        if entries.iter().any(|e| e.l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no {line:?} in {entries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
