//! compose-bench: `shoal compose up -d --wait` and `down` of a 3-service and a 10-service
//! project, against Debian's `docker-compose` (v1) `up -d` / `down` of the same services on the
//! local dockerd, in the same run. Medians of `--runs` runs per side and size; the ratios
//! (docker-compose / shoal) against the targets: up ≥ 6×, down ≥ 4×.
//!
//! Same method for both: start the clock, run the command, then poll until every service's
//! container runs (up) or every container of the project is gone (down), stop the clock. The
//! poll usually finds the work done, since `up --wait` / `up -d` / `down` return only then;
//! it is there so neither side is credited for work left running in the background.
//! Services: busybox `sleep` with `init: true` and `stop_grace_period: 1s`, so a stop never
//! waits out a grace period. One untimed warm-up round per side and size comes first.
//!
//! The files are the same but for the top-level `name:`, which docker-compose v1 rejects: its
//! file has none and it gets `-p NAME`. shoal runs as a private daemon (own data dir, socket,
//! cgroup parent), stopped before Docker is touched. Docker's side uses the dockerd that
//! already runs (never started or stopped here), with the image `shoal-bench-busybox:latest`
//! imported from a busybox-static rootfs if it is missing (and then removed at the end); what
//! a failed run leaves is removed with `docker-compose down`. Run as root.

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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use stats::Stats;
use util::{on_path, poll, poll_during_cleanup, run, succeeds};

/// The project sizes measured.
const SIZES: [usize; 2] = [3, 10];
/// Targets from the issue: docker-compose's time over shoal's.
const UP_GOAL: f64 = 6.0;
const DOWN_GOAL: f64 = 4.0;
/// How long one up or down may take before the run is declared stuck.
const TIMEOUT: Duration = Duration::from_secs(180);
const PEER: &str = "docker-compose";

#[derive(Parser)]
#[command(
    name = "compose-bench",
    about = "shoal compose up/down against docker-compose up -d/down, 3 and 10 services"
)]
struct Args {
    /// Timed runs per side and project size; the table shows medians (at least 5).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// The shoal binary [default: `shoal` next to this binary, i.e. target/release/shoal].
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Measure shoal only.
    #[arg(long)]
    no_docker: bool,
}

/// One side's timings, per project size: (size, up samples, down samples).
#[derive(Default)]
struct Samples {
    up: Vec<(usize, Vec<Duration>)>,
    down: Vec<(usize, Vec<Duration>)>,
}

impl Samples {
    fn of(&self, up: bool, size: usize) -> &[Duration] {
        let list = if up { &self.up } else { &self.down };
        list.iter()
            .find(|(s, _)| *s == size)
            .map_or(&[][..], |(_, d)| d.as_slice())
    }

    fn push(&mut self, up: bool, size: usize, d: Duration) {
        let list = if up { &mut self.up } else { &mut self.down };
        match list.iter_mut().find(|(s, _)| *s == size) {
            Some((_, v)) => v.push(d),
            None => list.push((size, vec![d])),
        }
    }
}

/// What one side produced, and why it stopped short if it did.
struct Side {
    samples: Samples,
    about: String,
    problem: Option<Problem>,
}

enum Problem {
    Skipped(String),
    Failed(anyhow::Error),
}

impl Side {
    fn not_run(about: &str, problem: Problem) -> Side {
        Side {
            samples: Samples::default(),
            about: about.into(),
            problem: Some(problem),
        }
    }
}

/// A system that can bring a compose project up and down.
trait Composer {
    /// The compose file of `project` with `size` services, written where this side wants it.
    fn write_file(&mut self, project: &str, size: usize) -> Result<PathBuf>;
    /// `up` (detached, and for shoal `--wait`), returning once the command does.
    fn up(&mut self, file: &Path, project: &str) -> Result<()>;
    /// How many of the project's containers run now.
    fn running(&mut self, project: &str) -> Result<usize>;
    /// `down`, returning once the command does.
    fn down(&mut self, file: &Path, project: &str) -> Result<()>;
    /// How many of the project's containers exist now (in any state).
    fn remaining(&mut self, project: &str) -> Result<usize>;
}

