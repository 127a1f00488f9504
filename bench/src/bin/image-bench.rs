//! image-bench: how long `shoal image load` takes for a multi-layer `docker save` archive,
//! against `docker load` of the same archive when Docker is installed; and whether
//! `docker load` accepts what `shoal image save` writes.
//!
//! The archive is made here: `--layers` layers of random (incompressible) files, `--mb` MB in
//! all, in the classic `docker save` layout (`<n>/layer.tar`, `<config>.json`,
//! `manifest.json`). Each run loads it into an empty store (the image is removed between runs,
//! untimed), so every run unpacks every layer. Medians of `--runs` runs are printed.
//!
//! shoal runs as a private daemon (own data dir, socket and cgroup parent under a temp dir),
//! stopped by PID at the end. Docker: if `docker info` works the running daemon is used (and
//! left running); otherwise dockerd is started with its own data root, exec root and socket
//! (no bridge, no iptables, so nothing else on the machine is touched) and stopped by PID after.
//! Run as root.

#[path = "../image_files.rs"]
mod image_files;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use image_files::{run, sha256_file, Rng};

#[derive(Parser)]
#[command(about = "shoal image load vs docker load, same archive, same machine")]
struct Args {
    /// The shoal binary (default: `shoal` beside this binary, else on PATH).
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Timed runs per side.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Layers in the image.
    #[arg(long, default_value_t = 5)]
    layers: usize,
    /// Total size of the image's files, in MB.
    #[arg(long, default_value_t = 50)]
    mb: usize,
}

const IMAGE: &str = "imgbench:latest";

