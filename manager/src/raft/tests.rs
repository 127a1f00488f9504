//! Raft tests: openraft's storage suite, restart and crash durability, and a 3-node cluster
//! over loopback TCP.

use std::collections::BTreeMap;
use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use shoal_proto::store_object::Object;
use shoal_proto::{ChangeKind, Service, ServiceSpec, StoreCommand};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use super::*;
use crate::store::change;

type TestResult = Result<(), Box<dyn Error + Send + Sync>>;

fn create_service(i: usize) -> StoreCommand {
    StoreCommand {
        request_id: format!("req-{i}"),
        changes: vec![change(
            ChangeKind::Create,
            Object::Service(Box::new(Service {
                id: format!("svc-{i}"),
                meta: None,
                spec: Some(ServiceSpec {
                    name: format!("web-{i}"),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        )],
        timestamp: 1_000 + i as i64,
    }
}

/// Polls `check` until it holds or `timeout` passes.
async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        // Small segments: the suite rolls, truncates and purges across several of them.
        let (log_store, state_machine) =
            storage::open_with(&dir.path().join(RAFT_DIR), Store::new(), 4 << 10)
                .await
                .map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, log_store, state_machine))
    }
}

#[test]
fn openraft_storage_suite() -> TestResult {
    Suite::test_all(Builder).map_err(Box::new)?;
    Ok(())
}

/// The vote is on disk when `save_vote` returns; a replacement cut short by a crash (a
/// leftover temporary file) leaves the previous vote.
#[tokio::test]
async fn the_vote_survives_a_reopen_and_a_crashed_replacement() -> TestResult {
    use openraft::storage::RaftLogStorage;
    let dir = tempfile::tempdir()?;
    let raft_dir = dir.path().join(RAFT_DIR);
    let (mut log, sm) = storage::open(&raft_dir, Store::new()).await?;
    assert_eq!(log.read_vote().await?, None);
    let vote = openraft::Vote::new(3, 7);
    log.save_vote(&vote).await?;
    let mut closed = log.closed();
    drop((log, sm));
    while closed.changed().await.is_ok() {}
    // A crash while the next vote was being written: its temporary file is all there is.
    std::fs::write(raft_dir.join("vote.tmp"), b"half a vo")?;
    let (mut log, _sm) = storage::open(&raft_dir, Store::new()).await?;
    assert_eq!(log.read_vote().await?, Some(vote));
    let newer = openraft::Vote::new_committed(4, 7);
    log.save_vote(&newer).await?;
    assert_eq!(log.read_vote().await?, Some(newer));
    Ok(())
}

/// A data dir from before the write-ahead log is refused with a message that says what to do.
#[tokio::test]
async fn the_old_redb_layout_is_refused_with_advice() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join(LEGACY_DB_FILE), b"redb")?;
    match RaftNode::open(dir.path(), 1, RaftConfig::default(), Store::new()).await {
        Err(e @ RaftError::OldLayout { .. }) => {
            let message = e.to_string();
            assert!(message.contains(LEGACY_DB_FILE), "{message}");
            assert!(message.contains("older shoal"), "{message}");
        }
        Err(e) => return Err(format!("expected OldLayout, got {e}").into()),
        Ok(_) => return Err("the old layout was opened".into()),
    }
    assert!(!dir.path().join(RAFT_DIR).exists());
    Ok(())
}

