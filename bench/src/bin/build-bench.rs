//! build-bench: what `shoal build` of a 10-instruction Dockerfile costs, first build and fully
//! cached rebuild, against `docker build` of the same Dockerfile and context in the same run.
//!
//! The Dockerfile (FROM, ARG, ENV, WORKDIR, COPY, RUN, COPY, RUN, EXPOSE, CMD) builds on busybox
//! and a small context (a script and 40 files). Timed end to end, as a user runs it: the `shoal
//! build -q` (or `docker build -q`) process, from spawn to exit.
//!
//! - first: the first build with an empty cache (once);
//! - no-cache: `--no-cache` builds (every step runs again), median of `--uncached-runs`;
//! - cached: rebuilds with nothing changed, median of `--runs` (≥ 10); the first cached
//!   rebuild's progress is checked to be CACHED at every step (target: ≤ 200 ms).
//!
//! shoal runs as a private daemon (own data dir, socket, cgroup parent, network prefix, nft
//! table and address pool), stopped by PID at the end; its networks are removed after. Docker:
//! the running dockerd is used (never stopped); the busybox rootfs is `docker import`ed under a
//! random tag, and every image the bench made there is removed at the end. Without buildx the
//! Docker CLI only has the legacy builder (`DOCKER_BUILDKIT=0`); the report says which ran.
//!
//! ```text
//! cargo build --release
//! cargo run --release -p shoal-bench --bin build-bench -- [--runs 10] [--shoal PATH]
//! ```
//! Run as root, with busybox-static installed.

#[path = "../table.rs"]
mod table;

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use shoal_agent::network::{AddressPool, Ipv4Net, NetworkConfig, NetworkManager};

#[derive(Parser)]
#[command(about = "shoal build vs docker build: first build and fully cached rebuild")]
struct Args {
    /// The shoal binary (default: `shoal` beside this binary, else on PATH).
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Cached rebuilds per side (the median is reported).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// --no-cache builds per side.
    #[arg(long, default_value_t = 3)]
    uncached_runs: usize,
}

