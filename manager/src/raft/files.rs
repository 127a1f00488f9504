//! The small files beside the log (vote, purged log id, snapshot, committed log id), each
//! `magic | format u32 | crc32 u32 | length u64 | payload`.
//!
//! Durable ones are replaced atomically: a temporary file is written and synced, renamed over
//! the old one, and the directory synced, so a crash leaves the old file or the new one.
//! The committed log id is overwritten in place without a sync (openraft allows it to be
//! lost or to lag); a torn copy fails its checksum and reads as absent.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::wal::{io_err, sync_dir, WalError, FORMAT};

const MAGIC: &[u8; 8] = b"SHOALRFT";
const HEADER_LEN: usize = 24;

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Why framed bytes were refused.
enum Unframe {
    Newer(u32),
    Bad(&'static str),
}

fn unframe(bytes: &[u8]) -> Result<&[u8], Unframe> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(Unframe::Bad("not a shoal raft file"));
    }
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let format = word(8);
    if format > FORMAT {
        return Err(Unframe::Newer(format));
    }
    let crc = word(12);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[16..24]);
    let len = u64::from_le_bytes(len);
    let payload = usize::try_from(len)
        .ok()
        .and_then(|len| bytes.get(HEADER_LEN..HEADER_LEN + len))
        .ok_or(Unframe::Bad("the file is shorter than its header says"))?;
    if crc32fast::hash(payload) != crc {
        return Err(Unframe::Bad("checksum mismatch"));
    }
    Ok(payload)
}

/// Replaces `dir/name` with `payload`, durably.
pub(crate) fn write_atomic(dir: &Path, name: &str, payload: &[u8]) -> Result<(), WalError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(&framed(payload))
        .map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("sync", &tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
    sync_dir(dir)
}

/// The payload of `dir/name`, `None` if there is no such file.
pub(crate) fn read_atomic(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, WalError> {
    let path = dir.join(name);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    match unframe(&bytes) {
        Ok(payload) => Ok(Some(payload.to_vec())),
        Err(Unframe::Newer(found)) => Err(WalError::NewerFormat { path, found }),
        Err(Unframe::Bad(detail)) => Err(WalError::Corrupt {
            path,
            offset: 0,
            detail: detail.into(),
        }),
    }
}

/// A file overwritten in place, never synced: see the module doc.
pub(crate) struct Unsynced {
    file: File,
}

impl Unsynced {
    /// Opens (creating) `dir/name` and returns it with its payload, `None` when absent or
    /// torn.
    pub(crate) fn open(dir: &Path, name: &str) -> Result<(Unsynced, Option<Vec<u8>>), WalError> {
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        let payload = match unframe(&bytes) {
            Ok(payload) => Some(payload.to_vec()),
            Err(Unframe::Newer(found)) => return Err(WalError::NewerFormat { path, found }),
            Err(Unframe::Bad(_)) => None,
        };
        Ok((Unsynced { file }, payload))
    }

    /// Overwrites the payload (one `pwrite`; the OS writes it back when it likes).
    pub(crate) fn write(&self, payload: &[u8]) -> io::Result<()> {
        self.file.write_all_at(&framed(payload), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_files_round_trip_and_refuse_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read_atomic(dir.path(), "vote").expect("read").is_none());
        write_atomic(dir.path(), "vote", b"first").expect("write");
        write_atomic(dir.path(), "vote", b"second").expect("write");
        assert_eq!(
            read_atomic(dir.path(), "vote").expect("read").as_deref(),
            Some(&b"second"[..])
        );
        assert!(!dir.path().join("vote.tmp").exists());

        let path = dir.path().join("vote");
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).expect("write");
        let err = read_atomic(dir.path(), "vote").expect_err("damaged");
        assert!(err.to_string().contains("checksum"), "{err}");

        let mut newer = framed(b"x");
        newer[8..12].copy_from_slice(&(FORMAT + 1).to_le_bytes());
        fs::write(&path, &newer).expect("write");
        let err = read_atomic(dir.path(), "vote").expect_err("newer");
        assert!(err.to_string().contains("run a newer shoal"), "{err}");
    }

    #[test]
    fn an_unsynced_file_reads_back_and_a_torn_one_is_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, payload) = Unsynced::open(dir.path(), "committed").expect("open");
        assert!(payload.is_none());
        file.write(b"a longer payload").expect("write");
        file.write(b"short").expect("write");
        drop(file);
        let (_, payload) = Unsynced::open(dir.path(), "committed").expect("open");
        assert_eq!(payload.as_deref(), Some(&b"short"[..]));
        let path = dir.path().join("committed");
        let mut bytes = fs::read(&path).expect("read");
        bytes[HEADER_LEN] ^= 0xff;
        fs::write(&path, &bytes).expect("write");
        let (_, payload) = Unsynced::open(dir.path(), "committed").expect("open");
        assert!(payload.is_none());
    }
}
