//! pull-bench: `shoal pull` of a multi-layer image (~50 MB, 5 gzip layers of incompressible
//! files) from a registry on loopback, against `skopeo copy docker://… oci:DIR` of the same
//! image from the same registry in the same run. Medians of `--runs` runs; throughput is the
//! image's compressed bytes (what crosses the wire) over the median time.
//!
//! Not the same work: skopeo writes the blobs to an OCI directory; shoal also verifies every
//! diff id, unpacks every layer (ready to run) and syncs it to disk. Each shoal run starts
//! from an empty store (the image is removed untimed), each skopeo run from an empty
//! directory.
//!
//! The registry is Debian's `docker-registry` (own config, storage in a temp dir, a free
//! loopback port), shoal a private daemon (own data dir and socket); both are stopped by PID
//! at the end. The image gets into the registry by `shoal push`. Run as root.

use std::fs::{self, File};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use image_files::{run, sha256_file, Rng};

#[path = "../image_files.rs"]
mod image_files;
#[path = "../table.rs"]
mod table;

#[derive(Parser)]
#[command(about = "shoal pull vs skopeo copy, same image, same loopback registry")]
struct Args {
    /// The shoal binary (default: `shoal` beside this binary, else on PATH).
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Timed runs per side (at least 5 for a meaningful median).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Layers in the image.
    #[arg(long, default_value_t = 5)]
    layers: usize,
    /// Total size of the image's files, in MB.
    #[arg(long, default_value_t = 50)]
    mb: usize,
}

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

