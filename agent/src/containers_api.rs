//! The `Containers` gRPC service (served by the agent on its local socket): Docker's local
//! container commands (`ps`, `exec`, `logs`, `stop`, `start`, `kill`, `rm`, `pause`, `stats`,
//! `top`, `inspect`, `run`) over the node's [`Runtime`].
//!
//! # Choices
//! - A container is named by its id, its name, or a unique prefix of its id (tried in that
//!   order, as Docker does). Service tasks are containers too: their name is
//!   `service.slot.taskid`. Acting on a task's container (stop, kill, rm) is allowed, as in
//!   Docker; the orchestrator then replaces the task as after any failure.
//! - `run` makes a standalone container: a fresh id (32 hex digits), the given name or a
//!   Docker-style `adjective_noun`, the labels [`STANDALONE_LABEL`] and [`IMAGE_LABEL`].
//!   Entrypoint, cmd, env, workdir and user are merged with the image's config by the
//!   executor's [`container_config`] (one implementation of Docker's rules). Networks: the
//!   node's default `bridge` (Docker's default), `none`, `host`, or store networks the CLI
//!   resolved (made on this node if needed); mounts and published ports likewise go through
//!   the executor's [`ContainerResources`], so a standalone container follows the same rules as
//!   a task. Its endpoints and volumes are released when it is removed.
//! - `--network container:NAME` (or `service:NAME`) shares a running container's network
//!   namespace and /etc files (see the executor's `net`). The containers joined to one are
//!   stopped when it is removed (its address goes back then), not when it merely stops: a
//!   stopped standalone container keeps its address, as its namespace, until `rm`.
//! - `--rm` (auto-remove) is done by this process: a daemon restart while such a container runs
//!   leaves it behind (remove it with `rm`).
//! - `start` of an exited container keeps its filesystem and log ([`Runtime::start_existing`]).
//! - The image of a service task's container is found by its layers in the image store
//!   (`<unknown>` when no image has them any more).
//! - `exec` relays stdin, stdout, stderr and terminal resizes; the last message is the exit
//!   code. A client that goes away closes the process's stdin; the process is not killed.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use shoal_proto::containers_server::{Containers, ContainersServer};
use shoal_proto::{
    exec_input, exec_output, run_container_event, ContainerInfo, ContainerLogLine,
    ContainerLogsRequest, ContainerProcess, ContainerRef, ContainerSpec, ContainerStatsBatch,
    ContainerStatsEntry, ContainerStatsRequest, EndpointSpec, ExecInput, ExecOutput,
    ExecSpecMessage, InspectContainerResponse, KillContainerRequest, ListContainersRequest,
    ListContainersResponse, Network, RemoveContainerRequest, RemoveContainerResponse, Resources,
    RunContainerEvent, RunContainerRequest, ServiceSpec, StopContainerRequest, Task,
    TopContainerResponse, WaitContainerResponse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::executor::{container_config, ContainerResources};
use crate::image::ImageStore;
use crate::runtime::{
    parse_signal_number, read_log, ContainerState, ContainerStats, ContainerStatus, ExecHandle,
    ExecSpec, ExecStream, LogEntry, LogFollower, NetworkMode, Runtime, RuntimeError,
};

/// Label of a container made by `run` (not a service task).
pub const STANDALONE_LABEL: &str = "com.shoal.container.standalone";
/// Label holding the image reference a standalone container was made from.
pub const IMAGE_LABEL: &str = "com.shoal.container.image";

/// How often followed logs look for new lines when nothing wakes them earlier (see
/// [`FollowWake`]).
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How long an exec's output may still flow after the process exited (a background process
/// holding the pipes open must not hold the exec forever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Between two stats samples of a streamed `stats`.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Between the two samples of the first stats batch (CPU use needs two).
const STATS_FIRST_INTERVAL: Duration = Duration::from_millis(500);

/// The `Containers` service.
#[derive(Clone, Debug)]
pub struct ContainersApi {
    runtime: Arc<Runtime>,
    images: ImageStore,
    /// Networks and volumes for `run`; without them only `--network none|host` and no
    /// mounts or ports are possible.
    resources: Option<ContainerResources>,
}

impl ContainersApi {
    /// A service over the node's runtime and image store.
    pub fn new(runtime: Arc<Runtime>, images: ImageStore) -> ContainersApi {
        ContainersApi {
            runtime,
            images,
            resources: None,
        }
    }

    /// A removed container's endpoints and volumes go back (nothing for one that had none).
    async fn release(&self, id: &str) {
        if let Some(r) = &self.resources {
            r.release(id).await;
        }
    }

    /// Lets `run` attach networks, publish ports and mount volumes.
    pub fn with_resources(mut self, resources: ContainerResources) -> ContainersApi {
        self.resources = Some(resources);
        self
    }

    /// The tonic server wrapper, ready for `Server::add_service`.
    pub fn into_server(self) -> ContainersServer<ContainersApi> {
        ContainersServer::new(self)
    }

    async fn list_all(&self) -> Result<Vec<ContainerState>, Status> {
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || runtime.list())
            .await
            .map_err(|e| Status::internal(format!("listing containers crashed: {e}")))?
            .map_err(status)
    }

    /// The container `reference` names: an id, a name, or a unique id prefix.
    async fn resolve(&self, reference: &str) -> Result<ContainerState, Status> {
        let all = self.list_all().await?;
        find(all, reference)
    }

    /// Layer directories → the image they are (its first tag, else its short id).
    async fn image_names(&self) -> HashMap<Vec<PathBuf>, String> {
        let images = self.images.clone();
        tokio::task::spawn_blocking(move || {
            let mut names = HashMap::new();
            for image in images.list().unwrap_or_default() {
                if let Ok(resolved) = images.resolve(&image.id) {
                    let tag = image
                        .tags
                        .first()
                        .map(|t| t.strip_suffix(":latest").unwrap_or(t.as_str()).to_string());
                    let name = tag.unwrap_or_else(|| {
                        let hex = image.id.trim_start_matches("sha256:");
                        hex[..hex.len().min(12)].to_string()
                    });
                    names.insert(resolved.layer_dirs, name);
                }
            }
            names
        })
        .await
        .unwrap_or_default()
    }

    async fn info(&self, state: &ContainerState) -> ContainerInfo {
        let names = if state.labels.contains_key(IMAGE_LABEL) {
            HashMap::new()
        } else {
            self.image_names().await
        };
        info_of(&self.runtime, state, &names)
    }

    async fn info_by_id(&self, id: &str) -> Result<ContainerInfo, Status> {
        let state = self.runtime.state(id).map_err(status)?;
        Ok(self.info(&state).await)
    }

    async fn start_one(&self, state: &ContainerState) -> Result<ContainerInfo, Status> {
        if state.paused {
            return Err(Status::failed_precondition(format!(
                "container {} is paused: unpause it instead",
                state.name
            )));
        }
        if !state.config.network_container.is_empty() {
            let all = self.list_all().await?;
            shared_netns_still_there(state, &all)?;
        }
        let started = self
            .runtime
            .start_existing(&state.id)
            .await
            .map_err(status)?;
        Ok(self.info(&started).await)
    }

    async fn stop_one(&self, state: &ContainerState, timeout: Option<u32>) -> Result<(), Status> {
        let grace = timeout
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(state.config.stop_grace);
        self.runtime.stop(&state.id, grace).await.map_err(status)
    }

    /// `run`: the container's config from the request and the image, and the task-shaped
    /// request its mounts and networks are made from.
    async fn run_config(
        &self,
        r: &RunContainerRequest,
    ) -> Result<(crate::runtime::ContainerConfig, Task), Status> {
        if r.image.trim().is_empty() {
            return Err(Status::invalid_argument("no image given"));
        }
        let network_mode = match r.network.as_str() {
            "none" | "host" => r.network.clone(),
            _ if self.resources.is_none() => {
                return Err(Status::invalid_argument(format!(
                    "network {:?} is not available here: use --network none or --network host",
                    r.network
                )))
            }
            "" | "bridge" | "default" => String::new(),
            // Another container's namespace: resolved, and its conflicts refused, when the
            // network side is prepared (as for a task).
            shared if shared.starts_with("container:") || shared.starts_with("service:") => {
                if !r.attachments.is_empty() {
                    return Err(Status::invalid_argument(format!(
                        "conflicting options: networks and --network {shared}: a container \
                         that shares another's network namespace has that container's networks"
                    )));
                }
                shared.to_string()
            }
            other if r.attachments.is_empty() => {
                return Err(Status::invalid_argument(format!(
                    "network {other:?} was not resolved: give the network's definition"
                )))
            }
            _ => String::new(),
        };
        if network_mode == "host" && !r.ports.is_empty() {
            return Err(Status::invalid_argument(
                "published ports make no sense with --network host: the container already \
                 uses the host's ports",
            ));
        }
        if self.resources.is_none() && !(r.ports.is_empty() && r.mounts.is_empty()) {
            return Err(Status::invalid_argument(
                "ports and mounts are not available here",
            ));
        }
        for kv in r.env.iter() {
            match kv.split_once('=') {
                Some((k, _)) if !k.is_empty() => {}
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "environment entry {kv:?} is not KEY=VALUE"
                    )))
                }
            }
        }
        let all = self.list_all().await?;
        let name = if r.name.is_empty() {
            generate_name(&all)
        } else {
            validate_name(&r.name)?;
            if let Some(c) = all.iter().find(|c| c.name == r.name) {
                return Err(Status::already_exists(format!(
                    "the container name {:?} is already in use by container {}: remove or \
                     rename that container first",
                    r.name,
                    short(&c.id)
                )));
            }
            r.name.clone()
        };
        let images = self.images.clone();
        let reference = r.image.clone();
        let resolved = tokio::task::spawn_blocking(move || images.resolve(&reference))
            .await
            .map_err(|e| Status::internal(format!("image lookup crashed: {e}")))?
            .map_err(Status::from)?;
        let mut image_config = resolved.image.config.clone().unwrap_or_default();
        if let Some(entrypoint) = &r.entrypoint {
            // Docker: --entrypoint replaces the image's entrypoint and drops its cmd; an empty
            // one clears it.
            image_config.entrypoint = if entrypoint.is_empty() {
                Vec::new()
            } else {
                vec![entrypoint.clone()]
            };
            image_config.cmd.clear();
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        // A task-shaped request, so the executor's merge rules apply as they are.
        let task = Task {
            id: id.clone(),
            spec: Some(
                ServiceSpec {
                    name: name.clone(),
                    container: Some(ContainerSpec {
                        image: r.image.clone(),
                        args: r.cmd.clone(),
                        env: r.env.clone(),
                        workdir: r.workdir.clone(),
                        user: r.user.clone(),
                        hostname: r.hostname.clone(),
                        cap_add: r.cap_add.clone(),
                        cap_drop: r.cap_drop.clone(),
                        read_only: r.read_only,
                        init: r.init,
                        network_mode,
                        mounts: r.mounts.clone(),
                        ..Default::default()
                    }),
                    limits: Some(Resources {
                        memory_bytes: r.memory_bytes,
                        nano_cpus: r.nano_cpus,
                        pids: r.pids_limit,
                    }),
                    networks: r.attachments.clone(),
                    // A standalone container's ports are its node's (`docker run -p`): host mode.
                    endpoint: (!r.ports.is_empty()).then(|| EndpointSpec {
                        ports: r
                            .ports
                            .iter()
                            .cloned()
                            .map(|mut p| {
                                p.set_publish_mode(shoal_proto::PublishMode::Host);
                                p
                            })
                            .collect(),
                        mode: String::new(),
                    }),
                    ..Default::default()
                }
                .into(),
            ),
            // Published ports are kept per service: a standalone container is its own.
            service_id: id.clone(),
            ..Default::default()
        };
        let mut config =
            container_config(&task, &image_config, resolved.layer_dirs).map_err(|e| {
                if e.contains("no command") {
                    Status::invalid_argument(format!(
                        "image {} has no command: give one after the image name",
                        r.image
                    ))
                } else {
                    Status::invalid_argument(e)
                }
            })?;
        config.name = name;
        let mut labels: BTreeMap<String, String> = r.labels.clone().into_iter().collect();
        labels.insert(STANDALONE_LABEL.into(), "true".into());
        labels.insert(IMAGE_LABEL.into(), r.image.clone());
        config.labels = labels;
        config.network = match r.network.as_str() {
            "host" => NetworkMode::Host,
            _ => NetworkMode::New,
        };
        Ok((config, task))
    }
}