#[test]
fn request_serde_is_the_protobuf_encoding() -> TestResult {
    use prost::Message;
    let commands = vec![create_service(7), create_service(8)];
    let request = Request(commands.iter().cloned().map(Arc::new).collect());
    let bytes = codec::encode(&request)?;
    let protobuf = shoal_proto::StoreCommandBatch { commands }.encode_to_vec();
    // postcard: a varint length, then the protobuf bytes as they are.
    assert!(bytes.ends_with(&protobuf));
    assert_eq!(codec::decode::<Request>(&bytes)?, request);
    // A self-describing format reads it back too.
    let json = serde_json::to_vec(&request)?;
    assert_eq!(serde_json::from_slice::<Request>(&json)?, request);
    // An entry written before batching, a bare command, reads as a batch of one.
    struct Legacy(Vec<u8>);
    impl serde::Serialize for Legacy {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }
    let single = create_service(9);
    let legacy = codec::encode(&Legacy(single.encode_to_vec()))?;
    assert_eq!(
        codec::decode::<Request>(&legacy)?,
        Request(vec![Arc::new(single)])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_share_log_entries() -> TestResult {
    let dir = tempfile::tempdir()?;
    let node = RaftNode::open(dir.path(), 1, RaftConfig::default(), Store::new()).await?;
    node.initialize_single("127.0.0.1:1").await?;
    let before = node.metrics().last_applied.map(|l| l.index).unwrap_or(0);
    let n = 64;
    let started = Instant::now();
    let proposals = (0..n).map(|i| {
        let node = node.clone();
        tokio::spawn(async move { node.propose(create_service(i)).await })
    });
    for p in futures::future::join_all(proposals).await {
        let applied = p???;
        assert!(!applied.duplicate);
    }
    let entries = node.metrics().last_applied.map(|l| l.index).unwrap_or(0) - before;
    eprintln!(
        "{n} concurrent proposals in {entries} log entries, {:?}",
        started.elapsed()
    );
    assert!(entries < n as u64, "{n} proposals took {entries} entries");
    assert_eq!(node.store().read().services.len(), n);
    // A retried request id still applies once.
    let clash = node.propose(create_service(3)).await?;
    assert!(clash.expect("a retried request").duplicate);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_everything_across_a_snapshot() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = RaftConfig {
        snapshot_logs: 20,
        snapshot_keep_logs: 5,
        ..RaftConfig::default()
    };
    let node = RaftNode::open(dir.path(), 1, config.clone(), Store::new()).await?;
    assert!(node.is_pristine().await);
    node.initialize_single("127.0.0.1:1").await?;
    assert!(!node.is_pristine().await);
    assert!(node.is_leader());
    // Initialising again is a no-op.
    node.initialize_single("127.0.0.1:1").await?;

    let n = 50;
    let started = Instant::now();
    for i in 0..n {
        let applied = node.propose(create_service(i)).await??;
        assert!(!applied.duplicate);
        let stored = node.store().read().services[&format!("svc-{i}")].clone();
        assert_eq!(stored.meta.map(|m| m.version), Some(applied.version));
    }
    let per_write = started.elapsed() / n as u32;
    eprintln!("single node: {n} sequential proposals, {per_write:?} each (fsync'd)");

    // A retried request applies once.
    let again = node.propose(create_service(3)).await??;
    assert!(again.duplicate);
    // A rejected command is an apply error, not a raft error.
    let mut clash = create_service(1000);
    clash.request_id = "clash".into();
    if let Some(Object::Service(s)) = clash.changes[0]
        .object
        .as_mut()
        .and_then(|o| o.object.as_mut())
    {
        s.spec = Some(ServiceSpec {
            name: "web-1".into(),
            ..Default::default()
        });
    }
    assert!(matches!(
        node.propose(clash).await?,
        Err(ApplyError::NameInUse { .. })
    ));

    let m = node
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.snapshot.is_some() && m.purged.is_some(),
            "snapshot and purge",
        )
        .await?;
    eprintln!(
        "snapshot at {:?}, purged up to {:?}, last log {:?}",
        m.snapshot, m.purged, m.last_log_index
    );
    node.linearizable().await?;
    let before = node.metrics();
    let applied_before = *node.store().applied_index().borrow();
    node.shutdown().await;

    let store = Store::new();
    let node = RaftNode::open(dir.path(), 1, config, store.clone()).await?;
    assert!(!node.is_pristine().await);
    // Snapshot restored and the committed entries after it re-applied, before any election.
    assert_eq!(store.read().services.len(), n);
    assert_eq!(*store.applied_index().borrow(), applied_before);
    assert!(store.read().services.contains_key("svc-0"));
    // Request ids survive in the snapshot: still idempotent after a restart.
    assert!(
        node.propose_when_leader(create_service(3))
            .await??
            .duplicate
    );
    let applied = node.propose(create_service(n)).await??;
    assert!(applied.version > before.last_log_index.unwrap_or(0));
    assert_eq!(store.read().services.len(), n + 1);
    node.shutdown().await;
    Ok(())
}

impl RaftNode {
    /// Test helper: waits for this single node to lead again after a restart, then proposes.
    async fn propose_when_leader(
        &self,
        command: StoreCommand,
    ) -> Result<Result<Applied, ApplyError>, RaftError> {
        self.wait_for_leader(Duration::from_secs(10)).await?;
        self.linearizable().await?;
        self.propose(command).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_the_same_database_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let node = RaftNode::open(dir.path(), 1, RaftConfig::default(), Store::new()).await?;
    let second = RaftNode::open(dir.path(), 1, RaftConfig::default(), Store::new()).await;
    match second {
        Err(e @ RaftError::Locked { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("locked by another shoal process"),
                "{message}"
            );
            assert!(message.contains(RAFT_DIR), "{message}");
        }
        Err(e) => return Err(format!("expected Locked, got {e}").into()),
        Ok(_) => return Err("the database was opened twice".into()),
    }
    node.shutdown().await;
    // Free again once the first is shut down.
    let again = RaftNode::open(dir.path(), 1, RaftConfig::default(), Store::new()).await?;
    again.shutdown().await;
    Ok(())
}

#[test]
fn config_is_validated() {
    let bad = RaftConfig {
        heartbeat_ms: 500,
        election_min_ms: 300,
        election_max_ms: 600,
        ..RaftConfig::default()
    };
    assert!(matches!(bad.to_openraft(), Err(RaftError::Config { .. })));
    assert!(RaftConfig::default().to_openraft().is_ok());
}

#[test]
fn not_leader_messages_name_the_leader() {
    let e = RaftError::NotLeader {
        leader_id: Some(2),
        leader_addr: Some("10.0.0.2:4242".into()),
    };
    assert_eq!(
        e.to_string(),
        "this manager is not the leader; the leader is node 2 at 10.0.0.2:4242"
    );
    assert_eq!(e.leader(), Some((2, Some("10.0.0.2:4242"))));
    let unknown = RaftError::NotLeader {
        leader_id: None,
        leader_addr: None,
    };
    assert!(unknown.to_string().contains("no leader is known"));
    assert_eq!(unknown.leader(), None);
}

/// Set in the child process of the durability test: its data directory.
const CHILD_ENV: &str = "SHOAL_RAFT_DURABILITY_CHILD";

/// The child half of `killed_process_loses_no_acknowledged_write`: proposes writes from a few
/// concurrent clients and prints each acknowledged one, until it is killed. A no-op in a
/// normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_child() -> TestResult {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return Ok(());
    };
    let node = RaftNode::open(Path::new(&dir), 1, RaftConfig::default(), Store::new()).await?;
    node.initialize_single("127.0.0.1:1").await?;
    let mut clients = Vec::new();
    for client in 0..4 {
        let node = node.clone();
        clients.push(tokio::spawn(async move {
            for i in 0..100_000 {
                let key = client * 100_000 + i;
                let Ok(Ok(applied)) = node.propose(create_service(key)).await else {
                    return;
                };
                let mut out = std::io::stdout().lock();
                // Written straight to fd 1 (not captured by the test harness).
                let _ = writeln!(out, "ACK {key} {}", applied.version);
                let _ = out.flush();
            }
        }));
    }
    for client in clients {
        client.await?;
    }
    Ok(())
}