fn main() {
    let args = Args::parse();
    if let Err(e) = real_main(&args) {
        eprintln!("image-bench: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(args: &Args) -> Result<()> {
    if !nix_is_root() {
        bail!("run as root (the shoal daemon needs it)");
    }
    let work = tempfile::Builder::new()
        .prefix("shoal-image-bench-")
        .tempdir()
        .context("temp dir")?;
    let archive = work.path().join("image.tar");
    let t = Instant::now();
    let bytes = make_archive(work.path(), &archive, args.layers, args.mb)?;
    println!(
        "archive: {} layers, {:.1} MB of files, {:.1} MB archive (made in {:.1} s)",
        args.layers,
        bytes as f64 / 1e6,
        fs::metadata(&archive)?.len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    println!("machine: {} CPUs, runs per side: {}", cpus(), args.runs);

    let shoal_bin = shoal_binary(args.shoal.as_deref())?;
    let saved = work.path().join("saved-by-shoal.tar");
    let shoal_times = {
        let daemon = ShoalDaemon::start(&shoal_bin, work.path())?;
        let times = time_runs(args.runs, || {
            let t = Instant::now();
            run(daemon
                .cli()
                .args(["image", "load", "-q", "-i"])
                .arg(&archive))?;
            let d = t.elapsed();
            run(daemon.cli().args(["image", "rm", IMAGE]))?;
            Ok(d)
        })?;
        run(daemon
            .cli()
            .args(["image", "load", "-q", "-i"])
            .arg(&archive))?;
        run(daemon
            .cli()
            .args(["image", "save", "-o"])
            .arg(&saved)
            .arg(IMAGE))?;
        times
    };

    let mut rows = vec![("shoal image load".to_string(), Some(shoal_times))];
    let note;
    match Docker::start(work.path()) {
        Err(e) => {
            note = format!("docker: skipped ({e:#})");
            rows.push(("docker load".into(), None));
        }
        Ok(docker) => {
            let version = docker
                .output(&["version", "--format", "{{.Server.Version}}"])
                .unwrap_or_default();
            let times = time_runs(args.runs, || {
                let t = Instant::now();
                docker.run(&["load", "-q", "-i", archive.to_str().unwrap_or_default()])?;
                let d = t.elapsed();
                docker.run(&["rmi", IMAGE])?;
                Ok(d)
            });
            rows.push((format!("docker load ({})", version.trim()), Some(times?)));
            // Does Docker accept shoal's save output?
            let expected = docker_id_of_archive(&archive)?;
            note = match docker.run(&["load", "-i", saved.to_str().unwrap_or_default()]) {
                Ok(()) => {
                    let id = docker
                        .output(&["image", "inspect", "--format", "{{.Id}}", IMAGE])
                        .unwrap_or_default();
                    let _ = docker.run(&["rmi", IMAGE]);
                    if id.trim() == expected {
                        format!(
                            "docker load accepts `shoal image save`: yes, same image id {expected}"
                        )
                    } else {
                        format!(
                            "docker load accepts `shoal image save`: loaded, but id {} != {expected}",
                            id.trim()
                        )
                    }
                }
                Err(e) => format!("docker load accepts `shoal image save`: NO ({e:#})"),
            };
            drop(docker);
        }
    }
    println!();
    println!(
        "{:<34} {:>12} {:>12} {:>12} {:>12}",
        "LOAD OF THE SAME ARCHIVE", "MEDIAN", "MIN", "MAX", "MB/s (med)"
    );
    for (name, times) in &rows {
        match times {
            Some(t) => {
                let mut s = t.clone();
                s.sort();
                let med = s[s.len() / 2];
                println!(
                    "{:<34} {:>10.0}ms {:>10.0}ms {:>10.0}ms {:>12.1}",
                    name,
                    ms(med),
                    ms(s[0]),
                    ms(s[s.len() - 1]),
                    bytes as f64 / 1e6 / med.as_secs_f64()
                );
            }
            None => println!("{name:<34} {:>12}", "n/a"),
        }
    }
    if !note.is_empty() {
        println!("{note}");
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn time_runs(runs: usize, mut f: impl FnMut() -> Result<Duration>) -> Result<Vec<Duration>> {
    (0..runs.max(1)).map(|_| f()).collect()
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Writes the classic `docker save` layout; returns the bytes of file content.
fn make_archive(dir: &Path, out: &Path, layers: usize, mb: usize) -> Result<u64> {
    let per_layer = (mb * 1_000_000 / layers.max(1)) as u64;
    let file_size = 256 * 1024u64;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut total = 0u64;
    let mut diff_ids = Vec::new();
    let mut layer_paths = Vec::new();
    let mut tar = tar::Builder::new(File::create(out)?);
    for l in 0..layers {
        let layer_file = dir.join(format!("layer{l}.tar"));
        {
            let mut lt = tar::Builder::new(File::create(&layer_file)?);
            let mut dirh = tar::Header::new_ustar();
            dirh.set_entry_type(tar::EntryType::Directory);
            dirh.set_mode(0o755);
            dirh.set_size(0);
            lt.append_data(&mut dirh, format!("data{l}/"), std::io::empty())?;
            let mut written = 0u64;
            let mut n = 0;
            let mut buf = vec![0u8; file_size as usize];
            while written < per_layer {
                let size = file_size.min(per_layer - written);
                rng.fill(&mut buf[..size as usize]);
                let mut h = tar::Header::new_ustar();
                h.set_size(size);
                h.set_mode(0o644);
                h.set_mtime(1_700_000_000);
                lt.append_data(&mut h, format!("data{l}/f{n:05}"), &buf[..size as usize])?;
                written += size;
                n += 1;
            }
            total += written;
            lt.into_inner()?.flush()?;
        }
        diff_ids.push(format!("sha256:{}", sha256_file(&layer_file)?));
        let path = format!("{l}/layer.tar");
        let mut h = tar::Header::new_ustar();
        h.set_size(fs::metadata(&layer_file)?.len());
        h.set_mode(0o644);
        tar.append_data(&mut h, &path, File::open(&layer_file)?)?;
        fs::remove_file(&layer_file)?;
        layer_paths.push(path);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": (0..layers).map(|i| serde_json::json!({
            "created": "2024-01-01T00:00:00Z", "created_by": format!("ADD data{i}")
        })).collect::<Vec<_>>(),
    }))?;
    let config_file = dir.join("config.json");
    fs::write(&config_file, &config)?;
    let config_name = format!("{}.json", sha256_file(&config_file)?);
    let mut h = tar::Header::new_ustar();
    h.set_size(config.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, &config_name, &config[..])?;
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": config_name, "RepoTags": [IMAGE], "Layers": layer_paths}
    ]))?;
    let mut h = tar::Header::new_ustar();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, "manifest.json", &manifest[..])?;
    tar.into_inner()?.flush()?;
    Ok(total)
}