fn main() -> ExitCode {
    util::install_sigint_handler();
    let args = Args::parse();
    let runs = args.runs as usize;
    let tag = util::unique_tag();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("compose-bench: run as root (the shoal daemon needs it)");
        return ExitCode::FAILURE;
    }

    println!(
        "compose-bench: compose up until all running, and down, of {} services; median of {runs} \
         runs per side and size (after one warm-up); polled every {} ms",
        SIZES.map(|s| s.to_string()).join(" and "),
        util::POLL.as_millis()
    );
    println!("machine: {}", util::machine());
    if runs < 5 {
        println!("warning: fewer than 5 runs; a median of {runs} is not a figure to quote");
    }

    eprintln!("compose-bench: measuring shoal");
    let shoal = shoal_side(args.shoal.as_deref(), &tag, runs);
    let docker = if args.no_docker {
        Side::not_run("skipped", Problem::Skipped("--no-docker".into()))
    } else if util::interrupted() {
        Side::not_run("skipped", Problem::Skipped("interrupted".into()))
    } else if let Some(why) = docker_unavailable() {
        Side::not_run("skipped", Problem::Skipped(why))
    } else {
        eprintln!("compose-bench: measuring {PEER}");
        docker_side(&tag, runs)
    };

    println!("shoal: {}", shoal.about);
    println!("{PEER}: {}", docker.about);
    println!();
    print_table(&shoal, &docker);

    let mut ok = true;
    for (name, side) in [("shoal", &shoal), (PEER, &docker)] {
        match &side.problem {
            None => {}
            Some(Problem::Skipped(why)) => println!("{name}: skipped: {why}"),
            Some(Problem::Failed(e)) => {
                ok = false;
                println!("{name}: FAILED: {e:#}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `size` services `s1..sN`, each a busybox `sleep` that stops at once; `name:` only when
/// given (docker-compose v1 rejects it).
fn compose_file(name: Option<&str>, image: &str, size: usize) -> String {
    let mut yaml = String::new();
    if let Some(name) = name {
        yaml += &format!("name: {name}\n");
    }
    yaml += "services:\n";
    for i in 1..=size {
        yaml += &format!(
            "  s{i}:\n    image: {image}\n    command: [\"sleep\", \"100000\"]\n    init: true\n    stop_grace_period: 1s\n"
        );
    }
    yaml
}

/// Warm-up, then `runs` timed rounds of up and down per size. Returns what was measured so
/// far together with the first error, if any.
fn measure(
    system: &str,
    c: &mut dyn Composer,
    prefix: &str,
    runs: usize,
) -> (Samples, Option<anyhow::Error>) {
    let mut samples = Samples::default();
    for size in SIZES {
        let project = format!("{prefix}n{size}");
        let file = match c.write_file(&project, size) {
            Ok(f) => f,
            Err(e) => return (samples, Some(e)),
        };
        for round in 0..=runs {
            let result = one_round(c, &file, &project, size)
                .with_context(|| format!("{system}, {size} services, run {round} of {runs}"));
            let (up, down) = match result {
                Ok(t) => t,
                Err(e) => {
                    // Leave nothing behind for the next size or side.
                    let _ = c.down(&file, &project);
                    return (samples, Some(e));
                }
            };
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            if round == 0 {
                eprintln!(
                    "  {system} {size} services, warm-up: up {:.0} ms, down {:.0} ms",
                    ms(up),
                    ms(down)
                );
                continue;
            }
            eprintln!(
                "  {system} {size} services, run {round}/{runs}: up {:.0} ms, down {:.0} ms",
                ms(up),
                ms(down)
            );
            samples.push(true, size, up);
            samples.push(false, size, down);
        }
    }
    (samples, None)
}

fn one_round(
    c: &mut dyn Composer,
    file: &Path,
    project: &str,
    size: usize,
) -> Result<(Duration, Duration)> {
    let start = Instant::now();
    c.up(file, project)?;
    let seen = std::cell::Cell::new(0);
    poll(
        &format!("{size} running containers of {project}"),
        TIMEOUT,
        || {
            let n = c.running(project)?;
            seen.set(n);
            Ok((n == size).then_some(()))
        },
        || format!("{} running", seen.get()),
    )?;
    let up = start.elapsed();

    let start = Instant::now();
    c.down(file, project)?;
    poll(
        &format!("no container of {project} left"),
        TIMEOUT,
        || {
            let n = c.remaining(project)?;
            seen.set(n);
            Ok((n == 0).then_some(()))
        },
        || format!("{} left", seen.get()),
    )?;
    Ok((up, start.elapsed()))
}

// ---- shoal ----

struct ShoalComposer {
    daemon: shoal::Shoal,
    dir: tempfile::TempDir,
}

impl Composer for ShoalComposer {
    fn write_file(&mut self, project: &str, size: usize) -> Result<PathBuf> {
        let file = self.dir.path().join(format!("{project}.yaml"));
        std::fs::write(&file, compose_file(Some(project), "busybox", size))
            .with_context(|| format!("writing {}", file.display()))?;
        Ok(file)
    }

    fn up(&mut self, file: &Path, _project: &str) -> Result<()> {
        run(self
            .daemon
            .cli()
            .args(["compose", "-f"])
            .arg(file)
            .args(["up", "-d", "--wait"]))?;
        Ok(())
    }

    fn running(&mut self, project: &str) -> Result<usize> {
        let out = run(self
            .daemon
            .cli()
            .args(["service", "ls", "--format", "json"]))?;
        let list: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("`shoal service ls --format json` printed no JSON: {out}"))?;
        let prefix = format!("{project}_");
        Ok(list
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|s| {
                        s.pointer("/service/spec/name")
                            .and_then(|n| n.as_str())
                            .is_some_and(|n| n.starts_with(&prefix))
                    })
                    .map(|s| s.get("running").and_then(|r| r.as_u64()).unwrap_or(0) as usize)
                    .sum()
            })
            .unwrap_or(0))
    }

    fn down(&mut self, file: &Path, _project: &str) -> Result<()> {
        run(self
            .daemon
            .cli()
            .args(["compose", "-f"])
            .arg(file)
            .arg("down"))?;
        Ok(())
    }

    /// The agent's container state dirs: one per container until it is removed (only this
    /// project's containers exist on this private daemon).
    fn remaining(&mut self, _project: &str) -> Result<usize> {
        Ok(self.daemon.containers_left())
    }
}

