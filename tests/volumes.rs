//! Bind mounts, volumes, managed /etc files and `init: true` of the container runtime, with
//! the real `shoal` binary as the supervisor helper. Privileged: they need root.
//!
//! Each test has its own tempdir (busybox rootfs, runtime root, volume store, host dirs to
//! bind) and cgroup parent; a guard removes every container, the cgroup parent and the
//! tempdir, also on panic. The mounts live only in the containers' mount namespaces.

mod common;

use common::rootfs::busybox_layer;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_agent::runtime::{
    read_log, ContainerConfig, EtcFiles, ExitStatus, HostEntry, LogStream, Mount, MountKind,
    Runtime, RuntimeError, Stage,
};
use shoal_agent::volume::{VolumeError, VolumeStore};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

struct TestEnv {
    tmp: tempfile::TempDir,
    base: PathBuf,
    rt: Runtime,
}

impl TestEnv {
    fn new() -> TestEnv {
        let tmp = tempfile::Builder::new()
            .prefix("shoal-vol")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let base = tmp.path().join("l0");
        busybox_layer(&base);
        let parent = common::unique_name("shoal-voltest");
        let rt = Runtime::new(tmp.path().join("c"), PathBuf::from(SHOAL), parent).expect("runtime");
        TestEnv { tmp, base, rt }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn sh(&self, id: &str, script: &str) -> ContainerConfig {
        ContainerConfig {
            id: id.to_string(),
            name: format!("{id}.1"),
            layers: vec![self.base.clone()],
            args: vec!["sh".into(), "-c".into(), script.into()],
            stop_grace: Duration::from_secs(1),
            labels: BTreeMap::new(),
            ..ContainerConfig::default()
        }
    }

    async fn run(&self, cfg: ContainerConfig) -> (ExitStatus, Vec<String>) {
        let id = cfg.id.clone();
        self.rt.create_and_start(cfg).await.expect("start");
        let exit = tokio::time::timeout(Duration::from_secs(30), self.rt.wait(&id))
            .await
            .expect("exit within 30 s")
            .expect("wait");
        (exit, self.stdout(&id))
    }

    fn stdout(&self, id: &str) -> Vec<String> {
        read_log(&self.rt.log_path(id), None)
            .expect("log")
            .into_iter()
            .filter(|e| e.s == LogStream::Stdout)
            .map(|e| e.l)
            .collect()
    }

    async fn wait_for_line(&self, id: &str, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.stdout(id).iter().any(|l| l == line) {
            assert!(
                Instant::now() < deadline,
                "no line {line:?} within 15 s: {:?}",
                self.stdout(id)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        common::remove_runtime_containers(&self.rt);
    }
}

fn bind(source: &Path, target: &str, read_only: bool) -> Mount {
    Mount {
        kind: MountKind::Bind,
        source: source.to_path_buf(),
        target: target.into(),
        read_only,
        propagation: None,
        copy_up: false,
        create_host_path: false,
    }
}

fn volume(source: &Path, target: &str) -> Mount {
    Mount {
        kind: MountKind::Volume,
        copy_up: true,
        ..bind(source, target, false)
    }
}

#[tokio::test]
async fn bind_mounts_read_write_and_read_only() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let rw = env.path("rw");
    let ro = env.path("ro");
    fs::create_dir_all(&rw).expect("mkdir");
    fs::create_dir_all(&ro).expect("mkdir");
    fs::write(rw.join("in"), "from host rw\n").expect("write");
    fs::write(ro.join("in"), "from host ro\n").expect("write");
    let file = env.path("single.conf");
    fs::write(&file, "one file\n").expect("write");
    let made = env.path("made/by/runtime");

    let mut cfg = env.sh(
        "binds",
        "cat /data/in; echo written > /data/out; cat /deep/er/ro/in; \
         if echo x > /deep/er/ro/x 2>/dev/null; then echo ro-writable; else echo ro-refused; fi; \
         grep -q ' /deep/er/ro ro,' /proc/self/mountinfo && echo ro-flag; \
         cat /etc/app.conf; test -d /made && echo made-ok; \
         grep ' /shared ' /proc/self/mountinfo | grep -q 'shared:' && echo shared-ok; \
         grep ' /data ' /proc/self/mountinfo | grep -qE 'shared:|master:' || echo private-ok; \
         echo done",
    );
    cfg.read_only = true;
    cfg.mounts = vec![
        bind(&rw, "/data", false),
        bind(&ro, "/deep/er/ro/", true),
        bind(&file, "/etc/app.conf", true),
        Mount {
            create_host_path: true,
            ..bind(&made, "/made", false)
        },
        Mount {
            propagation: Some("rshared".into()),
            ..bind(&ro, "/shared", true)
        },
    ];
    let (exit, out) = env.run(cfg).await;
    assert_eq!(exit.code, 0, "{out:?}");
    assert_eq!(
        out,
        [
            "from host rw",
            "from host ro",
            "ro-refused",
            "ro-flag",
            "one file",
            "made-ok",
            "shared-ok",
            "private-ok",
            "done"
        ]
    );
    assert_eq!(
        fs::read_to_string(rw.join("out")).expect("out"),
        "written\n"
    );
    assert!(!ro.join("x").exists());
    assert!(made.is_dir(), "create_host_path made the host dir");
    // The mounts were only in the container's mount namespace.
    let host = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!host.contains(&*rw.to_string_lossy()));

    // A read-only bind over all of /etc: the managed files stay out of it.
    let etc = env.path("etc");
    fs::create_dir_all(&etc).expect("mkdir");
    fs::write(etc.join("marker"), "host etc\n").expect("write");
    let mut cfg = env.sh(
        "etcbind",
        "cat /etc/marker; test -e /etc/hosts || echo no-hosts",
    );
    cfg.mounts = vec![bind(&etc, "/etc", true)];
    let (exit, out) = env.run(cfg).await;
    assert_eq!(exit.code, 0, "{out:?}");
    assert_eq!(out, ["host etc", "no-hosts"]);
    assert_eq!(
        fs::read_dir(&etc).expect("ls").count(),
        1,
        "nothing made in the bind"
    );
}

#[tokio::test]
async fn mount_targets_never_leave_the_rootfs() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    // The image has /escape -> an absolute host path that does not exist yet.
    let outside = env.path("outside");
    symlink(&outside, env.base.join("escape")).expect("symlink");
    let src = env.path("src");
    fs::create_dir_all(&src).expect("mkdir");
    let mut cfg = env.sh("escape", "test -d /escape/sub && echo inside; echo done");
    cfg.mounts = vec![bind(&src, "/escape/sub", false)];
    let (exit, out) = env.run(cfg).await;
    assert_eq!(exit.code, 0, "{out:?}");
    assert_eq!(out, ["inside", "done"]);
    assert!(
        !outside.exists(),
        "the mount point was created outside the rootfs"
    );
    // It was resolved inside the rootfs: the container's upper dir has it.
    let upper = env.rt.container_dir("escape").join("upper");
    let rel = outside.strip_prefix("/").expect("absolute");
    assert!(upper.join(rel).join("sub").is_dir());
}

