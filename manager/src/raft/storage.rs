//! openraft's storage over one redb file: the log, the vote, the committed log id and the
//! latest snapshot. The state machine is the in-memory [`Store`]; its durability is the log
//! plus the snapshot.
//!
//! Every write transaction commits with `Durability::Immediate` (fsync) before openraft
//! hears it is done, and runs on a blocking thread so that fsync never stalls the runtime.
//! One `append` call is one transaction, however many entries openraft hands over.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use prost::Message;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_proto::StoreSnapshot;
use tokio::sync::watch;

use super::{codec, RaftError, Request, Response, TypeConfig};
use crate::store::{Applied, Store};

/// Log index → postcard-encoded `Entry`.
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Everything else, postcard-encoded, under the keys below.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_FORMAT: &str = "format";
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_SNAPSHOT_META: &str = "snapshot_meta";
/// The snapshot's data: protobuf `StoreSnapshot` bytes, stored as they are.
const KEY_SNAPSHOT_DATA: &str = "snapshot_data";

/// Bumped when the layout above changes, so an old binary refuses a newer file.
const FORMAT: u32 = 1;

type StorageResult<T> = Result<T, StorageError<u64>>;

/// Something went wrong reading or writing the database.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error(transparent)]
    Redb(#[from] redb::Error),
    #[error("cannot decode the stored {what}: {detail}")]
    Decode { what: &'static str, detail: String },
    #[error("cannot encode the {what}: {detail}")]
    Encode { what: &'static str, detail: String },
    #[error(
        "the database file has format {found}, this shoal reads format {FORMAT}: run a newer shoal"
    )]
    Format { found: u32 },
    #[error("the storage thread failed: {0}")]
    Thread(String),
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for DbError {
            fn from(e: $t) -> Self {
                DbError::Redb(e.into())
            }
        }
    )*};
}
redb_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

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

/// The shared database handle.
#[derive(Clone)]
struct Db {
    db: Arc<DbFile>,
}

/// The open database, and a signal that fires once it is closed: closing writes and syncs,
/// so the file lock is free only after `Database`'s drop has finished, which an `Arc` count
/// cannot tell.
struct DbFile {
    // Fields drop in order: the database first, then the signal.
    db: Database,
    closed: watch::Sender<()>,
}

impl Db {
    /// Runs `f` on a blocking thread: redb reads may touch the disk and commits fsync.
    async fn run<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, DbError> + Send + 'static,
    {
        let file = self.db.clone();
        tokio::task::spawn_blocking(move || f(&file.db))
            .await
            .map_err(|e| DbError::Thread(e.to_string()))?
    }
}

/// A write transaction that fsyncs on commit.
fn begin_write(db: &Database) -> Result<WriteTransaction, DbError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    Ok(txn)
}

fn get_meta<T: DeserializeOwned>(db: &Database, key: &'static str) -> Result<Option<T>, DbError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(META)?;
    let value = table.get(key)?;
    value.map(|v| decode(key, v.value())).transpose()
}

fn put_meta<T: Serialize>(db: &Database, key: &'static str, value: &T) -> Result<(), DbError> {
    let bytes = encode(key, value)?;
    let txn = begin_write(db)?;
    {
        let mut table = txn.open_table(META)?;
        table.insert(key, bytes.as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

/// The snapshot as persisted: its meta and its protobuf bytes.
type StoredSnapshot = (SnapshotMeta<u64, BasicNode>, Vec<u8>);

fn read_snapshot(db: &Database) -> Result<Option<StoredSnapshot>, DbError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(META)?;
    let Some(meta) = table.get(KEY_SNAPSHOT_META)? else {
        return Ok(None);
    };
    let meta: SnapshotMeta<u64, BasicNode> = decode("snapshot meta", meta.value())?;
    let data = table
        .get(KEY_SNAPSHOT_DATA)?
        .map(|d| d.value().to_vec())
        .unwrap_or_default();
    Ok(Some((meta, data)))
}

/// Persists a snapshot. Unless `replace`, keeps a newer one already stored (a snapshot
/// installed from the leader while this one was being built).
fn write_snapshot(
    db: &Database,
    meta: &SnapshotMeta<u64, BasicNode>,
    data: &[u8],
    replace: bool,
) -> Result<(), DbError> {
    let meta_bytes = encode("snapshot meta", meta)?;
    let txn = begin_write(db)?;
    {
        let mut table = txn.open_table(META)?;
        if !replace {
            let stored: Option<SnapshotMeta<u64, BasicNode>> = table
                .get(KEY_SNAPSHOT_META)?
                .map(|m| decode("snapshot meta", m.value()))
                .transpose()?;
            let index = |m: &SnapshotMeta<u64, BasicNode>| m.last_log_id.map(|l| l.index);
            if stored.is_some_and(|s| index(&s) > index(meta)) {
                return Ok(());
            }
        }
        table.insert(KEY_SNAPSHOT_META, meta_bytes.as_slice())?;
        table.insert(KEY_SNAPSHOT_DATA, data)?;
    }
    txn.commit()?;
    Ok(())
}

/// Opens the database at `path`, creating it and its tables if needed, and restores the
/// last snapshot into `store`.
pub(crate) async fn open(path: &Path, store: Store) -> Result<(LogStore, StateMachine), RaftError> {
    let owned = path.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || open_blocking(&owned))
        .await
        .map_err(|e| RaftError::Open {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })??;
    let (db, snapshot) = opened;
    let db = Db {
        db: Arc::new(DbFile {
            db,
            closed: watch::channel(()).0,
        }),
    };
    let mut sm = StateMachine {
        db: db.clone(),
        store,
        applied: None,
        membership: StoredMembership::default(),
    };
    if let Some((meta, data)) = snapshot {
        let state = StoreSnapshot::decode(data.as_slice()).map_err(|e| RaftError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("snapshot {}: {e}", meta.snapshot_id),
        })?;
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        sm.store.restore(state, index);
        sm.applied = meta.last_log_id;
        sm.membership = meta.last_membership;
        tracing::info!(index, "raft: restored the state from the last snapshot");
    }
    Ok((LogStore { db }, sm))
}

