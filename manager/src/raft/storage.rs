//! openraft's storage in `<data_dir>/raft/`: the log in a write-ahead log of our own
//! ([`super::wal`]), the vote, the purged log id and the latest snapshot in small files
//! replaced atomically, the committed log id in a small unsynced file ([`super::files`]).
//! The state machine is the in-memory [`Store`]; its durability is the log plus the snapshot.
//!
//! One thread, `raft-wal`, owns the log: it takes every queued append, writes them all, syncs
//! once (`fdatasync`) and only then reports each one flushed to openraft (group commit). Vote,
//! truncate and purge go through it too, in order, and are durable before they return. So
//! fsync never stalls the async runtime, and an acknowledged write is on disk.
//!
//! A `LOCK` file (flock) keeps a second process off the same directory.

use std::fmt::Debug;
use std::fs::File;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_proto::StoreSnapshot;
use tokio::sync::{oneshot, watch};

use super::files::{read_atomic, write_atomic, Unsynced};
use super::wal::{Wal, WalError, WalReader};
use super::{codec, RaftError, Request, Response, TypeConfig};
use crate::store::{Applied, Store};

const LOCK: &str = "LOCK";
const VOTE: &str = "vote";
const PURGED: &str = "purged";
const COMMITTED: &str = "committed";
const SNAPSHOT: &str = "snapshot";

/// The size of a log segment: written full of zeroes once, then overwritten by entries.
pub(crate) const SEGMENT_SIZE: u64 = 16 << 20;

type StorageResult<T> = Result<T, StorageError<u64>>;