#[tokio::test]
async fn volumes_persist_copy_up_and_track_users() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    // Image content at /srv: owned by app (1000), odd modes, a symlink, a hard link.
    let srv = env.base.join("srv");
    fs::create_dir_all(srv.join("sub")).expect("mkdir");
    fs::write(srv.join("conf"), "image conf\n").expect("write");
    fs::set_permissions(srv.join("conf"), fs::Permissions::from_mode(0o640)).expect("chmod");
    fs::hard_link(srv.join("conf"), srv.join("conf.link")).expect("link");
    symlink("../etc/motd", srv.join("motd")).expect("symlink");
    fs::write(srv.join("sub/f"), "nested\n").expect("write");
    std::os::unix::fs::chown(srv.join("conf"), Some(1000), Some(1000)).expect("chown");
    std::os::unix::fs::chown(&srv, Some(1000), Some(1000)).expect("chown");
    fs::set_permissions(&srv, fs::Permissions::from_mode(0o750)).expect("chmod");

    let store = VolumeStore::open(env.path("volumes")).expect("store");
    let vol = store.create("appdata", BTreeMap::new()).expect("create");
    store.acquire("appdata", "writer").expect("acquire");

    let mut cfg = env.sh(
        "writer",
        "cat /srv/conf; cat /srv/sub/f; readlink /srv/motd; echo fresh > /srv/new; echo done",
    );
    cfg.mounts = vec![volume(&vol.mountpoint, "/srv")];
    let (exit, out) = env.run(cfg).await;
    assert_eq!(exit.code, 0, "{out:?}");
    assert_eq!(out, ["image conf", "nested", "../etc/motd", "done"]);

    // Copied up with owner, modes, symlink and hard link kept.
    let data = &vol.mountpoint;
    let root_meta = fs::metadata(data).expect("stat");
    assert_eq!((root_meta.uid(), root_meta.mode() & 0o7777), (1000, 0o750));
    let conf = fs::metadata(data.join("conf")).expect("conf");
    assert_eq!(
        (conf.uid(), conf.gid(), conf.mode() & 0o7777),
        (1000, 1000, 0o640)
    );
    assert_eq!(
        conf.ino(),
        fs::metadata(data.join("conf.link")).expect("link").ino(),
        "hard link kept"
    );
    assert_eq!(
        fs::read_link(data.join("motd")).expect("symlink"),
        PathBuf::from("../etc/motd")
    );
    assert_eq!(
        fs::read_to_string(data.join("new")).expect("new"),
        "fresh\n"
    );

    // The next container sees the data; the volume is not empty, so nothing is copied again.
    fs::write(srv.join("later"), "later\n").expect("write");
    store.acquire("appdata", "reader").expect("acquire");
    let mut cfg = env.sh(
        "reader",
        "cat /srv/new; test -e /srv/later || echo no-recopy; echo done",
    );
    cfg.mounts = vec![volume(&vol.mountpoint, "/srv")];
    let (exit, out) = env.run(cfg).await;
    assert_eq!(exit.code, 0, "{out:?}");
    assert_eq!(out, ["fresh", "no-recopy", "done"]);

    // In use: refused; prune keeps it; once released, prune removes it.
    store.create("unused", BTreeMap::new()).expect("create");
    let err = store.remove("appdata", false).expect_err("in use");
    assert!(matches!(err, VolumeError::InUse { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "volume appdata is in use by container reader"
    );
    assert_eq!(store.prune().expect("prune"), ["unused"]);
    for id in ["writer", "reader"] {
        env.rt.remove(id).await.expect("remove");
        store.release(id).expect("release");
    }
    assert_eq!(store.prune().expect("prune"), ["appdata"]);
    assert!(!data.exists());
}

#[tokio::test]
async fn managed_etc_files_and_live_update() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let mut cfg = env.sh(
        "etc",
        "cat /etc/hostname; grep web-1 /etc/hosts; grep extra /etc/hosts; \
         cat /etc/resolv.conf; grep -q ' /etc/hosts ' /proc/self/mountinfo && echo hosts-mounted; \
         echo ready; while ! grep -q newname /etc/hosts; do sleep 0.05; done; \
         grep newname /etc/hosts; grep nameserver /etc/resolv.conf; echo done",
    );
    cfg.hostname = "web-1".into();
    cfg.read_only = true;
    cfg.etc = EtcFiles {
        hosts: vec![
            HostEntry::new("10.9.0.5", &["web-1", "web"]),
            HostEntry::new("10.9.0.99", &["extra.example"]),
        ],
        dns_servers: vec!["10.9.0.2".into()],
        dns_search: vec!["svc.local".into()],
        dns_options: vec!["ndots:0".into()],
    };
    env.rt.create_and_start(cfg).await.expect("start");
    env.wait_for_line("etc", "ready").await;
    assert_eq!(
        env.stdout("etc"),
        [
            "web-1",
            "10.9.0.5\tweb-1 web",
            "10.9.0.99\textra.example",
            "nameserver 10.9.0.2",
            "search svc.local",
            "options ndots:0",
            "hosts-mounted",
            "ready"
        ]
    );
    let hosts_path = env.rt.container_dir("etc").join("hosts");
    let ino = fs::metadata(&hosts_path).expect("hosts").ino();
    env.rt
        .update_etc(
            "etc",
            EtcFiles {
                hosts: vec![HostEntry::new("10.9.0.7", &["newname"])],
                dns_servers: vec!["10.9.0.3".into()],
                ..EtcFiles::default()
            },
        )
        .expect("update");
    assert_eq!(fs::metadata(&hosts_path).expect("hosts").ino(), ino);
    let exit = tokio::time::timeout(Duration::from_secs(15), env.rt.wait("etc"))
        .await
        .expect("exit")
        .expect("wait");
    let out = env.stdout("etc");
    assert_eq!(exit.code, 0, "{out:?}");
    assert_eq!(
        &out[out.len() - 3..],
        ["10.9.0.7\tnewname", "nameserver 10.9.0.3", "done"]
    );
    assert_eq!(
        env.rt.state("etc").expect("state").config.etc.dns_servers,
        ["10.9.0.3"]
    );

    // manage_etc off leaves the image's files alone.
    let mut cfg = env.sh("noetc", "cat /etc/hosts | head -1; cat /etc/hostname");
    cfg.manage_etc = false;
    fs::write(env.base.join("etc/hostname"), "image-hostname\n").expect("write");
    let (exit, out) = env.run(cfg).await;
    assert_eq!(exit.code, 0, "{out:?}");
    assert_eq!(
        out,
        ["image-hostname"],
        "cat /etc/hosts fails: none in image"
    );
}

