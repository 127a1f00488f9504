//! scheduler-bench: how fast a manager places and hands out a large number of tasks.
//!
//! 1. **End to end** (the cluster issue's benchmark): one `shoal daemon` manager on loopback
//!    (its own node drained) and 1,000 fake agents in this process (see `fake_agents.rs`),
//!    each joined with the worker token and holding a real mutual-TLS dispatcher session.
//!    One `CreateService` of 100,000 replicas; the time from the request until every task was
//!    assigned, sent to its node, and acknowledged by it (reported RUNNING and accepted) is
//!    the figure, as tasks/s, with the manager's peak RSS (goal ≥ 5,000 tasks/s on 2 cores,
//!    ≤ 300 MiB; Nomad's C1M did 3,750/s on 5 servers). Median of `--e2e-runs` runs, each on
//!    a fresh manager.
//! 2. **The scheduler alone**: the pure function placing 100,000 pending tasks on 1,000 nodes
//!    that already run 100,000, median of `--runs` runs: it shows the cost is not quadratic.
//!
//! Run it with:
//!
//!     cargo build --release --bin shoal -p shoal-bench --bin scheduler-bench
//!     target/release/scheduler-bench [--runs 5] [--e2e-runs 3] [--nodes 1000] [--tasks 100000]
//!
//! The end-to-end part runs as root (the manager is also an agent); everything it made is
//! removed at the end, also on error.

#[path = "../daemons.rs"]
mod daemons;
#[path = "../fake_agents.rs"]
mod fake_agents;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use daemons::{shoal_bin, wait_until, Daemon};
use shoal_manager::scheduler::schedule;
use shoal_proto::{
    Node, NodeAvailability, NodeDescription, NodeState, NodeStatus, Resources, ServiceSpec, Task,
    TaskState, TaskStatus,
};

const NODES: usize = 1_000;
const RUNNING: u64 = 100_000;
const PENDING: u64 = 100_000;