/// Something went wrong reading or writing the raft directory.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("cannot decode the stored {what}: {detail}")]
    Decode { what: &'static str, detail: String },
    #[error("cannot encode the {what}: {detail}")]
    Encode { what: &'static str, detail: String },
    #[error("the raft log stopped after an earlier error ({0}): restart the daemon")]
    Failed(String),
    #[error("the storage thread failed: {0}")]
    Thread(String),
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DbError> {
    codec::decode(bytes).map_err(|e| DbError::Decode {
        what,
        detail: e.to_string(),
    })
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, DbError> {
    codec::encode(value).map_err(|e| DbError::Encode {
        what,
        detail: e.to_string(),
    })
}

fn sto(subject: ErrorSubject<u64>, verb: ErrorVerb) -> impl FnOnce(DbError) -> StorageError<u64> {
    move |e| StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// Runs `f` on a blocking thread (file reads and syncs).
async fn blocking<T, F>(f: F) -> Result<T, DbError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, DbError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DbError::Thread(e.to_string()))?
}

/// What every handle on the directory shares; the lock is released when the last one goes.
struct Shared {
    // Fields drop in order: the lock first, then the signal that it is free.
    _lock: Flock<File>,
    closed: watch::Sender<()>,
    dir: PathBuf,
    /// The stored snapshot's last log index (outer `None`: no snapshot); also serialises
    /// snapshot writes.
    snapshot: Mutex<Option<Option<u64>>>,
    stats: Arc<WalStats>,
    /// The entries appended and not yet applied, as appended.
    recent: Mutex<Recent>,
}

impl Shared {
    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The log's newest entries, kept as appended until they are applied: openraft reads each
/// committed entry back to apply it, and from here that costs no disk read and no decoding
/// (their commands are shared, see [`Request`]). Replication to a follower reads them too.
/// Bounded: a state machine far behind reads from the log on disk.
#[derive(Default)]
struct Recent {
    entries: std::collections::BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    bytes: usize,
}

/// The most encoded bytes [`Recent`] holds.
const RECENT_BYTES: usize = 64 << 20;

impl Recent {
    fn insert(&mut self, entry: Entry<TypeConfig>, bytes: usize) {
        self.remove_from(entry.log_id.index);
        self.bytes += bytes;
        self.entries.insert(entry.log_id.index, (entry, bytes));
        while self.bytes > RECENT_BYTES {
            match self.entries.pop_first() {
                Some((_, (_, b))) => self.bytes -= b,
                None => break,
            }
        }
    }

    /// Entries `from..to` if all of them are here.
    fn get(&self, from: u64, to: u64) -> Option<Vec<Entry<TypeConfig>>> {
        let expected = to.checked_sub(from)?;
        let entries: Vec<Entry<TypeConfig>> = self
            .entries
            .range(from..to)
            .map(|(_, (e, _))| e.clone())
            .collect();
        (entries.len() as u64 == expected).then_some(entries)
    }

    /// Forgets the entries from `index` on (truncated).
    fn remove_from(&mut self, index: u64) {
        for (_, (_, b)) in self.entries.split_off(&index) {
            self.bytes -= b;
        }
    }

    /// Forgets the entries up to `index` (applied or purged).
    fn remove_upto(&mut self, index: u64) {
        let kept = self.entries.split_off(&index.saturating_add(1));
        for (_, (_, b)) in std::mem::replace(&mut self.entries, kept) {
            self.bytes -= b;
        }
    }
}

/// What the log writer has done so far: how many syncs, how long they took, how many
/// appends they covered (to tell where the time of a write goes).
#[derive(Debug, Default)]
pub struct WalStats {
    syncs: AtomicU64,
    sync_nanos: AtomicU64,
    appends: AtomicU64,
}

impl WalStats {
    fn record(&self, took: std::time::Duration, appends: usize) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.sync_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.appends.fetch_add(appends as u64, Ordering::Relaxed);
    }

    /// (syncs, total time in them, appends they covered)
    pub fn totals(&self) -> (u64, std::time::Duration, u64) {
        (
            self.syncs.load(Ordering::Relaxed),
            std::time::Duration::from_nanos(self.sync_nanos.load(Ordering::Relaxed)),
            self.appends.load(Ordering::Relaxed),
        )
    }
}

/// The snapshot as persisted: its meta and its protobuf bytes.
type StoredSnapshot = (SnapshotMeta<u64, BasicNode>, Vec<u8>);

fn read_snapshot(dir: &Path) -> Result<Option<StoredSnapshot>, DbError> {
    let Some(bytes) = read_atomic(dir, SNAPSHOT)? else {
        return Ok(None);
    };
    let bad = || DbError::Decode {
        what: "snapshot",
        detail: "its meta is cut".into(),
    };
    let len: [u8; 4] = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    let len = u32::from_le_bytes(len) as usize;
    let meta = bytes.get(4..4 + len).ok_or_else(bad)?;
    let meta: SnapshotMeta<u64, BasicNode> = decode("snapshot meta", meta)?;
    Ok(Some((meta, bytes[4 + len..].to_vec())))
}

/// Persists a snapshot. Unless `replace`, keeps a newer one already stored (a snapshot
/// installed from the leader while this one was being built).
fn write_snapshot(
    shared: &Shared,
    meta: &SnapshotMeta<u64, BasicNode>,
    data: &[u8],
    replace: bool,
) -> Result<(), DbError> {
    let index = meta.last_log_id.map(|l| l.index);
    let mut stored = shared
        .snapshot
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !replace && stored.is_some_and(|s| s > index) {
        return Ok(());
    }
    let meta_bytes = encode("snapshot meta", meta)?;
    let mut bytes = Vec::with_capacity(4 + meta_bytes.len() + data.len());
    bytes.extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&meta_bytes);
    bytes.extend_from_slice(data);
    write_atomic(&shared.dir, SNAPSHOT, &bytes)?;
    *stored = Some(index);
    Ok(())
}

/// Everything read from the directory when opening it.
struct Opened {
    wal: Wal,
    vote: Option<Vote<u64>>,
    purged: Option<LogId<u64>>,
    last: Option<LogId<u64>>,
    committed_file: Unsynced,
    committed: Option<LogId<u64>>,
    snapshot: Option<StoredSnapshot>,
}

fn open_error(dir: &Path) -> impl FnOnce(DbError) -> RaftError + '_ {
    move |e| match e {
        DbError::Wal(WalError::Io { .. }) | DbError::Thread(_) | DbError::Failed(_) => {
            RaftError::Open {
                path: dir.to_path_buf(),
                detail: e.to_string(),
            }
        }
        e => RaftError::Corrupt {
            path: dir.to_path_buf(),
            detail: e.to_string(),
        },
    }
}

