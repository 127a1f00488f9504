//! Container logs: one JSON object per line,
//! `{"t":<unix ms>,"s":"stdout"|"stderr","l":"<line without newline>"}`.
//!
//! The supervisor splits each stream on `\n`; a line longer than [`MAX_LINE`] bytes is written
//! as several entries (as Docker does at 16 KiB), and a final partial line is logged when the
//! stream ends. Bytes that are not UTF-8 are replaced with U+FFFD.
//!
//! # Rotation ([`LogOptions`], Docker's json-file `max-size` / `max-file`)
//! With `max_size`, a line that would take the file past it first rotates the log:
//! `<log>.(N-2)` → `<log>.(N-1)`, …, `<log>` → `<log>.1`, and a new `<log>` (N = `max_files`,
//! the oldest file is dropped). With `max_files` = 1 (Docker's default) the log is truncated
//! instead. Rotation happens between lines, so a file exceeds `max_size` only by a single line
//! longer than `max_size`. [`read_log`] reads the rotated files oldest first, then `<log>`;
//! [`LogFollower`] keeps following across rotations (it holds the file open and, when `<log>`
//! is a new file, reads what is left of the old one and of any file rotated in between).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RuntimeError;

/// Most rotated files read or kept.
const MAX_ROTATED: u32 = 1000;

/// Log rotation options (Docker's json-file `max-size` and `max-file`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOptions {
    /// Bytes; `None` → the log grows without bound (Docker's default).
    #[serde(default)]
    pub max_size: Option<u64>,
    /// Files kept, the live one included; `None` → 1 (the log is truncated when full).
    #[serde(default)]
    pub max_files: Option<u32>,
}

impl LogOptions {
    /// From Docker's `logging.options` (`max-size: 10m`, `max-file: "3"`); other keys are
    /// refused (`compress`, `labels`, `env`, `tag` are not supported).
    pub fn from_docker(options: &BTreeMap<String, String>) -> Result<LogOptions, String> {
        let mut out = LogOptions::default();
        for (k, v) in options {
            match k.as_str() {
                "max-size" => out.max_size = Some(parse_size(v)?),
                "max-file" => {
                    out.max_files = Some(v.trim().parse().map_err(|_| {
                        format!("log option max-file {v:?} is not a number of files")
                    })?)
                }
                other => return Err(format!("unsupported log option {other:?}")),
            }
        }
        out.validate()?;
        Ok(out)
    }

    /// Docker's rules: max-size positive, max-file ≥ 1, and max-file > 1 only with max-size.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_size == Some(0) {
            return Err("log option max-size must be positive".into());
        }
        match self.max_files {
            Some(0) => Err("log option max-file cannot be less than 1".into()),
            Some(n) if n > MAX_ROTATED => Err(format!(
                "log option max-file {n} is above the limit of {MAX_ROTATED}"
            )),
            Some(n) if n > 1 && self.max_size.is_none() => {
                Err("log option max-file can only be set together with max-size".into())
            }
            _ => Ok(()),
        }
    }
}

/// A size as Docker writes it: `1024`, `10k`, `10m`, `1g` (binary units, `b` suffix allowed).
pub fn parse_size(spec: &str) -> Result<u64, String> {
    let s = spec.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'm')) => (&s[..i], 1 << 20),
        Some((i, 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let bad = || format!("size {spec:?} is not a number with an optional k, m or g");
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 {
        return Err(bad());
    }
    Ok((n * mult as f64) as u64)
}

/// `<log>.<n>`.
fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The rotated files that exist, oldest first.
fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..=MAX_ROTATED)
        .map(|n| rotated_path(path, n))
        .take_while(|p| p.exists())
        .collect();
    out.reverse();
    out
}

/// The supervisor's log file, rotated as [`LogOptions`] says.
#[derive(Debug)]
pub(crate) struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: Option<u64>,
    max_files: u32,
}

