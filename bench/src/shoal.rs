//! shoal's side: a private `shoal daemon` (own data dir, socket, port and cgroup parent), driven
//! through the `shoal` CLI, and removed with everything it made when [`Shoal`] is dropped.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::scenario::Cluster;
use crate::util::{poll, poll_during_cleanup, run, stop_child, succeeds, tail};

pub struct Shoal {
    bin: PathBuf,
    dir: PathBuf,
    socket: PathBuf,
    cgroup_parent: String,
    daemon: Child,
    /// Set when something failed: the daemon log is then kept (copied out) for the report.
    pub failed: bool,
}

impl Shoal {
    /// Starts the daemon and makes the busybox image. Everything lives under a fresh temp dir
    /// named after `tag`; the containers' cgroups under `shoal-bench-{tag}`.
    pub fn start(bin: &Path, tag: &str) -> Result<Shoal> {
        Shoal::start_with(bin, tag, &[])
    }

    /// [`Shoal::start`] with more daemon flags (e.g. a network prefix and nft table of its
    /// own, so that it never meets another daemon's networks).
    pub fn start_with(bin: &Path, tag: &str, extra: &[String]) -> Result<Shoal> {
        let dir = std::env::temp_dir().join(format!("shoal-bench-{tag}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("s.sock");
        let cgroup_parent = format!("shoal-bench-{tag}");
        let log = File::create(dir.join("daemon.log")).context("creating the daemon log")?;
        let mut cmd = Command::new(bin);
        cmd.arg("daemon")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--socket")
            .arg(&socket)
            .args([
                "--listen-addr",
                "127.0.0.1:0",
                "--cgroup-parent",
                &cgroup_parent,
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let daemon = cmd
            .spawn()
            .with_context(|| format!("could not start `{} daemon`", bin.display()))?;
        // From here on the guard owns the daemon, so an error below still cleans up.
        let mut shoal = Shoal {
            bin: bin.to_owned(),
            dir,
            socket,
            cgroup_parent,
            daemon,
            failed: true,
        };
        shoal.wait_ready()?;
        run(shoal.cli().args(["image", "bootstrap", "busybox"])).context(
            "making the busybox image (needs busybox-static: apt-get install -y busybox-static)",
        )?;
        shoal.failed = false;
        Ok(shoal)
    }

    /// `shoal --host <this daemon's socket>`, ready for more arguments.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--host").arg(&self.socket);
        cmd
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    fn containers_dir(&self) -> PathBuf {
        self.dir.join("data").join("containers")
    }

    pub fn version(&self) -> String {
        run(Command::new(&self.bin).arg("version"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let log = self.log_path();
        let exited = std::cell::Cell::new(None);
        let ready = poll(
            "the shoal daemon to answer `shoal info`",
            Duration::from_secs(30),
            || {
                if let Some(status) = self.daemon.try_wait()? {
                    exited.set(Some(status));
                    return Ok(Some(false));
                }
                Ok(succeeds(self.cli().arg("info")).then_some(true))
            },
            || format!("the daemon log ends:\n{}", tail(&log, 20)),
        )?;
        if !ready {
            bail!(
                "the shoal daemon exited at start ({}); its log ends:\n{}",
                exited.get().map(|s| s.to_string()).unwrap_or_default(),
                tail(&log, 20)
            );
        }
        Ok(())
    }

    /// Number of container state dirs the agent still has (0 when the dir does not exist).
    pub fn containers_left(&self) -> usize {
        std::fs::read_dir(self.containers_dir()).map_or(0, |d| d.count())
    }

    fn wait_no_containers(&self, timeout: Duration, cleanup: bool) -> Result<()> {
        let what = "the agent's containers/ dir to be empty";
        let check = || Ok((self.containers_left() == 0).then_some(()));
        let describe = || {
            format!(
                "{} containers left in {}",
                self.containers_left(),
                self.containers_dir().display()
            )
        };
        if cleanup {
            poll_during_cleanup(what, timeout, check, describe)
        } else {
            poll(what, timeout, check, describe)
        }
    }

    /// The cgroup dirs of our cgroup parent: one per v1 hierarchy, or the one v2 dir.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let root = Path::new("/sys/fs/cgroup");
        let mut dirs = vec![root.join(&self.cgroup_parent)];
        if let Ok(entries) = std::fs::read_dir(root) {
            dirs.extend(
                entries
                    .flatten()
                    .map(|e| e.path().join(&self.cgroup_parent)),
            );
        }
        dirs.retain(|d| d.is_dir());
        dirs
    }

    /// Last resort when containers outlived the daemon: SIGKILL the processes in our own cgroup
    /// parent (all of them were started by the daemon this bench started).
    fn kill_leftover_processes(&self) {
        let mut pids = Vec::new();
        for dir in self.cgroup_dirs() {
            collect_procs(&dir, &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            // SAFETY: kill(2) on a PID read from our private cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    fn cleanup(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if matches!(self.daemon.try_wait(), Ok(None)) {
            // Remove every service while the daemon still runs, so it stops its containers.
            if let Ok(ids) = run(self.cli().args(["service", "ls", "-q"])) {
                for id in ids.split_whitespace() {
                    if let Err(e) = run(self.cli().args(["service", "rm", id])) {
                        problems.push(format!("{e:#}"));
                    }
                }
            }
            if let Err(e) = self.wait_no_containers(Duration::from_secs(60), true) {
                problems.push(format!("{e:#}"));
            }
            stop_child(&mut self.daemon, Duration::from_secs(20));
        } else {
            let _ = self.daemon.wait();
        }
        if self.containers_left() > 0 {
            self.kill_leftover_processes();
        }
        // The node's ready network namespaces (and their veths) outlive the daemon: they are
        // mounts under its data dir, kept for its next start.
        if let Ok(entries) = std::fs::read_dir(self.dir.join("data/run/netns")) {
            for entry in entries.flatten() {
                if let Err(e) = shoal_agent::network::delete_netns_file(&entry.path()) {
                    problems.push(format!(
                        "could not remove network namespace {}: {e}",
                        entry.path().display()
                    ));
                }
            }
        }
        for dir in self.cgroup_dirs() {
            if let Err(e) = remove_cgroup(&dir) {
                problems.push(format!("could not remove cgroup {}: {e}", dir.display()));
            }
        }
        if self.failed || !problems.is_empty() {
            let kept = std::env::temp_dir().join(format!("{}-daemon.log", self.cgroup_parent));
            if std::fs::copy(self.log_path(), &kept).is_ok() {
                eprintln!(
                    "shoal-bench: the shoal daemon's log is kept at {}",
                    kept.display()
                );
            }
        }
        if self.containers_left() == 0 {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                problems.push(format!("could not remove {}: {e}", self.dir.display()));
            }
        } else {
            problems.push(format!(
                "containers remain; left {} in place for inspection",
                self.dir.display()
            ));
        }
        problems
    }
}

impl Drop for Shoal {
    fn drop(&mut self) {
        for problem in self.cleanup() {
            eprintln!("shoal-bench: cleanup: {problem}");
        }
    }
}

impl Cluster for Shoal {
    fn create(&mut self, name: &str, replicas: u64) -> Result<()> {
        run(self
            .cli()
            .args(["service", "create", "-d", "--name", name, "--replicas"])
            .arg(replicas.to_string())
            .args(["--stop-grace-period", "1s", "busybox", "sleep", "100000"]))?;
        Ok(())
    }

    fn scale(&mut self, name: &str, replicas: u64) -> Result<()> {
        run(self
            .cli()
            .args(["service", "scale", "-d", &format!("{name}={replicas}")]))?;
        Ok(())
    }

    fn replicas(&mut self, name: &str) -> Result<Option<(u64, u64)>> {
        let out = run(self.cli().args(["service", "ls", "--format", "json"]))?;
        parse_service_ls(&out, name)
    }

    fn remove(&mut self, name: &str) -> Result<()> {
        run(self.cli().args(["service", "rm", name]))?;
        self.wait_no_containers(crate::scenario::TIMEOUT, false)
    }
}

/// `shoal service ls --format json`: an array of {service: {spec: {name}}, running, desired}.
fn parse_service_ls(json: &str, name: &str) -> Result<Option<(u64, u64)>> {
    let list: serde_json::Value = serde_json::from_str(json)
        .with_context(|| format!("`shoal service ls --format json` printed no JSON: {json}"))?;
    let Some(items) = list.as_array() else {
        bail!("`shoal service ls --format json` printed no array: {json}");
    };
    Ok(items
        .iter()
        .find(|s| s.pointer("/service/spec/name").and_then(|n| n.as_str()) == Some(name))
        .map(|s| {
            let count = |key: &str| s.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
            (count("running"), count("desired"))
        }))
}

fn collect_procs(dir: &Path, pids: &mut Vec<libc::pid_t>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(
            text.lines()
                .filter_map(|l| l.trim().parse::<libc::pid_t>().ok()),
        );
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_procs(&e.path(), pids);
            }
        }
    }
}

/// rmdir a cgroup and its children, deepest first (cgroup dirs hold only control files, which
/// go with the dir). Retries briefly: a killed process leaves its cgroup a moment later.
fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path())?;
            }
        }
    }
    let mut tries = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) if tries < 40 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_named_service() {
        let json = r#"[
            {"service": {"id": "x", "spec": {"name": "b10"}}, "running": 3, "desired": 50},
            {"service": {"id": "y", "spec": {"name": "b1"}}, "running": 10, "desired": 10}
        ]"#;
        assert_eq!(parse_service_ls(json, "b1").unwrap(), Some((10, 10)));
        assert_eq!(parse_service_ls(json, "b10").unwrap(), Some((3, 50)));
        assert_eq!(parse_service_ls(json, "b2").unwrap(), None);
        assert_eq!(parse_service_ls("[]", "b1").unwrap(), None);
        assert!(parse_service_ls("oops", "b1").is_err());
    }
}
