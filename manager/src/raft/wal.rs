//! The Raft log on disk: an append-only write-ahead log split into segment files.
//!
//! - **Segments.** `<first index, 20 digits>.wal`, each a 32-byte header (magic, format,
//!   first index, crc) and then frames. A segment is zero-filled to its full size when it is
//!   created, and synced, so that appending later overwrites allocated, written blocks: an
//!   `fdatasync` then writes the data alone, with no file size or extent change to journal
//!   (on ext4 that is several times cheaper than appending to a growing file).
//! - **Frames.** `len u32 | crc32 u32 | index u64 | payload`, little endian; the crc covers the
//!   index and the payload. Indexes follow each other without gaps. A zero header ends the
//!   log.
//! - **Recovery.** Opening scans every segment. A bad frame in the last segment is a write torn
//!   by a crash (never acknowledged, since a batch is acknowledged only after its sync): the
//!   log is cut there and the rest of the segment zeroed again. A bad frame anywhere else is
//!   damage and opening fails.
//! - **Truncate** (a conflicting suffix) deletes the later segments, then zeroes the cut one
//!   from the cut on and syncs; **purge** forgets the entries up to an index and deletes the
//!   segments that hold nothing newer. The caller persists the purged index first (openraft
//!   reports it in its log state); entries at or below it are ignored when opening.
//!
//! The log knows indexes and bytes only; what an entry means is the caller's business.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const MAGIC: &[u8; 8] = b"SHOALWAL";
/// Bumped when the layout of a segment changes, so an old binary refuses a newer log.
pub(crate) const FORMAT: u32 = 1;
const HEADER_LEN: u64 = 32;
const FRAME_HEADER: usize = 16;
const SUFFIX: &str = ".wal";
/// Zeroes are written in chunks of this size.
const ZERO_CHUNK: usize = 1 << 20;

/// What went wrong with the log files; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WalError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{path} is in log format {found}, this shoal reads format {FORMAT}: run a newer shoal"
    )]
    NewerFormat { path: PathBuf, found: u32 },
    #[error("{path} is damaged at byte {offset}: {detail}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error("log entry {index} cannot follow the last one (next is {expected})")]
    Gap { index: u64, expected: u64 },
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where one entry's payload lies.
#[derive(Clone)]
struct Loc {
    file: Arc<File>,
    offset: u64,
    len: u32,
}

/// The live entries (above the purged index), shared with readers.
#[derive(Default)]
struct Index {
    /// The log index of `locs[0]`.
    first: u64,
    locs: VecDeque<Loc>,
}

/// Reads entries while the writer goes on. Cheap to clone.
#[derive(Clone)]
pub(crate) struct WalReader {
    index: Arc<Mutex<Index>>,
    dir: PathBuf,
}

impl WalReader {
    /// The payloads of the live entries in `[from, to)`, in order; entries not in the log
    /// are left out.
    pub(crate) fn read(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>, WalError> {
        let locs: Vec<Loc> = {
            let index = lock(&self.index);
            let start = from.max(index.first);
            let end = to.min(index.first + index.locs.len() as u64);
            (start..end)
                .map(|i| index.locs[(i - index.first) as usize].clone())
                .collect()
        };
        locs.iter()
            .map(|loc| {
                let mut buf = vec![0; loc.len as usize];
                loc.file
                    .read_exact_at(&mut buf, loc.offset)
                    .map_err(io_err("read the log in", &self.dir))?;
                Ok(buf)
            })
            .collect()
    }
}

fn lock(index: &Mutex<Index>) -> std::sync::MutexGuard<'_, Index> {
    index
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// How many entries it holds, from `first` on.
    count: u64,
    /// Where the next frame goes.
    end: u64,
    /// Its zero-filled size.
    size: u64,
}

impl Segment {
    fn next(&self) -> u64 {
        self.first + self.count
    }
}

/// What opening found worth telling the operator.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// A torn write cut off the end of the log: (segment, byte offset of the cut).
    pub(crate) torn: Option<(PathBuf, u64)>,
    /// The index of the last live entry, if any.
    pub(crate) last: Option<u64>,
}

/// The writer's handle on the log. Only one exists per directory (the caller holds a lock).
pub(crate) struct Wal {
    dir: PathBuf,
    segment_size: u64,
    /// Ascending; the last one takes appends. Never empty.
    segments: Vec<Segment>,
    index: Arc<Mutex<Index>>,
    /// The purged index: entries at or below it are gone.
    purged: Option<u64>,
    buf: Vec<u8>,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}{SUFFIX}")
}