#[tokio::test]
async fn bad_mounts_fail_clearly_and_leave_nothing() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    let src = env.path("src");
    fs::create_dir_all(&src).expect("mkdir");
    let file = env.path("file");
    fs::write(&file, "x").expect("write");
    let cases: Vec<(Vec<Mount>, &str)> = vec![
        (vec![bind(&src, "relative", false)], "not an absolute path"),
        (vec![bind(&src, "/a/../b", false)], "not an absolute path"),
        (vec![bind(&src, "/", false)], "cannot replace the root"),
        (
            vec![bind(&src, "/x", false), bind(&src, "/x/", true)],
            "duplicate mount point",
        ),
        (
            vec![bind(Path::new("rel/src"), "/x", false)],
            "not an absolute host path",
        ),
        (
            vec![bind(&env.path("missing"), "/x", false)],
            "bind source path does not exist",
        ),
        (
            vec![Mount {
                propagation: Some("sideways".into()),
                ..bind(&src, "/x", false)
            }],
            "unknown mount propagation",
        ),
        (
            vec![Mount {
                copy_up: true,
                ..bind(&src, "/x", false)
            }],
            "only volumes",
        ),
    ];
    for (mounts, want) in cases {
        let mut cfg = env.sh("bad", "true");
        cfg.mounts = mounts;
        let err = env.rt.create_and_start(cfg).await.expect_err(want);
        assert!(matches!(err, RuntimeError::InvalidConfig { .. }), "{err:?}");
        assert!(err.to_string().contains(want), "{err} should say {want:?}");
        assert!(!env.rt.container_dir("bad").exists());
    }
    // Found only at start: a file bind onto a directory of the image.
    let mut cfg = env.sh("bad", "true");
    cfg.mounts = vec![bind(&file, "/etc", false)];
    let err = env.rt.create_and_start(cfg).await.expect_err("file on dir");
    assert!(
        err.to_string().contains("cannot mount a file on /etc"),
        "{err}"
    );
    assert!(!env.rt.container_dir("bad").exists());
}

