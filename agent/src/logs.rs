//! Reading task logs from this node's container log files (JSON lines written by each
//! container's supervisor), for `service logs`, including `--follow`.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use shoal_proto::{LogLine, Task};
use tokio::sync::mpsc;

use crate::runtime::{LogEntry, Runtime};

const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Streams the log lines of `tasks` (those whose containers live on this node), oldest task
/// first; with `follow`, keeps sending new lines until the receiver is dropped.
pub fn stream_task_logs(
    runtime: &Runtime,
    tasks: Vec<Task>,
    follow: bool,
    tail: u64,
) -> mpsc::Receiver<LogLine> {
    let (tx, rx) = mpsc::channel(256);
    let files: Vec<(Task, PathBuf)> = tasks
        .into_iter()
        .map(|t| {
            let path = runtime.log_path(&t.id);
            (t, path)
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut offsets = Vec::with_capacity(files.len());
        for (task, path) in &files {
            let (lines, end) = read_from(path, 0);
            let skip = if tail > 0 {
                lines.len().saturating_sub(tail as usize)
            } else {
                0
            };
            for entry in lines.into_iter().skip(skip) {
                if tx.blocking_send(to_line(task, entry)).is_err() {
                    return;
                }
            }
            offsets.push(end);
        }
        while follow && !tx.is_closed() {
            std::thread::sleep(FOLLOW_POLL);
            for ((task, path), offset) in files.iter().zip(offsets.iter_mut()) {
                let (lines, end) = read_from(path, *offset);
                *offset = end;
                for entry in lines {
                    if tx.blocking_send(to_line(task, entry)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Complete lines from byte `offset` on, and the offset after the last complete line.
fn read_from(path: &PathBuf, offset: u64) -> (Vec<LogEntry>, u64) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return (Vec::new(), offset);
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return (Vec::new(), offset);
    }
    let mut reader = BufReader::new(file);
    let mut entries = Vec::new();
    let mut position = offset;
    let mut buf = String::new();
    loop {
        buf.clear();
        match reader.read_line(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) if !buf.ends_with('\n') => {
                let _ = n; // a line still being written: read it next time
                break;
            }
            Ok(n) => {
                position += n as u64;
                if let Ok(entry) = serde_json::from_str::<LogEntry>(&buf) {
                    entries.push(entry);
                }
            }
        }
    }
    (entries, position)
}

fn to_line(task: &Task, entry: LogEntry) -> LogLine {
    LogLine {
        task_id: task.id.clone(),
        slot: task.slot,
        node_id: task.node_id.clone(),
        stream: entry.s.as_str().into(),
        timestamp: entry.t as i64,
        line: entry.l.into_bytes(),
    }
}
