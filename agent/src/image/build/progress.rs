//! The build's progress as BuildKit shows it: numbered steps (`#N name`), their output, and how
//! each ended (`CACHED`, `DONE 0.3s`, `ERROR`), sent to the client as [`BuildEvent`]s. A client
//! that goes away makes [`Progress::closed`] true, and the build stops at the next chance.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use shoal_proto::{
    build_event, BuildEvent, BuildResult, BuildStepDone, BuildStepLog, BuildStepStarted,
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
#[derive(Debug)]
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