fn shoal_side(bin: Option<&Path>, tag: &str, runs: usize) -> Side {
    let bin = match shoal_binary(bin) {
        Ok(bin) => bin,
        Err(e) => return Side::not_run("not run", Problem::Failed(e)),
    };
    let daemon = match shoal::Shoal::start(&bin, &format!("c{tag}")) {
        Ok(d) => d,
        Err(e) => {
            return Side::not_run(
                &format!("not run ({})", bin.display()),
                Problem::Failed(e.context("starting the shoal daemon")),
            )
        }
    };
    let dir = match tempfile::Builder::new().prefix("compose-bench-").tempdir() {
        Ok(d) => d,
        Err(e) => return Side::not_run("not run", Problem::Failed(e.into())),
    };
    let about = format!(
        "{} ({}; private daemon, `compose up -d --wait` / `compose down`)",
        daemon.version(),
        bin.display()
    );
    let mut composer = ShoalComposer { daemon, dir };
    let (samples, error) = measure("shoal", &mut composer, &format!("cb{tag}"), runs);
    composer.daemon.failed = error.is_some();
    drop(composer);
    Side {
        samples,
        about,
        problem: error.map(Problem::Failed),
    }
}

/// `--shoal`, else `shoal` in the directory of this binary (target/release when run by cargo).
fn shoal_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    let bin = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot tell where this binary is; pass --shoal PATH")?
            .with_file_name("shoal"),
    };
    if !bin.is_file() {
        bail!(
            "no shoal binary at {}: build it with `cargo build --release -p shoal --bin shoal`, \
             or pass --shoal PATH",
            bin.display()
        );
    }
    Ok(bin)
}

