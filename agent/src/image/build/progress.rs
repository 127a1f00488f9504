//! The build's progress as BuildKit shows it: numbered steps (`#N name`), their output, and how
//! each ended (`CACHED`, `DONE 0.3s`, `ERROR`), sent to the client as [`BuildEvent`]s. A client
//! that goes away makes [`Progress::closed`] true, and the build stops at the next chance.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use std::collections::HashMap;

use shoal_proto::{
    build_event, BuildEvent, BuildResult, BuildStepDone, BuildStepLog, BuildStepStarted,
    RegistryProgress,
};
use tokio::sync::mpsc;
use tonic::Status;

/// Where events go: the response stream of the `Build` call.
#[derive(Clone, Debug)]
pub struct Progress {
    tx: mpsc::Sender<Result<BuildEvent, Status>>,
    next: Arc<AtomicU32>,
}

/// A step that started.
#[derive(Clone, Debug)]
pub struct Step {
    pub id: u32,
    started: Instant,
}

impl Step {
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Progress {
    pub fn new(tx: mpsc::Sender<Result<BuildEvent, Status>>) -> Progress {
        Progress {
            tx,
            next: Arc::new(AtomicU32::new(1)),
        }
    }

    async fn send(&self, event: build_event::Event) {
        // A client that went away is noticed through `closed`.
        let _ = self.tx.send(Ok(BuildEvent { event: Some(event) })).await;
    }

    /// The client went away.
    pub fn closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub async fn start(&self, name: impl Into<String>) -> Step {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.send(build_event::Event::Started(BuildStepStarted {
            id,
            name: name.into(),
        }))
        .await;
        Step {
            id,
            started: Instant::now(),
        }
    }

    pub async fn log(&self, step: &Step, text: &str, stderr: bool) {
        self.send(build_event::Event::Log(BuildStepLog {
            id: step.id,
            text: text.to_string(),
            stderr,
            elapsed_ms: step.elapsed_ms(),
        }))
        .await;
    }

    pub async fn done(&self, step: &Step, cached: bool) {
        self.send(build_event::Event::Done(BuildStepDone {
            id: step.id,
            cached,
            elapsed_ms: step.elapsed_ms(),
            error: String::new(),
        }))
        .await;
    }

    pub async fn failed(&self, step: &Step, error: &str) {
        self.send(build_event::Event::Done(BuildStepDone {
            id: step.id,
            cached: false,
            elapsed_ms: step.elapsed_ms(),
            error: error.to_string(),
        }))
        .await;
    }

    pub async fn warning(&self, text: impl Into<String>) {
        self.send(build_event::Event::Warning(text.into())).await;
    }

    pub async fn result(&self, image_id: &str, tags: &[String]) {
        self.send(build_event::Event::Result(BuildResult {
            image_id: image_id.to_string(),
            tags: tags.to_vec(),
        }))
        .await;
    }
}

/// Turns a base image pull's progress into a build step's log lines, as `docker pull` words
/// them (`<layer>: Pull complete`); a layer's download shows at most at each quarter, so a
/// plain log stays short.
#[derive(Debug, Default)]
pub(crate) struct PullLines {
    /// The last quarter shown, by layer.
    quarters: HashMap<String, u64>,
}

impl PullLines {
    pub fn line(&mut self, p: &RegistryProgress) -> Option<String> {
        if p.id.is_empty() {
            return (!p.status.is_empty()).then(|| p.status.clone());
        }
        if p.total == 0 && p.current == 0 {
            return Some(format!("{}: {}", p.id, p.status));
        }
        let quarter = (p.current.min(p.total) * 4)
            .checked_div(p.total)
            .unwrap_or(0);
        let last = self.quarters.get(&p.id).copied();
        if last.is_some_and(|l| l >= quarter) {
            return None;
        }
        self.quarters.insert(p.id.clone(), quarter);
        Some(format!(
            "{}: {} {} / {}",
            p.id,
            p.status,
            decimal_size(p.current, 1),
            decimal_size(p.total, 1)
        ))
    }
}

/// A size in decimal units with `decimals` digits: `12.6MB` (1, as Docker shows a pull's
/// transfers), `1.23kB` (2, as BuildKit prints sizes); `80B` below a kilobyte.
pub(super) fn decimal_size(n: u64, decimals: usize) -> String {
    let f = n as f64;
    if f < 1e3 {
        format!("{n}B")
    } else if f < 1e6 {
        format!("{:.decimals$}kB", f / 1e3)
    } else if f < 1e9 {
        format!("{:.decimals$}MB", f / 1e6)
    } else {
        format!("{:.2}GB", f / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str, status: &str, current: u64, total: u64) -> RegistryProgress {
        RegistryProgress {
            id: id.into(),
            status: status.into(),
            current,
            total,
            ..Default::default()
        }
    }

    #[test]
    fn pull_lines_show_states_and_each_quarter_of_a_download_once() {
        let mut l = PullLines::default();
        assert_eq!(
            l.line(&p("", "1.0: Pulling from team/app", 0, 0))
                .as_deref(),
            Some("1.0: Pulling from team/app")
        );
        assert_eq!(
            l.line(&p("abc", "Pulling fs layer", 0, 0)).as_deref(),
            Some("abc: Pulling fs layer")
        );
        let shown: Vec<String> = [0, 10, 260, 300, 510, 990, 1000, 1000]
            .iter()
            .filter_map(|c| l.line(&p("abc", "Downloading", *c, 1000)))
            .collect();
        assert_eq!(
            shown,
            [
                "abc: Downloading 0B / 1.0kB",
                "abc: Downloading 260B / 1.0kB",
                "abc: Downloading 510B / 1.0kB",
                "abc: Downloading 990B / 1.0kB",
                "abc: Downloading 1.0kB / 1.0kB",
            ]
        );
        assert_eq!(
            l.line(&p("abc", "Pull complete", 0, 0)).as_deref(),
            Some("abc: Pull complete")
        );
        assert_eq!(l.line(&p("", "", 0, 0)), None);
    }
}