fn node(i: usize) -> Node {
    let mut n = Node {
        id: format!("node-{i:04}"),
        description: Some(NodeDescription {
            resources: Some(Resources {
                memory_bytes: 1 << 40,
                nano_cpus: 1 << 40,
                pids: 0,
            }),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: NodeState::Ready as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    n.set_availability(NodeAvailability::Active);
    n
}

fn task(id: String, service: String, slot: u64, node: String, state: TaskState) -> Task {
    let mut t = Task {
        id,
        service_id: service,
        slot,
        node_id: node,
        spec: Some(
            ServiceSpec {
                reservations: Some(Resources {
                    memory_bytes: 1 << 20,
                    nano_cpus: 1_000,
                    pids: 0,
                }),
                ..Default::default()
            }
            .into(),
        ),
        status: Some(TaskStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    t.set_desired_state(TaskState::Running);
    t
}

#[derive(Parser)]
#[command(
    name = "scheduler-bench",
    about = "Scheduling at scale: end to end, and the scheduler alone"
)]
struct Args {
    /// Runs of the pure scheduler.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Runs of the end-to-end benchmark (each on a fresh manager); 0 skips it.
    #[arg(long, default_value_t = 3)]
    e2e_runs: usize,
    /// Fake agents (nodes) in the end-to-end benchmark.
    #[arg(long, default_value_t = 1_000)]
    nodes: usize,
    /// Replicas of the end-to-end benchmark's service.
    #[arg(long, default_value_t = 100_000)]
    tasks: u64,
    /// The shoal binary (default: `shoal` next to this one).
    #[arg(long)]
    shoal: Option<PathBuf>,
}

/// The resident set of process `pid` and its peak, in MiB (from /proc).
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct E2e {
    took: Duration,
    peak_rss: f64,
    idle_rss: f64,
    join: Duration,
}

/// One end-to-end run on a fresh manager.
fn end_to_end(bin: &std::path::Path, nodes: usize, tasks: u64) -> Result<E2e> {
    use shoal_proto::control_client::ControlClient;
    use shoal_proto::service_spec::Mode;
    use shoal_proto::{ContainerSpec, CreateServiceRequest, ReplicatedService};
    use tonic::transport::{Endpoint, Uri};

    let manager = Daemon::start(bin, 0, Vec::new())?;
    let pid = manager.pid().context("the manager's pid")?;
    manager.cli(&["image", "bootstrap", "busybox"])?;
    let own = manager.info()?["node_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    manager.cli(&["node", "update", "--availability", "drain", &own])?;
    let token = manager
        .cli(&["join-token", "worker", "-q"])?
        .trim()
        .to_string();
    let ca = std::fs::read_to_string(manager.data().join("certs/ca.crt"))?;
    let addr = manager.manager_addr()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let counters = Arc::new(fake_agents::Counters::default());
    let joining = Instant::now();
    runtime.block_on(async {
        let agents = fake_agents::join_many(&addr, &ca, &token, nodes, 32).await?;
        for a in agents {
            a.spawn(counters.clone());
        }
        Ok::<_, anyhow::Error>(())
    })?;
    wait_until(
        "every fake agent in session",
        Duration::from_secs(300),
        || counters.sessions.load(Ordering::SeqCst) as usize == nodes,
    )?;
    let join = joining.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let (idle_rss, _) = rss_mib(pid);

    let socket = manager.socket();
    let started = Instant::now();
    runtime.block_on(async {
        let channel = Endpoint::from_static("http://shoal.sock")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await?;
        ControlClient::new(channel)
            .create_service(CreateServiceRequest {
                spec: Some(ServiceSpec {
                    name: "load".into(),
                    container: Some(ContainerSpec {
                        image: "busybox".into(),
                        args: vec!["sleep".into(), "100000".into()],
                        ..Default::default()
                    }),
                    mode: Some(Mode::Replicated(ReplicatedService { replicas: tasks })),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|s| anyhow::anyhow!("CreateService: {}", s.message()))?;
        Ok::<_, anyhow::Error>(())
    })?;
    let mut peak_rss = 0f64;
    loop {
        let (rss, _) = rss_mib(pid);
        peak_rss = peak_rss.max(rss);
        let done = counters.acknowledged.load(Ordering::SeqCst);
        if done >= tasks {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("only {done} of {tasks} tasks acknowledged after 600 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    let (_, hwm) = rss_mib(pid);
    drop(manager);
    runtime.shutdown_background();
    Ok(E2e {
        took,
        peak_rss: peak_rss.max(hwm),
        idle_rss,
        join,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.e2e_runs > 0 {
        let bin = shoal_bin(args.shoal.clone())?;
        let mut runs = Vec::new();
        for run in 0..args.e2e_runs {
            let r = end_to_end(&bin, args.nodes, args.tasks)?;
            println!(
                "run {}: {} tasks on {} fake agents assigned and acknowledged in {:.2} s ({:.0} tasks/s); manager RSS {:.0} MiB idle with the agents, {:.0} MiB peak; joining the agents took {:.1} s",
                run + 1,
                args.tasks,
                args.nodes,
                r.took.as_secs_f64(),
                args.tasks as f64 / r.took.as_secs_f64(),
                r.idle_rss,
                r.peak_rss,
                r.join.as_secs_f64()
            );
            runs.push(r);
        }
        runs.sort_by_key(|r| r.took);
        let median = &runs[runs.len() / 2];
        let peak = runs.iter().map(|r| r.peak_rss).fold(0.0, f64::max);
        println!(
            "end to end: {} tasks on {} nodes, median of {} runs: {:.2} s, {:.0} tasks/s (goal ≥ 5,000/s); manager peak RSS {:.0} MiB (goal ≤ 300 MiB)",
            args.tasks,
            args.nodes,
            runs.len(),
            median.took.as_secs_f64(),
            args.tasks as f64 / median.took.as_secs_f64(),
            peak
        );
    }
    pure(args.runs.max(1));
    Ok(())
}

/// The scheduler alone.
fn pure(runs: usize) {
    let nodes: Vec<Node> = (0..NODES).map(node).collect();
    let mut tasks: Vec<Task> = (0..RUNNING)
        .map(|i| {
            task(
                format!("r{i}"),
                format!("svc-{}", i % 50),
                i,
                format!("node-{:04}", i as usize % NODES),
                TaskState::Running,
            )
        })
        .collect();
    tasks.extend((0..PENDING).map(|i| {
        task(
            format!("p{i}"),
            format!("new-{}", i % 100),
            i,
            String::new(),
            TaskState::Pending,
        )
    }));
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let decisions = schedule(&nodes, &tasks);
        times.push(start.elapsed());
        let placed = decisions.iter().filter(|d| d.node_id.is_some()).count();
        if placed != PENDING as usize {
            eprintln!("scheduler-bench: only {placed} of {PENDING} tasks were placed");
            std::process::exit(1);
        }
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "scheduler: {PENDING} pending tasks on {NODES} nodes already running {RUNNING}: \
         median {median:?} over {runs} runs (min {:?}, max {:?}), {:.0} tasks/s",
        times[0],
        times[times.len() - 1],
        PENDING as f64 / median.as_secs_f64()
    );
}
