//! Progress of a pull or push, as Docker words it, sent to whoever listens (the CLI over gRPC;
//! nobody for the executor's pulls).

use shoal_proto::RegistryProgress;
use tokio::sync::mpsc;

/// A sink for progress lines; sending never fails (a listener that left is ignored).
#[derive(Clone, Debug, Default)]
pub struct Progress(Option<mpsc::UnboundedSender<RegistryProgress>>);

impl Progress {
    /// Progress sent down `tx`.
    pub fn to(tx: mpsc::UnboundedSender<RegistryProgress>) -> Progress {
        Progress(Some(tx))
    }

    /// Progress nobody reads.
    pub fn none() -> Progress {
        Progress(None)
    }

    fn send(&self, p: RegistryProgress) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(p);
        }
    }

    /// An image-level line ("Pulling from ...", "Digest: ...", "Status: ...").
    pub fn line(&self, status: impl Into<String>) {
        self.send(RegistryProgress {
            status: status.into(),
            ..Default::default()
        });
    }

    /// A layer's state ("Pulling fs layer", "Pull complete", ...).
    pub fn layer(&self, id: &str, status: &str) {
        self.send(RegistryProgress {
            id: id.into(),
            status: status.into(),
            ..Default::default()
        });
    }

    /// A layer's transfer ("Downloading", "Pushing"): `current` of `total` bytes.
    pub fn bytes(&self, id: &str, status: &str, current: u64, total: u64) {
        self.send(RegistryProgress {
            id: id.into(),
            status: status.into(),
            current,
            total,
            ..Default::default()
        });
    }

    /// The last message: the manifest digest pulled or pushed.
    pub fn done(&self, status: impl Into<String>, digest: &str) {
        self.send(RegistryProgress {
            status: status.into(),
            digest: digest.into(),
            ..Default::default()
        });
    }
}

/// How a layer is shown: the first 12 hex digits of its digest, as Docker does.
pub fn short_id(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.chars().take(12).collect()
}

/// Throttles byte progress to about 50 updates per transfer (and the last one).
pub(super) struct Throttle {
    step: u64,
    next: u64,
}

impl Throttle {
    pub fn new(total: u64) -> Throttle {
        let step = (total / 50).max(256 << 10);
        Throttle { step, next: 0 }
    }

    /// Whether `current` bytes is worth a progress message.
    pub fn due(&mut self, current: u64) -> bool {
        if current >= self.next {
            self.next = current + self.step;
            true
        } else {
            false
        }
    }
}
