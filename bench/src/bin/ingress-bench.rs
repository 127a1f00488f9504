//! ingress-bench: requests/s through a published port on one node, shoal and Docker Swarm in
//! the same run.
//!
//! Four paths, each to one busybox `httpd` task: shoal's ingress (routing-mesh) port, shoal's
//! host-mode port, Swarm's ingress port and Swarm's host-mode port. A few client threads on
//! this machine each send `GET /` over a fresh connection (HTTP/1.0, as a mesh pays its cost
//! per connection) to 127.0.0.1 for a fixed time; a run's figure is the answered requests per
//! second. The paths take turns within each run, so a noisy spell hits all of them; the table
//! shows medians over `--runs`.
//!
//! Swarm's ingress needs IPVS; where the kernel has none, its port never answers, and the
//! report says so and compares with Swarm's host-mode port instead.

#[path = "../daemons.rs"]
mod daemons;
#[path = "../scenario.rs"]
#[allow(dead_code)]
mod scenario;
#[path = "../swarm.rs"]
#[allow(dead_code)]
mod swarm;
#[path = "../table.rs"]
#[allow(dead_code)]
mod table;
#[path = "../util.rs"]
#[allow(dead_code)]
mod util;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;

use daemons::{shoal_bin, Daemon};
use util::{http_get, poll, run};

/// Serves one line, so a request costs the path more than the server.
const HTTPD: &str = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 80 -h /www";
/// A service's task may take this long to answer on its port.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Swarm's ingress port gets this long to answer before it is reported as not answering.
const SWARM_INGRESS_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "ingress-bench",
    about = "Requests/s through shoal's ingress and host-mode ports vs Docker Swarm's, one node"
)]
struct Args {
    /// Measured rounds; each round runs every path once. The table shows medians.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Length of one path's load in a round, in seconds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Concurrent clients, each with one connection at a time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    clients: u64,
    /// The shoal binary [default: `shoal` next to this binary, i.e. target/release/shoal].
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Measure shoal only.
    #[arg(long)]
    no_swarm: bool,
}

/// One published port to load, and what it gave.
struct Path {
    label: String,
    port: u16,
    /// Why this path is not measured (e.g. its port never answered).
    unavailable: Option<String>,
    /// Answered requests per second, one per round.
    rates: Vec<f64>,
    failed: u64,
}

impl Path {
    fn new(label: &str, port: u16) -> Path {
        Path {
            label: label.to_string(),
            port,
            unavailable: None,
            rates: Vec::new(),
            failed: 0,
        }
    }

    fn median(&self) -> Option<f64> {
        let mut r = self.rates.clone();
        r.sort_by(f64::total_cmp);
        let n = r.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(r[n / 2]),
            _ => Some((r[n / 2 - 1] + r[n / 2]) / 2.0),
        }
    }
}

/// `clients` threads, each sending requests one after another for `length`: (answered, failed).
fn load(port: u16, clients: u64, length: Duration) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    match http_get(port) {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    std::thread::sleep(length);
    stop.store(true, Ordering::Relaxed);
    threads
        .into_iter()
        .filter_map(|t| t.join().ok())
        .fold((0, 0), |(a, b), (ok, failed)| (a + ok, b + failed))
}

/// Waits until `port` answers `GET /`.
fn wait_answers(what: &str, port: u16, timeout: Duration) -> Result<()> {
    poll(
        &format!("{what} (port {port}) to answer"),
        timeout,
        || Ok(http_get(port).ok().map(|_| ())),
        || http_get(port).err().unwrap_or_default(),
    )
}

fn main() -> ExitCode {
    util::install_sigint_handler();
    let args = Args::parse();
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingress-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &Args) -> Result<()> {
    let tag = util::unique_tag();
    // Four host ports in 20000–29999 that no other run of this bench picks at the same time.
    let base = 20000 + (u16::from_str_radix(&tag[..4], 16).unwrap_or(0) % 2500) * 4;
    println!(
        "ingress-bench: {} clients, a fresh connection per request to 127.0.0.1, {} s per path and round, median of {} rounds; one busybox httpd task behind each port",
        args.clients, args.seconds, args.runs
    );
    println!("machine: {}", util::machine());

    let shoal = Daemon::start(
        &shoal_bin(args.shoal.clone())?,
        0,
        // Swarm's default heartbeat: a loaded 2-core machine must not mark the one node down.
        vec!["--heartbeat".into(), "5s".into()],
    )?;
    shoal
        .cli(&["image", "bootstrap", "busybox"])
        .context("making the busybox image (needs busybox-static)")?;
    let mut paths = vec![
        Path::new("shoal, ingress port", base),
        Path::new("shoal, host-mode port", base + 1),
    ];
    for (name, publish) in [
        ("ib-ingress", format!("{base}:80")),
        (
            "ib-host",
            format!("published={},target=80,mode=host", base + 1),
        ),
    ] {
        shoal
            .cli(&[
                "service", "create", "-d", "--name", name, "--init", "-p", &publish, "busybox",
                "sh", "-c", HTTPD,
            ])
            .with_context(|| format!("shoal service create {name}"))?;
    }
    wait_answers("shoal's ingress port", base, START_TIMEOUT)?;
    wait_answers("shoal's host-mode port", base + 1, START_TIMEOUT)?;
    let shoal_version = shoal.cli(&["version"]).unwrap_or_default();

    let (_swarm, swarm_note) = start_swarm(args, &tag, base, &mut paths);

    let length = Duration::from_secs(args.seconds);
    for p in paths.iter().filter(|p| p.unavailable.is_none()) {
        load(p.port, args.clients, Duration::from_secs(1)); // warm-up, not counted
    }
    for round in 1..=args.runs {
        util::check_interrupted()?;
        eprintln!("ingress-bench: round {round}/{}", args.runs);
        for p in paths.iter_mut().filter(|p| p.unavailable.is_none()) {
            let began = Instant::now();
            let (ok, failed) = load(p.port, args.clients, length);
            p.rates.push(ok as f64 / began.elapsed().as_secs_f64());
            p.failed += failed;
        }
    }
    report(&paths, shoal_version.trim(), &swarm_note);
    Ok(())
}