fn segment_header(first: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h[16..24].copy_from_slice(&first.to_le_bytes());
    let crc = crc32fast::hash(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Syncs a directory, so that files created, renamed or removed in it stay so.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync the directory", dir))
}

/// Writes zeroes over `[from, to)` of `file`.
fn write_zeroes(file: &File, from: u64, to: u64, path: &Path) -> Result<(), WalError> {
    let zeroes = vec![0u8; ZERO_CHUNK.min((to - from) as usize)];
    let mut at = from;
    while at < to {
        let n = zeroes.len().min((to - at) as usize);
        file.write_all_at(&zeroes[..n], at)
            .map_err(io_err("zero", path))?;
        at += n as u64;
    }
    Ok(())
}

/// Why a scan of a segment stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// At zeroes up to the end of the file: the clean end.
    Zeroes,
    /// At bytes that are not a valid next frame.
    Bad(String),
}

/// The frames of a segment's bytes (after the header) that follow each other from `first`:
/// (offset, payload length) each, and why the scan stopped.
fn scan(bytes: &[u8], first: u64) -> (Vec<(u64, u32)>, u64, Stop) {
    let mut frames = Vec::new();
    let mut pos = HEADER_LEN as usize;
    let mut expected = first;
    loop {
        let rest = &bytes[pos.min(bytes.len())..];
        if rest.iter().all(|b| *b == 0) {
            return (frames, pos as u64, Stop::Zeroes);
        }
        if rest.len() < FRAME_HEADER {
            return (
                frames,
                pos as u64,
                Stop::Bad("a frame header is cut".into()),
            );
        }
        let word = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
        let len = word(0) as usize;
        let crc = word(4);
        let mut index_bytes = [0u8; 8];
        index_bytes.copy_from_slice(&rest[8..16]);
        let index = u64::from_le_bytes(index_bytes);
        if len == 0 || len > rest.len() - FRAME_HEADER {
            return (
                frames,
                pos as u64,
                Stop::Bad(format!("a frame of {len} bytes does not fit")),
            );
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&rest[8..FRAME_HEADER + len]);
        if hasher.finalize() != crc {
            return (frames, pos as u64, Stop::Bad("checksum mismatch".into()));
        }
        if index != expected {
            return (
                frames,
                pos as u64,
                Stop::Bad(format!("entry {index} where {expected} was expected")),
            );
        }
        frames.push(((pos + FRAME_HEADER) as u64, len as u32));
        pos += FRAME_HEADER + len;
        expected += 1;
    }
}

impl Wal {
    /// Opens the log in `dir` (creating its first segment if there is none), ignoring the
    /// entries at or below `purged`. New segments are `segment_size` bytes.
    pub(crate) fn open(
        dir: &Path,
        segment_size: u64,
        purged: Option<u64>,
    ) -> Result<(Wal, Recovered), WalError> {
        let mut firsts = Vec::new();
        for item in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let item = item.map_err(io_err("list", dir))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(&format!("{SUFFIX}.tmp")) {
                // A segment whose creation a crash interrupted.
                remove(&item.path())?;
                continue;
            }
            if let Some(stem) = name.strip_suffix(SUFFIX) {
                if let Ok(first) = stem.parse::<u64>() {
                    firsts.push(first);
                }
            }
        }
        firsts.sort_unstable();