#[test]
fn killed_process_loses_no_acknowledged_write() -> TestResult {
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args([
            "raft::tests::durability_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let (tx, rx) = std::sync::mpsc::channel::<(usize, u64)>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut words = line.split_whitespace();
            if words.next() != Some("ACK") {
                continue;
            }
            let key = words.next().and_then(|w| w.parse().ok());
            let index = words.next().and_then(|w| w.parse().ok());
            if let (Some(key), Some(index)) = (key, index) {
                if tx.send((key, index)).is_err() {
                    return;
                }
            }
        }
    });

    // Kill it mid-stream, with writes in flight.
    let started = Instant::now();
    let mut acked = Vec::new();
    while acked.len() < 200 {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(ack) => acked.push(ack),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the child stopped acknowledging ({e})").into());
            }
        }
    }
    child.kill()?; // SIGKILL: no shutdown, no flush.
    let status = child.wait()?;
    let killed_after = started.elapsed();
    // Acks printed before the kill that were still in the pipe count too.
    let _ = reader.join();
    acked.extend(rx.try_iter());
    eprintln!(
        "durability: child killed ({status}) after {} acknowledged writes in {killed_after:?}",
        acked.len()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = Store::new();
        let node = RaftNode::open(dir.path(), 1, RaftConfig::default(), store.clone()).await?;
        node.wait_for_leader(Duration::from_secs(10)).await?;
        node.linearizable().await?;
        {
            let state = store.read();
            for (key, index) in &acked {
                let service = state
                    .services
                    .get(&format!("svc-{key}"))
                    .ok_or_else(|| format!("acknowledged write svc-{key} (index {index}) lost"))?;
                assert_eq!(service.meta.as_ref().map(|m| m.version), Some(*index));
            }
            eprintln!(
                "durability: all {} acknowledged writes found; {} services in the store",
                acked.len(),
                state.services.len()
            );
        }
        node.shutdown().await;
        Ok::<(), Box<dyn Error + Send + Sync>>(())
    })
}

