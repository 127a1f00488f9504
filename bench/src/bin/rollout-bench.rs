//! rollout-bench: what a rollout costs, on shoal and on Docker Swarm in the same run.
//!
//! - A rolling update of a 50-task service (parallelism 5, delay 0, monitor 0; start-first and
//!   stop-first): from the detached `service update` until every task runs the new image and
//!   no task of the old one is still running (a draining one counts as running), both systems
//!   polled every 25 ms. shoal with its default drain (2 s) and with `--update-drain 0s`.
//! - shoal's blue-green switch of the same service (manual promotion): from the start of
//!   `service promote` until the first request answered by green; then `service rollback`
//!   back to the kept blue, measured the same way.
//! - A load on shoal's published port (3 clients, a fresh connection per request): the failed
//!   requests of one more rolling update per row, and of every switch. The timed rounds run
//!   without load, as Swarm's do: Swarm's side has no load: its routing mesh needs IPVS, which this
//!   kernel lacks, and 50 host-mode replicas cannot share one host port (STACK.md).
//!
//! Every task runs busybox `httpd` behind `--init` (so a stop signal stops it at once) with a
//! 1 s stop grace period. Medians over `--runs` (rolling) and `--switch-runs` (blue-green).

#[path = "../scenario.rs"]
#[allow(dead_code)]
mod scenario;
#[path = "../shoal.rs"]
#[allow(dead_code)]
mod shoal;
#[path = "../stats.rs"]
mod stats;
#[path = "../swarm.rs"]
#[allow(dead_code)]
mod swarm;
#[path = "../table.rs"]
mod table;
#[path = "../util.rs"]
#[allow(dead_code)]
mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use stats::Stats;
use util::{http_get, poll, poll_during_cleanup, run, succeeds};

/// Tasks replaced at a time, in both systems.
const PARALLELISM: &str = "5";
/// One rollout may take this long before the run is declared stuck.
const TIMEOUT: Duration = Duration::from_secs(300);
/// Serves `$VERSION`.
const HTTPD: &str =
    "mkdir -p /www && echo \"$VERSION\" > /www/index.html && exec httpd -f -p 80 -h /www";

#[derive(Parser)]
#[command(
    name = "rollout-bench",
    about = "Rolling updates of 50 tasks on shoal vs Docker Swarm, shoal's blue-green switch, failed requests under load"
)]
struct Args {
    /// Rolling updates per order and system; the table shows medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Blue-green switches (each followed by a rollback).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    switch_runs: u64,
    /// Tasks of the service.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    replicas: u64,
    /// The shoal binary [default: `shoal` next to this binary, i.e. target/release/shoal].
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Measure shoal only.
    #[arg(long)]
    no_swarm: bool,
}

/// The rolling-update scenarios: (row label, order, shoal's drain flag if not the default).
const ROLLING: [(&str, &str, Option<&str>); 4] = [
    ("rolling, start-first", "start-first", None),
    ("rolling, stop-first", "stop-first", None),
    ("rolling, start-first, drain 0", "start-first", Some("0s")),
    ("rolling, stop-first, drain 0", "stop-first", Some("0s")),
];

/// What one scenario gave on one system.
#[derive(Default, Clone)]
struct Figure {
    times: Vec<Duration>,
    /// The time of the one round under load (shoal's rolling updates).
    loaded: Option<Duration>,
    /// (failed, total) requests of the load, summed over the runs.
    failed: u64,
    requests: u64,
}