        let mut recovered = Recovered::default();
        let mut segments: Vec<Segment> = Vec::new();
        let mut frames_of: Vec<Vec<(u64, u32)>> = Vec::new();
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let path = dir.join(segment_name(first));
            let bytes = fs::read(&path).map_err(io_err("read", &path))?;
            check_header(&bytes, first, &path)?;
            let (frames, end, stop) = scan(&bytes, first);
            if let Stop::Bad(detail) = stop {
                if i + 1 < count {
                    return Err(WalError::Corrupt {
                        path,
                        offset: end,
                        detail,
                    });
                }
                recovered.torn = Some((path.clone(), end));
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err("open", &path))?;
            if recovered.torn.is_some() {
                // Zeroed again, so that later appends never run into the torn bytes.
                write_zeroes(&file, end, bytes.len() as u64, &path)?;
                file.sync_data().map_err(io_err("sync", &path))?;
            }
            let segment = Segment {
                first,
                path,
                file: Arc::new(file),
                count: frames.len() as u64,
                end,
                size: (bytes.len() as u64).max(end),
            };
            if let Some(prev) = segments.last() {
                if first != prev.next() {
                    let gap_is_purged = purged.is_some_and(|p| first <= p + 1);
                    if !gap_is_purged {
                        return Err(WalError::Corrupt {
                            path: segment.path,
                            offset: 0,
                            detail: format!(
                                "the segment starts at entry {first}, the one before it ends before entry {}",
                                prev.next()
                            ),
                        });
                    }
                    // Everything before the gap is purged.
                    for old in segments.drain(..) {
                        remove(&old.path)?;
                    }
                    frames_of.clear();
                }
            }
            segments.push(segment);
            frames_of.push(frames);
        }

        let purged_next = purged.map(|p| p + 1).unwrap_or(0);
        let mut index = Index {
            first: purged_next,
            locs: VecDeque::new(),
        };
        for (segment, frames) in segments.iter().zip(frames_of) {
            for (i, (offset, len)) in frames.into_iter().enumerate() {
                let log_index = segment.first + i as u64;
                if log_index < purged_next {
                    continue;
                }
                if index.locs.is_empty() {
                    index.first = log_index;
                }
                index.locs.push_back(Loc {
                    file: segment.file.clone(),
                    offset,
                    len,
                });
            }
        }

        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segment_size: segment_size.max(HEADER_LEN + FRAME_HEADER as u64),
            segments,
            index: Arc::new(Mutex::new(index)),
            purged,
            buf: Vec::new(),
        };
        if wal.segments.is_empty() {
            let segment = wal.create_segment(purged_next)?;
            wal.segments.push(segment);
        }
        wal.drop_purged_segments()?;
        recovered.last = wal.last_index();
        Ok((wal, recovered))
    }

    /// A reader over this log.
    pub(crate) fn reader(&self) -> WalReader {
        WalReader {
            index: self.index.clone(),
            dir: self.dir.clone(),
        }
    }

    /// The index of the last live entry.
    pub(crate) fn last_index(&self) -> Option<u64> {
        let index = lock(&self.index);
        (!index.locs.is_empty()).then(|| index.first + index.locs.len() as u64 - 1)
    }

    fn active(&mut self) -> &mut Segment {
        // `segments` is never empty (see `open`).
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    /// Creates a zero-filled, synced segment whose first entry is `first`.
    fn create_segment(&self, first: u64) -> Result<Segment, WalError> {
        let path = self.dir.join(segment_name(first));
        let tmp = self.dir.join(format!("{}.tmp", segment_name(first)));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.write_all(&segment_header(first))
            .map_err(io_err("write", &tmp))?;
        write_zeroes(&file, HEADER_LEN, self.segment_size, &tmp)?;
        file.flush().map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        sync_dir(&self.dir)?;
        Ok(Segment {
            first,
            path,
            file: Arc::new(file),
            count: 0,
            end: HEADER_LEN,
            size: self.segment_size,
        })
    }

    /// Starts a new segment at `first` after the active one. The active one is synced
    /// first: only the last segment may end in a torn write.
    fn roll(&mut self, first: u64) -> Result<(), WalError> {
        let active = self.active();
        let path = active.path.clone();
        active.file.sync_data().map_err(io_err("sync", &path))?;
        let segment = self.create_segment(first)?;
        self.segments.push(segment);
        Ok(())
    }

    /// Writes entries `(index, payload)` after the last one; not durable before [`Wal::sync`].
    /// The first index must follow the last entry, or be anything once no entry is left
    /// (a snapshot got past the log). Entries at or below the purged index are skipped.
    pub(crate) fn append<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<(), WalError> {
        for (log_index, payload) in entries {
            if self.purged.is_some_and(|p| log_index <= p) {
                // Covered by the snapshot already: nothing to keep.
                continue;
            }
            let next = self.active().next();
            if log_index != next {
                if !lock(&self.index).locs.is_empty() {
                    return Err(WalError::Gap {
                        index: log_index,
                        expected: next,
                    });
                }
                // All purged (a snapshot got past the log): start afresh at this index.
                self.flush_buf()?;
                self.roll(log_index)?;
                lock(&self.index).first = log_index;
                self.drop_purged_segments()?;
            }
            let frame_len = (FRAME_HEADER + payload.len()) as u64;
            let pending = self.buf.len() as u64;
            let segment = self.active();
            let room = segment.size.saturating_sub(segment.end + pending);
            // An entry larger than a whole segment goes alone into a fresh one, which grows.
            if frame_len > room && (segment.count > 0 || pending > 0) {
                self.flush_buf()?;
                self.roll(log_index)?;
            }
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&log_index.to_le_bytes());
            hasher.update(payload);
            let len = u32::try_from(payload.len()).map_err(|_| WalError::Io {
                op: "append to",
                path: self.dir.clone(),
                source: io::Error::other(format!(
                    "log entry {log_index} has {} bytes, more than a frame holds",
                    payload.len()
                )),
            })?;
            let segment_end = self.active().end;
            let offset = segment_end + self.buf.len() as u64 + FRAME_HEADER as u64;
            self.buf.extend_from_slice(&len.to_le_bytes());
            self.buf.extend_from_slice(&hasher.finalize().to_le_bytes());
            self.buf.extend_from_slice(&log_index.to_le_bytes());
            self.buf.extend_from_slice(payload);
            let file = self.active().file.clone();
            self.active().count += 1;
            let mut index = lock(&self.index);
            if index.locs.is_empty() {
                index.first = log_index;
            }
            index.locs.push_back(Loc { file, offset, len });
        }
        self.flush_buf()
    }

    /// Writes the frames gathered in `buf` to the active segment.
    fn flush_buf(&mut self) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let segment = self.active();
        let written = segment.file.write_all_at(&buf, segment.end);
        let path = segment.path.clone();
        written.map_err(io_err("append to", &path))?;
        segment.end += buf.len() as u64;
        segment.size = segment.size.max(segment.end);
        self.buf = buf;
        self.buf.clear();
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub(crate) fn sync(&mut self) -> Result<(), WalError> {
        let segment = self.active();
        let path = segment.path.clone();
        segment.file.sync_data().map_err(io_err("sync", &path))
    }

    /// Removes the entries from `since` on, durably.
    pub(crate) fn truncate(&mut self, since: u64) -> Result<(), WalError> {
        let (first, live) = {
            let index = lock(&self.index);
            (index.first, index.locs.len() as u64)
        };
        if since >= first + live {
            return Ok(());
        }
        let since = since.max(first);
        // Later segments go first (newest first), so that a crash leaves a prefix of the log.
        while self.segments.len() > 1 && self.active().first >= since {
            let Some(segment) = self.segments.pop() else {
                break;
            };
            remove(&segment.path)?;
        }
        sync_dir(&self.dir)?;
        let segment = self.active();
        let (seg_first, seg_next, seg_end) = (segment.first, segment.next(), segment.end);
        let (file, path) = (segment.file.clone(), segment.path.clone());
        let cut = if since >= seg_next {
            // The entries from `since` on were all in the segments just removed.
            seg_end
        } else if since > seg_first {
            let index = lock(&self.index);
            index.locs[(since - first) as usize].offset - FRAME_HEADER as u64
        } else {
            HEADER_LEN
        };
        if cut < seg_end {
            write_zeroes(&file, cut, seg_end, &path)?;
            file.sync_data().map_err(io_err("sync", &path))?;
        }
        let segment = self.active();
        segment.end = cut;
        segment.count = segment.count.min(since.saturating_sub(seg_first));
        lock(&self.index).locs.truncate((since - first) as usize);
        Ok(())
    }

    /// Forgets the entries up to `upto` and deletes the segments that hold nothing newer.
    /// The caller has persisted `upto` as the purged index already.
    pub(crate) fn purge(&mut self, upto: u64) -> Result<(), WalError> {
        self.purged = Some(self.purged.map_or(upto, |p| p.max(upto)));
        {
            let mut index = lock(&self.index);
            let next = index.first + index.locs.len() as u64;
            let drop = (upto + 1)
                .saturating_sub(index.first)
                .min(index.locs.len() as u64);
            index.locs.drain(..drop as usize);
            index.first = if index.locs.is_empty() {
                next.max(upto + 1)
            } else {
                index.first + drop
            };
        }
        self.drop_purged_segments()
    }

    /// Deletes the segments before the active one whose entries are all purged.
    fn drop_purged_segments(&mut self) -> Result<(), WalError> {
        let Some(purged) = self.purged else {
            return Ok(());
        };
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[1].first <= purged + 1 {
            let segment = self.segments.remove(0);
            remove(&segment.path)?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The segment files, oldest first (for tests and tools).
    #[cfg(test)]
    pub(crate) fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }
}