/// A container sharing another's network namespace starts again only into that same
/// namespace: its owner must run, and a `none` owner's namespace (named through its first
/// process) must be the one it joined, not a later one's (or an unrelated process's, once
/// the pid is reused).
fn shared_netns_still_there(state: &ContainerState, all: &[ContainerState]) -> Result<(), Status> {
    let owner_id = state.config.network_container.as_str();
    let found = all.iter().find(|c| c.id == owner_id);
    let owner = found.filter(|c| matches!(c.status, ContainerStatus::Running { .. }));
    let same = match (owner, &state.config.network) {
        (None, _) => false,
        (Some(o), NetworkMode::Join(path)) if path.starts_with("/proc") => {
            matches!(o.status, ContainerStatus::Running { pid }
                if path.as_os_str() == format!("/proc/{pid}/ns/net").as_str())
        }
        (Some(_), _) => true,
    };
    if same {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "container {} shares the network namespace of container {}, which is gone or was \
         restarted since: remove it and run it again with --network container:NAME",
        state.name,
        found.map_or(owner_id, |o| o.name.as_str())
    )))
}

/// Finds `reference` among `all`: exact id, exact name, then unique id prefix.
fn find(all: Vec<ContainerState>, reference: &str) -> Result<ContainerState, Status> {
    let reference = reference.trim().trim_start_matches('/');
    if reference.is_empty() {
        return Err(Status::invalid_argument("no container given"));
    }
    if let Some(c) = all.iter().find(|c| c.id == reference) {
        return Ok(c.clone());
    }
    if let Some(c) = all.iter().find(|c| c.name == reference) {
        return Ok(c.clone());
    }
    let matching: Vec<&ContainerState> =
        all.iter().filter(|c| c.id.starts_with(reference)).collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Status::not_found(format!("no such container: {reference}"))),
        many => Err(Status::invalid_argument(format!(
            "container id prefix {reference:?} is ambiguous: it matches {}; give more characters",
            many.iter()
                .map(|c| short(&c.id).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Docker's container name grammar.
fn validate_name(name: &str) -> Result<(), Status> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(Status::invalid_argument(format!(
            "invalid container name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )));
    }
    Ok(())
}

/// A Docker-style `adjective_noun` name no container has.
fn generate_name(all: &[ContainerState]) -> String {
    const ADJECTIVES: &[&str] = &[
        "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry",
        "nifty", "proud", "quirky", "sharp", "swift", "tender", "vivid", "witty", "zealous",
        "bold",
    ];
    const NOUNS: &[&str] = &[
        "anchovy",
        "barracuda",
        "cod",
        "dolphin",
        "eel",
        "flounder",
        "grouper",
        "herring",
        "marlin",
        "minnow",
        "octopus",
        "perch",
        "salmon",
        "sardine",
        "shark",
        "snapper",
        "sprat",
        "trout",
        "tuna",
        "wrasse",
    ];
    for _ in 0..32 {
        let n = uuid::Uuid::new_v4().as_u128();
        let name = format!(
            "{}_{}",
            ADJECTIVES[(n % ADJECTIVES.len() as u128) as usize],
            NOUNS[((n >> 32) % NOUNS.len() as u128) as usize]
        );
        if !all.iter().any(|c| c.name == name) {
            return name;
        }
    }
    format!("shoal-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The API's view of a container.
fn info_of(
    runtime: &Runtime,
    state: &ContainerState,
    image_names: &HashMap<Vec<PathBuf>, String>,
) -> ContainerInfo {
    // The (empty, host-side) mount point is made once, at create: a restart keeps it.
    let dir = runtime.container_dir(&state.id);
    let created = std::fs::metadata(dir.join("rootfs"))
        .or_else(|_| std::fs::metadata(dir.join("config.json")))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64);
    let image = state
        .labels
        .get(IMAGE_LABEL)
        .cloned()
        .or_else(|| image_names.get(&state.config.layers).cloned())
        .unwrap_or_else(|| "<unknown>".into());
    let (state_name, pid, exit_code, oom_killed, finished_at) = match &state.status {
        ContainerStatus::Created => ("created", 0, 0, false, 0),
        ContainerStatus::Running { pid } if state.paused => ("paused", *pid, 0, false, 0),
        ContainerStatus::Running { pid } => ("running", *pid, 0, false, 0),
        ContainerStatus::Exited(e) => ("exited", 0, e.code, e.oom_killed, e.finished_at as i64),
    };
    ContainerInfo {
        id: state.id.clone(),
        name: state.name.clone(),
        image,
        command: state.config.args.clone(),
        created,
        state: state_name.into(),
        exit_code,
        oom_killed,
        pid,
        started_at: state.started_at.unwrap_or(0) as i64,
        finished_at,
        labels: state.labels.clone().into_iter().collect(),
        standalone: state.labels.contains_key(STANDALONE_LABEL),
        // Docker's HostConfig.NetworkMode for a shared namespace.
        network: match &state.config.network {
            _ if !state.config.network_container.is_empty() => {
                format!("container:{}", state.config.network_container)
            }
            NetworkMode::New => "none".into(),
            NetworkMode::Host => "host".into(),
            NetworkMode::Join(path) => path.display().to_string(),
        },
    }
}

/// The gRPC status of a runtime error.
fn status(e: RuntimeError) -> Status {
    let text = e.to_string();
    match e {
        RuntimeError::NotFound { id, .. } => Status::not_found(format!("no such container: {id}")),
        RuntimeError::NotRunning { .. } | RuntimeError::Paused { .. } => {
            Status::failed_precondition(text)
        }
        RuntimeError::InvalidConfig { .. }
        | RuntimeError::StartFailed { .. }
        | RuntimeError::ExecFailed { .. } => Status::invalid_argument(text),
        RuntimeError::AlreadyExists { .. } => Status::already_exists(text),
        RuntimeError::Timeout { .. } => Status::deadline_exceeded(text),
        _ => Status::internal(text),
    }
}

fn log_line(entry: LogEntry) -> ContainerLogLine {
    ContainerLogLine {
        stream: entry.s.as_str().into(),
        timestamp: entry.t as i64,
        line: entry.l.into_bytes(),
    }
}

fn is_running(runtime: &Runtime, id: &str) -> bool {
    matches!(
        runtime.state(id).map(|s| s.status),
        Ok(ContainerStatus::Running { .. }) | Ok(ContainerStatus::Created)
    )
}

/// Sends the container's log from its beginning and then whatever it appends, until it stops
/// (or the receiver goes away). Blocking: run it on a blocking thread.
fn follow_log<T>(
    runtime: &Runtime,
    id: &str,
    mut follower: LogFollower,
    tx: &mpsc::Sender<T>,
    wrap: impl Fn(LogEntry) -> T,
) {
    let wake = FollowWake::new(runtime, id);
    loop {
        // Read the state first: lines written before it stopped are all read below.
        let running = is_running(runtime, id);
        for entry in follower.read_new().unwrap_or_default() {
            if tx.blocking_send(wrap(entry)).is_err() {
                return;
            }
        }
        if !running || tx.is_closed() {
            return;
        }
        wake.wait();
    }
}

/// Wakes a log follower as soon as there may be something to do: the container's supervisor
/// exited (its pidfd turns readable) or its log was written (inotify), else after
/// [`FOLLOW_POLL`] (a rotated log is no longer watched; the poll finds its successor).
/// Without it, `run --rm` would end up to a poll period after the container did.
struct FollowWake {
    supervisor: Option<OwnedFd>,
    log: Option<Inotify>,
}

impl FollowWake {
    fn new(runtime: &Runtime, id: &str) -> FollowWake {
        let log = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .ok()
            .filter(|i| {
                i.add_watch(&runtime.log_path(id), AddWatchFlags::IN_MODIFY)
                    .is_ok()
            });
        FollowWake {
            supervisor: runtime.supervisor_pidfd(id),
            log,
        }
    }

    fn wait(&self) {
        let mut fds = Vec::with_capacity(2);
        if let Some(fd) = &self.supervisor {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        if let Some(i) = &self.log {
            fds.push(PollFd::new(i.as_fd(), PollFlags::POLLIN));
        }
        let timeout = PollTimeout::try_from(FOLLOW_POLL).unwrap_or(PollTimeout::NONE);
        if poll(&mut fds, timeout).is_err() {
            std::thread::sleep(FOLLOW_POLL);
        }
        if let Some(i) = &self.log {
            // Drop the events read so far: the follower reads the file itself.
            while i.read_events().is_ok_and(|e| !e.is_empty()) {}
        }
    }
}

/// Copies an exec stream into the output channel; keeps draining when the client is gone.
async fn pump(
    mut stream: ExecStream,
    tx: mpsc::Sender<Result<ExecOutput, Status>>,
    wrap: fn(Vec<u8>) -> exec_output::Output,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let _ = tx
                    .send(Ok(ExecOutput {
                        output: Some(wrap(buf[..n].to_vec())),
                    }))
                    .await;
            }
        }
    }
}

/// Relays an exec both ways until the process exits; the exit code is the last message.
async fn relay_exec(
    mut handle: ExecHandle,
    mut input: Streaming<ExecInput>,
    tx: mpsc::Sender<Result<ExecOutput, Status>>,
) {
    let mut readers = Vec::new();
    if let Some(out) = handle.take_stdout() {
        readers.push(tokio::spawn(pump(
            out,
            tx.clone(),
            exec_output::Output::Stdout,
        )));
    }
    if let Some(err) = handle.take_stderr() {
        readers.push(tokio::spawn(pump(
            err,
            tx.clone(),
            exec_output::Output::Stderr,
        )));
    }
    let mut stdin = handle.take_stdin();
    let resizer = handle.resizer();
    let writer = tokio::spawn(async move {
        while let Ok(Some(message)) = input.message().await {
            match message.input {
                Some(exec_input::Input::Stdin(data)) => {
                    if let Some(s) = stdin.as_mut() {
                        if s.write_all(&data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Some(exec_input::Input::Resize(r)) => {
                    if let Some(resizer) = &resizer {
                        let rows = u16::try_from(r.rows).unwrap_or(u16::MAX);
                        let cols = u16::try_from(r.cols).unwrap_or(u16::MAX);
                        if let Err(e) = resizer.resize(rows, cols) {
                            tracing::debug!(container = resizer.container(), "exec resize: {e}");
                        }
                    }
                }
                Some(exec_input::Input::CloseStdin(_)) => {
                    if let Some(mut s) = stdin.take() {
                        let _ = s.shutdown().await;
                    }
                }
                Some(exec_input::Input::Start(_)) | None => {}
            }
        }
        // The client is done (or gone): the process reads EOF.
        if let Some(mut s) = stdin.take() {
            let _ = s.shutdown().await;
        }
    });
    let result = handle.wait().await;
    let drained = async {
        for r in readers {
            let _ = r.await;
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
    writer.abort();
    let last = match result {
        Ok(code) => Ok(ExecOutput {
            output: Some(exec_output::Output::ExitCode(code)),
        }),
        Err(e) => Err(status(e)),
    };
    let _ = tx.send(last).await;
}

async fn auto_remove_container(
    runtime: &Runtime,
    resources: Option<&ContainerResources>,
    id: &str,
) {
    if let Err(e) = runtime.remove(id).await {
        tracing::warn!(container = %id, "auto-remove: {e}");
    }
    if let Some(r) = resources {
        r.release(id).await;
    }
}

/// One stats entry from two samples.
fn stats_entry(
    state: &ContainerState,
    now: Option<&ContainerStats>,
    prev: Option<&ContainerStats>,
) -> ContainerStatsEntry {
    let Some(now) = now else {
        return ContainerStatsEntry {
            id: state.id.clone(),
            name: state.name.clone(),
            ..Default::default()
        };
    };
    ContainerStatsEntry {
        id: state.id.clone(),
        name: state.name.clone(),
        cpu_percent: prev.map_or(0.0, |p| now.cpu_percent(p)),
        memory_usage: now.memory_working_set(),
        memory_limit: now.memory_limit.unwrap_or(0),
        net_rx: now.net_rx_bytes,
        net_tx: now.net_tx_bytes,
        pids: now.pids,
        read_at: now.read_at as i64,
    }
}

type GrpcStream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl Containers for ContainersApi {
    async fn list(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let all = request.into_inner().all;
        let names = self.image_names().await;
        let mut containers: Vec<ContainerInfo> = self
            .list_all()
            .await?
            .iter()
            .filter(|c| all || matches!(c.status, ContainerStatus::Running { .. }))
            .map(|c| info_of(&self.runtime, c, &names))
            .collect();
        containers.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn inspect(
        &self,
        request: Request<ContainerRef>,
    ) -> Result<Response<InspectContainerResponse>, Status> {
        let state = self.resolve(&request.into_inner().container).await?;
        let detail_json = serde_json::to_string(&state)
            .map_err(|e| Status::internal(format!("cannot encode the container: {e}")))?;
        Ok(Response::new(InspectContainerResponse {
            info: Some(self.info(&state).await),
            detail_json,
        }))
    }

    type ExecStream = GrpcStream<ExecOutput>;

    async fn exec(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut input = request.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("exec: no request was sent"))?;
        let Some(exec_input::Input::Start(spec)) = first.input else {
            return Err(Status::invalid_argument(
                "exec: the first message must carry the exec spec",
            ));
        };
        let ExecSpecMessage {
            container,
            cmd,
            env,
            user,
            workdir,
            tty,
            stdin,
            rows,
            cols,
        } = spec;
        if cmd.is_empty() || cmd[0].is_empty() {
            return Err(Status::invalid_argument("exec: no command given"));
        }
        let state = self.resolve(&container).await?;
        let console_size = (rows > 0 && cols > 0).then(|| {
            (
                u16::try_from(rows).unwrap_or(u16::MAX),
                u16::try_from(cols).unwrap_or(u16::MAX),
            )
        });
        let handle = self
            .runtime
            .exec(
                &state.id,
                ExecSpec {
                    args: cmd,
                    env,
                    user,
                    cwd: workdir,
                    tty,
                    stdin,
                    console_size,
                },
            )
            .await
            .map_err(status)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(relay_exec(handle, input, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stop(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<ContainerInfo>, Status> {
        let r = request.into_inner();
        let state = self.resolve(&r.container).await?;
        self.stop_one(&state, r.timeout).await?;
        Ok(Response::new(self.info_by_id(&state.id).await?))
    }

    async fn start(
        &self,
        request: Request<ContainerRef>,
    ) -> Result<Response<ContainerInfo>, Status> {
        let state = self.resolve(&request.into_inner().container).await?;
        Ok(Response::new(self.start_one(&state).await?))
    }

    async fn restart(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<ContainerInfo>, Status> {
        let r = request.into_inner();
        let state = self.resolve(&r.container).await?;
        self.stop_one(&state, r.timeout).await?;
        let state = self.runtime.state(&state.id).map_err(status)?;
        Ok(Response::new(self.start_one(&state).await?))
    }

    async fn kill(
        &self,
        request: Request<KillContainerRequest>,
    ) -> Result<Response<ContainerInfo>, Status> {
        let r = request.into_inner();
        let signo = parse_signal_number(&r.signal).map_err(Status::invalid_argument)?;
        let state = self.resolve(&r.container).await?;
        if !matches!(state.status, ContainerStatus::Running { .. }) {
            return Err(Status::failed_precondition(format!(
                "container {} is not running",
                state.name
            )));
        }
        self.runtime
            .kill_signal_number(&state.id, signo)
            .map_err(status)?;
        if signo == libc::SIGKILL {
            // As Docker: the container is gone when kill returns.
            let _ =
                tokio::time::timeout(Duration::from_secs(10), self.runtime.wait(&state.id)).await;
        }
        Ok(Response::new(self.info_by_id(&state.id).await?))
    }

    async fn remove(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let r = request.into_inner();
        let state = self.resolve(&r.container).await?;
        if matches!(state.status, ContainerStatus::Running { .. }) && !r.force {
            return Err(Status::failed_precondition(format!(
                "cannot remove container {}: it is running; stop it first or use --force",
                state.name
            )));
        }
        self.runtime.remove(&state.id).await.map_err(status)?;
        self.release(&state.id).await;
        Ok(Response::new(RemoveContainerResponse { id: state.id }))
    }

    async fn pause(
        &self,
        request: Request<ContainerRef>,
    ) -> Result<Response<ContainerInfo>, Status> {
        let state = self.resolve(&request.into_inner().container).await?;
        self.runtime.pause(&state.id).map_err(status)?;
        Ok(Response::new(self.info_by_id(&state.id).await?))
    }

    async fn unpause(
        &self,
        request: Request<ContainerRef>,
    ) -> Result<Response<ContainerInfo>, Status> {
        let state = self.resolve(&request.into_inner().container).await?;
        if !state.paused {
            return Err(Status::failed_precondition(format!(
                "container {} is not paused",
                state.name
            )));
        }
        self.runtime.unpause(&state.id).map_err(status)?;
        Ok(Response::new(self.info_by_id(&state.id).await?))
    }

    async fn wait(
        &self,
        request: Request<ContainerRef>,
    ) -> Result<Response<WaitContainerResponse>, Status> {
        let state = self.resolve(&request.into_inner().container).await?;
        let exit = self.runtime.wait(&state.id).await.map_err(status)?;
        Ok(Response::new(WaitContainerResponse {
            exit_code: exit.code,
            oom_killed: exit.oom_killed,
        }))
    }

    type StatsStream = GrpcStream<ContainerStatsBatch>;

    async fn stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<Self::StatsStream>, Status> {
        let r = request.into_inner();
        let mut named = Vec::new();
        for reference in &r.containers {
            named.push(self.resolve(reference).await?.id);
        }
        let runtime = self.runtime.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut prev: HashMap<String, ContainerStats> = HashMap::new();
            let mut first = true;
            loop {
                let targets: Vec<ContainerState> = if named.is_empty() {
                    runtime
                        .list()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|c| matches!(c.status, ContainerStatus::Running { .. }))
                        .collect()
                } else {
                    named
                        .iter()
                        .filter_map(|id| runtime.state(id).ok())
                        .collect()
                };
                if first {
                    for c in &targets {
                        if let Ok(s) = runtime.stats(&c.id) {
                            prev.insert(c.id.clone(), s);
                        }
                    }
                    tokio::time::sleep(STATS_FIRST_INTERVAL).await;
                    first = false;
                }
                let mut batch = Vec::new();
                let mut next = HashMap::new();
                for c in &targets {
                    let now = runtime.stats(&c.id).ok();
                    batch.push(stats_entry(c, now.as_ref(), prev.get(&c.id)));
                    if let Some(now) = now {
                        next.insert(c.id.clone(), now);
                    }
                }
                prev = next;
                if tx
                    .send(Ok(ContainerStatsBatch { stats: batch }))
                    .await
                    .is_err()
                    || r.no_stream
                {
                    return;
                }
                tokio::time::sleep(STATS_INTERVAL).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn top(
        &self,
        request: Request<ContainerRef>,
    ) -> Result<Response<TopContainerResponse>, Status> {
        let state = self.resolve(&request.into_inner().container).await?;
        let processes = self
            .runtime
            .top(&state.id)
            .map_err(status)?
            .into_iter()
            .map(|p| ContainerProcess {
                pid: p.pid,
                ppid: p.ppid,
                user: p.user,
                state: p.state.to_string(),
                cpu_ms: p.cpu_ms,
                rss_bytes: p.rss_bytes,
                cmd: p.cmd,
                container_pid: p.container_pid.unwrap_or(0),
            })
            .collect();
        Ok(Response::new(TopContainerResponse { processes }))
    }

    type LogsStream = GrpcStream<ContainerLogLine>;

    async fn logs(
        &self,
        request: Request<ContainerLogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = request.into_inner();
        let state = self.resolve(&r.container).await?;
        let runtime = self.runtime.clone();
        let path = runtime.log_path(&state.id);
        let (tx, rx) = mpsc::channel(256);
        tokio::task::spawn_blocking(move || {
            let since = u64::try_from(r.since).unwrap_or(0);
            let mut follower = LogFollower::new(&path, false);
            // Everything so far (rotated files too), then what the follower sees from the end
            // of the live file on.
            let mut entries = if r.follow {
                follower.read_new().unwrap_or_default()
            } else {
                match read_log(&path, None) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(status(e)));
                        return;
                    }
                }
            };
            entries.retain(|e| e.t >= since);
            if let Some(n) = r.tail {
                let skip = entries.len().saturating_sub(n as usize);
                entries.drain(..skip);
            }
            for entry in entries {
                if tx.blocking_send(Ok(log_line(entry))).is_err() {
                    return;
                }
            }
            if r.follow {
                follow_log(&runtime, &state.id, follower, &tx, |e| Ok(log_line(e)));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type RunStream = GrpcStream<RunContainerEvent>;

    async fn run(
        &self,
        request: Request<RunContainerRequest>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let r = request.into_inner();
        let (mut config, task) = self.run_config(&r).await?;
        let id = config.id.clone();
        let name = config.name.clone();
        if let Some(resources) = &self.resources {
            let known: HashMap<String, Network> = r
                .networks
                .iter()
                .map(|n| (n.id.clone(), n.clone()))
                .collect();
            resources
                .prepare(&task, &known, &mut config)
                .await
                .map_err(Status::invalid_argument)?;
        }
        let state = match self.runtime.create_and_start(config).await {
            Ok(state) => state,
            Err(e) => {
                self.release(&id).await;
                return Err(status(e));
            }
        };
        if let Some(resources) = &self.resources {
            resources.announce(&task, &name).await;
        }
        let info = self.info(&state).await;
        let (tx, rx) = mpsc::channel(256);
        let _ = tx
            .send(Ok(RunContainerEvent {
                event: Some(run_container_event::Event::Started(info)),
            }))
            .await;
        let runtime = self.runtime.clone();
        let resources = self.resources.clone();
        let (attach, auto_remove) = (r.attach, r.auto_remove);
        // Runs on even if the client goes away: `--rm` must still remove the container.
        tokio::spawn(async move {
            if attach {
                let follower = LogFollower::new(&runtime.log_path(&id), false);
                let (rt, follow_id, follow_tx) = (runtime.clone(), id.clone(), tx.clone());
                let followed = tokio::task::spawn_blocking(move || {
                    follow_log(&rt, &follow_id, follower, &follow_tx, |e| {
                        Ok(RunContainerEvent {
                            event: Some(run_container_event::Event::Output(log_line(e))),
                        })
                    })
                });
                let exit = runtime.wait(&id).await;
                let _ = followed.await;
                let last = match exit {
                    Ok(e) => Ok(RunContainerEvent {
                        event: Some(run_container_event::Event::ExitCode(e.code)),
                    }),
                    Err(e) => Err(status(e)),
                };
                // Removed before the client hears the exit code: when `run --rm` returns,
                // the container is gone.
                if auto_remove {
                    auto_remove_container(&runtime, resources.as_ref(), &id).await;
                }
                let _ = tx.send(last).await;
            } else {
                drop(tx);
                if auto_remove {
                    let _ = runtime.wait(&id).await;
                    auto_remove_container(&runtime, resources.as_ref(), &id).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ContainerConfig;

    fn state(id: &str, name: &str) -> ContainerState {
        ContainerState {
            id: id.into(),
            name: name.into(),
            labels: BTreeMap::new(),
            supervisor_pid: None,
            pid: None,
            started_at: None,
            status: ContainerStatus::Created,
            paused: false,
            config: ContainerConfig::default(),
        }
    }

    #[test]
    fn a_joiner_starts_again_only_into_the_namespace_it_shared() {
        let mut owner = state("o1", "owner");
        owner.status = ContainerStatus::Running { pid: 7 };
        let mut joiner = state("j1", "joiner");
        joiner.config.network_container = "o1".into();
        joiner.config.network = NetworkMode::Join("/run/netns/o1".into());
        shared_netns_still_there(&joiner, &[owner.clone()]).expect("owner runs");
        // A `none` owner: its namespace is its process's.
        joiner.config.network = NetworkMode::Join("/proc/7/ns/net".into());
        shared_netns_still_there(&joiner, &[owner.clone()]).expect("same process");
        joiner.config.network = NetworkMode::Join("/proc/6/ns/net".into());
        let err = shared_netns_still_there(&joiner, &[owner.clone()]).unwrap_err();
        assert!(err.message().contains("restarted"), "{err:?}");
        owner.status = ContainerStatus::Created;
        joiner.config.network = NetworkMode::Join("/run/netns/o1".into());
        let err = shared_netns_still_there(&joiner, &[owner]).unwrap_err();
        assert!(err.message().contains("of container owner"), "{err:?}");
        assert!(shared_netns_still_there(&joiner, &[]).is_err());
    }

    #[test]
    fn containers_are_found_by_id_name_or_unique_prefix() {
        let all = vec![
            state("abc123", "web.1.abc123"),
            state("abd456", "db"),
            state("db", "other"),
        ];
        assert_eq!(find(all.clone(), "abc123").expect("id").id, "abc123");
        assert_eq!(
            find(all.clone(), "web.1.abc123").expect("name").id,
            "abc123"
        );
        // An exact id wins over a name.
        assert_eq!(find(all.clone(), "db").expect("id first").id, "db");
        assert_eq!(find(all.clone(), "abd").expect("prefix").id, "abd456");
        let err = find(all.clone(), "ab").expect_err("ambiguous");
        assert!(err.message().contains("ambiguous"), "{}", err.message());
        let err = find(all.clone(), "zzz").expect_err("missing");
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(find(all, "").is_err());
    }

    #[test]
    fn names_follow_docker_grammar() {
        assert!(validate_name("web-1.a_b").is_ok());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name("a/b").is_err());
        let name = generate_name(&[]);
        assert!(validate_name(&name).is_ok(), "{name}");
        assert!(name.contains('_'), "{name}");
    }
}