fn main() -> ExitCode {
    util::install_sigint_handler();
    let args = Args::parse();
    let tag = util::unique_tag();
    println!(
        "rollout-bench: {} tasks, parallelism {PARALLELISM}, delay 0, monitor 0; median of {} rolling updates per row and system, {} blue-green switches; both systems polled every {} ms",
        args.replicas,
        args.runs,
        args.switch_runs,
        util::POLL.as_millis()
    );
    let shoal = match shoal_binary(args.shoal.as_deref()) {
        Ok(bin) => measure_shoal(&bin, &tag, &args),
        Err(e) => Err(e),
    };
    let shoal = match shoal {
        Ok(f) => f,
        Err(e) => {
            eprintln!("rollout-bench: shoal: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let swarm = if args.no_swarm {
        Err("--no-swarm".to_string())
    } else if let Some(why) = swarm::why_unavailable() {
        Err(why)
    } else if !succeeds(Command::new("docker").arg("info")) {
        Err("dockerd does not answer `docker info`".to_string())
    } else {
        measure_swarm(&tag, &args).map_err(|e| format!("{e:#}"))
    };
    report(&args, &shoal, &swarm);
    ExitCode::SUCCESS
}

fn shoal_binary(given: Option<&Path>) -> Result<PathBuf> {
    let bin = match given {
        Some(b) => b.to_owned(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .join("shoal"),
    };
    if !bin.is_file() {
        bail!(
            "{} is missing: cargo build --release (or pass --shoal PATH)",
            bin.display()
        );
    }
    Ok(bin)
}

// ---------------------------------------------------------------------------------------------
// The load: a few clients on the published port, each answer kept with its start time.
// ---------------------------------------------------------------------------------------------

/// When a request started, and the body it got or why it failed.
type Answer = (Instant, Result<String, String>);

struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..3)
            .map(|_| {
                let (stop, answers) = (stop.clone(), answers.clone());
                std::thread::spawn(move || {
                    let began = Instant::now();
                    while !stop.load(Ordering::Relaxed) && began.elapsed() < TIMEOUT {
                        let at = Instant::now();
                        let answer = http_get(port);
                        if let Ok(mut a) = answers.lock() {
                            a.push((at, answer));
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Load {
            stop,
            answers,
            threads,
        }
    }

    fn finish(mut self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let mut answers = self
            .answers
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default();
        answers.sort_by_key(|a| a.0);
        answers
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn count_failed(answers: &[Answer]) -> u64 {
    answers.iter().filter(|a| a.1.is_err()).count() as u64
}

// ---------------------------------------------------------------------------------------------
// shoal
// ---------------------------------------------------------------------------------------------

struct ShoalFigures {
    rolling: Vec<Figure>,
    /// `service promote` → first request answered by green.
    switch: Figure,
    /// `service rollback` after the switch → first request answered by blue again.
    rollback: Figure,
    version: String,
}

fn json(cmd: &mut Command) -> Result<serde_json::Value> {
    let out = run(cmd)?;
    serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))
}

fn measure_shoal(bin: &Path, tag: &str, args: &Args) -> Result<ShoalFigures> {
    eprintln!("rollout-bench: measuring shoal");
    // Networks, nft table and addresses of its own: nothing shared with another daemon.
    let octet = 100 + u8::from_str_radix(&tag[..2], 16).unwrap_or(0) % 150;
    let extra: Vec<String> = [
        "--network-prefix",
        &format!("r{}", &tag[..4]),
        "--nft-table",
        &format!("shoal-rb-{tag}"),
        "--default-address-pool",
        &format!("base=10.{octet}.0.0/16,size=24"),
        "--dns-upstream",
        "none",
        // Swarm's default heartbeat: on a shared, loaded 2-core machine shoal's 500 ms made the
        // single node look down now and then, which reschedules everything.
        "--heartbeat",
        "5s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _networks = NetworkLeftovers {
        link_prefix: format!("r{}-", &tag[..4]),
        nft_prefix: format!("shoal-rb-{tag}"),
    };
    let mut d = shoal::Shoal::start_with(bin, tag, &extra)?;
    let version = d.version();
    let result = shoal_scenarios(&d, args);
    if result.is_err() {
        d.failed = true;
    }
    drop(d);
    result.map(|(rolling, switch, rollback)| ShoalFigures {
        rolling,
        switch,
        rollback,
        version,
    })
}

/// The daemon's bridges and nftables tables, which outlive it by design (published ports keep
/// working across daemon restarts): removed when the bench is done with shoal.
struct NetworkLeftovers {
    link_prefix: String,
    nft_prefix: String,
}

impl Drop for NetworkLeftovers {
    fn drop(&mut self) {
        if let Ok(links) = run(Command::new("ip").args(["-o", "link", "show"])) {
            for name in links
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n))
                .filter(|n| n.starts_with(&self.link_prefix))
            {
                if let Err(e) = run(Command::new("ip").args(["link", "del", name])) {
                    eprintln!("rollout-bench: cleanup: {e:#}");
                }
            }
        }
        if let Ok(tables) = run(Command::new("nft").args(["list", "tables"])) {
            for line in tables.lines() {
                let mut words = line.split_whitespace().skip(1);
                let (Some(family), Some(name)) = (words.next(), words.next()) else {
                    continue;
                };
                if name.starts_with(&self.nft_prefix) {
                    if let Err(e) = run(Command::new("nft").args(["delete", "table", family, name]))
                    {
                        eprintln!("rollout-bench: cleanup: {e:#}");
                    }
                }
            }
        }
    }
}

const SERVICE: &str = "rb-web";

fn shoal_scenarios(d: &shoal::Shoal, args: &Args) -> Result<(Vec<Figure>, Figure, Figure)> {
    run(d.cli().args(["image", "tag", "busybox", "busybox:v2"]))?;
    let replicas = args.replicas.to_string();
    run(d.cli().args([
        "service",
        "create",
        "-d",
        "--name",
        SERVICE,
        "--replicas",
        &replicas,
        "--init",
        "--stop-grace-period",
        "1s",
        "-p",
        "80",
        "-e",
        "VERSION=v0",
        "busybox",
        "sh",
        "-c",
        HTTPD,
    ]))?;
    let tasks = |d: &shoal::Shoal| -> Result<Vec<serde_json::Value>> {
        Ok(
            json(d.cli().args(["service", "ps", SERVICE, "--format", "json"]))?
                .as_array()
                .cloned()
                .unwrap_or_default(),
        )
    };
    let running_of = |tasks: &[serde_json::Value], image: &str| {
        tasks
            .iter()
            .filter(|t| {
                t["status"]["state"] == "running" && t["spec"]["container"]["image"] == image
            })
            .count() as u64
    };
    poll(
        "the service's tasks to run",
        TIMEOUT,
        || Ok((running_of(&tasks(d)?, "busybox") == args.replicas).then_some(())),
        || {
            format!(
                "{} running",
                tasks(d).map(|t| running_of(&t, "busybox")).unwrap_or(0)
            )
        },
    )?;
    let port = tasks(d)?
        .iter()
        .find_map(|t| t["status"]["ports"][0]["published_port"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .context("no published port")?;
    poll(
        "the published port to answer",
        TIMEOUT,
        || Ok(http_get(port).ok()),
        String::new,
    )?;

    // Rolling updates: alternate between two tags of the same image. `runs` rounds without
    // load (as Swarm's), then one under load.
    let status = |d: &shoal::Shoal| -> Result<serde_json::Value> {
        Ok(json(d.cli().args(["service", "inspect", SERVICE]))?[0]["update_status"].clone())
    };
    let mut image = "busybox";
    let mut rolling = Vec::new();
    for (label, order, drain) in ROLLING {
        let mut figure = Figure::default();
        for round in 1..=args.runs + 1 {
            let loaded = round > args.runs;
            let (old, new) = (
                image,
                if image == "busybox" {
                    "busybox:v2"
                } else {
                    "busybox"
                },
            );
            let load = loaded.then(|| Load::start(port));
            std::thread::sleep(Duration::from_millis(200));
            let start = Instant::now();
            let mut cmd = d.cli();
            cmd.args([
                "service",
                "update",
                "-d",
                "--image",
                new,
                "--update-order",
                order,
                "--update-parallelism",
                PARALLELISM,
                "--update-delay",
                "0s",
                "--update-monitor",
                "0s",
            ]);
            if let Some(drain) = drain {
                cmd.args(["--update-drain", drain]);
            }
            run(cmd.arg(SERVICE))?;
            // The cheap question first (the update's state), the task list only at the end:
            // polling hundreds of tasks every 25 ms would cost the daemon more than the work.
            poll(
                &format!("shoal's {label} update to complete"),
                TIMEOUT,
                || Ok((status(d)?["state"] == "completed").then_some(())),
                || status(d).map(|s| s.to_string()).unwrap_or_default(),
            )?;
            poll(
                &format!("the old tasks of shoal's {label} update to stop"),
                TIMEOUT,
                || {
                    let t = tasks(d)?;
                    Ok(
                        (running_of(&t, new) == args.replicas && running_of(&t, old) == 0)
                            .then_some(()),
                    )
                },
                || {
                    let t = tasks(d).unwrap_or_default();
                    format!(
                        "{} new running, {} old running",
                        running_of(&t, new),
                        running_of(&t, old)
                    )
                },
            )?;
            let took = start.elapsed();
            image = new;
            let Some(load) = load else {
                eprintln!(
                    "  shoal {label} {round}/{}: {:.0} ms",
                    args.runs,
                    took.as_secs_f64() * 1000.0
                );
                figure.times.push(took);
                continue;
            };
            std::thread::sleep(Duration::from_millis(200));
            let answers = load.finish();
            let failed = count_failed(&answers);
            eprintln!(
                "  shoal {label} under load: {:.0} ms, {failed} of {} requests failed",
                took.as_secs_f64() * 1000.0,
                answers.len()
            );
            figure.loaded = Some(took);
            figure.failed += failed;
            figure.requests += answers.len() as u64;
        }
        rolling.push(figure);
    }

    // Blue-green: green beside blue, promoted by hand, then rolled back to the kept blue.
    let (mut switch, mut rollback) = (Figure::default(), Figure::default());
    for round in 1..=args.switch_runs {
        let green = format!("bg{round}");
        run(d.cli().args([
            "service",
            "update",
            "-d",
            "--env-add",
            &format!("VERSION={green}"),
            "--update-strategy",
            "blue-green",
            "--update-promote",
            "manual",
            "--update-keep-blue",
            "10m",
            "--update-monitor",
            "0s",
            SERVICE,
        ]))?;
        poll(
            "green to be ready",
            TIMEOUT,
            || Ok((status(d)?["phase"] == "ready").then_some(())),
            || status(d).map(|s| s.to_string()).unwrap_or_default(),
        )?;
        for (what, figure, target) in [
            ("promote", &mut switch, green.as_str()),
            ("rollback", &mut rollback, "v0"),
        ] {
            let load = Load::start(port);
            std::thread::sleep(Duration::from_millis(300));
            let asked = Instant::now();
            run(d.cli().args(["service", what, "-d", SERVICE]))?;
            std::thread::sleep(Duration::from_millis(700));
            let answers = load.finish();
            let first = answers
                .iter()
                .find(|a| a.0 >= asked && a.1.as_deref() == Ok(target))
                .map(|a| a.0.duration_since(asked))
                .with_context(|| {
                    format!("no request answered by {target} after `service {what}`")
                })?;
            let failed = count_failed(&answers);
            eprintln!(
                "  shoal blue-green {what} {round}/{}: traffic moved after {:.1} ms, {failed} of {} requests failed",
                args.switch_runs,
                first.as_secs_f64() * 1000.0,
                answers.len()
            );
            figure.times.push(first);
            figure.failed += failed;
            figure.requests += answers.len() as u64;
        }
        poll(
            "the rollback to complete",
            TIMEOUT,
            || Ok((status(d)?["state"] == "rollback_completed").then_some(())),
            || status(d).map(|s| s.to_string()).unwrap_or_default(),
        )?;
    }
    Ok((rolling, switch, rollback))
}

// ---------------------------------------------------------------------------------------------
// Docker Swarm
// ---------------------------------------------------------------------------------------------

/// What this bench made in Docker; Drop removes it (and leaves the swarm it initialised).
struct SwarmGuard {
    initialised: bool,
    image: String,
    imported: bool,
    service: Option<String>,
    dir: PathBuf,
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        if let Some(service) = self.service.take() {
            if let Err(e) = run(Command::new("docker").args(["service", "rm", &service])) {
                eprintln!("rollout-bench: cleanup: {e:#}");
            }
            let left = || {
                run(Command::new("docker").args([
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=com.docker.swarm.service.name={service}"),
                ]))
                .map(|o| o.split_whitespace().count())
                .unwrap_or(0)
            };
            if let Err(e) = poll_during_cleanup(
                "the bench's Swarm containers to be removed",
                Duration::from_secs(120),
                || Ok((left() == 0).then_some(())),
                || format!("{} left", left()),
            ) {
                eprintln!("rollout-bench: cleanup: {e:#}");
            }
        }
        if self.imported {
            for t in ["v1", "v2"] {
                let _ = run(Command::new("docker").args([
                    "image",
                    "rm",
                    &format!("{}:{t}", self.image),
                ]));
            }
        }
        if self.initialised {
            if let Err(e) = run(Command::new("docker").args(["swarm", "leave", "--force"])) {
                eprintln!("rollout-bench: cleanup: {e:#}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct SwarmFigures {
    rolling: Vec<Figure>,
    version: String,
}

fn measure_swarm(tag: &str, args: &Args) -> Result<SwarmFigures> {
    eprintln!("rollout-bench: measuring Docker Swarm");
    let dir = std::env::temp_dir().join(format!("rollout-bench-swarm-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let mut guard = SwarmGuard {
        initialised: false,
        image: format!("shoal-rollout-bench-{tag}"),
        imported: false,
        service: None,
        dir: dir.clone(),
    };
    let state = run(Command::new("docker").args([
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ]))?;
    match state.trim() {
        "inactive false" | "inactive" => {
            run(Command::new("docker").args(["swarm", "init", "--advertise-addr", "127.0.0.1"]))?;
            guard.initialised = true;
        }
        "active true" => {}
        other => bail!(
            "this Docker engine is in swarm state `{other}`: the bench needs a manager or no swarm"
        ),
    }
    let tarball = dir.join("busybox-rootfs.tar");
    swarm::write_busybox_rootfs(Path::new("/bin/busybox"), &tarball)?;
    let v1 = format!("{}:v1", guard.image);
    let v2 = format!("{}:v2", guard.image);
    run(Command::new("docker").arg("import").arg(&tarball).arg(&v1))?;
    guard.imported = true;
    run(Command::new("docker").args(["tag", &v1, &v2]))?;
    let version = run(Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();

    let service = format!("rb-{tag}");
    let replicas = args.replicas.to_string();
    run(Command::new("docker").args([
        "service",
        "create",
        "-d",
        "--no-resolve-image",
        "--name",
        &service,
        "--replicas",
        &replicas,
        "--init",
        "--stop-grace-period",
        "1s",
        "-e",
        "VERSION=v0",
        &v1,
        "sh",
        "-c",
        HTTPD,
    ]))?;
    guard.service = Some(service.clone());
    // (image, desired, current) of every task.
    let tasks = || -> Result<Vec<(String, String, String)>> {
        let out = run(Command::new("docker").args([
            "service",
            "ps",
            &service,
            "--format",
            "{{.Image}}|{{.DesiredState}}|{{.CurrentState}}",
        ]))?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut f = l.split('|');
                Some((
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                ))
            })
            .collect())
    };
    let running_of = |tasks: &[(String, String, String)], image: &str| {
        tasks
            .iter()
            .filter(|t| t.0 == image && t.2.starts_with("Running"))
            .count() as u64
    };
    poll(
        "Swarm's tasks to run",
        TIMEOUT,
        || Ok((running_of(&tasks()?, &v1) == args.replicas).then_some(())),
        || {
            format!(
                "{} running",
                tasks().map(|t| running_of(&t, &v1)).unwrap_or(0)
            )
        },
    )?;

    let mut image = v1.clone();
    let mut rolling = Vec::new();
    for (label, order, drain) in ROLLING {
        if drain.is_some() {
            continue; // shoal's own knob
        }
        let mut figure = Figure::default();
        for round in 1..=args.runs {
            let new = if image == v1 { v2.clone() } else { v1.clone() };
            let update_status = || {
                run(Command::new("docker").args([
                    "service",
                    "inspect",
                    "--format",
                    "{{if .UpdateStatus}}{{.UpdateStatus.State}} {{.UpdateStatus.StartedAt}}{{end}}",
                    &service,
                ]))
                .map(|s| s.trim().to_string())
            };
            let before = update_status()?;
            let start = Instant::now();
            run(Command::new("docker").args([
                "service",
                "update",
                "-d",
                "--no-resolve-image",
                "--image",
                &new,
                "--update-order",
                order,
                "--update-parallelism",
                PARALLELISM,
                "--update-delay",
                "0s",
                "--update-monitor",
                "0s",
                &service,
            ]))?;
            // As on shoal: the update's state first (a new one, completed), then the tasks.
            poll(
                &format!("Swarm's {label} update to complete"),
                TIMEOUT,
                || {
                    let now = update_status()?;
                    Ok((now != before && now.starts_with("completed")).then_some(()))
                },
                || update_status().unwrap_or_default(),
            )?;
            poll(
                &format!("the old tasks of Swarm's {label} update to stop"),
                TIMEOUT,
                || {
                    let t = tasks()?;
                    Ok(
                        (running_of(&t, &new) == args.replicas && running_of(&t, &image) == 0)
                            .then_some(()),
                    )
                },
                || {
                    let t = tasks().unwrap_or_default();
                    format!(
                        "{} new running, {} old running",
                        running_of(&t, &new),
                        running_of(&t, &image)
                    )
                },
            )?;
            let took = start.elapsed();
            eprintln!(
                "  swarm {label} {round}/{}: {:.0} ms",
                args.runs,
                took.as_secs_f64() * 1000.0
            );
            figure.times.push(took);
            image = new;
        }
        rolling.push(figure);
    }
    Ok(SwarmFigures { rolling, version })
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

fn ms(stats: Option<Stats>) -> String {
    match stats {
        Some(s) if s.median_ms >= 1000.0 => format!(
            "{:.2} s ({:.2}–{:.2})",
            s.median_ms / 1000.0,
            s.min_ms / 1000.0,
            s.max_ms / 1000.0
        ),
        Some(s) => format!("{:.1} ms ({:.1}–{:.1})", s.median_ms, s.min_ms, s.max_ms),
        None => "n/a".into(),
    }
}

fn report(args: &Args, shoal: &ShoalFigures, swarm: &Result<SwarmFigures, String>) {
    println!("shoal: {}", shoal.version);
    match swarm {
        Ok(s) => println!(
            "Docker Swarm: {} (host-mode, no published port: see the notes)",
            s.version
        ),
        Err(why) => println!("Docker Swarm: not measured ({why})"),
    }
    let mut rows = Vec::new();
    let mut swarm_index = 0;
    let mut ratios_ok = true;
    for ((label, _, drain), figure) in ROLLING.iter().zip(&shoal.rolling) {
        let ours = Stats::of(&figure.times);
        let (theirs, ratio) = match (swarm, drain) {
            (Ok(s), None) => {
                let theirs = s.rolling.get(swarm_index).and_then(|f| Stats::of(&f.times));
                swarm_index += 1;
                let ratio = match (ours, theirs) {
                    (Some(o), Some(t)) if o.median_ms > 0.0 => {
                        let r = t.median_ms / o.median_ms;
                        ratios_ok &= r >= 5.0;
                        format!("{r:.1}×")
                    }
                    _ => "n/a".into(),
                };
                (ms(theirs), ratio)
            }
            _ => ("–".into(), "–".into()),
        };
        let loaded = figure
            .loaded
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or_else(|| "n/a".into());
        rows.push(vec![
            format!("{label} ({} tasks)", args.replicas),
            ms(ours),
            theirs,
            ratio,
            format!("{loaded}, {} of {} failed", figure.failed, figure.requests),
        ]);
    }
    for (label, figure) in [
        (
            "blue-green: `service promote` → first green answer",
            &shoal.switch,
        ),
        (
            "blue-green: `service rollback` → first blue answer",
            &shoal.rollback,
        ),
    ] {
        rows.push(vec![
            label.to_string(),
            ms(Stats::of(&figure.times)),
            "(no blue-green)".into(),
            "–".into(),
            format!(
                "(all runs), {} of {} failed",
                figure.failed, figure.requests
            ),
        ]);
    }
    println!();
    println!(
        "{}",
        table::format_table(
            &[
                "scenario",
                "shoal median (min–max)",
                "Swarm median (min–max)",
                "Swarm/shoal",
                "shoal under load: time, requests",
            ],
            &rows
        )
    );
    let failed: u64 = shoal
        .rolling
        .iter()
        .chain([&shoal.switch, &shoal.rollback])
        .map(|f| f.failed)
        .sum();
    let switch_ms = Stats::of(&shoal.switch.times).map_or(f64::MAX, |s| s.median_ms);
    println!();
    println!(
        "targets: rolling ≤ 1/5 of Swarm's time: {}; 0 failed requests: {}; switch ≤ 100 ms: {} ({:.1} ms median, measured from the start of the CLI command)",
        match swarm {
            Ok(_) if ratios_ok => "met",
            Ok(_) => "NOT met",
            Err(_) => "not compared",
        },
        if failed == 0 { "met" } else { "NOT met (see the rows)" },
        if switch_ms <= 100.0 { "met" } else { "NOT met" },
        switch_ms
    );
    println!(
        "notes: a rollout is done when every task runs the new image and no old task still runs (shoal's draining tasks count as running: its drain (at most 2 s by default, ended early once a task serves nobody) is in the first two rows). The medians are of rounds without load, as Swarm's; one more round per row runs under a load of 3 clients on shoal's published port (a fresh connection per request), and every blue-green round does. shoal runs with Swarm's default heartbeat (5 s)."
    );
}