fn remove(path: &Path) -> Result<(), WalError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

fn check_header(bytes: &[u8], first: u64, path: &Path) -> Result<(), WalError> {
    let corrupt = |detail: &str| WalError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        detail: detail.to_string(),
    };
    if bytes.len() < HEADER_LEN as usize || &bytes[..8] != MAGIC {
        return Err(corrupt("not a shoal log segment"));
    }
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[8..12]);
    let format = u32::from_le_bytes(word);
    if format > FORMAT {
        return Err(WalError::NewerFormat {
            path: path.to_path_buf(),
            found: format,
        });
    }
    word.copy_from_slice(&bytes[24..28]);
    if crc32fast::hash(&bytes[..24]) != u32::from_le_bytes(word) {
        return Err(corrupt("the segment header's checksum does not match"));
    }
    let mut first_bytes = [0u8; 8];
    first_bytes.copy_from_slice(&bytes[16..24]);
    if u64::from_le_bytes(first_bytes) != first {
        return Err(corrupt("the segment header names another first entry"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: u64 = 256;

    fn payload(i: u64) -> Vec<u8> {
        format!("entry number {i}").into_bytes()
    }

    fn append(wal: &mut Wal, range: std::ops::Range<u64>) {
        let entries: Vec<(u64, Vec<u8>)> = range.map(|i| (i, payload(i))).collect();
        wal.append(entries.iter().map(|(i, p)| (*i, p.as_slice())))
            .expect("append");
        wal.sync().expect("sync");
    }

    fn read_all(wal: &Wal) -> Vec<Vec<u8>> {
        wal.reader().read(0, u64::MAX).expect("read")
    }

    fn expected(range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
        range.map(payload).collect()
    }

    #[test]
    fn entries_survive_a_reopen_across_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, recovered) = Wal::open(dir.path(), SMALL, None).expect("open");
        assert_eq!(recovered, Recovered::default());
        append(&mut wal, 0..40);
        assert!(wal.segment_paths().len() > 3, "{:?}", wal.segment_paths());
        assert_eq!(wal.reader().read(10, 13).expect("read"), expected(10..13));
        drop(wal);
        let (mut wal, recovered) = Wal::open(dir.path(), SMALL, None).expect("reopen");
        assert_eq!(recovered.last, Some(39));
        assert_eq!(recovered.torn, None);
        assert_eq!(read_all(&wal), expected(0..40));
        append(&mut wal, 40..45);
        assert_eq!(read_all(&wal), expected(0..45));
        let err = wal.append([(50, &b"x"[..])]).expect_err("a gap");
        assert!(
            matches!(
                err,
                WalError::Gap {
                    index: 50,
                    expected: 45
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_go_on_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path(), 4096, None).expect("open");
        append(&mut wal, 0..5);
        let last = wal.segment_paths().pop().expect("a segment");
        let end = {
            let index = lock(&wal.index);
            let loc = &index.locs[4];
            loc.offset + loc.len as u64
        };
        drop(wal);
        // A crash mid-batch: entry 5 half written, a piece of entry 6 beyond it.
        let file = OpenOptions::new().write(true).open(&last).expect("open");
        let mut frame = Vec::new();
        frame.extend_from_slice(&100u32.to_le_bytes());
        frame.extend_from_slice(&7u32.to_le_bytes());
        frame.extend_from_slice(&5u64.to_le_bytes());
        frame.extend_from_slice(b"half");
        file.write_all_at(&frame, end).expect("write");
        file.write_all_at(b"more garbage", end + 200)
            .expect("write");
        drop(file);

        let (mut wal, recovered) = Wal::open(dir.path(), 4096, None).expect("reopen");
        assert_eq!(recovered.torn, Some((last.clone(), end)));
        assert_eq!(recovered.last, Some(4));
        assert_eq!(read_all(&wal), expected(0..5));
        // The garbage is gone: a short entry written now is not followed by stale bytes.
        append(&mut wal, 5..6);
        drop(wal);
        let (wal, recovered) = Wal::open(dir.path(), 4096, None).expect("reopen");
        assert_eq!(recovered.torn, None);
        assert_eq!(read_all(&wal), expected(0..6));
    }

    #[test]
    fn damage_before_the_last_segment_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path(), SMALL, None).expect("open");
        append(&mut wal, 0..40);
        let first = wal.segment_paths()[0].clone();
        drop(wal);
        let mut bytes = fs::read(&first).expect("read");
        bytes[HEADER_LEN as usize + FRAME_HEADER] ^= 0xff;
        fs::write(&first, &bytes).expect("write");
        let err = Wal::open(dir.path(), SMALL, None)
            .err()
            .expect("damage refused");
        assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (wal, _) = Wal::open(dir.path(), SMALL, None).expect("open");
        let path = wal.segment_paths()[0].clone();
        drop(wal);
        let mut bytes = fs::read(&path).expect("read");
        bytes[8..12].copy_from_slice(&(FORMAT + 1).to_le_bytes());
        let crc = crc32fast::hash(&bytes[..24]);
        bytes[24..28].copy_from_slice(&crc.to_le_bytes());
        fs::write(&path, &bytes).expect("write");
        let err = Wal::open(dir.path(), SMALL, None)
            .err()
            .expect("newer refused");
        assert!(err.to_string().contains("run a newer shoal"), "{err}");
    }

    #[test]
    fn truncate_then_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path(), SMALL, None).expect("open");
        append(&mut wal, 0..40);
        let segments = wal.segment_paths().len();
        wal.truncate(12).expect("truncate");
        assert!(wal.segment_paths().len() < segments);
        assert_eq!(read_all(&wal), expected(0..12));
        // Conflicting entries replaced by others (here: longer ones) at the same indexes.
        let longer: Vec<(u64, Vec<u8>)> = (12..20).map(|i| (i, vec![b'n'; 30])).collect();
        wal.append(longer.iter().map(|(i, p)| (*i, p.as_slice())))
            .expect("append");
        wal.sync().expect("sync");
        drop(wal);
        let (mut wal, recovered) = Wal::open(dir.path(), SMALL, None).expect("reopen");
        assert_eq!(recovered.last, Some(19));
        let mut want = expected(0..12);
        want.extend(longer.iter().map(|(_, p)| p.clone()));
        assert_eq!(read_all(&wal), want);
        // Truncating at a segment's first entry, and everything.
        wal.truncate(5).expect("truncate");
        wal.truncate(0).expect("truncate all");
        assert!(read_all(&wal).is_empty());
        drop(wal);
        let (mut wal, recovered) = Wal::open(dir.path(), SMALL, None).expect("reopen");
        assert_eq!(recovered.last, None);
        append(&mut wal, 0..3);
        assert_eq!(read_all(&wal), expected(0..3));
    }

    #[test]
    fn purge_then_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path(), SMALL, None).expect("open");
        append(&mut wal, 0..40);
        let segments = wal.segment_paths().len();
        wal.purge(20).expect("purge");
        assert!(wal.segment_paths().len() < segments);
        assert_eq!(read_all(&wal), expected(21..40));
        drop(wal);
        let (mut wal, recovered) = Wal::open(dir.path(), SMALL, Some(20)).expect("reopen");
        assert_eq!(recovered.last, Some(39));
        assert_eq!(read_all(&wal), expected(21..40));
        // Purged past the end (a snapshot from the leader): the log goes on from there.
        wal.purge(100).expect("purge");
        assert!(read_all(&wal).is_empty());
        append(&mut wal, 101..104);
        assert_eq!(wal.segment_paths().len(), 1, "{:?}", wal.segment_paths());
        drop(wal);
        let (wal, recovered) = Wal::open(dir.path(), SMALL, Some(100)).expect("reopen");
        assert_eq!(recovered.last, Some(103));
        assert_eq!(wal.reader().read(0, 200).expect("read"), expected(101..104));
    }

    #[test]
    fn a_crash_between_purged_index_and_deletion_leaves_a_readable_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path(), SMALL, None).expect("open");
        append(&mut wal, 0..40);
        drop(wal);
        // The purged index was persisted, the segments were not deleted yet.
        let (wal, recovered) = Wal::open(dir.path(), SMALL, Some(25)).expect("reopen");
        assert_eq!(recovered.last, Some(39));
        assert_eq!(read_all(&wal), expected(26..40));
    }
}