/// The image id (config digest) an archive made by [`make_archive`] has.
fn docker_id_of_archive(archive: &Path) -> Result<String> {
    let mut ar = tar::Archive::new(File::open(archive)?);
    for e in ar.entries()? {
        let e = e?;
        let p = e.path()?.display().to_string();
        if let Some(hex) = p.strip_suffix(".json") {
            if hex.len() == 64 {
                return Ok(format!("sha256:{hex}"));
            }
        }
    }
    bail!("no config in the archive")
}

fn shoal_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let beside = std::env::current_exe()?.with_file_name("shoal");
    if beside.exists() {
        return Ok(beside);
    }
    Ok(PathBuf::from("shoal"))
}

/// Sends SIGTERM to a child we started, waits up to `grace`, then SIGKILL.
fn stop(child: &mut Child, grace: Duration) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: signalling a child process we spawned and have not reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

struct ShoalDaemon {
    bin: PathBuf,
    socket: PathBuf,
    child: Child,
}

impl ShoalDaemon {
    fn start(bin: &Path, work: &Path) -> Result<ShoalDaemon> {
        let dir = work.join("shoal");
        fs::create_dir_all(&dir)?;
        let socket = dir.join("s.sock");
        let log = File::create(dir.join("daemon.log"))?;
        let child = Command::new(bin)
            .arg("daemon")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--socket")
            .arg(&socket)
            .args([
                "--listen-addr",
                "127.0.0.1:0",
                "--cgroup-parent",
                "shoal-image-bench",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} daemon", bin.display()))?;
        let mut d = ShoalDaemon {
            bin: bin.to_path_buf(),
            socket,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if run(d.cli().arg("info")).is_ok() {
                return Ok(d);
            }
            if d.child.try_wait()?.is_some() || Instant::now() > deadline {
                let log = fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
                bail!("the shoal daemon did not come up; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cli(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--host").arg(&self.socket);
        c
    }
}

impl Drop for ShoalDaemon {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(10));
    }
}

struct Docker {
    host: Option<String>,
    dockerd: Option<Child>,
    dirs: Vec<PathBuf>,
}

impl Docker {
    /// The running Docker, or a private dockerd started here.
    fn start(work: &Path) -> Result<Docker> {
        if Command::new("docker")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            bail!("docker is not installed (apt-get install -y docker.io)");
        }
        let mut d = Docker {
            host: None,
            dockerd: None,
            dirs: Vec::new(),
        };
        if d.run(&["info"]).is_ok() {
            println!("docker: using the running daemon");
            return Ok(d);
        }
        let root = work.join("docker");
        // The exec root holds a socket path: keep it short.
        let exec = PathBuf::from(format!("/tmp/ib-{}", std::process::id()));
        fs::create_dir_all(&root)?;
        fs::create_dir_all(&exec)?;
        d.dirs.push(exec.clone());
        let sock = root.join("docker.sock");
        let log = File::create(root.join("dockerd.log"))?;
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(&exec)
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(["--bridge", "none", "--iptables=false", "--ip6tables=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting dockerd")?;
        println!("docker: started a private dockerd (pid {})", child.id());
        d.dockerd = Some(child);
        d.host = Some(format!("unix://{}", sock.display()));
        let deadline = Instant::now() + Duration::from_secs(60);
        while d.run(&["info"]).is_err() {
            let exited = d
                .dockerd
                .as_mut()
                .map(|c| c.try_wait().ok().flatten().is_some())
                .unwrap_or(true);
            if exited || Instant::now() > deadline {
                let log = fs::read_to_string(root.join("dockerd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                bail!(
                    "dockerd did not come up; its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(d)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        if let Some(h) = &self.host {
            c.arg("-H").arg(h);
        }
        c.args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        run(&mut self.cmd(args))
    }

    fn output(&self, args: &[&str]) -> Result<String> {
        let out = self.cmd(args).output()?;
        if !out.status.success() {
            bail!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if let Some(mut child) = self.dockerd.take() {
            stop(&mut child, Duration::from_secs(30));
            println!("docker: stopped the private dockerd");
        }
        for d in &self.dirs {
            let _ = fs::remove_dir_all(d);
        }
    }
}