fn open_append(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

impl LogWriter {
    pub fn open(path: &Path, options: &LogOptions) -> io::Result<LogWriter> {
        LogWriter::with_file(path, open_append(path)?, options)
    }

    /// Continues with a log file that is already open (the relay's inherited fd).
    pub fn with_file(path: &Path, file: File, options: &LogOptions) -> io::Result<LogWriter> {
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_size: options.max_size.filter(|&n| n > 0),
            max_files: options.max_files.unwrap_or(1).clamp(1, MAX_ROTATED),
        })
    }

    /// The open log file (handed to the relay across its exec).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The rotation in effect, as options that make the same writer again.
    pub fn options(&self) -> LogOptions {
        LogOptions {
            max_size: self.max_size,
            max_files: Some(self.max_files),
        }
    }

    /// Appends whole encoded lines, rotating between lines as needed.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(max) = self.max_size else {
            self.size += data.len() as u64;
            return self.file.write_all(data);
        };
        let mut start = 0;
        let mut pos = 0;
        while pos < data.len() {
            let end = data[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(data.len(), |i| pos + i + 1);
            let pending = (pos - start) as u64;
            if self.size + pending > 0 && self.size + pending + (end - pos) as u64 > max {
                self.file.write_all(&data[start..pos])?;
                self.rotate()?;
                start = pos;
            }
            pos = end;
        }
        self.file.write_all(&data[start..])?;
        self.size += (data.len() - start) as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.max_files <= 1 {
            self.file.set_len(0)?;
        } else {
            for n in (1..self.max_files - 1).rev() {
                match fs::rename(rotated_path(&self.path, n), rotated_path(&self.path, n + 1)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            fs::rename(&self.path, rotated_path(&self.path, 1))?;
            self.file = open_append(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

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

/// Reads a log, its rotated files first (oldest first); `tail` keeps only the last N entries.
/// Lines that do not parse (e.g. one being written right now) are skipped. A missing file is
/// an empty log.
pub fn read_log(path: &Path, tail: Option<usize>) -> Result<Vec<LogEntry>, RuntimeError> {
    let mut entries = Vec::new();
    for file in rotated_files(path)
        .iter()
        .map(PathBuf::as_path)
        .chain([path])
    {
        let text = match fs::read(file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(RuntimeError::Io {
                    op: "read log",
                    path: file.to_path_buf(),
                    source: e,
                })
            }
        };
        entries.extend(
            String::from_utf8_lossy(&text)
                .lines()
                .filter_map(decode_entry),
        );
    }
    if let Some(n) = tail {
        let skip = entries.len().saturating_sub(n);
        entries.drain(..skip);
    }
    Ok(entries)
}

/// Follows a log file as it grows: call [`LogFollower::read_new`] whenever convenient (e.g.
/// every 200 ms) to get the entries appended since the last call. Only complete lines are
/// returned; a half-written line waits for the next call. Rotations are followed (see the
/// module docs); a truncation starts over at the beginning of the file.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    /// The file being read, and its (device, inode).
    file: Option<(File, (u64, u64))>,
    offset: u64,
    partial: Vec<u8>,
}

fn identity(m: &fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

impl LogFollower {
    /// Starts at the beginning of the file (`from_end == false`) or at its current end.
    pub fn new(path: &Path, from_end: bool) -> LogFollower {
        let mut f = LogFollower {
            path: path.to_path_buf(),
            file: None,
            offset: 0,
            partial: Vec::new(),
        };
        if let Ok(file) = File::open(path) {
            if let Ok(m) = file.metadata() {
                if from_end {
                    f.offset = m.len();
                }
                f.file = Some((file, identity(&m)));
            }
        }
        f
    }

    pub fn read_new(&mut self) -> Result<Vec<LogEntry>, RuntimeError> {
        let path = self.path.clone();
        let io_err = |e| RuntimeError::Io {
            op: "follow log",
            path: path.clone(),
            source: e,
        };
        let mut entries = Vec::new();
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(file) => {
                    let id = identity(&file.metadata().map_err(io_err)?);
                    self.file = Some((file, id));
                    self.offset = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(entries),
                Err(e) => return Err(io_err(e)),
            }
        }
        // Bounded: each round moves to a newer file.
        for _ in 0..=MAX_ROTATED {
            let Some((file, id)) = &mut self.file else {
                break;
            };
            let id = *id;
            let len = file.metadata().map_err(io_err)?.len();
            if len < self.offset {
                // Truncated (max_files = 1) or rewritten: start over.
                self.offset = 0;
                self.partial.clear();
            }
            file.seek(SeekFrom::Start(self.offset)).map_err(io_err)?;
            let mut data = Vec::new();
            file.read_to_end(&mut data).map_err(io_err)?;
            self.offset += data.len() as u64;
            self.take_lines(&data, &mut entries);
            let now = match fs::metadata(&self.path) {
                Ok(m) => identity(&m),
                // Mid-rotation (or removed): look again next time.
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(io_err(e)),
            };
            if now == id {
                break;
            }
            // Rotated: the writer is done with our file; what it wrote since the read above,
            // then whatever was rotated after our file, then the new live file.
            if let Some((file, _)) = &mut self.file {
                file.seek(SeekFrom::Start(self.offset)).map_err(io_err)?;
                let mut rest = Vec::new();
                file.read_to_end(&mut rest).map_err(io_err)?;
                self.take_lines(&rest, &mut entries);
            }
            let rotated = rotated_files(&self.path);
            let ours = rotated
                .iter()
                .position(|p| fs::metadata(p).is_ok_and(|m| identity(&m) == id));
            let newer = match ours {
                Some(i) => &rotated[i + 1..],
                // Ours was dropped: every rotated file is newer.
                None => &rotated[..],
            };
            self.partial.clear();
            for p in newer {
                if let Ok(data) = fs::read(p) {
                    self.take_lines(&data, &mut entries);
                    self.partial.clear();
                }
            }
            match File::open(&self.path) {
                Ok(file) => {
                    let id = identity(&file.metadata().map_err(io_err)?);
                    self.file = Some((file, id));
                    self.offset = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.file = None;
                    break;
                }
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(entries)
    }

    /// Appends the complete lines of `partial + data` to `entries`; keeps the rest.
    fn take_lines(&mut self, data: &[u8], entries: &mut Vec<LogEntry>) {
        self.partial.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&self.partial[start..start + nl]);
            if let Some(entry) = decode_entry(&line) {
                entries.push(entry);
            }
            start += nl + 1;
        }
        self.partial.drain(..start);
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

    #[test]
    fn docker_log_options_parse() {
        let opts = |pairs: &[(&str, &str)]| {
            LogOptions::from_docker(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(
            opts(&[("max-size", "10m"), ("max-file", "3")]),
            Ok(LogOptions {
                max_size: Some(10 << 20),
                max_files: Some(3)
            })
        );
        assert_eq!(opts(&[]), Ok(LogOptions::default()));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("1.5KB"), Ok(1536));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("-1m").is_err());
        for (bad, want) in [
            (vec![("max-file", "3")], "together with max-size"),
            (vec![("max-size", "1m"), ("max-file", "0")], "less than 1"),
            (vec![("max-size", "0")], "positive"),
            (
                vec![("max-size", "1m"), ("max-file", "x")],
                "number of files",
            ),
            (vec![("compress", "true")], "unsupported"),
        ] {
            let err = opts(&bad).expect_err(want);
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        // One file and a size: the log is truncated when full (Docker's max-file default).
        assert!(opts(&[("max-size", "1m"), ("max-file", "1")]).is_ok());
    }

    /// Entry `i` (< 900): every one has the same encoded length.
    fn entry(i: u64) -> Vec<u8> {
        encode_entry(
            100 + i,
            LogStream::Stdout,
            format!("line {i:03}").as_bytes(),
        )
    }

    fn numbers(entries: &[LogEntry]) -> Vec<u64> {
        entries.iter().map(|e| e.t - 100).collect()
    }

    #[test]
    fn writer_rotates_between_lines_and_keeps_max_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("log.json");
        let line_len = entry(0).len() as u64;
        let opts = LogOptions {
            max_size: Some(line_len * 4),
            max_files: Some(3),
        };
        let mut w = LogWriter::open(&path, &opts).expect("open");
        // Batches of 3 lines: rotation happens inside a batch too.
        for batch in 0..10u64 {
            let data: Vec<u8> = (0..3).flat_map(|i| entry(batch * 3 + i)).collect();
            w.write(&data).expect("write");
        }
        let size = |p: &Path| fs::metadata(p).expect("exists").len();
        assert!(size(&path) <= line_len * 4);
        assert_eq!(size(&rotated_path(&path, 1)), line_len * 4);
        assert_eq!(size(&rotated_path(&path, 2)), line_len * 4);
        assert!(!rotated_path(&path, 3).exists());
        // 30 lines, 4 per file: .2 holds 20..=23, .1 24..=27, the live file 28 and 29.
        let all = read_log(&path, None).expect("read");
        assert_eq!(numbers(&all), (20..30).collect::<Vec<_>>());
        assert_eq!(
            numbers(&read_log(&path, Some(5)).expect("tail")),
            (25..30).collect::<Vec<_>>()
        );
        // A line longer than max_size gets a file of its own.
        let mut w = LogWriter::open(&path, &opts).expect("reopen");
        let long = encode_entry(199, LogStream::Stderr, &vec![b'x'; 500]);
        w.write(&long).expect("write long");
        w.write(&entry(100)).expect("write");
        assert_eq!(size(&rotated_path(&path, 1)), long.len() as u64);
        assert_eq!(numbers(&read_log(&path, Some(2)).expect("tail")), [99, 100]);

        // max_files 1: truncated in place.
        let single = tmp.path().join("one.json");
        let mut w = LogWriter::open(
            &single,
            &LogOptions {
                max_size: Some(line_len * 2),
                max_files: None,
            },
        )
        .expect("open");
        for i in 0..5 {
            w.write(&entry(i)).expect("write");
        }
        assert!(!rotated_path(&single, 1).exists());
        assert_eq!(numbers(&read_log(&single, None).expect("read")), [4]);
        // No max_size: never rotated.
        let plain = tmp.path().join("plain.json");
        let mut w = LogWriter::open(&plain, &LogOptions::default()).expect("open");
        for i in 0..50 {
            w.write(&entry(i)).expect("write");
        }
        assert_eq!(read_log(&plain, None).expect("read").len(), 50);
    }

    #[test]
    fn follower_keeps_following_across_rotations() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("log.json");
        let line_len = entry(0).len() as u64;
        let opts = LogOptions {
            max_size: Some(line_len * 3),
            max_files: Some(4),
        };
        let mut fol = LogFollower::new(&path, false);
        let mut got = Vec::new();
        let mut w = LogWriter::open(&path, &opts).expect("open");
        let mut next = 0u64;
        // Between two reads: nothing, less than a file, exactly one rotation, two rotations
        // (the follower must read the file rotated in between), a half-written line.
        for burst in [0u64, 2, 3, 5, 7, 1, 4] {
            for _ in 0..burst {
                w.write(&entry(next)).expect("write");
                next += 1;
            }
            got.extend(numbers(&fol.read_new().expect("follow")));
            assert_eq!(
                got,
                (0..next).collect::<Vec<_>>(),
                "after a burst of {burst}"
            );
        }
        let half = entry(next);
        w.write(&half[..10]).expect("write half");
        assert!(fol.read_new().expect("follow").is_empty());
        w.write(&half[10..]).expect("write rest");
        assert_eq!(numbers(&fol.read_new().expect("follow")), [next]);

        // From the end: only what comes after.
        let mut tail = LogFollower::new(&path, true);
        assert!(tail.read_new().expect("follow").is_empty());
        for i in 0..7 {
            w.write(&entry(500 + i)).expect("write");
        }
        assert_eq!(
            numbers(&tail.read_new().expect("follow")),
            (500..507).collect::<Vec<_>>()
        );

        // Truncation (max_files 1): starts over.
        let single = tmp.path().join("one.json");
        let mut w = LogWriter::open(
            &single,
            &LogOptions {
                max_size: Some(line_len * 2),
                max_files: Some(1),
            },
        )
        .expect("open");
        let mut fol = LogFollower::new(&single, false);
        w.write(&entry(1)).expect("write");
        w.write(&entry(2)).expect("write");
        assert_eq!(numbers(&fol.read_new().expect("follow")), [1, 2]);
        w.write(&entry(3)).expect("write");
        assert_eq!(numbers(&fol.read_new().expect("follow")), [3]);
    }
}
