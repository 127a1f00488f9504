//! Rollout defaults that the manager and the agent must agree on.

use crate::v1::Task;

/// How long a stopping task stays out of rotation before its stop signal, unless the service
/// says otherwise: as long as the embedded DNS server's answers live (2 s), so that a client
/// that resolved the name just before the task left no longer holds its address, and long
/// enough for a request in flight to finish.
pub const DEFAULT_DRAIN_MS: u64 = 2_000;

impl Task {
    /// The drain period of this task: stamped by the orchestrator when it stopped the task,
    /// else its spec's update config's, else [`DEFAULT_DRAIN_MS`].
    pub fn drain_period_ms(&self) -> u64 {
        self.drain_ms
            .or_else(|| {
                self.spec
                    .as_ref()
                    .and_then(|s| s.update_config.as_ref())
                    .and_then(|u| u.drain_ms)
            })
            .unwrap_or(DEFAULT_DRAIN_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{ServiceSpec, UpdateConfig};

    #[test]
    fn the_stamp_wins_then_the_spec_then_the_default() {
        let mut t = Task::default();
        assert_eq!(t.drain_period_ms(), DEFAULT_DRAIN_MS);
        t.spec = Some(
            ServiceSpec {
                update_config: Some(UpdateConfig {
                    drain_ms: Some(500),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .into(),
        );
        assert_eq!(t.drain_period_ms(), 500);
        t.drain_ms = Some(0);
        assert_eq!(t.drain_period_ms(), 0);
    }
}
