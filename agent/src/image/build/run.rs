//! `RUN`: the command runs in shoal's own runtime, in a container whose root filesystem is an
//! overlay of the stage's layers (the runtime's usual rootfs), on the node's default bridge
//! network (outbound traffic through its NAT, as `docker build` gives), with the stage's
//! environment, working directory and user. Its output streams into the build's progress; when
//! it exits, the caller turns the container's overlay upper directory into a layer, then
//! [`Runner::remove`] removes the container and its network endpoint.
//!
//! Build containers live in a runtime of their own (`<data dir>/build`), so they never show in
//! `ps` and the executor never adopts them; their cgroups sit under the node's cgroup parent
//! like every container's. A daemon that stops during a build leaves its container behind:
//! [`Runner::clean_leftovers`] removes such containers at the next start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::progress::{Progress, Step};
use super::BuildError;
use crate::network::{NetworkManager, NetworkSpec};
use crate::runtime::{ContainerConfig, LogFollower, LogStream, NetworkMode, Runtime, RuntimeError};

/// The label build containers carry.
pub const BUILD_LABEL: &str = "com.shoal.build";
/// How often a running step's output is read.
const OUTPUT_POLL: Duration = Duration::from_millis(50);
/// Lines of output kept for the error message of a failed step.
const TAIL_LINES: usize = 20;

/// Runs `RUN` steps.
#[derive(Clone)]
pub struct Runner {
    runtime: Arc<Runtime>,
    network: Option<NetworkManager>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("runtime", &self.runtime.root())
            .field("network", &self.network.is_some())
            .finish()
    }
}

/// What a `RUN` runs.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    /// Lowest first; never empty (scratch gets an empty directory).
    pub layers: Vec<PathBuf>,
}

/// A container that ran to the end with exit code 0.
#[derive(Debug)]
pub struct RunOutcome {
    pub id: String,
    /// Its overlay upper directory: what it changed.
    pub upper: PathBuf,
}

impl Runner {
    /// `runtime`: the build containers' own runtime. `network`: the node's networks (None:
    /// `RUN` has no network, only `lo`).
    pub fn new(runtime: Arc<Runtime>, network: Option<NetworkManager>) -> Runner {
        Runner { runtime, network }
    }

    /// Removes the build containers a previous daemon left (it stopped mid-build).
    pub async fn clean_leftovers(&self) {
        let Ok(list) = self.runtime.list() else {
            return;
        };
        for c in list {
            tracing::info!(container = %c.id, "removing a build container left by an interrupted build");
            self.remove(&c.id).await;
        }
    }

    /// Starts the command and relays its output until it exits. A non-zero exit, or a command
    /// that cannot start, is [`BuildError::RunFailed`] (the container is removed then); on
    /// success the caller diffs [`RunOutcome::upper`] and calls [`Runner::remove`].
    pub async fn run(
        &self,
        spec: RunSpec,
        step_name: &str,
        progress: &Progress,
        step: &Step,
    ) -> Result<RunOutcome, BuildError> {
        let id = format!("build-{}", uuid::Uuid::new_v4().simple());
        let result = self.run_inner(&id, spec, step_name, progress, step).await;
        if result.is_err() {
            self.remove(&id).await;
        }
        result
    }

    async fn run_inner(
        &self,
        id: &str,
        spec: RunSpec,
        step_name: &str,
        progress: &Progress,
        step: &Step,
    ) -> Result<RunOutcome, BuildError> {
        let shown = spec.argv.join(" ");
        let network = match &self.network {
            Some(net) => {
                let bridge = crate::executor::DEFAULT_NETWORK;
                net.ensure_network(NetworkSpec::named(bridge))
                    .await
                    .map_err(|e| BuildError::Internal(format!("network {bridge}: {e}")))?;
                let a = net
                    .attach(id, bridge, Vec::new(), None)
                    .await
                    .map_err(|e| BuildError::Internal(format!("attach to {bridge}: {e}")))?;
                NetworkMode::Join(a.netns_path)
            }
            None => NetworkMode::New,
        };
        let config = ContainerConfig {
            id: id.to_string(),
            name: id.to_string(),
            layers: spec.layers,
            args: spec.argv.clone(),
            env: spec.env,
            cwd: spec.cwd,
            user: spec.user,
            labels: [(BUILD_LABEL.to_string(), "true".to_string())].into(),
            network,
            ..Default::default()
        };
        let failed = |code: i32, message: String| BuildError::RunFailed {
            step: step_name.to_string(),
            code,
            message,
        };
        match self.runtime.create_and_start(config).await {
            Ok(_) => {}
            Err(RuntimeError::StartFailed {
                stage,
                message,
                errno,
                ..
            }) => {
                // Docker reports a command that cannot be executed as exit code 127 (not found)
                // or 126 (not executable).
                let lower = message.to_ascii_lowercase();
                let missing = errno == Some(libc::ENOENT)
                    || lower.contains("no such file")
                    || lower.contains("not found");
                let code = if missing { 127 } else { 126 };
                return Err(failed(
                    code,
                    format!(
                        "process \"{shown}\" did not complete successfully: it could not start \
                         ({stage}: {message}): exit code: {code}"
                    ),
                ));
            }
            Err(e) => {
                return Err(BuildError::Internal(format!(
                    "start the RUN container: {e}"
                )))
            }
        }
        let mut follower = LogFollower::new(&self.runtime.log_path(id), false);
        let mut tail: Vec<String> = Vec::new();
        let wait = self.runtime.wait(id);
        tokio::pin!(wait);
        let status = loop {
            tokio::select! {
                status = &mut wait => break status,
                _ = tokio::time::sleep(OUTPUT_POLL) => {
                    relay(&mut follower, progress, step, &mut tail).await;
                    if progress.closed() {
                        let _ = self.runtime.kill(id, Signal::SIGKILL);
                        return Err(BuildError::Cancelled);
                    }
                }
            }
        };
        relay(&mut follower, progress, step, &mut tail).await;
        let status =
            status.map_err(|e| BuildError::Internal(format!("wait for the RUN container: {e}")))?;
        if status.code != 0 {
            let how = match status.signal {
                Some(sig) => format!("killed by signal {sig}: exit code: {}", status.code),
                None if status.oom_killed => format!("out of memory: exit code: {}", status.code),
                None => format!("exit code: {}", status.code),
            };
            let mut message = format!("process \"{shown}\" did not complete successfully: {how}");
            if !tail.is_empty() {
                message.push_str("\noutput (last lines):\n");
                message.push_str(&tail.join("\n"));
            }
            return Err(failed(status.code, message));
        }
        Ok(RunOutcome {
            id: id.to_string(),
            upper: self.runtime.container_dir(id).join("upper"),
        })
    }

    /// Removes a build container and its network endpoint (best effort, logged).
    pub async fn remove(&self, id: &str) {
        if let Err(e) = self.runtime.remove(id).await {
            tracing::warn!(container = id, "removing a build container: {e}");
        }
        if let Some(net) = &self.network {
            if let Err(e) = net.release_container(id).await {
                tracing::warn!(container = id, "releasing a build container's network: {e}");
            }
        }
    }
}

/// Sends the new output lines as step logs, keeping the last ones.
async fn relay(
    follower: &mut LogFollower,
    progress: &Progress,
    step: &Step,
    tail: &mut Vec<String>,
) {
    let Ok(entries) = follower.read_new() else {
        return;
    };
    for e in entries {
        progress
            .log(step, &e.l, matches!(e.s, LogStream::Stderr))
            .await;
        tail.push(e.l);
        if tail.len() > TAIL_LINES {
            tail.remove(0);
        }
    }
}