const DOCKERFILE_TEMPLATE: &str = "FROM {BASE}
ARG VERSION=1.0
ENV APP_HOME=/app APP_VERSION=$VERSION
WORKDIR /app
COPY src/ ./src/
RUN sh src/build.sh > out.txt
COPY data/ ./data/
RUN ls -la data > listing.txt && wc -l listing.txt
EXPOSE 8080
CMD [\"cat\", \"out.txt\"]
";

/// The cached-rebuild target, milliseconds.
const TARGET_CACHED_MS: f64 = 200.0;

fn main() {
    let args = Args::parse();
    if let Err(e) = real_main(&args) {
        eprintln!("build-bench: {e:#}");
        std::process::exit(1);
    }
}

struct Figures {
    name: String,
    first: Duration,
    uncached: Vec<Duration>,
    cached: Vec<Duration>,
    note: String,
}

fn real_main(args: &Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root (the shoal daemon needs it)");
    }
    let runs = args.runs.max(10);
    let work = tempfile::Builder::new()
        .prefix("shoal-build-bench-")
        .tempdir()
        .context("temp dir")?;
    let shoal_ctx = make_context(&work.path().join("ctx-shoal"), "busybox")?;
    println!(
        "Dockerfile: 10 instructions; context: {} files; machine: {} CPUs; cached runs: {runs}, \
         no-cache runs: {}",
        count_files(&shoal_ctx),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.uncached_runs
    );
    let mut rows = Vec::new();

    let bin = shoal_binary(args.shoal.as_deref())?;
    let shoal = {
        let daemon = ShoalDaemon::start(&bin, work.path())?;
        let result = bench_shoal(&daemon, &shoal_ctx, runs, args.uncached_runs);
        drop(daemon);
        result?
    };
    rows.push(shoal);

    match Docker::detect() {
        Err(e) => println!("docker: skipped ({e:#})"),
        Ok(docker) => {
            let result = bench_docker(&docker, work.path(), runs, args.uncached_runs);
            docker.cleanup();
            match result {
                Ok(f) => rows.push(f),
                Err(e) => println!("docker: failed ({e:#})"),
            }
        }
    }

    println!();
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let med = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|f| {
            let mut c = f.cached.clone();
            c.sort();
            vec![
                f.name.clone(),
                ms(f.first),
                if f.uncached.is_empty() {
                    "-".into()
                } else {
                    ms(med(&f.uncached))
                },
                ms(med(&f.cached)),
                ms(c[0]),
                ms(c[c.len() - 1]),
            ]
        })
        .collect();
    println!(
        "{}",
        table::format_table(
            &[
                "BUILD OF THE SAME DOCKERFILE",
                "FIRST",
                "NO-CACHE (MEDIAN)",
                "CACHED (MEDIAN)",
                "CACHED MIN",
                "CACHED MAX",
            ],
            &table_rows,
        )
    );
    for f in &rows {
        if !f.note.is_empty() {
            println!("{}: {}", f.name, f.note);
        }
    }
    let shoal_cached = med(&rows[0].cached).as_secs_f64() * 1000.0;
    println!(
        "target: fully cached rebuild ≤ {TARGET_CACHED_MS:.0} ms: {} ({shoal_cached:.0} ms)",
        if shoal_cached <= TARGET_CACHED_MS {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

fn bench_shoal(d: &ShoalDaemon, ctx: &Path, runs: usize, uncached_runs: usize) -> Result<Figures> {
    let build = |extra: &[&str]| -> Result<(Duration, String)> {
        let mut cmd = d.cli();
        cmd.args(["build", "-t", "buildbench:latest"])
            .args(extra)
            .arg(ctx);
        timed(&mut cmd)
    };
    let (first, _) = build(&["-q"])?;
    let (_, progress) = build(&["--progress", "plain"])?;
    let steps = progress
        .lines()
        .filter(|l| {
            l.split_once(' ').is_some_and(|(id, rest)| {
                id.starts_with('#')
                    && rest.starts_with('[')
                    && !rest.starts_with("[internal]")
                    && !rest.contains("] FROM ")
            })
        })
        .count();
    let cached_steps = progress.lines().filter(|l| l.ends_with(" CACHED")).count();
    if cached_steps != steps || steps == 0 {
        bail!("the rebuild was not fully cached ({cached_steps} of {steps} steps):\n{progress}");
    }
    let mut cached = Vec::new();
    for _ in 0..runs {
        cached.push(build(&["-q"])?.0);
    }
    let mut uncached = Vec::new();
    for _ in 0..uncached_runs {
        uncached.push(build(&["-q", "--no-cache"])?.0);
    }
    Ok(Figures {
        name: format!("shoal build ({})", d.version()),
        first,
        uncached,
        cached,
        note: format!("the cached rebuild showed CACHED at all {steps} instruction steps"),
    })
}

fn bench_docker(
    docker: &Docker,
    work: &Path,
    runs: usize,
    uncached_runs: usize,
) -> Result<Figures> {
    let rootfs = work.join("busybox-rootfs.tar");
    busybox_rootfs(&rootfs)?;
    let base = format!("shoal-build-bench-busybox:{}", docker.tag);
    docker.run(&["import", rootfs.to_str().unwrap_or_default(), &base])?;
    docker.made(&base);
    let ctx = make_context(&work.join("ctx-docker"), &base)?;
    let tag = format!("shoal-build-bench:{}", docker.tag);
    let build = |extra: &[&str]| -> Result<(Duration, String)> {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_BUILDKIT", "0")
            .args(["build", "-t", &tag])
            .args(extra)
            .arg(&ctx);
        let (d, out) = timed(&mut cmd)?;
        // `-q` prints the image id: remember every one to remove it after.
        if let Some(id) = out.lines().rev().find(|l| l.starts_with("sha256:")) {
            docker.made(id.trim());
        }
        Ok((d, out))
    };
    let (first, _) = build(&["-q"])?;
    let (_, progress) = build(&[])?;
    let using_cache = progress.matches("Using cache").count();
    let mut cached = Vec::new();
    for _ in 0..runs {
        cached.push(build(&["-q"])?.0);
    }
    let mut uncached = Vec::new();
    for _ in 0..uncached_runs {
        uncached.push(build(&["-q", "--no-cache"])?.0);
    }
    docker.made(&tag);
    Ok(Figures {
        name: format!("docker build ({}, legacy builder)", docker.version()),
        first,
        uncached,
        cached,
        note: format!(
            "legacy builder (DOCKER_BUILDKIT=0: the CLI has no buildx); its cached rebuild \
             printed \"Using cache\" {using_cache} times"
        ),
    })
}

/// Runs a command to completion; (wall time, stdout+stderr). Fails on a non-zero exit.
fn timed(cmd: &mut Command) -> Result<(Duration, String)> {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let d = t.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{cmd:?} failed:\n{text}");
    }
    Ok((d, text))
}

fn make_context(dir: &Path, base: &str) -> Result<PathBuf> {
    fs::create_dir_all(dir.join("src"))?;
    fs::create_dir_all(dir.join("data"))?;
    fs::write(
        dir.join("Dockerfile"),
        DOCKERFILE_TEMPLATE.replace("{BASE}", base),
    )?;
    fs::write(
        dir.join("src/build.sh"),
        "echo \"built version $APP_VERSION in $APP_HOME\"\n",
    )?;
    for i in 0..40 {
        fs::write(
            dir.join(format!("data/file{i:02}.txt")),
            format!("data file {i}\n").repeat(50),
        )?;
    }
    fs::write(dir.join(".dockerignore"), "*.tmp\n")?;
    Ok(dir.to_path_buf())
}

fn count_files(dir: &Path) -> usize {
    fn walk(p: &Path) -> usize {
        fs::read_dir(p)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            walk(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(dir)
}

/// A busybox rootfs tarball (busybox-static and a symlink per applet, /etc/passwd, /tmp) for
/// `docker import`.
fn busybox_rootfs(out: &Path) -> Result<()> {
    let bin = Path::new("/bin/busybox");
    let list = Command::new(bin)
        .arg("--list")
        .output()
        .context("busybox --list (install busybox-static)")?;
    let mut b = tar::Builder::new(File::create(out)?);
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h
    };
    for d in ["bin/", "etc/", "tmp/", "proc/", "sys/", "dev/"] {
        let mode = if d == "tmp/" { 0o1777 } else { 0o755 };
        b.append_data(
            &mut header(tar::EntryType::Directory, mode, 0),
            d,
            std::io::empty(),
        )?;
    }
    let data = fs::read(bin)?;
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o755, data.len() as u64),
        "bin/busybox",
        &data[..],
    )?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" {
            continue;
        }
        b.append_link(
            &mut header(tar::EntryType::Symlink, 0o777, 0),
            format!("bin/{applet}"),
            "busybox",
        )?;
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o644, passwd.len() as u64),
        "etc/passwd",
        &passwd[..],
    )?;
    b.into_inner()?;
    Ok(())
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