struct Member {
    node: RaftNode,
    addr: String,
    config: RaftConfig,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    dir: TempDir,
}

impl Member {
    async fn start(id: u64, config: RaftConfig) -> Result<Member, Box<dyn Error + Send + Sync>> {
        let dir = tempfile::tempdir()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let node = RaftNode::open(dir.path(), id, config.clone(), Store::new()).await?;
        let (stop, server) = serve(&node, listener);
        Ok(Member {
            node,
            addr,
            config,
            stop: Some(stop),
            server: Some(server),
            dir,
        })
    }

    /// Starts the stopped member again from its data directory, at the same address.
    async fn restart(&mut self) -> TestResult {
        let listener = TcpListener::bind(&self.addr).await?;
        let id = self.node.id();
        self.node = RaftNode::open(self.dir.path(), id, self.config.clone(), Store::new()).await?;
        let (stop, server) = serve(&self.node, listener);
        self.stop = Some(stop);
        self.server = Some(server);
        Ok(())
    }

    /// Stops raft and the server, as if the manager's process ended. Idempotent.
    async fn stop(&mut self) {
        self.node.shutdown().await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut server) = self.server.take() {
            if tokio::time::timeout(Duration::from_secs(2), &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
    }
}

type Server = JoinHandle<Result<(), tonic::transport::Error>>;

fn serve(node: &RaftNode, listener: TcpListener) -> (oneshot::Sender<()>, Server) {
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(node.raft_service())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    (stop, server)
}

/// Starts three members and makes a cluster of them; returns them and the leader's id.
async fn cluster(config: RaftConfig) -> Result<(Vec<Member>, u64), Box<dyn Error + Send + Sync>> {
    let mut members = Vec::new();
    for id in 1..=3 {
        members.push(Member::start(id, config.clone()).await?);
    }
    let all: BTreeMap<u64, String> = members
        .iter()
        .map(|m| (m.node.id(), m.addr.clone()))
        .collect();
    let started = Instant::now();
    members[0].node.initialize(all).await?;
    let leader = members[0]
        .node
        .wait_for_leader(Duration::from_secs(10))
        .await?;
    // Every member learns who leads.
    for m in &members {
        let mut changes = m.node.leader_changes();
        tokio::time::timeout(
            Duration::from_secs(10),
            changes.wait_for(|l| *l == Some(leader)),
        )
        .await??;
    }
    eprintln!(
        "3 nodes: first leader {leader}, known to all after {:?}",
        started.elapsed()
    );
    Ok((members, leader))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_replicate_forward_and_fail_over() -> TestResult {
    let (mut members, leader) = cluster(RaftConfig::default()).await?;
    let all: BTreeMap<u64, String> = members
        .iter()
        .map(|m| (m.node.id(), m.addr.clone()))
        .collect();
    let leader_at = members
        .iter()
        .position(|m| m.node.id() == leader)
        .ok_or("leader is not a member")?;
    assert!(members[leader_at].node.is_leader());

    let n = 20;
    let started = Instant::now();
    for i in 0..n {
        members[leader_at].node.propose(create_service(i)).await??;
    }
    eprintln!(
        "3 nodes: {n} sequential proposals, {:?} each",
        started.elapsed() / n as u32
    );

    // Concurrent clients: openraft batches their entries into shared appends and fsyncs.
    let clients = 4;
    let per_client = 25;
    let started = Instant::now();
    let mut writers = Vec::new();
    for c in 0..clients {
        let node = members[leader_at].node.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..per_client {
                node.propose(create_service(10_000 + c * 1_000 + i))
                    .await??;
            }
            Ok::<(), Box<dyn Error + Send + Sync>>(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let elapsed = started.elapsed();
    let total = clients * per_client;
    eprintln!(
        "3 nodes: {total} writes from {clients} concurrent clients in {elapsed:?} ({:.0} writes/s)",
        total as f64 / elapsed.as_secs_f64()
    );
    let n = n + total;

    let follower_at = (leader_at + 1) % 3;
    let follower = &members[follower_at].node;
    assert!(!follower.is_leader());
    match follower.propose(create_service(999)).await {
        Err(e @ RaftError::NotLeader { .. }) => {
            assert_eq!(e.leader(), Some((leader, Some(all[&leader].as_str()))));
            eprintln!("3 nodes: follower says: {e}");
        }
        other => return Err(format!("expected NotLeader from a follower, got {other:?}").into()),
    }
    let converged = eventually(Duration::from_secs(10), || {
        members
            .iter()
            .all(|m| m.node.store().read().services.len() == n)
    })
    .await;
    assert!(converged, "the three stores did not converge");
    follower
        .linearizable()
        .await
        .expect_err("a follower cannot serve linearizable reads");
    members[leader_at].node.linearizable().await?;

    // Fail over: stop the leader, time how long until the survivors agree on another.
    let stopped_at = Instant::now();
    members[leader_at].stop().await;
    let mut survivors: Vec<&Member> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader_at)
        .map(|(_, m)| m)
        .collect();
    let mut changes = survivors[0].node.leader_changes();
    let new_leader = tokio::time::timeout(
        Duration::from_secs(15),
        changes.wait_for(|l| matches!(l, Some(x) if *x != leader)),
    )
    .await??
    .ok_or("no new leader")?;
    let elected_after = stopped_at.elapsed();
    eprintln!(
        "3 nodes: leader {leader} stopped; node {new_leader} elected after {elected_after:?}"
    );
    survivors.sort_by_key(|m| m.node.id() != new_leader);
    let new = &survivors[0].node;
    assert_eq!(new.id(), new_leader);
    new.wait_for_leader(Duration::from_secs(5)).await?;
    let started = Instant::now();
    for i in n..n + 5 {
        new.propose(create_service(i)).await??;
    }
    eprintln!(
        "3 nodes: first write after fail-over took {:?} for 5",
        started.elapsed()
    );
    let converged = eventually(Duration::from_secs(10), || {
        survivors
            .iter()
            .all(|m| m.node.store().read().services.len() == n + 5)
    })
    .await;
    assert!(converged, "the survivors did not converge after fail-over");

    for m in members.iter_mut() {
        m.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_catches_up_from_a_snapshot() -> TestResult {
    let config = RaftConfig {
        snapshot_logs: 10,
        snapshot_keep_logs: 2,
        ..RaftConfig::default()
    };
    let (mut members, leader) = cluster(config).await?;
    let leader_at = members
        .iter()
        .position(|m| m.node.id() == leader)
        .ok_or("leader is not a member")?;
    let behind = (leader_at + 1) % 3;
    members[behind].stop().await;

    // Enough writes for the leader to snapshot and purge the log the follower still needs.
    let n = 40;
    for i in 0..n {
        members[leader_at].node.propose(create_service(i)).await??;
    }
    let m = members[leader_at]
        .node
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.is_some_and(|p| p.index > 10), "leader purged")
        .await?;
    eprintln!(
        "snapshot transfer: leader snapshot {:?}, purged {:?}",
        m.snapshot, m.purged
    );

    let started = Instant::now();
    members[behind].restart().await?;
    let caught_up = eventually(Duration::from_secs(15), || {
        members[behind].node.store().read().services.len() == n
    })
    .await;
    assert!(caught_up, "the restarted follower did not catch up");
    let follower = members[behind].node.metrics();
    assert!(
        follower.snapshot.is_some(),
        "the follower should have installed the leader's snapshot"
    );
    eprintln!(
        "snapshot transfer: follower caught up via snapshot {:?} in {:?}",
        follower.snapshot,
        started.elapsed()
    );
    for m in members.iter_mut() {
        m.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_is_reported_unreachable() -> TestResult {
    use openraft::error::RPCError;
    use openraft::network::RPCOption;
    use openraft::raft::VoteRequest;
    use openraft::{RaftNetwork, RaftNetworkFactory, Vote};

    // A port nobody listens on: bind, note it, close it.
    let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let mut factory = NetworkFactory::new();
    let mut peer = factory
        .new_client(2, &BasicNode::new(addr.to_string()))
        .await;
    let request = VoteRequest {
        vote: Vote::new(1, 1),
        last_log_id: None,
    };
    let started = Instant::now();
    let answer = peer
        .vote(request, RPCOption::new(Duration::from_secs(1)))
        .await;
    assert!(
        matches!(answer, Err(RPCError::Unreachable(_))),
        "{answer:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    let mut bad = factory
        .new_client(3, &BasicNode::new("not an address"))
        .await;
    let answer = bad
        .vote(
            VoteRequest {
                vote: Vote::new(1, 1),
                last_log_id: None,
            },
            RPCOption::new(Duration::from_secs(1)),
        )
        .await;
    assert!(
        matches!(answer, Err(RPCError::Unreachable(_))),
        "{answer:?}"
    );
    Ok(())
}
