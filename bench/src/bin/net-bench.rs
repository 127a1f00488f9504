//! net-bench: what a published port costs. The same server (the host's static busybox:
//! `httpd` for one request per connection, `nc -ll -e cat` for a keep-alive echo) runs in a
//! network namespace attached to a shoal bridge network and published by shoal's PortManager
//! (kernel NAT with nftables), and, when Docker's engine is installed, in a Docker container
//! published with `-p`. Load comes from this process on the host: N client threads for a fixed
//! time, several rounds (targets interleaved in each round), medians of the rounds.
//!
//! Targets: shoal via 127.0.0.1 and via the bridge gateway (both DNAT), the container's own
//! address (no NAT: each side's floor), Docker via 127.0.0.1 (Docker's default
//! `userland-proxy=true` sends loopback through `docker-proxy`, a userland proxy), via
//! docker0's gateway (its iptables DNAT) and its container's own address. So the table also
//! shows kernel NAT against a userland proxy. Compare each NAT row with its own side's direct
//! row: the servers are the same binary, but not the same process setup (cgroup, mounts).
//! It also times `publish` + `unpublish` of one container's port, with 0 and 200 other keys
//! published.
//!
//!     cargo run --release -p shoal-bench --bin net-bench -- [--conns 8] [--secs 2] [--rounds 5] [--no-docker]
//!
//! Runs as root. Needs `nftables` and `busybox-static`; Docker's side needs `docker.io` (if
//! `docker info` fails, dockerd is started in the background and stopped at the end, by PID).
//! Everything it makes (netns, bridge, nft tables, processes, containers, image) carries a
//! random tag and is removed at the end, also on error.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use shoal_agent::network::{
    firewall, AddressPool, Ipv4Net, NetOps, NetworkConfig, NetworkManager, NetworkSpec, RealNetOps,
};
use shoal_agent::ports::{PortConfig, PortManager, PortMapping};

const BUSYBOX: &str = "/bin/busybox";
const HTTP_PORT: u16 = 80;
const ECHO_PORT: u16 = 7;
const ECHO_MSG: usize = 64;

#[derive(Parser)]
#[command(
    name = "net-bench",
    about = "Requests/s and latency through a published port"
)]
struct Args {
    /// Concurrent client connections.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// Seconds of load per target, workload and round.
    #[arg(long, default_value_t = 2)]
    secs: u64,
    /// Rounds; the table shows medians.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Measure shoal only.
    #[arg(long)]
    no_docker: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    /// One HTTP/1.0 GET per connection (connect, request, read to EOF, close).
    Http,
    /// 64-byte echo round trips over persistent connections.
    Echo,
}