/// A private shoal daemon with its own networks; stopped by PID, its networks removed, on drop.
struct ShoalDaemon {
    bin: PathBuf,
    socket: PathBuf,
    data: PathBuf,
    child: Child,
    net: NetworkConfig,
    cgroup_parent: String,
}

impl ShoalDaemon {
    fn start(bin: &Path, work: &Path) -> Result<ShoalDaemon> {
        let dir = work.join("shoal");
        fs::create_dir_all(&dir)?;
        let socket = dir.join("s.sock");
        let data = dir.join("data");
        let log = File::create(dir.join("daemon.log"))?;
        let suffix = format!("{:04x}", std::process::id() & 0xffff);
        let mut net = NetworkConfig::new(data.join("network"), data.join("run"));
        net.name_prefix = format!("b{suffix}");
        net.nft_table = format!("shoal-build-bench-{suffix}");
        let base = Ipv4Net::new(std::net::Ipv4Addr::new(10, 219, 0, 0), 16);
        net.pools = base
            .and_then(|b| AddressPool::new(b, 24))
            .into_iter()
            .collect();
        let cgroup_parent = format!("shoal-build-bench-{suffix}");
        let child = Command::new(bin)
            .arg("daemon")
            .arg("--data-dir")
            .arg(&data)
            .arg("--socket")
            .arg(&socket)
            .args([
                "--listen-addr",
                "127.0.0.1:0",
                "--cgroup-parent",
                &cgroup_parent,
            ])
            .args(["--network-prefix", &net.name_prefix])
            .args(["--nft-table", &net.nft_table])
            .args(["--default-address-pool", "base=10.219.0.0/16,size=24"])
            .args(["--dns-upstream", "none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} daemon", bin.display()))?;
        let mut d = ShoalDaemon {
            bin: bin.to_path_buf(),
            socket,
            data,
            child,
            net,
            cgroup_parent,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if timed(d.cli().args(["image", "ls", "-q"])).is_ok() {
                break;
            }
            if d.child.try_wait()?.is_some() || Instant::now() > deadline {
                let log = fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
                bail!("the shoal daemon did not come up; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        timed(d.cli().args(["image", "bootstrap", "busybox"]))?;
        Ok(d)
    }

    fn cli(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--host").arg(&self.socket);
        c
    }

    fn version(&self) -> String {
        Command::new(&self.bin)
            .arg("version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}

impl Drop for ShoalDaemon {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling the child we spawned and have not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its networks (the bridge a RUN used), nft tables and netns files.
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            if let Ok(manager) = NetworkManager::open(self.net.clone()) {
                let state = manager.state();
                for id in state.containers.keys() {
                    let _ = rt.block_on(manager.release_container(id));
                }
                for id in state.networks.keys() {
                    let _ = rt.block_on(manager.remove_network(id));
                }
            }
        }
        if let Ok(ports) = shoal_agent::ports::PortManager::open(shoal_agent::ports::PortConfig {
            state_dir: self.data.join("ports"),
            nft_table: format!("{}-ports", self.net.nft_table),
        }) {
            let _ = ports.remove_all();
        }
        for root in ["/sys/fs/cgroup"].iter().map(Path::new) {
            if let Ok(entries) = fs::read_dir(root) {
                for e in entries.flatten() {
                    let _ = fs::remove_dir(e.path().join(&self.cgroup_parent));
                }
            }
        }
    }
}

/// The running Docker (never started or stopped here) and what the bench made in it.
struct Docker {
    tag: String,
    made: std::cell::RefCell<Vec<String>>,
}

impl Docker {
    fn detect() -> Result<Docker> {
        let ok = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            bail!("no running dockerd (docker info fails)");
        }
        Ok(Docker {
            tag: format!("t{}", std::process::id()),
            made: std::cell::RefCell::new(Vec::new()),
        })
    }

    fn version(&self) -> String {
        Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        timed(Command::new("docker").args(args)).map(|(_, out)| out)
    }

    fn made(&self, image: &str) {
        self.made.borrow_mut().push(image.to_string());
    }

    /// Removes what the bench made: tags first, then the image ids (newest first, so that
    /// children go before their parents).
    fn cleanup(&self) {
        let made = self.made.borrow().clone();
        for image in made.iter().rev() {
            let _ = Command::new("docker")
                .args(["rmi", "-f", image])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
