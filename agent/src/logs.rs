//! Reading task logs from this node's container log files (JSON lines written by each
//! container's supervisor), for `service logs`, including `--follow`.

use std::path::PathBuf;
use std::time::Duration;

use shoal_proto::{LogLine, Task};
use tokio::sync::mpsc;

use crate::runtime::{read_log, LogEntry, LogFollower, Runtime};

const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Streams the log lines of `tasks` (those whose containers live on this node), oldest task
/// first; with `follow`, keeps sending new lines until the receiver is dropped. Rotated files
/// (`logging.options` max-size/max-file) are read in order and followed across rotations.
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
        // Followers start at the current end before the history is read: a line written in
        // between may show twice, never not at all.
        let mut followers: Vec<(Task, LogFollower)> = Vec::new();
        for (task, path) in files {
            if follow {
                followers.push((task.clone(), LogFollower::new(&path, true)));
            }
            let tail = (tail > 0).then_some(tail as usize);
            for entry in read_log(&path, tail).unwrap_or_default() {
                if tx.blocking_send(to_line(&task, entry)).is_err() {
                    return;
                }
            }
        }
        while follow && !tx.is_closed() {
            std::thread::sleep(FOLLOW_POLL);
            for (task, follower) in followers.iter_mut() {
                for entry in follower.read_new().unwrap_or_default() {
                    if tx.blocking_send(to_line(task, entry)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
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