/// redb's page cache. Its default (1 GiB) would keep every log entry written in memory until
/// it is full: the log is written once and read back only for a lagging follower or at a
/// restart, so a small cache costs little and the manager's memory stays its state's.
const CACHE_BYTES: usize = 32 << 20;

fn open_blocking(path: &PathBuf) -> Result<(Database, Option<StoredSnapshot>), RaftError> {
    let db = match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(RaftError::Locked { path: path.clone() })
        }
        Err(e) => {
            return Err(RaftError::Open {
                path: path.clone(),
                detail: e.to_string(),
            })
        }
    };
    let prepare = || -> Result<Option<StoredSnapshot>, DbError> {
        let txn = begin_write(&db)?;
        {
            let mut meta = txn.open_table(META)?;
            txn.open_table(LOGS)?;
            let found: Option<u32> = meta
                .get(KEY_FORMAT)?
                .map(|v| decode("format", v.value()))
                .transpose()?;
            match found {
                Some(f) if f > FORMAT => return Err(DbError::Format { found: f }),
                Some(_) => {}
                None => {
                    let bytes = encode("format", &FORMAT)?;
                    meta.insert(KEY_FORMAT, bytes.as_slice())?;
                }
            }
        }
        txn.commit()?;
        read_snapshot(&db)
    };
    match prepare() {
        Ok(snapshot) => Ok((db, snapshot)),
        Err(e @ (DbError::Decode { .. } | DbError::Format { .. })) => Err(RaftError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        }),
        Err(e) => Err(RaftError::Open {
            path: path.clone(),
            detail: e.to_string(),
        }),
    }
}

/// The Raft log and vote. Also its own log reader (redb readers never block the writer).
#[derive(Clone)]
pub struct LogStore {
    db: Db,
}

