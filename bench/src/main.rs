//! shoal-bench: times `service create --replicas 10` until all 10 run, and `service scale` 10→50
//! until all 50 run, on shoal and, when Docker's engine is installed, on Docker Swarm in the same
//! run, and prints the medians side by side. See bench/README.md.

mod scenario;
mod shoal;
mod stats;
mod swarm;
mod table;
mod util;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

use scenario::{measure, Samples, CREATE_REPLICAS, SCALE_REPLICAS};
use stats::Stats;

/// The figure the issue asks for: Swarm's time divided by shoal's, per scenario.
const GOAL_RATIO: f64 = 5.0;

#[derive(Parser)]
#[command(
    name = "shoal-bench",
    about = "Time shoal's service create/scale against Docker Swarm's"
)]
struct Args {
    /// Rounds per system; the table shows medians (use at least 3).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// The shoal binary to drive [default: `shoal` next to this binary, i.e. target/release/shoal].
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Measure shoal only.
    #[arg(long)]
    no_swarm: bool,
}

/// What one system produced: its samples, or why there are none (or fewer than asked).
struct Side {
    samples: Samples,
    /// A one-line description for the header (version, what the bench started).
    about: String,
    /// Why the side was skipped or stopped early.
    problem: Option<Problem>,
}

enum Problem {
    Skipped(String),
    Failed(anyhow::Error),
}

fn main() -> ExitCode {
    util::install_sigint_handler();
    let args = Args::parse();
    let runs = args.runs as usize;
    let tag = util::unique_tag();

    println!("shoal-bench: create {CREATE_REPLICAS} replicas, then scale {CREATE_REPLICAS}→{SCALE_REPLICAS}; median of {runs} runs per system; both polled every {} ms", util::POLL.as_millis());
    println!("machine: {}", util::machine());
    if runs < 3 {
        println!("warning: fewer than 3 runs; a median of {runs} is not a figure to quote");
    }

    eprintln!("shoal-bench: measuring shoal");
    let shoal = shoal_side(args.shoal.as_deref(), &tag, runs);
    // The shoal daemon is stopped (guard dropped) before Docker is touched, so the two never
    // compete for the CPUs.
    let swarm = if args.no_swarm {
        Side::skipped("--no-swarm")
    } else if util::interrupted() {
        Side::skipped("interrupted")
    } else if let Some(why) = swarm::why_unavailable() {
        Side::skipped(&why)
    } else {
        eprintln!("shoal-bench: measuring Docker Swarm");
        swarm_side(&tag, runs)
    };

    println!("shoal: {}", shoal.about);
    println!("swarm: {}", swarm.about);
    println!();
    print_table(&shoal, &swarm);

    let mut ok = true;
    for (name, side) in [("shoal", &shoal), ("swarm", &swarm)] {
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

impl Side {
    fn skipped(why: &str) -> Side {
        Side {
            samples: Samples::default(),
            about: "skipped".into(),
            problem: Some(Problem::Skipped(why.into())),
        }
    }
}

fn shoal_side(bin: Option<&Path>, tag: &str, runs: usize) -> Side {
    let bin = match shoal_binary(bin) {
        Ok(bin) => bin,
        Err(e) => {
            return Side {
                samples: Samples::default(),
                about: "not run".into(),
                problem: Some(Problem::Failed(e)),
            }
        }
    };
    let mut daemon = match shoal::Shoal::start(&bin, tag) {
        Ok(d) => d,
        Err(e) => {
            return Side {
                samples: Samples::default(),
                about: format!("not run ({})", bin.display()),
                problem: Some(Problem::Failed(e.context("starting the shoal daemon"))),
            }
        }
    };
    let about = format!(
        "{} ({}; private daemon, data dir in {})",
        daemon.version(),
        bin.display(),
        std::env::temp_dir().display()
    );
    let (samples, error) = measure("shoal", &mut daemon, &format!("b{tag}-"), runs);
    daemon.failed = error.is_some();
    drop(daemon);
    Side {
        samples,
        about,
        problem: error.map(Problem::Failed),
    }
}

fn swarm_side(tag: &str, runs: usize) -> Side {
    let mut swarm = match swarm::Swarm::start(tag, &format!("sb{tag}-")) {
        Ok(s) => s,
        Err(e) => {
            return Side {
                samples: Samples::default(),
                about: "not run".into(),
                problem: Some(Problem::Failed(e.context("setting up Docker Swarm"))),
            }
        }
    };
    let mut about = format!(
        "Docker {} in swarm mode, image {} (docker import)",
        swarm.version(),
        swarm::IMAGE
    );
    if swarm.started_dockerd() {
        about += "; dockerd started by the bench";
    }
    if swarm.initialised_swarm() {
        about += "; swarm initialised by the bench";
    }
    let prefix = format!("sb{tag}-");
    let (samples, error) = measure("swarm", &mut swarm, &prefix, runs);
    swarm.failed = error.is_some();
    drop(swarm);
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
            "no shoal binary at {}: build it with `cargo build --release` (the workspace root \
             package), or pass --shoal PATH",
            bin.display()
        );
    }
    Ok(bin)
}

fn print_table(shoal: &Side, swarm: &Side) {
    let header = [
        "scenario",
        "shoal median (ms)",
        "shoal runs (ms)",
        "swarm median (ms)",
        "swarm runs (ms)",
        "swarm/shoal",
    ];
    type Pick = fn(&Samples) -> &[Duration];
    let scenarios: [(String, Pick); 2] = [
        (format!("create --replicas {CREATE_REPLICAS}"), |s| {
            &s.create
        }),
        (format!("scale {CREATE_REPLICAS}→{SCALE_REPLICAS}"), |s| {
            &s.scale
        }),
    ];
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    for (name, pick) in &scenarios {
        let a = Stats::of(pick(&shoal.samples));
        let b = Stats::of(pick(&swarm.samples));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if a.median_ms > 0.0 => {
                let r = b.median_ms / a.median_ms;
                let verdict = if r >= GOAL_RATIO {
                    "goal met"
                } else {
                    "below goal"
                };
                format!("{r:.1}× ({verdict}: ≥ {GOAL_RATIO}×)")
            }
            _ => "-".into(),
        };
        rows.push(vec![
            name.clone(),
            median(a),
            range(a),
            median(b),
            range(b),
            ratio,
        ]);
        for (system, side) in [("shoal", shoal), ("swarm", swarm)] {
            let ms: Vec<String> = pick(&side.samples)
                .iter()
                .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
                .collect();
            if !ms.is_empty() {
                raw.push(format!("  {name}, {system}: {}", ms.join(", ")));
            }
        }
    }
    table::print_with_runs(&header, &rows, &raw);
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
    fn table_columns_line_up() {
        let t = table::format_table(&["a", "bbb"], &[vec!["xxxx".into(), "y".into()]]);
        assert_eq!(t, "a      bbb\n----   ---\nxxxx   y");
    }
}