#[derive(Clone, Copy, Debug, Default)]
struct Round {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

struct Target {
    name: String,
    http: SocketAddrV4,
    echo: SocketAddrV4,
    http_rounds: Vec<Round>,
    echo_rounds: Vec<Round>,
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    f64::from(sorted[i])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn connect(addr: SocketAddrV4) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Closes with RST (SO_LINGER 0) so that a connection per request leaves no TIME_WAIT behind
/// on the client and the ephemeral ports last.
fn close_hard(s: TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a plain setsockopt on an fd we own, with a stack struct of the right size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn http_once(addr: SocketAddrV4, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut s = connect(addr)?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    buf.clear();
    s.read_to_end(buf)?;
    close_hard(s);
    if !buf.starts_with(b"HTTP/1.") || !buf.windows(4).any(|w| w == b" 200") {
        return Err(std::io::Error::other("not a 200 answer"));
    }
    Ok(())
}

/// `conns` client threads on `addr` for `secs`: requests per second, p50 and p99 latency.
fn load(addr: SocketAddrV4, w: Workload, conns: usize, secs: u64) -> Round {
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                let mut buf = Vec::with_capacity(1024);
                let msg = [b'x'; ECHO_MSG];
                let mut echo: Option<TcpStream> = None;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = match w {
                        Workload::Http => http_once(addr, &mut buf),
                        Workload::Echo => (|| {
                            if echo.is_none() {
                                echo = Some(connect(addr)?);
                            }
                            let s = echo.as_mut().expect("connected");
                            s.write_all(&msg)?;
                            let mut back = [0u8; ECHO_MSG];
                            s.read_exact(&mut back)?;
                            Ok(())
                        })(),
                    };
                    match r {
                        Ok(()) => lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                        Err(_) => {
                            errors += 1;
                            echo = None;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                if let Some(s) = echo {
                    let _ = s.shutdown(Shutdown::Both);
                }
                (lat, errors)
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.join().expect("client thread");
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Round {
        rps: all.len() as f64 / elapsed,
        p50_us: percentile(&all, 0.50),
        p99_us: percentile(&all, 0.99),
        errors,
    }
}

/// Waits until a TCP connection to `addr` succeeds.
fn wait_port(addr: SocketAddrV4, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(s) = connect(addr) {
            close_hard(s);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} ({addr}) never answered")
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed: {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Starts `cmd` inside the network namespace of the netns file `ns`.
fn spawn_in_netns(ns: &Path, cmd: &mut Command) -> Result<Child> {
    let f = File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    let fd = f.as_raw_fd();
    // SAFETY: setns is a single syscall, async-signal-safe; `f` outlives the spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    drop(f);
    Ok(child)
}

fn stop_child(c: &mut Child) {
    // SAFETY: a signal to the PID of a child we started and have not reaped.
    unsafe {
        libc::kill(c.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// shoal's side: a network, one "container" (netns) running httpd and nc, its ports published.
struct Shoal {
    rt: tokio::runtime::Runtime,
    net: NetworkManager,
    ports: PortManager,
    table: String,
    prefix: String,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    netns: PathBuf,
}

impl Shoal {
    fn start(tag: &str) -> Result<Shoal> {
        let dir = tempfile::tempdir()?;
        let prefix = format!("b{}", &tag[..4]);
        let table = format!("shoalbench-{tag}");
        let octet = 100 + (u8::from_str_radix(&tag[4..6], 16).unwrap_or(0) % 150);
        let mut cfg = NetworkConfig::new(dir.path().join("data"), dir.path().join("run"));
        cfg.name_prefix = prefix.clone();
        cfg.nft_table = table.clone();
        cfg.pools = vec![AddressPool::new(
            Ipv4Net::new(Ipv4Addr::new(10, octet, 0, 0), 16)?,
            24,
        )?];
        let net = NetworkManager::open(cfg)?;
        let ports = PortManager::open(PortConfig {
            state_dir: dir.path().join("ports"),
            nft_table: format!("shoalpb-{tag}"),
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let mut s = Shoal {
            rt,
            net,
            ports,
            table,
            prefix,
            children: Vec::new(),
            _dir: dir,
            ip: Ipv4Addr::UNSPECIFIED,
            gateway: Ipv4Addr::UNSPECIFIED,
            netns: PathBuf::new(),
        };
        let m = s.net.clone();
        let (n, a) = s.rt.block_on(async {
            let n = m.create_network(NetworkSpec::named("bench")).await?;
            let a = m.attach("srv", "bench", vec![], None).await?;
            Ok::<_, anyhow::Error>((n, a))
        })?;
        s.ip = a.ip;
        s.gateway = n.gateway;
        s.netns = a.netns_path.clone();
        // The same files as in the Docker image: /www/index.html, cat → busybox.
        let www = s._dir.path().join("www");
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("index.html"), INDEX)?;
        let bin = s._dir.path().join("bin");
        std::fs::create_dir_all(&bin)?;
        std::os::unix::fs::symlink(BUSYBOX, bin.join("cat"))?;
        let httpd = spawn_in_netns(
            &s.netns,
            Command::new(BUSYBOX)
                .args(["httpd", "-f", "-p", &HTTP_PORT.to_string(), "-h"])
                .arg(&www),
        )?;
        s.children.push(httpd);
        let nc = spawn_in_netns(
            &s.netns,
            Command::new(BUSYBOX)
                .args(["nc", "-ll", "-p", &ECHO_PORT.to_string(), "-e"])
                .arg(bin.join("cat")),
        )?;
        s.children.push(nc);
        Ok(s)
    }

    fn publish(&self) -> Result<(u16, u16)> {
        let out = self.ports.publish(
            "bench",
            &[
                PortMapping::tcp(0, HTTP_PORT),
                PortMapping::tcp(0, ECHO_PORT),
            ],
            &[self.ip],
        )?;
        Ok((out[0].host_port, out[1].host_port))
    }
}

impl Drop for Shoal {
    fn drop(&mut self) {
        for c in &mut self.children {
            stop_child(c);
        }
        let _ = self.ports.remove_all();
        let m = self.net.clone();
        let st = m.state();
        self.rt.block_on(async {
            for c in st.containers.keys() {
                let _ = m.release_container(c).await;
            }
            for n in st.networks.values() {
                let _ = m.remove_network(&n.id).await;
            }
        });
        let ops = RealNetOps::new();
        for l in ops.list_links(None).unwrap_or_default() {
            if l.name.contains(&self.prefix) {
                let _ = ops.delete_link(None, &l.name);
            }
        }
        let _ = ops.apply_nft(&firewall::ruleset(&self.table, &[]));
        let _ = ops.sync_docker_user(&self.table, &[]);
    }
}

const INDEX: &str = "hello from the port bench\n";
const IMAGE: &str = "shoal-net-bench-busybox:latest";

/// Docker's side: dockerd (started here if needed), an imported busybox image, two containers.
struct Docker {
    dockerd: Option<Child>,
    imported: bool,
    names: Vec<String>,
    dir: tempfile::TempDir,
}

impl Docker {
    fn start(tag: &str) -> Result<Docker> {
        let mut d = Docker {
            dockerd: None,
            imported: false,
            names: Vec::new(),
            dir: tempfile::tempdir()?,
        };
        if !succeeds(Command::new("docker").arg("info")) {
            let log = File::create(d.dir.path().join("dockerd.log"))?;
            eprintln!("net-bench: starting dockerd (it is stopped at the end)");
            let child = Command::new("dockerd")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .context("starting dockerd")?;
            d.dockerd = Some(child);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !succeeds(Command::new("docker").arg("info")) {
                if Instant::now() > deadline {
                    bail!("dockerd did not answer within 60 s");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if !succeeds(Command::new("docker").args(["image", "inspect", IMAGE])) {
            let tarball = d.dir.path().join("rootfs.tar");
            write_rootfs(&tarball)?;
            run(Command::new("docker")
                .arg("import")
                .arg(&tarball)
                .arg(IMAGE))?;
            d.imported = true;
        }
        for (suffix, cport, argv) in [
            (
                "http",
                HTTP_PORT,
                vec!["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"],
            ),
            (
                "echo",
                ECHO_PORT,
                vec!["/bin/busybox", "nc", "-ll", "-p", "7", "-e", "/bin/cat"],
            ),
        ] {
            let name = format!("shoal-net-bench-{tag}-{suffix}");
            run(Command::new("docker")
                .args(["run", "-d", "--init", "--name", &name, "-p"])
                .arg(cport.to_string())
                .arg(IMAGE)
                .args(argv))?;
            d.names.push(name);
        }
        Ok(d)
    }

    fn host_port(&self, i: usize, cport: u16) -> Result<u16> {
        let out =
            run(Command::new("docker").args(["port", &self.names[i], &format!("{cport}/tcp")]))?;
        out.lines()
            .find_map(|l| l.strip_prefix("0.0.0.0:"))
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("no IPv4 host port in `docker port`: {out}"))
    }

    fn gateway(&self) -> Result<Ipv4Addr> {
        let out = run(Command::new("docker").args([
            "network",
            "inspect",
            "bridge",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
        ]))?;
        out.trim().parse().context("docker0 gateway")
    }

    /// The container's own address on docker0.
    fn container_ip(&self, i: usize) -> Result<Ipv4Addr> {
        let out = run(Command::new("docker").args([
            "inspect",
            "-f",
            "{{.NetworkSettings.IPAddress}}",
            &self.names[i],
        ]))?;
        out.trim().parse().context("container address")
    }

    fn userland_proxy(&self) -> bool {
        Command::new("pgrep")
            .arg("docker-proxy")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = succeeds(Command::new("docker").args(["rm", "-f", n]));
        }
        if self.imported {
            let _ = succeeds(Command::new("docker").args(["rmi", IMAGE]));
        }
        if let Some(c) = &mut self.dockerd {
            stop_child(c);
        }
    }
}

fn write_rootfs(tarball: &Path) -> Result<()> {
    let mut tar = tar::Builder::new(File::create(tarball)?);
    for d in ["bin/", "www/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        tar.append_data(&mut h, d, std::io::empty())?;
    }
    tar.append_path_with_name(BUSYBOX, "bin/busybox")?;
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_mode(0o777);
    link.set_size(0);
    tar.append_link(&mut link, "bin/cat", "busybox")?;
    let mut f = tar::Header::new_gnu();
    f.set_mode(0o644);
    f.set_size(INDEX.len() as u64);
    tar.append_data(&mut f, "www/index.html", INDEX.as_bytes())?;
    tar.into_inner()?.sync_all()?;
    Ok(())
}

fn unique_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:06x}", (std::process::id() ^ nanos) & 0xff_ffff)
}

/// Median time of `publish` + `unpublish` of one key with one TCP port, with `others` keys
/// (one port each) already published.
fn publish_cost(s: &Shoal, others: usize, reps: usize) -> Result<(f64, f64)> {
    for i in 0..others {
        s.ports
            .publish(&format!("other{i}"), &[PortMapping::tcp(0, 80)], &[s.ip])?;
    }
    let mut publ = Vec::new();
    let mut unpubl = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        s.ports
            .publish("churn", &[PortMapping::tcp(0, 80)], &[s.ip])?;
        publ.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        s.ports.unpublish("churn")?;
        unpubl.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    for i in 0..others {
        s.ports.unpublish(&format!("other{i}"))?;
    }
    Ok((median(publ), median(unpubl)))
}

/// Median time to give one container its network and take it back (veth, address, routes,
/// netns file; then all released), `reps` times.
fn setup_cost(s: &Shoal, reps: usize) -> Result<f64> {
    let mut times = Vec::new();
    for i in 0..reps {
        let id = format!("churn{i}");
        let t = Instant::now();
        s.rt.block_on(async {
            s.net.attach(&id, "bench", vec![], None).await?;
            s.net.release_container(&id).await
        })?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(times))
}

impl Docker {
    /// Median of `docker run --rm` of `true` with Docker's default bridge minus with
    /// `--network none`: what Docker's network sandbox adds to a container's start and stop.
    fn setup_cost(&self, reps: usize) -> Result<(f64, f64)> {
        let mut bridge = Vec::new();
        let mut none = Vec::new();
        for _ in 0..reps {
            for (network, into) in [("bridge", &mut bridge), ("none", &mut none)] {
                let t = Instant::now();
                run(Command::new("docker").args([
                    "run",
                    "--rm",
                    "--network",
                    network,
                    IMAGE,
                    "/bin/busybox",
                    "true",
                ]))?;
                into.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let (b, n) = (median(bridge), median(none));
        Ok((b, n))
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !nix_is_root() {
        bail!("net-bench needs root (network namespaces, nftables)");
    }
    if !Path::new(BUSYBOX).is_file() {
        bail!("{BUSYBOX} is missing: apt-get install -y busybox-static");
    }
    let tag = unique_tag();
    let shoal = Shoal::start(&tag)?;
    let (shttp, secho) = shoal.publish()?;
    let mut targets = vec![
        Target {
            name: "shoal 127.0.0.1 (nft DNAT)".into(),
            http: SocketAddrV4::new(Ipv4Addr::LOCALHOST, shttp),
            echo: SocketAddrV4::new(Ipv4Addr::LOCALHOST, secho),
            http_rounds: vec![],
            echo_rounds: vec![],
        },
        Target {
            name: format!("shoal {} (nft DNAT)", shoal.gateway),
            http: SocketAddrV4::new(shoal.gateway, shttp),
            echo: SocketAddrV4::new(shoal.gateway, secho),
            http_rounds: vec![],
            echo_rounds: vec![],
        },
        Target {
            name: format!("direct {} (no NAT)", shoal.ip),
            http: SocketAddrV4::new(shoal.ip, HTTP_PORT),
            echo: SocketAddrV4::new(shoal.ip, ECHO_PORT),
            http_rounds: vec![],
            echo_rounds: vec![],
        },
    ];
    let docker_problem;
    let docker = if args.no_docker {
        docker_problem = Some("--no-docker".to_string());
        None
    } else if !succeeds(Command::new("docker").arg("--version"))
        || !succeeds(Command::new("dockerd").arg("--version"))
    {
        docker_problem =
            Some("Docker's engine is not installed (apt-get install -y docker.io)".into());
        None
    } else {
        match Docker::start(&tag) {
            Ok(d) => {
                docker_problem = None;
                Some(d)
            }
            Err(e) => {
                docker_problem = Some(format!("Docker could not run: {e:#}"));
                None
            }
        }
    };
    if let Some(d) = &docker {
        let (dhttp, decho) = (d.host_port(0, HTTP_PORT)?, d.host_port(1, ECHO_PORT)?);
        let gw = d.gateway()?;
        let proxy = if d.userland_proxy() {
            "docker-proxy, userland"
        } else {
            "no docker-proxy running"
        };
        targets.push(Target {
            name: format!("docker 127.0.0.1 ({proxy})"),
            http: SocketAddrV4::new(Ipv4Addr::LOCALHOST, dhttp),
            echo: SocketAddrV4::new(Ipv4Addr::LOCALHOST, decho),
            http_rounds: vec![],
            echo_rounds: vec![],
        });
        targets.push(Target {
            name: format!("docker {gw} (iptables DNAT)"),
            http: SocketAddrV4::new(gw, dhttp),
            echo: SocketAddrV4::new(gw, decho),
            http_rounds: vec![],
            echo_rounds: vec![],
        });
        let (hip, eip) = (d.container_ip(0)?, d.container_ip(1)?);
        targets.push(Target {
            name: format!("docker direct {hip} (no NAT)"),
            http: SocketAddrV4::new(hip, HTTP_PORT),
            echo: SocketAddrV4::new(eip, ECHO_PORT),
            http_rounds: vec![],
            echo_rounds: vec![],
        });
    }
    for t in &targets {
        wait_port(t.http, &t.name)?;
        wait_port(t.echo, &t.name)?;
        // Warm-up.
        load(t.http, Workload::Http, args.conns, 1);
        load(t.echo, Workload::Echo, args.conns, 1);
    }
    for r in 0..args.rounds {
        eprintln!("net-bench: round {}/{}", r + 1, args.rounds);
        // Interleaved, in a rotating order, so drift hits every target alike.
        let n = targets.len();
        for i in 0..n {
            let t = &mut targets[(i + r) % n];
            t.http_rounds
                .push(load(t.http, Workload::Http, args.conns, args.secs));
            t.echo_rounds
                .push(load(t.echo, Workload::Echo, args.conns, args.secs));
        }
    }
    let shoal_setup = setup_cost(&shoal, 50)?;
    let docker_setup = match &docker {
        Some(d) => Some(d.setup_cost(15)?),
        None => None,
    };
    let (p0, u0) = publish_cost(&shoal, 0, 30)?;
    let (p200, u200) = publish_cost(&shoal, 200, 30)?;

    println!(
        "net-bench: {} client connections, {} s per target and workload, {} rounds (medians); \
         server: busybox httpd / busybox nc -ll -e cat, same binary on both sides",
        args.conns, args.secs, args.rounds
    );
    let base_http = median(targets[0].http_rounds.iter().map(|r| r.rps).collect());
    let base_echo = median(targets[0].echo_rounds.iter().map(|r| r.rps).collect());
    for (title, w) in [
        ("HTTP GET, one connection per request", Workload::Http),
        ("echo 64 B over keep-alive connections", Workload::Echo),
    ] {
        println!("\n{title}:");
        println!(
            "{:<44} {:>10} {:>9} {:>9} {:>8} {:>11}",
            "target", "req/s", "p50 µs", "p99 µs", "errors", "vs shoal lo"
        );
        for t in &targets {
            let rounds = if w == Workload::Http {
                &t.http_rounds
            } else {
                &t.echo_rounds
            };
            let rps = median(rounds.iter().map(|r| r.rps).collect());
            let base = if w == Workload::Http {
                base_http
            } else {
                base_echo
            };
            println!(
                "{:<44} {:>10.0} {:>9.0} {:>9.0} {:>8} {:>10.2}x",
                t.name,
                rps,
                median(rounds.iter().map(|r| r.p50_us).collect()),
                median(rounds.iter().map(|r| r.p99_us).collect()),
                rounds.iter().map(|r| r.errors).sum::<u64>(),
                rps / base
            );
        }
    }
    println!(
        "\npublish + unpublish of one port (one nft transaction each), median of 30: \
         {p0:.2} ms + {u0:.2} ms with no other keys; {p200:.2} ms + {u200:.2} ms with 200 other keys"
    );
    println!(
        "\nnetwork setup + teardown of one container (veth, address, route, netns), median of 50: \
         shoal {shoal_setup:.2} ms"
    );
    if let Some((bridge, none)) = docker_setup {
        println!(
            "docker run --rm true, median of 15: {bridge:.0} ms on the bridge, {none:.0} ms with \
             --network none: the bridge sandbox adds {:.0} ms ({:.0}x shoal's)",
            bridge - none,
            (bridge - none) / shoal_setup
        );
    }
    if let Some(p) = docker_problem {
        println!("docker: not measured: {p}");
    }
    let keys: HashSet<String> = shoal.ports.list().into_iter().map(|k| k.0).collect();
    if keys.len() != 1 {
        bail!("unexpected keys left: {keys:?}");
    }
    drop(docker);
    drop(shoal);
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
