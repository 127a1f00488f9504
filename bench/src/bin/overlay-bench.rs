//! The overlay's data path against the plain underlay between two test hosts: TCP throughput
//! (one stream) and round-trip latency (1-byte ping-pong on one connection), medians of
//! repeated runs.
//!
//! Two network namespaces ("hosts") joined by a veth pair (the underlay, MTU 1500, addresses
//! 198.18.250.1/.2 that exist only inside them); in each, shoal's real network layer
//! (`NetworkManager` with `RealNetOps` aimed at that namespace) makes the same overlay
//! network (VXLAN, VNI 4242) and attaches one container namespace with a manager-style fixed
//! address; each side is told of the other's endpoint as the manager would. The same
//! client/server code then runs host↔host (underlay) and container↔container (overlay).
//!
//! Run as root: `cargo build --release -p shoal-bench && target/release/overlay-bench`.
//! The goal (issue 8): overlay ≥ 80 % of the underlay's throughput.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use shoal_agent::network::{
    AddressPool, Ipv4Net, NetworkConfig, NetworkManager, NetworkSpec, OverlayPeer, OverlaySpec,
    RealNetOps,
};

#[path = "../table.rs"]
mod table;
#[path = "../util.rs"]
#[allow(dead_code)]
mod util;

use util::{machine, unique_tag};

#[derive(Parser)]
#[command(about = "Cross-host TCP throughput and latency: shoal's overlay vs the underlay")]
struct Args {
    /// Repetitions of each measurement (medians are reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Bytes sent per throughput run.
    #[arg(long, default_value_t = 256 << 20)]
    bytes: u64,
    /// Round trips per latency run.
    #[arg(long, default_value_t = 5000)]
    round_trips: usize,
}

const PORT: u16 = 5201;
const UNDERLAY: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 18, 250, 1),
    Ipv4Addr::new(198, 18, 250, 2),
];
const OVERLAY: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 250, 0, 2), Ipv4Addr::new(10, 250, 0, 3)];

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The two hosts; dropping it deletes their namespaces, and with them every link, bridge,
/// vxlan device and nft table made inside.
struct Hosts {
    names: [String; 2],
    _dirs: tempfile::TempDir,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

/// Runs `f` on a thread that has entered the network namespace at `netns`.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let ns = std::fs::File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    Ok(std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("enter the network namespace")?;
        f()
    }))
}

fn join<T>(h: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("a bench thread panicked"))?
}

/// Makes the hosts and the overlay; returns them with the two container namespaces.
fn setup(rt: &tokio::runtime::Runtime) -> Result<(Hosts, [PathBuf; 2])> {
    let tag = unique_tag();
    let names = [format!("ovb-{tag}-1"), format!("ovb-{tag}-2")];
    let dirs = tempfile::tempdir().context("temp dir")?;
    for n in &names {
        ip(&["netns", "add", n])?;
    }
    let hosts = Hosts {
        names: names.clone(),
        _dirs: dirs,
    };
    ip(&[
        "-n", &names[0], "link", "add", "u0", "type", "veth", "peer", "name", "u1", "netns",
        &names[1],
    ])?;
    for (i, n) in names.iter().enumerate() {
        let dev = format!("u{i}");
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{}/24", UNDERLAY[i]),
            "dev",
            &dev,
        ])?;
        ip(&["-n", n, "link", "set", &dev, "up"])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
    }
    let mut containers = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let host_ns = PathBuf::from("/run/netns").join(n);
        let dir = hosts._dirs.path().join(format!("h{i}"));
        let mut config = NetworkConfig::new(dir.join("state"), dir.join("run"));
        config.name_prefix = "ovb".into();
        config.nft_table = format!("ovb{i}");
        config.pools = Ipv4Net::new(Ipv4Addr::new(10, 251, 0, 0), 16)
            .and_then(|b| AddressPool::new(b, 24))
            .into_iter()
            .collect();
        let manager = NetworkManager::with_ops(config, RealNetOps::in_netns(&host_ns))
            .context("open the network manager")?;
        let spec = NetworkSpec {
            name: "ov".into(),
            subnet: Some("10.250.0.0/24".parse()?),
            gateway: Some(Ipv4Addr::new(10, 250, 0, 1)),
            overlay: Some(OverlaySpec { vni: 4242 }),
            ..NetworkSpec::named("ov")
        };
        let other = 1 - i;
        let netns = rt.block_on(async {
            manager.create_network(spec).await?;
            let a = manager
                .attach(&format!("c{i}"), "ov", Vec::new(), Some(OVERLAY[i]))
                .await?;
            manager
                .set_overlay_peers(
                    "ov",
                    vec![OverlayPeer {
                        ip: OVERLAY[other],
                        vtep: UNDERLAY[other],
                    }],
                )
                .await?;
            Ok::<_, shoal_agent::network::NetError>(a.netns_path)
        })?;
        containers.push(netns);
    }
    let containers: [PathBuf; 2] = containers
        .try_into()
        .map_err(|_| anyhow::anyhow!("two containers"))?;
    Ok((hosts, containers))
}