impl LogStore {
    /// Ends (`changed()` fails) once the database file is closed and its lock released.
    pub(crate) fn closed(&self) -> watch::Receiver<()> {
        self.db.db.closed.subscribe()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        self.db
            .run(move |db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(LOGS)?;
                let mut entries = Vec::new();
                for item in table.range(bounds)? {
                    let (_, value) = item?;
                    entries.push(decode::<Entry<TypeConfig>>("log entry", value.value())?);
                }
                Ok(entries)
            })
            .await
            .map_err(sto(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        self.db
            .run(|db| {
                let last_purged: Option<LogId<u64>> = get_meta(db, KEY_PURGED)?;
                let txn = db.begin_read()?;
                let table = txn.open_table(LOGS)?;
                let last = match table.last()? {
                    Some((_, value)) => {
                        Some(decode::<Entry<TypeConfig>>("log entry", value.value())?.log_id)
                    }
                    None => None,
                };
                Ok(LogState {
                    last_purged_log_id: last_purged,
                    last_log_id: last.or(last_purged),
                })
            })
            .await
            .map_err(sto(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        let vote = *vote;
        self.db
            .run(move |db| put_meta(db, KEY_VOTE, &vote))
            .await
            .map_err(sto(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        self.db
            .run(|db| get_meta(db, KEY_VOTE))
            .await
            .map_err(sto(ErrorSubject::Vote, ErrorVerb::Read))
    }

    /// Not fsync'd on its own (it rides on the next log append's fsync): openraft allows the
    /// committed id to be lost or lag, it only lets a restarted node apply sooner. An fsync
    /// here would double the cost of every write.
    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        self.db
            .run(move |db| {
                let bytes = encode(KEY_COMMITTED, &committed)?;
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::None)?;
                {
                    let mut table = txn.open_table(META)?;
                    table.insert(KEY_COMMITTED, bytes.as_slice())?;
                }
                txn.commit()?;
                Ok(())
            })
            .await
            .map_err(sto(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        self.db
            .run(|db| Ok(get_meta::<Option<LogId<u64>>>(db, KEY_COMMITTED)?.flatten()))
            .await
            .map_err(sto(ErrorSubject::Store, ErrorVerb::Read))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, encode("log entry", &e)?)))
            .collect::<Result<Vec<(u64, Vec<u8>)>, DbError>>();
        let written = match encoded {
            Ok(encoded) => {
                self.db
                    .run(move |db| {
                        let txn = begin_write(db)?;
                        {
                            let mut table = txn.open_table(LOGS)?;
                            for (index, bytes) in &encoded {
                                table.insert(*index, bytes.as_slice())?;
                            }
                        }
                        txn.commit()?;
                        Ok(())
                    })
                    .await
            }
            Err(e) => Err(e),
        };
        // Reported flushed only now: the commit above has fsync'd.
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(sto(ErrorSubject::Logs, ErrorVerb::Write)(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.db
            .run(move |db| {
                let txn = begin_write(db)?;
                {
                    let mut table = txn.open_table(LOGS)?;
                    table.retain_in(log_id.index.., |_, _| false)?;
                }
                txn.commit()?;
                Ok(())
            })
            .await
            .map_err(sto(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.db
            .run(move |db| {
                let purged = encode("last purged log id", &log_id)?;
                let txn = begin_write(db)?;
                {
                    let mut meta = txn.open_table(META)?;
                    meta.insert(KEY_PURGED, purged.as_slice())?;
                    let mut table = txn.open_table(LOGS)?;
                    table.retain_in(..=log_id.index, |_, _| false)?;
                }
                txn.commit()?;
                Ok(())
            })
            .await
            .map_err(sto(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}

/// The state machine: applies committed entries to the in-memory [`Store`], and keeps the
/// last applied log id and membership beside it (they go into every snapshot).
pub struct StateMachine {
    db: Db,
    store: Store,
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
}

/// A consistent view of the state taken between two applies; built and persisted while
/// openraft goes on applying.
pub struct SnapshotBuilder {
    db: Db,
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
        let data = self
            .db
            .run(move |db| {
                let data = state.encode_to_vec();
                write_snapshot(db, &persisted, &data, false)?;
                Ok(data)
            })
            .await
            .map_err(|e| {
                StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
            })?;
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
        let entries = entries.into_iter();
        let mut responses = Vec::with_capacity(entries.size_hint().0);
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
                        .iter()
                        .map(|command| self.store.apply(index, command))
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
            db: self.db.clone(),
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
        self.db
            .run(move |db| write_snapshot(db, &persisted, &data, true))
            .await
            .map_err(|e| {
                StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
            })?;
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.store.restore(state, index);
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        tracing::info!(snapshot = %meta, "raft: snapshot installed from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let stored = self
            .db
            .run(read_snapshot)
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
    path: &Path,
    node_id: u64,
    addr: &str,
) -> Result<(), RaftError> {
    let owned = path.to_path_buf();
    let addr = addr.to_string();
    let opened = tokio::task::spawn_blocking(move || -> Result<(), RaftError> {
        let (db, snapshot) = open_blocking(&owned)?;
        let rewrite = || -> Result<(), DbError> {
            let last_entry: Option<Entry<TypeConfig>> = {
                let txn = db.begin_read()?;
                let table = txn.open_table(LOGS)?;
                let last = table.last()?;
                last.map(|(_, v)| decode("log entry", v.value()))
                    .transpose()?
            };
            let last_log_id = last_entry
                .map(|e| e.log_id)
                .or_else(|| snapshot.as_ref().and_then(|(m, _)| m.last_log_id));
            let vote: Option<Vote<u64>> = get_meta(&db, KEY_VOTE)?;
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
            let vote_bytes = encode(KEY_VOTE, &Vote::new(term, node_id))?;
            let txn = begin_write(&db)?;
            {
                let mut logs = txn.open_table(LOGS)?;
                logs.insert(index, bytes.as_slice())?;
                let mut meta = txn.open_table(META)?;
                meta.insert(KEY_VOTE, vote_bytes.as_slice())?;
            }
            txn.commit()?;
            tracing::warn!(
                node_id,
                term,
                index,
                "raft membership rewritten to this manager alone"
            );
            Ok(())
        };
        rewrite().map_err(|e| RaftError::Open {
            path: owned.clone(),
            detail: e.to_string(),
        })
    })
    .await
    .map_err(|e| RaftError::Open {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    opened
}