#[tokio::test]
async fn init_reaps_zombies_and_forwards_stop() {
    if !common::require_root() {
        return;
    }
    let env = TestEnv::new();
    // The subshell exits at once: its `sleep` is orphaned to PID 1, which must reap it.
    let mut cfg = env.sh(
        "reaper",
        "echo pid=$$; cat /proc/1/cmdline; echo; (sleep 0.2 &); sleep 1; \
         for f in /proc/[0-9]*/stat; do read -r l < $f 2>/dev/null && echo \"$l\"; done \
         | grep -c ') Z ' ; exit 3",
    );
    cfg.init = true;
    let (exit, out) = env.run(cfg).await;
    assert_eq!(exit.code, 3, "the workload's exit code is the container's");
    let out: Vec<String> = out
        .into_iter()
        .map(|l| l.trim_end_matches('\0').to_string())
        .collect();
    assert_eq!(out, ["pid=2", "shoal-init", "0"], "no zombie left");

    // Without a handler, sleep as PID 1 would ignore SIGTERM; under the init it is PID 2 and
    // dies of it, within the grace period.
    let mut cfg = env.sh("stopme", "echo ready; exec sleep 1000");
    cfg.init = true;
    env.rt.create_and_start(cfg).await.expect("start");
    env.wait_for_line("stopme", "ready").await;
    let t0 = Instant::now();
    env.rt
        .stop("stopme", Duration::from_secs(20))
        .await
        .expect("stop");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let exit = env.rt.wait("stopme").await.expect("wait");
    assert_eq!((exit.code, exit.signal), (143, None), "128 + SIGTERM");

    // A workload that cannot be exec'd is still a clear start error, and nothing is left.
    let mut cfg = env.sh("noexec", "true");
    cfg.args = vec!["/no/such/binary".into()];
    cfg.init = true;
    let err = env.rt.create_and_start(cfg).await.expect_err("no binary");
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
    assert!(!env.rt.container_dir("noexec").exists());
}