/// One throughput run: bytes/s from `client` (a namespace) to a server at `addr` in `server`.
fn throughput(client: &Path, server: &Path, addr: SocketAddrV4, bytes: u64) -> Result<f64> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = in_netns(server, move || {
        let listener = TcpListener::bind(addr).context("bind the server")?;
        let _ = ready_tx.send(());
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => break,
                n => got += n as u64,
            }
        }
        s.write_all(b"k")?;
        Ok(got)
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the server did not start")?;
    let cli = in_netns(client, move || {
        let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))?;
        let buf = vec![0x5au8; 1 << 20];
        let started = Instant::now();
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(buf.len() as u64) as usize;
            s.write_all(&buf[..n])?;
            sent += n as u64;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack)?;
        Ok(sent as f64 / started.elapsed().as_secs_f64())
    })?;
    let rate = join(cli)?;
    let got = join(srv)?;
    if got != bytes {
        bail!("the server got {got} of {bytes} bytes");
    }
    Ok(rate)
}

/// One latency run: the median round trip, in µs, of `n` 1-byte ping-pongs.
fn latency(client: &Path, server: &Path, addr: SocketAddrV4, n: usize) -> Result<f64> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = in_netns(server, move || {
        let listener = TcpListener::bind(addr).context("bind the server")?;
        let _ = ready_tx.send(());
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 {
            s.write_all(&b)?;
        }
        Ok(())
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the server did not start")?;
    let cli = in_netns(client, move || {
        let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        let mut times = Vec::with_capacity(n);
        let mut b = [1u8; 1];
        for _ in 0..n {
            let t = Instant::now();
            s.write_all(&b)?;
            s.read_exact(&mut b)?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(median(times))
    })?;
    let us = join(cli)?;
    join(srv)?;
    Ok(us)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !nix::unistd::Uid::effective().is_root() {
        bail!("overlay-bench makes network namespaces: run it as root");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (hosts, containers) = setup(&rt)?;
    let host_ns: Vec<PathBuf> = hosts
        .names
        .iter()
        .map(|n| PathBuf::from("/run/netns").join(n))
        .collect();
    let paths = [
        (
            "underlay (host ↔ host)",
            [host_ns[0].clone(), host_ns[1].clone()],
            UNDERLAY[1],
        ),
        (
            "overlay (container ↔ container)",
            containers.clone(),
            OVERLAY[1],
        ),
    ];
    let mut results = Vec::new();
    let mut runs = Vec::new();
    for (name, [client, server], target) in &paths {
        let addr = SocketAddrV4::new(*target, PORT);
        // Warm-up: ARP, the first connection's setup.
        throughput(client, server, addr, 16 << 20)?;
        let mut rates = Vec::new();
        let mut rtts = Vec::new();
        for _ in 0..args.runs {
            rates.push(throughput(client, server, addr, args.bytes)? * 8.0 / 1e9);
            rtts.push(latency(client, server, addr, args.round_trips)?);
        }
        runs.push(format!(
            "{name}: Gbit/s {:?}; median RTT µs {:?}",
            rates
                .iter()
                .map(|r| (r * 100.0).round() / 100.0)
                .collect::<Vec<_>>(),
            rtts.iter().map(|r| r.round()).collect::<Vec<_>>()
        ));
        results.push((name.to_string(), median(rates), median(rtts)));
    }
    drop(hosts);
    let under = &results[0];
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|(name, gbps, rtt)| {
            vec![
                name.clone(),
                format!("{gbps:.2}"),
                format!("{:.0} %", gbps / under.1 * 100.0),
                format!("{rtt:.0}"),
            ]
        })
        .collect();
    println!(
        "overlay-bench: {} runs × {} MiB one TCP stream, {} round trips per latency run; {}",
        args.runs,
        args.bytes >> 20,
        args.round_trips,
        machine()
    );
    let header = [
        "path",
        "throughput Gbit/s (median)",
        "of underlay",
        "RTT µs (median)",
    ];
    println!("{}", table::format_table(&header, &rows));
    println!("\nevery run, in order:");
    for line in &runs {
        println!("{line}");
    }
    println!();
    let ratio = results[1].1 / under.1;
    println!(
        "goal overlay ≥ 80 % of underlay throughput: {:.0} % — {}",
        ratio * 100.0,
        if ratio >= 0.8 { "met" } else { "NOT met" }
    );
    Ok(())
}
