//! Docker Swarm's side: the local dockerd (started here if it is installed but not running) in
//! swarm mode (initialised here if it is not), a busybox image made with `docker import`, and
//! the same work through the `docker service` verbs. [`Swarm`]'s Drop undoes only what it did.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::scenario::Cluster;
use crate::util::{on_path, poll, poll_during_cleanup, run, stop_child, succeeds, tail};

pub const IMAGE: &str = "shoal-bench-busybox:latest";
pub const BUSYBOX: &str = "/bin/busybox";

/// Why the Swarm side cannot run at all on this machine, if it cannot.
pub fn why_unavailable() -> Option<String> {
    if !on_path("docker") || !on_path("dockerd") {
        return Some(
            "Docker's engine is not installed (no `docker`/`dockerd` on PATH); \
             to compare with Swarm: apt-get install -y docker.io"
                .into(),
        );
    }
    None
}

pub struct Swarm {
    dir: PathBuf,
    /// Our service names start with this; Drop removes any that are left.
    prefix: String,
    /// dockerd, if this bench started it (then it is stopped at the end).
    dockerd: Option<Child>,
    initialised_swarm: bool,
    imported_image: bool,
    /// Set when something failed: dockerd's log (if ours) is then kept for the report.
    pub failed: bool,
}

impl Swarm {
    pub fn start(tag: &str, prefix: &str) -> Result<Swarm> {
        let dir = std::env::temp_dir().join(format!("shoal-bench-swarm-{tag}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut swarm = Swarm {
            dir,
            prefix: prefix.to_string(),
            dockerd: None,
            initialised_swarm: false,
            imported_image: false,
            failed: true,
        };
        if !succeeds(Command::new("docker").arg("info")) {
            swarm.start_dockerd()?;
        }
        swarm.ensure_swarm_mode()?;
        swarm.ensure_image()?;
        swarm.failed = false;
        Ok(swarm)
    }

    fn dockerd_log(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    fn start_dockerd(&mut self) -> Result<()> {
        eprintln!(
            "shoal-bench: `docker info` fails; starting dockerd (log: {})",
            self.dockerd_log().display()
        );
        let log = File::create(self.dockerd_log()).context("creating the dockerd log")?;
        let child = Command::new("dockerd")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("could not start dockerd")?;
        let log = self.dockerd_log();
        let dockerd = self.dockerd.insert(child);
        let exited = poll(
            "dockerd to answer `docker info`",
            Duration::from_secs(60),
            || {
                if dockerd.try_wait()?.is_some() {
                    return Ok(Some(true));
                }
                Ok(succeeds(Command::new("docker").arg("info")).then_some(false))
            },
            || format!("the dockerd log ends:\n{}", tail(&log, 20)),
        )?;
        if exited {
            bail!("dockerd exited at start; its log ends:\n{}", tail(&log, 20));
        }
        Ok(())
    }

    fn ensure_swarm_mode(&mut self) -> Result<()> {
        let state = run(Command::new("docker").args([
            "info",
            "--format",
            "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
        ]))?;
        match state.trim() {
            "inactive false" | "inactive" => {
                run(Command::new("docker").args(["swarm", "init", "--advertise-addr", "127.0.0.1"]))
                    .context("`docker swarm init` failed")?;
                self.initialised_swarm = true;
                Ok(())
            }
            "active true" => Ok(()),
            other => bail!(
                "this Docker engine is in swarm state `{other}` (state, is-manager); the bench needs \
                 a manager, or no swarm at all (then it runs `docker swarm init` and leaves at the end)"
            ),
        }
    }

    fn ensure_image(&mut self) -> Result<()> {
        if succeeds(Command::new("docker").args(["image", "inspect", IMAGE])) {
            return Ok(());
        }
        let tarball = self.dir.join("busybox-rootfs.tar");
        write_busybox_rootfs(Path::new(BUSYBOX), &tarball)?;
        run(Command::new("docker")
            .arg("import")
            .arg(&tarball)
            .arg(IMAGE))
        .context("`docker import` of the busybox rootfs failed")?;
        self.imported_image = true;
        Ok(())
    }

    pub fn version(&self) -> String {
        run(Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    pub fn started_dockerd(&self) -> bool {
        self.dockerd.is_some()
    }

    pub fn initialised_swarm(&self) -> bool {
        self.initialised_swarm
    }

    fn containers_of(&self, service: &str) -> Result<String> {
        run(Command::new("docker").args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.swarm.service.name={service}"),
        ]))
    }

    fn cleanup(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let filter = format!("name={}", self.prefix);
        if let Ok(names) =
            run(Command::new("docker").args(["service", "ls", "-q", "--filter", &filter]))
        {
            let ours: Vec<&str> = names.split_whitespace().collect();
            if !ours.is_empty() {
                let mut cmd = Command::new("docker");
                cmd.args(["service", "rm"]).args(&ours);
                if let Err(e) = run(&mut cmd) {
                    problems.push(format!("{e:#}"));
                }
                // Our names share a prefix that nothing else uses; wait for their containers.
                let prefix = self.prefix.clone();
                let ours_left = || -> Result<usize> {
                    let out = run(Command::new("docker").args([
                        "ps",
                        "-a",
                        "--filter",
                        "label=com.docker.swarm.service.name",
                        "--format",
                        "{{.Label \"com.docker.swarm.service.name\"}}",
                    ]))?;
                    Ok(out.lines().filter(|l| l.starts_with(&prefix)).count())
                };
                if let Err(e) = poll_during_cleanup(
                    "the bench's Swarm containers to be removed",
                    Duration::from_secs(60),
                    || Ok((ours_left()? == 0).then_some(())),
                    || format!("{} left", ours_left().unwrap_or(0)),
                ) {
                    problems.push(format!("{e:#}"));
                }
            }
        }
        if self.initialised_swarm {
            if let Err(e) = run(Command::new("docker").args(["swarm", "leave", "--force"])) {
                problems.push(format!("{e:#}"));
            }
        }
        if self.imported_image {
            if let Err(e) = run(Command::new("docker").args(["image", "rm", IMAGE])) {
                problems.push(format!("{e:#}"));
            }
        }
        if let Some(mut dockerd) = self.dockerd.take() {
            stop_child(&mut dockerd, Duration::from_secs(30));
            if self.failed || !problems.is_empty() {
                let kept = std::env::temp_dir().join(format!(
                    "{}-dockerd.log",
                    self.dir.file_name().unwrap_or_default().to_string_lossy()
                ));
                if std::fs::copy(self.dockerd_log(), &kept).is_ok() {
                    eprintln!("shoal-bench: dockerd's log is kept at {}", kept.display());
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            problems.push(format!("could not remove {}: {e}", self.dir.display()));
        }
        problems
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        for problem in self.cleanup() {
            eprintln!("shoal-bench: cleanup: {problem}");
        }
    }
}

impl Cluster for Swarm {
    fn create(&mut self, name: &str, replicas: u64) -> Result<()> {
        // --init: the container's PID 1 forwards SIGTERM, so stops do not wait out the grace.
        run(Command::new("docker")
            .args(["service", "create", "-d", "--name", name, "--replicas"])
            .arg(replicas.to_string())
            .args([
                "--init",
                "--stop-grace-period",
                "1s",
                IMAGE,
                "sleep",
                "100000",
            ]))?;
        Ok(())
    }

    fn scale(&mut self, name: &str, replicas: u64) -> Result<()> {
        run(Command::new("docker").args([
            "service",
            "scale",
            "-d",
            &format!("{name}={replicas}"),
        ]))?;
        Ok(())
    }

    fn replicas(&mut self, name: &str) -> Result<Option<(u64, u64)>> {
        let out = run(Command::new("docker").args([
            "service",
            "ls",
            "--filter",
            &format!("name={name}"),
            "--format",
            "{{.Name}} {{.Replicas}}",
        ]))?;
        parse_service_ls(&out, name)
    }

    fn remove(&mut self, name: &str) -> Result<()> {
        run(Command::new("docker").args(["service", "rm", name]))?;
        poll(
            &format!("the containers of {name} to be removed"),
            crate::scenario::TIMEOUT,
            || Ok(self.containers_of(name)?.trim().is_empty().then_some(())),
            || {
                self.containers_of(name)
                    .unwrap_or_default()
                    .split_whitespace()
                    .count()
                    .to_string()
                    + " left"
            },
        )
    }
}

/// Lines of `NAME RUNNING/DESIRED[ (max N per node)]`; `--filter name=` matches prefixes, so the
/// name is compared exactly.
fn parse_service_ls(out: &str, name: &str) -> Result<Option<(u64, u64)>> {
    for line in out.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some(name) {
            continue;
        }
        let replicas = words.next().unwrap_or_default();
        let parsed = replicas
            .split_once('/')
            .and_then(|(r, d)| Some((r.parse().ok()?, d.parse().ok()?)));
        return match parsed {
            Some(counts) => Ok(Some(counts)),
            None => bail!("unexpected REPLICAS `{replicas}` from `docker service ls` in: {line}"),
        };
    }
    Ok(None)
}

/// A rootfs tarball: `bin/busybox` and a `bin/APPLET -> busybox` symlink for each applet.
pub fn write_busybox_rootfs(busybox: &Path, tarball: &Path) -> Result<()> {
    let install = "install busybox-static: apt-get install -y busybox-static";
    if !busybox.is_file() {
        bail!("{} is missing; {install}", busybox.display());
    }
    if is_dynamic_elf(busybox)? {
        bail!(
            "{} is dynamically linked, so it cannot run alone in an image; {install}",
            busybox.display()
        );
    }
    let list = run(Command::new(busybox).arg("--list"))?;
    let mut tar = tar::Builder::new(
        File::create(tarball).with_context(|| format!("creating {}", tarball.display()))?,
    );
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    tar.append_data(&mut dir, "bin/", std::io::empty())?;
    tar.append_path_with_name(busybox, "bin/busybox")
        .with_context(|| format!("adding {} to the image tarball", busybox.display()))?;
    for applet in list
        .split_whitespace()
        .filter(|a| *a != "busybox" && !a.contains('/'))
    {
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_mode(0o777);
        link.set_size(0);
        tar.append_link(&mut link, format!("bin/{applet}"), "busybox")?;
    }
    tar.into_inner()?.sync_all()?;
    Ok(())
}

/// Whether an ELF64 file has a PT_INTERP program header (needs a dynamic loader).
fn is_dynamic_elf(path: &Path) -> Result<bool> {
    let mut bytes = Vec::new();
    File::open(path)?.take(64 * 1024).read_to_end(&mut bytes)?;
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if bytes.get(..5) != Some(b"\x7fELF\x02") {
        return Ok(false); // not ELF64: let `docker` be the judge
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Ok(false);
    };
    const PT_INTERP: u32 = 3;
    Ok((0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            == Some(PT_INTERP)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replicas_with_an_exact_name() {
        let out = "sb-1 3/10\nsb-10 50/50 (max 2 per node)\n";
        assert_eq!(parse_service_ls(out, "sb-1").unwrap(), Some((3, 10)));
        assert_eq!(parse_service_ls(out, "sb-10").unwrap(), Some((50, 50)));
        assert_eq!(parse_service_ls(out, "sb-2").unwrap(), None);
        assert!(parse_service_ls("sb-1 ?", "sb-1").is_err());
    }

    #[test]
    fn tells_dynamic_from_other_files() {
        // Test binaries link glibc dynamically; a text file is not ELF at all.
        assert!(is_dynamic_elf(&std::env::current_exe().unwrap()).unwrap());
        let text = std::env::temp_dir().join(format!("shoal-bench-test-{}", std::process::id()));
        std::fs::write(&text, "not an ELF file").unwrap();
        assert!(!is_dynamic_elf(&text).unwrap());
        std::fs::remove_file(text).unwrap();
    }
}