fn open_blocking(dir: &Path, segment_size: u64) -> Result<(Flock<File>, Opened), RaftError> {
    std::fs::create_dir_all(dir).map_err(|source| RaftError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let lock_path = dir.join(LOCK);
    let file = File::create(&lock_path).map_err(|e| RaftError::Open {
        path: lock_path.clone(),
        detail: e.to_string(),
    })?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            return Err(RaftError::Locked {
                path: dir.to_path_buf(),
            })
        }
        Err((_, e)) => {
            return Err(RaftError::Open {
                path: lock_path,
                detail: e.to_string(),
            })
        }
    };
    let read = || -> Result<Opened, DbError> {
        let vote = read_atomic(dir, VOTE)?
            .map(|b| decode::<Vote<u64>>("vote", &b))
            .transpose()?;
        let purged = read_atomic(dir, PURGED)?
            .map(|b| decode::<LogId<u64>>("purged log id", &b))
            .transpose()?;
        let (committed_file, committed) = Unsynced::open(dir, COMMITTED)?;
        // A committed id that does not decode is as good as lost, which openraft allows.
        let committed = committed.and_then(|b| codec::decode::<LogId<u64>>(&b).ok());
        let snapshot = read_snapshot(dir)?;
        let (wal, recovered) = Wal::open(dir, segment_size, purged.map(|p| p.index))?;
        if let Some((segment, offset)) = &recovered.torn {
            tracing::warn!(
                segment = %segment.display(),
                offset,
                "raft log: cut a write torn by a crash (it was never acknowledged)"
            );
        }
        let last = match recovered.last {
            Some(i) => {
                let bytes = wal.reader().read(i, i + 1)?;
                let bytes = bytes.first().ok_or_else(|| DbError::Decode {
                    what: "log entry",
                    detail: format!("entry {i} is missing"),
                })?;
                Some(decode::<Entry<TypeConfig>>("log entry", bytes)?.log_id)
            }
            None => None,
        };
        Ok(Opened {
            wal,
            vote,
            purged,
            last,
            committed_file,
            committed,
            snapshot,
        })
    };
    let opened = read().map_err(open_error(dir))?;
    Ok((lock, opened))
}

/// Opens (creating) the raft directory `dir`, starts its log writer, and restores the last
/// snapshot into `store`.
pub(crate) async fn open(dir: &Path, store: Store) -> Result<(LogStore, StateMachine), RaftError> {
    open_with(dir, store, SEGMENT_SIZE).await
}

/// [`open`] with log segments of `segment_size` bytes (small ones in tests).
pub(crate) async fn open_with(
    dir: &Path,
    store: Store,
    segment_size: u64,
) -> Result<(LogStore, StateMachine), RaftError> {
    let owned = dir.to_path_buf();
    let (lock, opened) = tokio::task::spawn_blocking(move || open_blocking(&owned, segment_size))
        .await
        .map_err(|e| RaftError::Open {
            path: dir.to_path_buf(),
            detail: e.to_string(),
        })??;
    let Opened {
        wal,
        vote,
        purged,
        last,
        committed_file,
        committed,
        snapshot,
    } = opened;
    let shared = Arc::new(Shared {
        _lock: lock,
        closed: watch::channel(()).0,
        dir: dir.to_path_buf(),
        snapshot: Mutex::new(
            snapshot
                .as_ref()
                .map(|(m, _)| m.last_log_id.map(|l| l.index)),
        ),
        stats: Arc::default(),
        recent: Mutex::default(),
    });
    let reader = wal.reader();
    let (jobs, queue) = mpsc::channel();
    let writer_shared = shared.clone();
    std::thread::Builder::new()
        .name("raft-wal".into())
        .spawn(move || run_writer(wal, queue, writer_shared))
        .map_err(|e| RaftError::Open {
            path: dir.to_path_buf(),
            detail: format!("cannot start the log writer thread: {e}"),
        })?;

    let mut sm = StateMachine {
        shared: shared.clone(),
        store,
        applied: None,
        membership: StoredMembership::default(),
    };
    if let Some((meta, data)) = snapshot {
        let state = StoreSnapshot::decode(data.as_slice()).map_err(|e| RaftError::Corrupt {
            path: dir.to_path_buf(),
            detail: format!("snapshot {}: {e}", meta.snapshot_id),
        })?;
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        sm.store.restore(state, index);
        sm.applied = meta.last_log_id;
        sm.membership = meta.last_membership;
        tracing::info!(index, "raft: restored the state from the last snapshot");
    }
    let log = LogStore {
        shared,
        jobs,
        reader,
        meta: Arc::new(Mutex::new(LogMeta {
            vote,
            purged,
            last,
            committed,
        })),
        committed: Arc::new(committed_file),
    };
    Ok((log, sm))
}

