//! Container logs: one JSON object per line,
//! `{"t":<unix ms>,"s":"stdout"|"stderr","l":"<line without newline>"}`.
//!
//! The supervisor splits each stream on `\n`; a line longer than [`MAX_LINE`] bytes is written
//! as several entries (as Docker does at 16 KiB), and a final partial line is logged when the
//! stream ends. Bytes that are not UTF-8 are replaced with U+FFFD.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RuntimeError;

/// Longest line kept in one entry; longer ones are split.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When the supervisor read it, unix milliseconds.
    pub t: u64,
    pub s: LogStream,
    pub l: String,
}

/// Encodes one entry as a JSON line (with the trailing `\n`).
pub fn encode_entry(t: u64, s: LogStream, line: &[u8]) -> Vec<u8> {
    let entry = LogEntry {
        t,
        s,
        l: String::from_utf8_lossy(line).into_owned(),
    };
    // Serializing a struct of a number and two strings cannot fail.
    let mut out = serde_json::to_vec(&entry).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Decodes one JSON line (without or with its `\n`).
pub fn decode_entry(line: &str) -> Option<LogEntry> {
    serde_json::from_str(line.trim_end_matches('\n')).ok()
}

/// Splits a byte stream into log lines.
#[derive(Debug)]
pub struct LineSplitter {
    stream: LogStream,
    buf: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: LogStream) -> LineSplitter {
        LineSplitter {
            stream,
            buf: Vec::new(),
        }
    }

    /// Feeds bytes; appends the encoded complete lines to `out`.
    pub fn push(&mut self, t: u64, data: &[u8], out: &mut Vec<u8>) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            for chunk in self.buf[start..end].chunks(MAX_LINE) {
                out.extend(encode_entry(t, self.stream, chunk));
            }
            if end == start {
                out.extend(encode_entry(t, self.stream, b""));
            }
            start = end + 1;
        }
        self.buf.drain(..start);
        while self.buf.len() >= MAX_LINE {
            out.extend(encode_entry(t, self.stream, &self.buf[..MAX_LINE]));
            self.buf.drain(..MAX_LINE);
        }
    }

    /// Ends the stream: a final partial line is logged too.
    pub fn finish(&mut self, t: u64, out: &mut Vec<u8>) {
        if !self.buf.is_empty() {
            out.extend(encode_entry(t, self.stream, &self.buf));
            self.buf.clear();
        }
    }
}