// ---- docker-compose ----

/// Why docker-compose cannot be measured here, if it cannot.
fn docker_unavailable() -> Option<String> {
    if !on_path(PEER) {
        return Some(format!(
            "{PEER} is not installed; to compare: apt-get install -y docker-compose"
        ));
    }
    if !on_path("docker") || !succeeds(Command::new("docker").arg("info")) {
        return Some(
            "no running Docker engine answers `docker info` (the bench uses the running dockerd \
             and never starts one; docker.io provides it)"
                .into(),
        );
    }
    None
}

struct DockerComposer {
    dir: tempfile::TempDir,
    /// Projects brought up at least once: Drop makes sure they are down.
    projects: BTreeSet<(String, PathBuf)>,
    imported_image: bool,
}

impl DockerComposer {
    fn start() -> Result<DockerComposer> {
        let dir = tempfile::Builder::new()
            .prefix("compose-bench-docker-")
            .tempdir()
            .context("creating a temp dir")?;
        let mut me = DockerComposer {
            dir,
            projects: BTreeSet::new(),
            imported_image: false,
        };
        if !succeeds(Command::new("docker").args(["image", "inspect", swarm::IMAGE])) {
            let tarball = me.dir.path().join("busybox-rootfs.tar");
            swarm::write_busybox_rootfs(Path::new(swarm::BUSYBOX), &tarball)?;
            run(Command::new("docker")
                .arg("import")
                .arg(&tarball)
                .arg(swarm::IMAGE))
            .context("`docker import` of the busybox rootfs failed")?;
            me.imported_image = true;
        }
        Ok(me)
    }

    fn containers(&self, project: &str, only_running: bool) -> Result<usize> {
        let mut cmd = Command::new("docker");
        cmd.args(["ps", "-q", "--filter"])
            .arg(format!("label=com.docker.compose.project={project}"));
        if !only_running {
            cmd.arg("-a");
        }
        Ok(run(&mut cmd)?.split_whitespace().count())
    }

    fn compose(file: &Path, project: &str) -> Command {
        let mut cmd = Command::new(PEER);
        cmd.arg("-f").arg(file).args(["-p", project]);
        cmd
    }
}

impl Composer for DockerComposer {
    fn write_file(&mut self, project: &str, size: usize) -> Result<PathBuf> {
        let file = self.dir.path().join(format!("{project}.yaml"));
        std::fs::write(&file, compose_file(None, swarm::IMAGE, size))
            .with_context(|| format!("writing {}", file.display()))?;
        Ok(file)
    }

    fn up(&mut self, file: &Path, project: &str) -> Result<()> {
        self.projects
            .insert((project.to_string(), file.to_path_buf()));
        run(Self::compose(file, project).args(["up", "-d"]))?;
        Ok(())
    }

    fn running(&mut self, project: &str) -> Result<usize> {
        self.containers(project, true)
    }

    fn down(&mut self, file: &Path, project: &str) -> Result<()> {
        run(Self::compose(file, project).arg("down"))?;
        Ok(())
    }

    fn remaining(&mut self, project: &str) -> Result<usize> {
        self.containers(project, false)
    }
}

impl Drop for DockerComposer {
    fn drop(&mut self) {
        for (project, file) in std::mem::take(&mut self.projects) {
            if self.containers(&project, false).unwrap_or(0) == 0 {
                continue;
            }
            if let Err(e) = run(Self::compose(&file, &project).args(["down", "-v"])) {
                eprintln!("compose-bench: cleanup: {e:#}");
            }
            let _ = poll_during_cleanup(
                "the bench's containers to be removed",
                Duration::from_secs(60),
                || Ok((self.containers(&project, false)? == 0).then_some(())),
                || "containers left".into(),
            );
        }
        if self.imported_image {
            if let Err(e) = run(Command::new("docker").args(["image", "rm", swarm::IMAGE])) {
                eprintln!("compose-bench: cleanup: {e:#}");
            }
        }
    }
}