/// A reply from the log writer.
type Reply = oneshot::Sender<Result<(), DbError>>;

/// Work for the log writer thread, done in the order it was queued.
enum Job {
    /// Entries `(index, encoded entry)`; `callback` hears of them once they are synced.
    Append {
        entries: Vec<(u64, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    Vote {
        vote: Vec<u8>,
        reply: Reply,
    },
    Truncate {
        since: u64,
        reply: Reply,
    },
    Purge {
        upto: LogId<u64>,
        reply: Reply,
    },
}

/// The log writer: drains the queue, writes every append in it, syncs once, then reports them
/// all flushed. After an I/O error the log's state on disk is unknown: everything after it
/// fails until the daemon restarts (and recovers from what is on disk).
fn run_writer(mut wal: Wal, queue: mpsc::Receiver<Job>, shared: Arc<Shared>) {
    let mut failed: Option<String> = None;
    let mut written: Vec<LogFlushed<TypeConfig>> = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut next = Some(first);
        while let Some(job) = next.take().or_else(|| queue.try_recv().ok()) {
            match job {
                Job::Append { entries, callback } => {
                    if let Some(f) = &failed {
                        callback.log_io_completed(Err(std::io::Error::other(f.clone())));
                        continue;
                    }
                    let appended = wal.append(entries.iter().map(|(i, b)| (*i, b.as_slice())));
                    match appended {
                        Ok(()) => written.push(callback),
                        Err(e) => {
                            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                            fail(&mut failed, &mut written, e.to_string());
                        }
                    }
                }
                Job::Vote { vote, reply } => {
                    sync(&mut wal, &mut written, &mut failed, &shared.stats);
                    let _ = reply.send(run_job(&mut failed, || {
                        write_atomic(&shared.dir, VOTE, &vote)
                    }));
                }
                Job::Truncate { since, reply } => {
                    sync(&mut wal, &mut written, &mut failed, &shared.stats);
                    let _ = reply.send(run_job(&mut failed, || wal.truncate(since)));
                }
                Job::Purge { upto, reply } => {
                    sync(&mut wal, &mut written, &mut failed, &shared.stats);
                    let purged = encode("purged log id", &upto);
                    let _ = reply.send(match purged {
                        Ok(bytes) => run_job(&mut failed, || {
                            write_atomic(&shared.dir, PURGED, &bytes)?;
                            wal.purge(upto.index)
                        }),
                        Err(e) => Err(e),
                    });
                }
            }
        }
        sync(&mut wal, &mut written, &mut failed, &shared.stats);
    }
    drop(wal);
    drop(shared);
}

/// Runs a job unless the log failed before; a failing job fails the log.
fn run_job(
    failed: &mut Option<String>,
    job: impl FnOnce() -> Result<(), WalError>,
) -> Result<(), DbError> {
    if let Some(f) = failed {
        return Err(DbError::Failed(f.clone()));
    }
    job().map_err(|e| {
        *failed = Some(e.to_string());
        DbError::Wal(e)
    })
}

fn fail(failed: &mut Option<String>, written: &mut Vec<LogFlushed<TypeConfig>>, error: String) {
    for callback in written.drain(..) {
        callback.log_io_completed(Err(std::io::Error::other(error.clone())));
    }
    *failed = Some(error);
}

/// Syncs what was written and reports it flushed (only now: it is on disk).
fn sync(
    wal: &mut Wal,
    written: &mut Vec<LogFlushed<TypeConfig>>,
    failed: &mut Option<String>,
    stats: &WalStats,
) {
    if written.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    let synced = wal.sync();
    stats.record(started.elapsed(), written.len());
    match synced {
        Ok(()) => {
            for callback in written.drain(..) {
                callback.log_io_completed(Ok(()));
            }
        }
        Err(e) => fail(failed, written, e.to_string()),
    }
}

/// What the log store keeps in memory besides the log.
struct LogMeta {
    vote: Option<Vote<u64>>,
    purged: Option<LogId<u64>>,
    /// The last entry's id (appended, maybe not synced yet).
    last: Option<LogId<u64>>,
    committed: Option<LogId<u64>>,
}

/// The Raft log and vote. Also its own log reader (reads never wait for the writer).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
    reader: WalReader,
    meta: Arc<Mutex<LogMeta>>,
    committed: Arc<Unsynced>,
}