/// Reads a log file; `tail` keeps only the last N entries. Lines that do not parse (e.g. one
/// being written right now) are skipped. A missing file is an empty log.
pub fn read_log(path: &Path, tail: Option<usize>) -> Result<Vec<LogEntry>, RuntimeError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(RuntimeError::Io {
                op: "read log",
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    let mut entries: Vec<LogEntry> = String::from_utf8_lossy(&text)
        .lines()
        .filter_map(decode_entry)
        .collect();
    if let Some(n) = tail {
        let skip = entries.len().saturating_sub(n);
        entries.drain(..skip);
    }
    Ok(entries)
}

/// Follows a log file as it grows: call [`LogFollower::read_new`] whenever convenient (e.g.
/// every 200 ms) to get the entries appended since the last call. Only complete lines are
/// returned; a half-written line waits for the next call.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl LogFollower {
    /// Starts at the beginning of the file (`from_end == false`) or at its current end.
    pub fn new(path: &Path, from_end: bool) -> LogFollower {
        let offset = if from_end {
            std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
        } else {
            0
        };
        LogFollower {
            path: path.to_path_buf(),
            offset,
            partial: Vec::new(),
        }
    }

    pub fn read_new(&mut self) -> Result<Vec<LogEntry>, RuntimeError> {
        let io_err = |e| RuntimeError::Io {
            op: "follow log",
            path: self.path.clone(),
            source: e,
        };
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(e)),
        };
        let len = file.metadata().map_err(io_err)?.len();
        if len < self.offset {
            // Truncated or replaced: start over.
            self.offset = 0;
            self.partial.clear();
        }
        file.seek(SeekFrom::Start(self.offset)).map_err(io_err)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io_err)?;
        self.offset += data.len() as u64;
        self.partial.extend_from_slice(&data);
        let mut entries = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&self.partial[start..start + nl]);
            if let Some(entry) = decode_entry(&line) {
                entries.push(entry);
            }
            start += nl + 1;
        }
        self.partial.drain(..start);
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines(out: &[u8]) -> Vec<LogEntry> {
        String::from_utf8(out.to_vec())
            .expect("utf8")
            .lines()
            .map(|l| decode_entry(l).expect("decodes"))
            .collect()
    }

    #[test]
    fn encode_decode_roundtrip_and_format() {
        let enc = encode_entry(1700000000123, LogStream::Stderr, b"he said \"hi\"\tok");
        let text = String::from_utf8(enc).expect("utf8");
        assert_eq!(
            text,
            "{\"t\":1700000000123,\"s\":\"stderr\",\"l\":\"he said \\\"hi\\\"\\tok\"}\n"
        );
        let e = decode_entry(&text).expect("decode");
        assert_eq!(e.t, 1700000000123);
        assert_eq!(e.s, LogStream::Stderr);
        assert_eq!(e.l, "he said \"hi\"\tok");
        assert_eq!(decode_entry("{\"t\":1,\"s\":\"stdin\",\"l\":\"\"}"), None);
        assert_eq!(decode_entry("{\"t\":1,\"s\":\"stdout\""), None);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let e = decode_entry(
            std::str::from_utf8(&encode_entry(1, LogStream::Stdout, b"a\xffb"))
                .expect("json is utf8"),
        )
        .expect("decode");
        assert_eq!(e.l, "a\u{fffd}b");
    }

    #[test]
    fn splitter_handles_chunks_empty_lines_and_partials() {
        let mut s = LineSplitter::new(LogStream::Stdout);
        let mut out = Vec::new();
        s.push(1, b"hel", &mut out);
        assert!(out.is_empty());
        s.push(2, b"lo\n\nwor", &mut out);
        s.push(3, b"ld\ntail", &mut out);
        s.finish(4, &mut out);
        s.finish(5, &mut out);
        let got: Vec<(u64, String)> = lines(&out).into_iter().map(|e| (e.t, e.l)).collect();
        assert_eq!(
            got,
            [
                (2, "hello".into()),
                (2, String::new()),
                (3, "world".into()),
                (4, "tail".into())
            ]
        );
    }

    #[test]
    fn splitter_splits_long_lines() {
        let mut s = LineSplitter::new(LogStream::Stderr);
        let mut out = Vec::new();
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        s.push(1, &long, &mut out);
        assert_eq!(
            lines(&out).len(),
            2,
            "two full chunks are flushed before the newline"
        );
        s.push(1, b"\n", &mut out);
        let got = lines(&out);
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].l.len(), 10);
        assert!(got.iter().all(|e| e.s == LogStream::Stderr));
    }

    #[test]
    fn read_log_with_tail_and_garbage() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("log.json");
        assert!(read_log(&path, None).expect("missing is empty").is_empty());
        let mut f = File::create(&path).expect("create");
        for i in 0..5 {
            f.write_all(&encode_entry(
                i,
                LogStream::Stdout,
                format!("line {i}").as_bytes(),
            ))
            .expect("write");
        }
        f.write_all(b"not json\n{\"t\":9,\"s\":\"stdout\",\"l\":\"half")
            .expect("write");
        assert_eq!(read_log(&path, None).expect("read").len(), 5);
        let tail = read_log(&path, Some(2)).expect("tail");
        assert_eq!(
            tail.iter().map(|e| e.l.as_str()).collect::<Vec<_>>(),
            ["line 3", "line 4"]
        );
        assert_eq!(read_log(&path, Some(100)).expect("tail").len(), 5);
    }

    #[test]
    fn follower_returns_only_new_complete_lines() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("log.json");
        let mut fol = LogFollower::new(&path, false);
        assert!(fol.read_new().expect("no file yet").is_empty());
        let mut f = File::create(&path).expect("create");
        f.write_all(&encode_entry(1, LogStream::Stdout, b"one"))
            .expect("write");
        let enc = encode_entry(2, LogStream::Stderr, b"two");
        f.write_all(&enc[..5]).expect("write");
        assert_eq!(fol.read_new().expect("read").len(), 1);
        assert!(fol.read_new().expect("read").is_empty());
        f.write_all(&enc[5..]).expect("write");
        let got = fol.read_new().expect("read");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].l, "two");
        let mut from_end = LogFollower::new(&path, true);
        assert!(from_end.read_new().expect("read").is_empty());
    }
}
