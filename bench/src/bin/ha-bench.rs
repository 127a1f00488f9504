//! ha-bench: how long a cluster of managers cannot take writes when its leader dies.
//!
//! Three `shoal daemon` managers on loopback (the second and third joined with the manager
//! token). Each run: `kill -9` the leader, then run a write (`node update --label-add`, one
//! Raft entry, forwarded to the leader) on a surviving follower in a loop until one
//! succeeds; the time from the kill to that success is the figure. The killed manager is then
//! restarted and the next run waits until all three managers are reachable again. Prints
//! every run and the median (goal ≤ 1 s; Swarm's election alone takes 10–20 s).
//!
//! The figure includes starting the `shoal` CLI process for each attempt (a few ms).
//!
//!     cargo build --release --bin shoal -p shoal-bench --bin ha-bench
//!     target/release/ha-bench [--runs 10] [--shoal target/release/shoal]
//!
//! Runs as root (each daemon is also an agent). Every daemon has its own data dir, socket,
//! port, cgroup parent and nftables table, all removed at the end, also on error.

#[path = "../daemons.rs"]
mod daemons;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use daemons::{median, shoal_bin, wait_until, Daemon};

#[derive(Parser)]
#[command(name = "ha-bench", about = "Leader kill → first successful write")]
struct Args {
    /// How many leader kills to time.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// The shoal binary (default: `shoal` next to this one).
    #[arg(long)]
    shoal: Option<PathBuf>,
}

/// All three managers reachable from `d`, one of them leading.
fn healthy(d: &Daemon) -> bool {
    let Ok(text) = d.cli(&["node", "ls", "--format", "json"]) else {
        return false;
    };
    let nodes: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let nodes = nodes.as_array().cloned().unwrap_or_default();
    let reachable = nodes
        .iter()
        .filter(|n| n["manager_status"]["reachability"] == "reachable")
        .count();
    let leaders = nodes
        .iter()
        .filter(|n| n["manager_status"]["leader"] == true)
        .count();
    reachable == 3 && leaders == 1
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bin = shoal_bin(args.shoal)?;
    let mut managers = vec![Daemon::start(&bin, 0, Vec::new())?];
    let join = managers[0].join_args("manager")?;
    for n in 1..3 {
        managers.push(Daemon::start(&bin, n, join.clone())?);
    }
    let mut times = Vec::new();
    for run in 0..args.runs {
        wait_until("three healthy managers", Duration::from_secs(30), || {
            managers.iter().all(healthy)
        })?;
        let leader = (0..3)
            .find(|&i| managers[i].is_leader())
            .context("no leader")?;
        let writer = (0..3).find(|&i| i != leader).context("no follower")?;
        let node = managers[writer].info()?["node_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let label = format!("run={run}");
        let killed = Instant::now();
        managers[leader].kill9();
        let took = loop {
            if managers[writer]
                .cli(&["node", "update", "--label-add", &label, &node])
                .is_ok()
            {
                break killed.elapsed();
            }
            if killed.elapsed() > Duration::from_secs(30) {
                bail!(
                    "no write succeeded within 30 s:\n{}",
                    managers[writer].log()
                );
            }
        };
        println!(
            "run {:>2}: leader kill -9 → first successful write: {:>7.1} ms",
            run + 1,
            took.as_secs_f64() * 1e3
        );
        times.push(took);
        managers[leader].spawn()?;
    }
    let median = median(&mut times);
    println!(
        "leader kill → first successful write, median of {} runs: {:.1} ms (min {:.1}, max {:.1}; goal ≤ 1000 ms)",
        times.len(),
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    Ok(())
}