fn docker_side(tag: &str, runs: usize) -> Side {
    let mut composer = match DockerComposer::start() {
        Ok(c) => c,
        Err(e) => {
            return Side::not_run(
                "not run",
                Problem::Failed(e.context("preparing Docker's side")),
            )
        }
    };
    let version = |cmd: &mut Command| {
        run(cmd)
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    };
    let mut about = format!(
        "{PEER} {} on Docker {} (`up -d` / `down`, file without `name:`, `-p NAME`), image {}",
        version(Command::new(PEER).args(["version", "--short"])),
        version(Command::new("docker").args(["version", "--format", "{{.Server.Version}}"])),
        swarm::IMAGE
    );
    if composer.imported_image {
        about += " (docker import, removed at the end)";
    }
    let (samples, error) = measure(PEER, &mut composer, &format!("cbd{tag}"), runs);
    drop(composer);
    Side {
        samples,
        about,
        problem: error.map(Problem::Failed),
    }
}

// ---- report ----

fn print_table(shoal: &Side, docker: &Side) {
    let header = [
        "scenario",
        "shoal median (ms)",
        "shoal runs (ms)",
        "docker-compose median (ms)",
        "docker-compose runs (ms)",
        "docker-compose/shoal",
    ];
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    for up in [true, false] {
        for size in SIZES {
            let name = format!("{} {size} services", if up { "up" } else { "down" });
            let goal = if up { UP_GOAL } else { DOWN_GOAL };
            let a = Stats::of(shoal.samples.of(up, size));
            let b = Stats::of(docker.samples.of(up, size));
            rows.push(vec![
                name.clone(),
                median(a),
                range(a),
                median(b),
                range(b),
                ratio(a, b, goal),
            ]);
            for (system, side) in [("shoal", shoal), (PEER, docker)] {
                let ms: Vec<String> = side
                    .samples
                    .of(up, size)
                    .iter()
                    .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
                    .collect();
                if !ms.is_empty() {
                    raw.push(format!("  {name}, {system}: {}", ms.join(", ")));
                }
            }
        }
    }
    table::print_with_runs(&header, &rows, &raw);
}

fn ratio(shoal: Option<Stats>, peer: Option<Stats>, goal: f64) -> String {
    match (shoal, peer) {
        (Some(a), Some(b)) if a.median_ms > 0.0 => {
            let r = b.median_ms / a.median_ms;
            let verdict = if r >= goal { "goal met" } else { "below goal" };
            format!("{r:.1}× ({verdict}: ≥ {goal}×)")
        }
        _ => "-".into(),
    }
}

fn median(s: Option<Stats>) -> String {
    s.map_or("-".into(), |s| format!("{:.0}", s.median_ms))
}

fn range(s: Option<Stats>) -> String {
    s.map_or("-".into(), |s| {
        format!("n={}, {:.0}–{:.0}", s.n, s.min_ms, s.max_ms)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_files_differ_only_in_the_name_key() {
        let ours = compose_file(Some("p"), "busybox", 2);
        let theirs = compose_file(None, "busybox", 2);
        assert_eq!(ours.strip_prefix("name: p\n"), Some(theirs.as_str()));
        assert_eq!(theirs.matches("init: true").count(), 2);
        assert!(theirs.contains("  s2:\n    image: busybox\n"));
    }

    #[test]
    fn samples_are_kept_per_direction_and_size() {
        let mut s = Samples::default();
        s.push(true, 3, Duration::from_millis(5));
        s.push(true, 3, Duration::from_millis(7));
        s.push(false, 10, Duration::from_millis(9));
        assert_eq!(s.of(true, 3).len(), 2);
        assert!(s.of(true, 10).is_empty());
        assert_eq!(s.of(false, 10), [Duration::from_millis(9)]);
    }
}
