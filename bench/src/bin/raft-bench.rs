//! raft-bench: Raft-durable writes per second, shoal against a single-member etcd, with 1 and
//! with 16 concurrent clients, on this machine.
//!
//! - shoal: one `shoal daemon` (a one-manager cluster, on loopback). 16 fake agents join it
//!   (see `fake_agents.rs`), so every client has a node of its own to write to; a write is
//!   `UpdateNode` (a label) over the control socket: a compare-and-set read, one Raft entry
//!   committed (fdatasync'd in the write-ahead log) and applied. One gRPC connection per client.
//! - etcd: `etcd` (Debian's `etcd-server`) as a child process, its own data dir, loopback
//!   ports, default durability (WAL fsync on every commit, as ours). A write is
//!   `POST /v3/kv/put` on its JSON gateway, one keep-alive HTTP connection per client, each
//!   client its own key.
//!
//! Each measurement runs the clients for `--seconds`, counting acknowledged writes; repeated
//! `--runs` times, alternating the two systems; the medians are printed side by side (goal:
//! ≥ 3× etcd). Without etcd installed, only shoal's figures are printed.
//!
//! Beside them, what bounds them here, measured in the same runs:
//! - **Info alone:** the same clients calling `Info` (no Raft): the control API's cost.
//! - **Raft alone:** a one-member `RaftNode` in this process, its log on the same disk, with as
//!   many concurrent proposers: consensus, log and apply without gRPC.
//! - **Both in series:** `1 / (1/info + 1/raft)`, what a write costing both would reach.
//! - **One client's floor:** its round trip plus one `fdatasync` (median of 2000 small synced
//!   writes under the daemon's data dir): a client waits for both, whatever consensus does.
//!
//! Run:
//!
//!     cargo build --release --bin shoal -p shoal-bench --bin raft-bench
//!     target/release/raft-bench [--runs 10] [--seconds 2] [--shoal target/release/shoal]
//!
//! Runs as root. The daemon, the etcd process and their data dirs are removed at the end,
//! also on error.

#[path = "../daemons.rs"]
mod daemons;
#[path = "../fake_agents.rs"]
mod fake_agents;
#[path = "../table.rs"]
mod table;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use daemons::{shoal_bin, wait_until, Daemon};
use shoal_manager::raft::{RaftConfig, RaftNode};
use shoal_manager::store::{change, Store};
use shoal_proto::control_client::ControlClient;
use shoal_proto::store_object::Object;
use shoal_proto::{
    now_ms, ChangeKind, InfoRequest, Service, ServiceSpec, StoreCommand, UpdateNodeRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

const CLIENTS: [usize; 2] = [1, 16];

#[derive(Parser)]
#[command(
    name = "raft-bench",
    about = "Raft-durable writes/s: shoal vs a single-member etcd"
)]
struct Args {
    /// How many measurements per system and client count.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// How long each measurement runs.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// The shoal binary (default: `shoal` next to this one).
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Measure shoal only (e.g. while profiling it), even when etcd is installed.
    #[arg(long)]
    no_etcd: bool,
}

async fn control(socket: &Path) -> Result<ControlClient<Channel>> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://shoal.sock")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .context("connecting to the control socket")?;
    Ok(ControlClient::new(channel))
}

/// What a shoal client sends, over and over.
#[derive(Clone, Copy)]
enum Call {
    /// `UpdateNode` (a label on the client's own node): one Raft-durable write.
    Write,
    /// `Info`: the same control socket round trip, with no Raft in it (the floor under a write).
    Info,
}