impl LogStore {
    /// Ends (`changed()` fails) once the raft directory is closed and its lock released.
    pub(crate) fn closed(&self) -> watch::Receiver<()> {
        self.shared.closed.subscribe()
    }

    /// The log writer's counters.
    pub(crate) fn stats(&self) -> Arc<WalStats> {
        self.shared.stats.clone()
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, LogMeta> {
        self.meta
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a job for the writer and waits for its answer.
    async fn ask(&self, job: impl FnOnce(Reply) -> Job) -> Result<(), DbError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(job(reply))
            .map_err(|_| DbError::Thread("the log writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| DbError::Thread("the log writer has stopped".into()))?
    }
}

fn index_range<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let (from, to) = index_range(&range);
        if let Some(entries) = self.shared.recent().get(from, to) {
            return Ok(entries);
        }
        let read = || -> Result<Vec<Entry<TypeConfig>>, DbError> {
            self.reader
                .read(from, to)?
                .iter()
                .map(|bytes| decode("log entry", bytes))
                .collect()
        };
        read().map_err(sto(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let meta = self.meta();
        let last = match (meta.last, meta.purged) {
            (Some(l), Some(p)) => Some(if l.index >= p.index { l } else { p }),
            (l, p) => l.or(p),
        };
        Ok(LogState {
            last_purged_log_id: meta.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        let bytes = encode("vote", vote).map_err(sto(ErrorSubject::Vote, ErrorVerb::Write))?;
        self.ask(|reply| Job::Vote { vote: bytes, reply })
            .await
            .map_err(sto(ErrorSubject::Vote, ErrorVerb::Write))?;
        self.meta().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        Ok(self.meta().vote)
    }

    /// Not synced (see [`super::files`]): openraft allows the committed id to be lost or lag,
    /// it only lets a restarted node apply sooner. A sync here would double the cost of
    /// every write.
    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        if let Some(c) = committed {
            let bytes = encode("committed log id", &c)
                .map_err(sto(ErrorSubject::Store, ErrorVerb::Write))?;
            self.committed.write(&bytes).map_err(|e| {
                sto(ErrorSubject::Store, ErrorVerb::Write)(DbError::Wal(WalError::Io {
                    op: "write the committed log id in",
                    path: self.shared.dir.clone(),
                    source: e,
                }))
            })?;
        }
        self.meta().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        Ok(self.meta().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut last = None;
        let mut appended = Vec::new();
        let encoded = entries
            .into_iter()
            .map(|e| {
                last = Some(e.log_id);
                let bytes = encode("log entry", &e)?;
                let index = e.log_id.index;
                appended.push((e, bytes.len()));
                Ok((index, bytes))
            })
            .collect::<Result<Vec<(u64, Vec<u8>)>, DbError>>();
        let entries = match encoded {
            Ok(entries) => entries,
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                return Err(sto(ErrorSubject::Logs, ErrorVerb::Write)(e));
            }
        };
        if entries.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        // Readable before the writer can report them flushed (and openraft apply them).
        let mut recent = self.shared.recent();
        for (entry, bytes) in appended {
            recent.insert(entry, bytes);
        }
        drop(recent);
        // Reported flushed by the writer, after its sync.
        if let Err(mpsc::SendError(job)) = self.jobs.send(Job::Append { entries, callback }) {
            let e = DbError::Thread("the log writer has stopped".into());
            if let Job::Append { callback, .. } = job {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            }
            return Err(sto(ErrorSubject::Logs, ErrorVerb::Write)(e));
        }
        if last.is_some() {
            self.meta().last = last;
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let since = log_id.index;
        self.shared.recent().remove_from(since);
        self.ask(|reply| Job::Truncate { since, reply })
            .await
            .map_err(sto(ErrorSubject::Logs, ErrorVerb::Delete))?;
        let before = match since.checked_sub(1) {
            Some(i) => self
                .reader
                .read(i, i + 1)
                .map_err(DbError::Wal)
                .and_then(|b| {
                    b.first()
                        .map(|b| decode::<Entry<TypeConfig>>("log entry", b).map(|e| e.log_id))
                        .transpose()
                })
                .map_err(sto(ErrorSubject::Logs, ErrorVerb::Read))?,
            None => None,
        };
        self.meta().last = before;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.ask(|reply| Job::Purge {
            upto: log_id,
            reply,
        })
        .await
        .map_err(sto(ErrorSubject::Logs, ErrorVerb::Delete))?;
        self.shared.recent().remove_upto(log_id.index);
        self.meta().purged = Some(log_id);
        Ok(())
    }
}

/// The state machine: applies committed entries to the in-memory [`Store`], and keeps the
/// last applied log id and membership beside it (they go into every snapshot).
pub struct StateMachine {
    shared: Arc<Shared>,
    store: Store,
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
}

/// A consistent view of the state taken between two applies; built and persisted while
/// openraft goes on applying.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    state: StoreSnapshot,
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let snapshot_id = match self.applied {
            Some(l) => format!("{}-{}-{millis}", l.leader_id, l.index),
            None => format!("--{millis}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let state = std::mem::take(&mut self.state);
        let persisted = meta.clone();
        let shared = self.shared.clone();
        let data = blocking(move || {
            let data = state.encode_to_vec();
            write_snapshot(&shared, &persisted, &data, false)?;
            Ok(data)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)))?;
        tracing::info!(snapshot = %meta, bytes = data.len(), "raft: snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>)> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        // Applied entries leave the recent ones first: their commands are then this batch's
        // alone and move into the store uncopied.
        if let Some(last) = entries.last() {
            self.shared.recent().remove_upto(last.log_id.index);
        }
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let index = entry.log_id.index;
            self.applied = Some(entry.log_id);
            let no_command = Response(vec![Ok(Applied {
                version: index,
                duplicate: false,
            })]);
            match entry.payload {
                EntryPayload::Normal(Request(commands)) => {
                    // Each command of a batch on its own, in order, at the entry's index.
                    let results = commands
                        .into_iter()
                        .map(|command| self.store.apply(index, Arc::unwrap_or_clone(command)))
                        .collect();
                    responses.push(Response(results));
                }
                EntryPayload::Blank => {
                    self.store.mark_applied(index);
                    responses.push(no_command);
                }
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    self.store.mark_applied(index);
                    responses.push(no_command);
                }
            }
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
            state: self.store.snapshot(),
            applied: self.applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let state = StoreSnapshot::decode(data.as_slice()).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        // On disk first: once openraft hears "installed" it may purge the log behind it.
        let persisted = meta.clone();
        let shared = self.shared.clone();
        blocking(move || write_snapshot(&shared, &persisted, &data, true))
            .await
            .map_err(|e| {
                StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
            })?;
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.shared.recent().remove_upto(index);
        self.store.restore(state, index);
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        tracing::info!(snapshot = %meta, "raft: snapshot installed from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let dir = self.shared.dir.clone();
        let stored = blocking(move || read_snapshot(&dir))
            .await
            .map_err(sto(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// See [`super::force_new_cluster`]: appends a membership entry naming `node_id` alone, in a
/// new term, after the last entry of the log (or of the snapshot), and resets the vote to
/// that term, so that the node elects itself and commits its whole log.
pub(crate) async fn force_single_member(
    dir: &Path,
    node_id: u64,
    addr: &str,
) -> Result<(), RaftError> {
    let owned = dir.to_path_buf();
    let addr = addr.to_string();
    tokio::task::spawn_blocking(move || -> Result<(), RaftError> {
        let (_lock, opened) = open_blocking(&owned, SEGMENT_SIZE)?;
        let Opened {
            mut wal,
            vote,
            purged,
            last,
            snapshot,
            ..
        } = opened;
        let rewrite = || -> Result<(), DbError> {
            let last_log_id = [last, snapshot.and_then(|(m, _)| m.last_log_id), purged]
                .into_iter()
                .flatten()
                .max_by_key(|l| l.index);
            let term = vote
                .map(|v| v.leader_id().term)
                .max(last_log_id.map(|l| l.leader_id.term))
                .unwrap_or(0)
                + 1;
            let index = last_log_id.map(|l| l.index + 1).unwrap_or(0);
            let membership = openraft::Membership::new(
                vec![[node_id].into()],
                std::collections::BTreeMap::from([(node_id, BasicNode::new(addr.clone()))]),
            );
            let entry: Entry<TypeConfig> = Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(term, node_id), index),
                payload: EntryPayload::Membership(membership),
            };
            let bytes = encode("log entry", &entry)?;
            wal.append([(index, bytes.as_slice())])?;
            wal.sync()?;
            write_atomic(&owned, VOTE, &encode("vote", &Vote::new(term, node_id))?)?;
            tracing::warn!(
                node_id,
                term,
                index,
                "raft membership rewritten to this manager alone"
            );
            Ok(())
        };
        rewrite().map_err(open_error(&owned))
    })
    .await
    .map_err(|e| RaftError::Open {
        path: dir.to_path_buf(),
        detail: e.to_string(),
    })?
}

#[cfg(test)]
mod recent_tests {
    use super::*;

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(entries: Option<Vec<Entry<TypeConfig>>>) -> Option<Vec<u64>> {
        entries.map(|e| e.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn recent_entries_serve_whole_ranges_and_follow_truncation_apply_and_the_bound() {
        let mut recent = Recent::default();
        for i in 1..=5 {
            recent.insert(entry(i), 10);
        }
        assert_eq!(indexes(recent.get(2, 5)), Some(vec![2, 3, 4]));
        assert_eq!(
            indexes(recent.get(4, 7)),
            None,
            "6 is not there: read the disk"
        );
        // A truncation (or an entry appended again at 4) drops 4 and everything after it.
        recent.insert(entry(4), 10);
        assert_eq!(indexes(recent.get(4, 5)), Some(vec![4]));
        assert_eq!(indexes(recent.get(5, 6)), None);
        recent.remove_from(3);
        assert_eq!(recent.bytes, 20);
        // Applied (or purged) entries go.
        recent.remove_upto(1);
        assert_eq!(indexes(recent.get(1, 2)), None);
        assert_eq!(indexes(recent.get(2, 3)), Some(vec![2]));
        assert_eq!(recent.bytes, 10);
        // Past the byte bound the oldest go first.
        recent.insert(entry(3), RECENT_BYTES);
        assert_eq!(indexes(recent.get(2, 3)), None);
        assert_eq!(indexes(recent.get(3, 4)), Some(vec![3]));
        assert_eq!(recent.bytes, RECENT_BYTES);
    }
}