/// Starts Swarm's two services; their paths are added to `paths` (marked unavailable when they
/// cannot be measured). Returns the guard that undoes it all, and a line for the report.
fn start_swarm(
    args: &Args,
    tag: &str,
    base: u16,
    paths: &mut Vec<Path>,
) -> (Option<swarm::Swarm>, String) {
    let why = if args.no_swarm {
        Some("--no-swarm".to_string())
    } else {
        swarm::why_unavailable()
    };
    if let Some(why) = why {
        return (None, format!("Swarm: not measured ({why})"));
    }
    let prefix = format!("ib{tag}");
    let swarm = match swarm::Swarm::start(tag, &prefix) {
        Ok(s) => s,
        Err(e) => return (None, format!("Swarm: not measured ({e:#})")),
    };
    let note = format!("Swarm: Docker {}", swarm.version());
    let mut ingress = Path::new("Swarm, ingress port", base + 2);
    let mut host = Path::new("Swarm, host-mode port", base + 3);
    for (path, name, publish) in [
        (&mut ingress, "ingress", format!("{}:80", base + 2)),
        (
            &mut host,
            "host",
            format!("published={},target=80,mode=host", base + 3),
        ),
    ] {
        let created = run(Command::new("docker").args([
            "service",
            "create",
            "-d",
            "--no-resolve-image",
            "--name",
            &format!("{prefix}-{name}"),
            "--init",
            "-p",
            &publish,
            swarm::IMAGE,
            "sh",
            "-c",
            HTTPD,
        ]));
        if let Err(e) = created {
            path.unavailable = Some(format!("{e:#}"));
        }
    }
    if host.unavailable.is_none() {
        if let Err(e) = wait_answers("Swarm's host-mode port", host.port, START_TIMEOUT) {
            host.unavailable = Some(format!("{e:#}"));
        }
    }
    if ingress.unavailable.is_none()
        && wait_answers("Swarm's ingress port", ingress.port, SWARM_INGRESS_TIMEOUT).is_err()
    {
        let ipvs = std::path::Path::new("/proc/sys/net/ipv4/vs").exists();
        ingress.unavailable = Some(format!(
            "never answered in {} s{}",
            SWARM_INGRESS_TIMEOUT.as_secs(),
            if ipvs {
                ""
            } else {
                " (Swarm's routing mesh needs IPVS; this kernel has none: /proc/sys/net/ipv4/vs is absent)"
            }
        ));
    }
    paths.push(ingress);
    paths.push(host);
    (Some(swarm), note)
}

fn report(paths: &[Path], shoal_version: &str, swarm_note: &str) {
    println!("{shoal_version}; {swarm_note}");
    let ours = paths.first().and_then(Path::median);
    let rows: Vec<Vec<String>> = paths
        .iter()
        .map(|p| match (&p.unavailable, p.median()) {
            (None, Some(m)) => {
                let min = p.rates.iter().copied().fold(f64::INFINITY, f64::min);
                let max = p.rates.iter().copied().fold(0.0, f64::max);
                vec![
                    p.label.clone(),
                    format!("{m:.0}"),
                    format!("{min:.0}–{max:.0}"),
                    p.failed.to_string(),
                    ours.map(|o| format!("{:.2}", o / m)).unwrap_or_default(),
                ]
            }
            (why, _) => vec![
                p.label.clone(),
                "—".into(),
                "—".into(),
                "—".into(),
                why.clone().unwrap_or_else(|| "no rounds".into()),
            ],
        })
        .collect();
    println!(
        "{}",
        table::format_table(
            &[
                "path",
                "req/s (median)",
                "min–max",
                "failed",
                "shoal ingress ÷ this"
            ],
            &rows
        )
    );
    println!();
    println!("every round, in order (req/s):");
    for p in paths.iter().filter(|p| !p.rates.is_empty()) {
        let rates: Vec<String> = p.rates.iter().map(|r| format!("{r:.0}")).collect();
        println!("  {}: {}", p.label, rates.join(" "));
    }
    println!();
    let swarm = |label: &str| {
        paths
            .iter()
            .find(|p| p.label == label)
            .and_then(Path::median)
    };
    match (ours, swarm("Swarm, ingress port"), swarm("Swarm, host-mode port")) {
        (Some(o), Some(s), _) => println!(
            "goal: shoal's ingress ≥ Swarm's ingress: {:.0}% ({})",
            100.0 * o / s,
            if o >= s { "met" } else { "NOT met" }
        ),
        (Some(o), None, Some(h)) => println!(
            "goal: shoal's ingress ≥ Swarm's ingress: Swarm's ingress could not be measured; against Swarm's host-mode port (no mesh at all): {:.0}%",
            100.0 * o / h
        ),
        _ => println!("goal: shoal's ingress ≥ Swarm's ingress: no Swarm figure in this run"),
    }
}