/// Calls/s of `clients` concurrent shoal clients, each on its own node. Each client is a
/// thread of its own with a single-threaded runtime, as each etcd client is a thread of its
/// own: neither system's figure carries another client's scheduling.
fn shoal_run(
    socket: &Path,
    nodes: &[String],
    clients: usize,
    call: Call,
    for_: Duration,
) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(std::sync::Barrier::new(clients + 1));
    let mut handles = Vec::new();
    for node in nodes.iter().take(clients) {
        let (node, done, stop, ready) = (node.clone(), done.clone(), stop.clone(), ready.clone());
        let socket = socket.to_path_buf();
        handles.push(std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a client's runtime");
            // Every client waits for the others before the clock starts, also when it failed.
            let connected = match &runtime {
                Ok(runtime) => runtime.block_on(control(&socket)),
                Err(_) => Err(anyhow::anyhow!("no runtime")),
            };
            ready.wait();
            let (runtime, mut client) = (runtime?, connected?);
            runtime.block_on(async {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let answered = match call {
                        Call::Write => client
                            .update_node(UpdateNodeRequest {
                                node: node.clone(),
                                label_add: [(format!("k{}", i % 64), i.to_string())].into(),
                                ..Default::default()
                            })
                            .await
                            .map(drop),
                        Call::Info => client.info(InfoRequest {}).await.map(drop),
                    };
                    answered.map_err(|s| anyhow::anyhow!("shoal call: {}", s.message()))?;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                Ok::<_, anyhow::Error>(())
            })
        }));
    }
    ready.wait();
    let started = Instant::now();
    std::thread::sleep(for_);
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a shoal client panicked"))??;
    }
    Ok(count as f64 / elapsed.as_secs_f64())
}

/// shoal's Raft alone, in this process: a one-member [`RaftNode`] with its write-ahead log
/// under the daemon's data dir, on a 2-worker runtime like the daemon's. What a write costs
/// without the control API in front of it.
struct RaftAlone {
    runtime: tokio::runtime::Runtime,
    node: RaftNode,
    proposed: AtomicU64,
    _dir: tempfile::TempDir,
}

impl RaftAlone {
    fn open(under: &Path) -> Result<RaftAlone> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let dir = tempfile::Builder::new()
            .prefix("raft-alone-")
            .tempdir_in(under)?;
        let node = runtime.block_on(async {
            let node = RaftNode::open(dir.path(), 1, RaftConfig::default(), Store::new()).await?;
            node.initialize_single("127.0.0.1:1").await?;
            node.wait_for_leader(Duration::from_secs(10)).await?;
            Ok::<_, anyhow::Error>(node)
        })?;
        Ok(RaftAlone {
            runtime,
            node,
            proposed: AtomicU64::new(0),
            _dir: dir,
        })
    }

    /// Proposals/s of `clients` concurrent proposers, each creating and deleting a service of
    /// its own in turn (the store stays small), and how many writes shared one fdatasync.
    fn run(&self, clients: usize, for_: Duration) -> Result<(f64, f64)> {
        let (syncs_before, _, _) = self.node.wal_stats().totals();
        let started = Instant::now();
        let stop = started + for_;
        let first = self.proposed.fetch_add(1 << 32, Ordering::Relaxed);
        let total = self.runtime.block_on(async {
            let tasks = (0..clients as u64).map(|c| {
                let node = self.node.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < stop {
                        let request = first + (c << 24) + n;
                        // Each run its own services: a run may end with one created.
                        let key = format!("{}-{c}", first >> 32);
                        node.propose(create_or_delete(&key, n % 2 == 1, request))
                            .await?
                            .map_err(|e| {
                                anyhow::anyhow!("applying a service create or delete: {e}")
                            })?;
                        n += 1;
                    }
                    Ok::<u64, anyhow::Error>(n)
                })
            });
            let mut total = 0;
            for t in futures::future::join_all(tasks).await {
                total += t??;
            }
            Ok::<u64, anyhow::Error>(total)
        })?;
        let elapsed = started.elapsed();
        let (syncs, _, _) = self.node.wal_stats().totals();
        let per_sync = total as f64 / (syncs - syncs_before).max(1) as f64;
        Ok((total as f64 / elapsed.as_secs_f64(), per_sync))
    }
}

impl Drop for RaftAlone {
    fn drop(&mut self) {
        self.runtime.block_on(self.node.shutdown());
    }
}