fn main() {
    let args = Args::parse();
    if let Err(e) = real_main(&args) {
        eprintln!("pull-bench: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(args: &Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root (the shoal daemon needs it)");
    }
    if !Path::new(REGISTRY_BIN).exists() {
        bail!("{REGISTRY_BIN} is missing: apt-get install -y docker-registry");
    }
    let work = tempfile::Builder::new()
        .prefix("shoal-pull-bench-")
        .tempdir()
        .context("temp dir")?;
    let archive = work.path().join("image.tar");
    let (files, blobs) = make_archive(work.path(), &archive, args.layers, args.mb)?;
    println!(
        "image: {} gzip layers, {:.1} MB of files, {:.1} MB of blobs; machine: {} CPUs; {} runs \
         per side",
        args.layers,
        files as f64 / 1e6,
        blobs as f64 / 1e6,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        args.runs
    );

    let registry = Registry::start(&work.path().join("registry"))?;
    let image = format!("{}/bench/pull:latest", registry.host());
    let shoal_bin = shoal_binary(args.shoal.as_deref())?;
    let daemon = ShoalDaemon::start(&shoal_bin, work.path())?;
    run(daemon
        .cli()
        .args(["image", "load", "-q", "-i"])
        .arg(&archive))?;
    run(daemon
        .cli()
        .args(["image", "tag", "pullbench:latest", &image]))?;
    run(daemon.cli().args(["push", "-q", &image]))?;
    run(daemon
        .cli()
        .args(["image", "rm", "pullbench:latest", &image]))?;

    let mut shoal_times = Vec::new();
    let mut skopeo_times = Vec::new();
    let skopeo = Command::new("skopeo")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    // Interleaved, so that a slow moment of the machine hits both sides alike.
    for _ in 0..args.runs.max(1) {
        let t = Instant::now();
        run(daemon.cli().args(["pull", "-q", &image]))?;
        shoal_times.push(t.elapsed());
        run(daemon.cli().args(["image", "rm", &image]))?;
        if skopeo.is_some() {
            let dir = work.path().join("skopeo-oci");
            let _ = fs::remove_dir_all(&dir);
            let t = Instant::now();
            run(Command::new("skopeo")
                .args(["copy", "-q", "--src-tls-verify=false"])
                .arg(format!("docker://{image}"))
                .arg(format!("oci:{}", dir.display())))?;
            skopeo_times.push(t.elapsed());
        }
    }
    drop(daemon);
    drop(registry);

    let mb_s = |d: Duration| blobs as f64 / 1e6 / d.as_secs_f64();
    let mut rows = Vec::new();
    let shoal_med = median(&mut shoal_times);
    rows.push(row("shoal pull (unpacked, synced)", &shoal_times, blobs));
    let mut verdict = "skopeo: not installed (apt-get install -y skopeo)".to_string();
    if let Some(version) = &skopeo {
        let skopeo_med = median(&mut skopeo_times);
        rows.push(row(
            &format!("{version} copy → oci dir"),
            &skopeo_times,
            blobs,
        ));
        let ratio = mb_s(shoal_med) / mb_s(skopeo_med);
        verdict = format!(
            "shoal / skopeo throughput: {:.0} % (target ≥ 80 %)",
            ratio * 100.0
        );
    }
    println!();
    println!(
        "{}",
        table::format_table(&["pull", "median", "min", "max", "MB/s (median)"], &rows)
    );
    println!("{verdict}");
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn row(name: &str, times: &[Duration], bytes: u64) -> Vec<String> {
    let mut s = times.to_vec();
    s.sort();
    let med = s[s.len() / 2];
    vec![
        name.to_string(),
        format!("{:.0} ms", med.as_secs_f64() * 1000.0),
        format!("{:.0} ms", s[0].as_secs_f64() * 1000.0),
        format!("{:.0} ms", s[s.len() - 1].as_secs_f64() * 1000.0),
        format!("{:.1}", bytes as f64 / 1e6 / med.as_secs_f64()),
    ]
}

/// A `docker save` archive (Docker 25+'s form: gzip layer blobs under `blobs/sha256/`) of
/// `pullbench:latest`; returns (bytes of files, bytes of layer blobs).
fn make_archive(dir: &Path, out: &Path, layers: usize, mb: usize) -> Result<(u64, u64)> {
    let per_layer = (mb * 1_000_000 / layers.max(1)) as u64;
    let file_size = 256 * 1024u64;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut files, mut blobs) = (0u64, 0u64);
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
            let (mut written, mut n) = (0u64, 0);
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
            files += written;
            lt.into_inner()?.flush()?;
        }
        diff_ids.push(format!("sha256:{}", sha256_file(&layer_file)?));
        let gz = dir.join(format!("layer{l}.tar.gz"));
        {
            let mut enc =
                flate2::write::GzEncoder::new(File::create(&gz)?, flate2::Compression::fast());
            std::io::copy(&mut File::open(&layer_file)?, &mut enc)?;
            enc.finish()?.flush()?;
        }
        fs::remove_file(&layer_file)?;
        let hex = sha256_file(&gz)?;
        let size = fs::metadata(&gz)?.len();
        blobs += size;
        let path = format!("blobs/sha256/{hex}");
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(0o644);
        tar.append_data(&mut h, &path, File::open(&gz)?)?;
        fs::remove_file(&gz)?;
        layer_paths.push(path);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))?;
    let config_file = dir.join("config.json");
    fs::write(&config_file, &config)?;
    let config_path = format!("blobs/sha256/{}", sha256_file(&config_file)?);
    let mut h = tar::Header::new_ustar();
    h.set_size(config.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, &config_path, &config[..])?;
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": config_path, "RepoTags": ["pullbench:latest"], "Layers": layer_paths}
    ]))?;
    let mut h = tar::Header::new_ustar();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, "manifest.json", &manifest[..])?;
    tar.into_inner()?.flush()?;
    Ok((files, blobs))
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

/// SIGTERM to a child we started, up to `grace`, then SIGKILL.
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

/// `docker-registry` on a free loopback port, storage in `dir`.
struct Registry {
    child: Child,
    port: u16,
}

impl Registry {
    fn start(dir: &Path) -> Result<Registry> {
        fs::create_dir_all(dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("storage").display()
            ),
        )?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("registry.log"))?)
            .process_group(0)
            .spawn()
            .context("starting docker-registry")?;
        let mut r = Registry { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if r.child.try_wait()?.is_some() || Instant::now() > deadline {
                bail!(
                    "docker-registry did not come up: {}",
                    fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(r)
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(5));
    }
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
                "shoal-pull-bench",
                "--network-prefix",
                "pb",
                "--nft-table",
                "shoal-pull-bench",
                "--dns-upstream",
                "none",
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
            if run(d.cli().args(["image", "ls", "-q"])).is_ok() {
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