/// The service `key`, created or deleted: a write about the size of a label update.
fn create_or_delete(key: &str, delete: bool, request: u64) -> StoreCommand {
    let kind = if delete {
        ChangeKind::Delete
    } else {
        ChangeKind::Create
    };
    StoreCommand {
        request_id: format!("raft-alone-{request}"),
        changes: vec![change(
            kind,
            Object::Service(Box::new(Service {
                id: format!("svc-{key}"),
                spec: Some(ServiceSpec {
                    name: format!("web-{key}"),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        )],
        timestamp: now_ms(),
    }
}

/// The median time of one small `pwrite` + `fdatasync` in a preallocated file under `dir`:
/// what one durable log append costs on this disk, whoever does it.
fn fdatasync_median(dir: &Path) -> Result<Duration> {
    use std::os::unix::fs::FileExt;
    const SIZE: u64 = 4 << 20;
    const RECORD: usize = 256;
    let temp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file under {}", dir.display()))?;
    let file = temp.as_file();
    file.write_all_at(&vec![0; SIZE as usize], 0)?;
    file.sync_all()?;
    let mut times: Vec<f64> = (0..2000u64)
        .map(|i| {
            let started = Instant::now();
            file.write_all_at(&[1; RECORD], i * RECORD as u64 % SIZE)?;
            file.sync_data()?;
            Ok(started.elapsed().as_secs_f64())
        })
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("writing and syncing {}", temp.path().display()))?;
    Ok(Duration::from_secs_f64(median(&mut times)))
}

/// A single-member etcd on loopback; killed (by pid) and its data dir removed on drop.
struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Etcd {
    fn start() -> Result<Option<Etcd>> {
        if Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            return Ok(None);
        }
        let dir = tempfile::Builder::new()
            .prefix("raft-bench-etcd-")
            .tempdir()?;
        let (client, peer) = (free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .arg("--name")
            .arg("bench")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .args(["--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd")?;
        let etcd = Etcd {
            child,
            _dir: dir,
            port: client,
        };
        wait_until("etcd to answer", Duration::from_secs(30), || {
            EtcdClient::connect(etcd.port)
                .and_then(|mut c| c.put("ready", "1"))
                .is_ok()
        })?;
        Ok(Some(etcd))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive HTTP/1.1 connection to etcd's JSON gateway.
struct EtcdClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl EtcdClient {
    fn connect(port: u16) -> Result<EtcdClient> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(EtcdClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// `PUT key value`, acknowledged once etcd committed it.
    fn put(&mut self, key: &str, value: &str) -> Result<()> {
        let body = format!(
            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
            base64(key.as_bytes()),
            base64(value.as_bytes())
        );
        write!(
            self.writer,
            "POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut status = String::new();
        self.reader.read_line(&mut status)?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        if !status.contains(" 200 ") {
            bail!(
                "etcd answered {}: {}",
                status.trim(),
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }
}

/// Writes/s of `clients` concurrent etcd clients, each writing its own key.
fn etcd_run(port: u16, clients: usize, for_: Duration) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for c in 0..clients {
        let mut client = EtcdClient::connect(port)?;
        let (done, stop) = (done.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                client.put(&format!("client{c}"), &i.to_string())?;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let started = Instant::now();
    std::thread::sleep(for_);
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("an etcd client panicked"))??;
    }
    Ok(count as f64 / elapsed.as_secs_f64())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bin = shoal_bin(args.shoal)?;
    let for_ = Duration::from_secs_f64(args.seconds);
    let runtime = tokio::runtime::Runtime::new()?;
    let _ = rustls::crypto::ring::default_provider().install_default();

    let manager = Daemon::start(&bin, 0, Vec::new())?;
    let token = manager
        .cli(&["join-token", "worker", "-q"])?
        .trim()
        .to_string();
    let ca = std::fs::read_to_string(manager.data().join("certs/ca.crt"))?;
    let addr = manager.manager_addr()?;
    let counters = Arc::new(fake_agents::Counters::default());
    let nodes: Vec<String> = runtime.block_on(async {
        let agents = fake_agents::join_many(&addr, &ca, &token, 16, 8).await?;
        let ids = agents.iter().map(|a| a.node_id.clone()).collect();
        for a in agents {
            a.spawn(counters.clone());
        }
        Ok::<_, anyhow::Error>(ids)
    })?;
    wait_until("16 fake agents ready", Duration::from_secs(30), || {
        counters.sessions.load(Ordering::SeqCst) == 16
    })?;
    // Let the registrations settle before measuring.
    std::thread::sleep(Duration::from_millis(500));

    let etcd = if args.no_etcd { None } else { Etcd::start()? };
    if etcd.is_none() && !args.no_etcd {
        println!("etcd is not installed (apt-get install -y etcd-server): shoal's figures only");
    }
    let raft_alone = RaftAlone::open(&manager.data())?;
    let mut shoal_rates = vec![Vec::new(); CLIENTS.len()];
    let mut rpc_rates = vec![Vec::new(); CLIENTS.len()];
    let mut raft_rates = vec![Vec::new(); CLIENTS.len()];
    let mut per_sync = vec![Vec::new(); CLIENTS.len()];
    let mut etcd_rates = vec![Vec::new(); CLIENTS.len()];
    for run in 0..args.runs {
        for (k, &clients) in CLIENTS.iter().enumerate() {
            let ours = shoal_run(&manager.socket(), &nodes, clients, Call::Write, for_)?;
            shoal_rates[k].push(ours);
            let rpc = shoal_run(&manager.socket(), &nodes, clients, Call::Info, for_)?;
            rpc_rates[k].push(rpc);
            let (raft, shared) = raft_alone.run(clients, for_)?;
            raft_rates[k].push(raft);
            per_sync[k].push(shared);
            let theirs = match &etcd {
                Some(e) => {
                    let rate = etcd_run(e.port, clients, for_)?;
                    etcd_rates[k].push(rate);
                    format!("{rate:.0}/s")
                }
                None => "-".into(),
            };
            println!(
                "run {:>2}, {clients:>2} client(s): shoal {ours:.0}/s (Info alone {rpc:.0}/s, \
                 Raft alone {raft:.0}/s with {shared:.1} writes per fdatasync), etcd {theirs}",
                run + 1
            );
        }
    }
    drop(raft_alone);
    let sync = fdatasync_median(&manager.data())?;
    let mut rows = Vec::new();
    let mut round_trip = 0.0;
    let mut first_etcd = None;
    for (k, &clients) in CLIENTS.iter().enumerate() {
        let ours = median(&mut shoal_rates[k]);
        let rpc = median(&mut rpc_rates[k]);
        let raft = median(&mut raft_rates[k]);
        let theirs = (!etcd_rates[k].is_empty()).then(|| median(&mut etcd_rates[k]));
        let versus = |rate: f64| theirs.map_or("-".to_string(), |t| format!("{:.2}×", rate / t));
        // A write is both, on the same 2 cores: one client waits for them one after the
        // other, many clients share the cores between them.
        let series = 1.0 / (1.0 / rpc + 1.0 / raft);
        if k == 0 {
            round_trip = 1.0 / rpc;
            first_etcd = theirs;
        }
        rows.push(vec![
            clients.to_string(),
            format!("{ours:.0}"),
            theirs.map_or("-".to_string(), |t| format!("{t:.0}")),
            versus(ours),
            format!("{rpc:.0}"),
            format!("{raft:.0} ({:.1})", median(&mut per_sync[k])),
            format!("{series:.0} ({})", versus(series)),
        ]);
    }
    println!(
        "\nRaft-durable writes/s, median of {} runs of {:.1} s (goal: shoal ≥ 3× etcd)\n{}",
        args.runs,
        args.seconds,
        table::format_table(
            &[
                "clients",
                "shoal writes/s",
                "etcd writes/s",
                "shoal / etcd",
                "Info alone/s",
                "Raft alone/s (writes/sync)",
                "both in series/s (/ etcd)",
            ],
            &rows
        )
    );
    // One client waits for each write before sending the next: its round trip and one log
    // sync are in series, whatever consensus does. No system gets past this here.
    let ceiling = 1.0 / (round_trip + sync.as_secs_f64());
    println!(
        "\nFloor under one client's write: control round trip {:.0} µs (Info) + fdatasync {:.0} µs \
         (median of 2000 under {}) → at most {ceiling:.0} writes/s{}",
        round_trip * 1e6,
        sync.as_secs_f64() * 1e6,
        manager.data().display(),
        first_etcd.map_or(String::new(), |t| format!(" ({:.2}× etcd)", ceiling / t)),
    );
    Ok(())
}
