//! `shoal service ...`

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use shoal_proto::service_spec::Mode;
use shoal_proto::*;

use crate::cli::{CreateArgs, Format, FormatArgs, ListArgs, RestartConditionArg, ServiceModeArg};
use crate::client::{status_message, Client};
use crate::output::{ago, print_json, table};

pub fn spec_from_args(a: &CreateArgs) -> Result<ServiceSpec> {
    let name = match &a.name {
        Some(n) => n.clone(),
        None => generated_name(),
    };
    let labels = parse_pairs(&a.labels, "label")?;
    for e in &a.env {
        if e.split('=').next().is_none_or(str::is_empty) {
            bail!("invalid --env {e:?}: use KEY=VALUE");
        }
    }
    let limits = Resources {
        memory_bytes: a.memory.unwrap_or(0),
        nano_cpus: a.cpus.unwrap_or(0),
        pids: a.pids_limit.unwrap_or(0),
    };
    if limits.pids < 0 {
        bail!(
            "invalid --pids-limit {}: it must be 0 (unlimited) or more",
            limits.pids
        );
    }
    let condition = match a.restart_condition {
        RestartConditionArg::Any => RestartCondition::Any,
        RestartConditionArg::OnFailure => RestartCondition::OnFailure,
        RestartConditionArg::None => RestartCondition::None,
    };
    Ok(ServiceSpec {
        name,
        labels,
        container: Some(ContainerSpec {
            image: a.image.clone(),
            command: a
                .entrypoint
                .as_deref()
                .map(|e| e.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            args: a.args.clone(),
            env: a.env.clone(),
            workdir: a.workdir.clone().unwrap_or_default(),
            user: a.user.clone().unwrap_or_default(),
            hostname: a.hostname.clone().unwrap_or_default(),
            stop_grace_period_ms: a.stop_grace_period.map(|d| d.as_millis() as u64),
            labels: HashMap::new(),
            cap_add: a.cap_add.clone(),
            cap_drop: a.cap_drop.clone(),
            read_only: a.read_only,
            init: a.init,
            sysctls: parse_pairs(&a.sysctls, "sysctl")?,
            extra_hosts: a.extra_hosts.clone(),
            dns: a.dns.clone(),
            stop_signal: a.stop_signal.clone().unwrap_or_default(),
            healthcheck: healthcheck_from_args(a),
            log_options: parse_pairs(&a.log_opts, "log-opt")?,
            ..Default::default()
        }),
        networks: a
            .networks
            .iter()
            .map(|n| parse_network(n))
            .collect::<Result<_>>()?,
        limits: Some(limits),
        reservations: Some(Resources {
            memory_bytes: a.reserve_memory.unwrap_or(0),
            nano_cpus: a.reserve_cpu.unwrap_or(0),
            pids: 0,
        }),
        restart: Some(RestartPolicy {
            condition: condition as i32,
            delay_ms: a.restart_delay.map(|d| d.as_millis() as u64),
            max_attempts: a.restart_max_attempts,
            window_ms: a.restart_window.map(|d| d.as_millis() as u64).unwrap_or(0),
        }),
        mode: Some(match a.mode {
            ServiceModeArg::Replicated => Mode::Replicated(ReplicatedService {
                replicas: a.replicas,
            }),
            ServiceModeArg::Global => Mode::Global(GlobalService {}),
        }),
        endpoint: Some(EndpointSpec {
            ports: a
                .publish
                .iter()
                .map(|p| parse_publish(p))
                .collect::<Result<Vec<_>>>()?
                .concat(),
            mode: a.endpoint_mode.clone().unwrap_or_default(),
        }),
        placement: placement_from_args(a)?,
        depends_on: Vec::new(),
        update_config: a.rollout.update_config(None)?,
        rollback_config: a.rollout.rollback_config(None)?,
        force_update: 0,
    })
}

/// `--constraint`, `--placement-pref`, `--replicas-max-per-node` on create; `None` when none
/// is given. Checked here so that a typo is refused before anything is sent.
fn placement_from_args(a: &CreateArgs) -> Result<Option<Placement>> {
    let placement = Placement {
        constraints: a.constraints.iter().map(|c| c.trim().to_string()).collect(),
        preferences: a
            .placement_prefs
            .iter()
            .map(|p| parse_placement_pref(p))
            .collect::<Result<_>>()?,
        max_replicas_per_node: a.replicas_max_per_node.unwrap_or(0),
    };
    if placement == Placement::default() {
        return Ok(None);
    }
    check_placement(&placement)?;
    Ok(Some(placement))
}

/// `spread=node.labels.zone`, Docker's only placement strategy.
fn parse_placement_pref(text: &str) -> Result<PlacementPreference> {
    match text.split_once('=') {
        Some((strategy, descriptor)) if strategy.trim().eq_ignore_ascii_case("spread") => {
            Ok(PlacementPreference {
                spread: descriptor.trim().to_string(),
            })
        }
        Some((strategy, _)) => bail!(
            "invalid --placement-pref {text:?}: unsupported strategy {:?} (only spread is supported, e.g. spread=node.labels.zone)",
            strategy.trim()
        ),
        None => bail!(
            "invalid --placement-pref {text:?}: use spread=DESCRIPTOR, e.g. spread=node.labels.zone"
        ),
    }
}

/// The manager's own check, run on the client for an early, local error.
fn check_placement(placement: &Placement) -> Result<()> {
    shoal_manager::scheduler::constraint::Rules::parse(Some(placement))
        .map(|_| ())
        .map_err(|e| anyhow!("{e}"))
}

/// `service update`'s placement flags, applied over the current placement.
#[derive(clap::Args, Default, Clone, Debug)]
pub struct PlacementArgs {
    /// Add a placement constraint, e.g. node.labels.zone==a (repeatable).
    #[arg(long = "constraint-add")]
    pub constraint_add: Vec<String>,
    /// Remove a placement constraint, as written when it was added (repeatable).
    #[arg(long = "constraint-rm")]
    pub constraint_rm: Vec<String>,
    /// Add a placement preference: spread=node.labels.KEY (repeatable).
    #[arg(long = "placement-pref-add")]
    pub placement_pref_add: Vec<String>,
    /// Remove a placement preference: spread=node.labels.KEY (repeatable).
    #[arg(long = "placement-pref-rm")]
    pub placement_pref_rm: Vec<String>,
    /// At most this many tasks of the service on one node (0: no limit).
    #[arg(long = "replicas-max-per-node")]
    pub replicas_max_per_node: Option<u64>,
}

impl PlacementArgs {
    fn is_empty(&self) -> bool {
        self.constraint_add.is_empty()
            && self.constraint_rm.is_empty()
            && self.placement_pref_add.is_empty()
            && self.placement_pref_rm.is_empty()
            && self.replicas_max_per_node.is_none()
    }

    /// Removals first, then additions (an added constraint already there is not repeated),
    /// as Docker does.
    pub fn apply(&self, base: Option<Placement>) -> Result<Option<Placement>> {
        if self.is_empty() {
            return Ok(base);
        }
        let mut p = base.unwrap_or_default();
        let same = |a: &str, b: &str| constraint_key(a) == constraint_key(b);
        for rm in &self.constraint_rm {
            p.constraints.retain(|c| !same(c, rm));
        }
        for add in &self.constraint_add {
            if !p.constraints.iter().any(|c| same(c, add)) {
                p.constraints.push(add.trim().to_string());
            }
        }
        for rm in &self.placement_pref_rm {
            let rm = parse_placement_pref(rm)?;
            p.preferences.retain(|x| x.spread != rm.spread);
        }
        for add in &self.placement_pref_add {
            let add = parse_placement_pref(add)?;
            if !p.preferences.contains(&add) {
                p.preferences.push(add);
            }
        }
        if let Some(max) = self.replicas_max_per_node {
            p.max_replicas_per_node = max;
        }
        check_placement(&p)?;
        Ok((p != Placement::default()).then_some(p))
    }
}

/// A constraint in a form where spacing does not matter (`a == b` is `a==b`).
fn constraint_key(text: &str) -> String {
    match shoal_manager::scheduler::constraint::Constraint::parse(text) {
        Ok(c) => c.to_string(),
        Err(_) => text.trim().to_string(),
    }
}

/// `--update-*` / `--rollback-*`: Swarm's rolling-update settings, on create and update.
#[derive(clap::Args, Default, Clone, Debug)]
pub struct RolloutArgs {
    /// Tasks replaced at a time (0: all at once; default 1).
    #[arg(long = "update-parallelism")]
    pub update_parallelism: Option<u64>,
    /// Wait between updates of a task and the next (e.g. 10s).
    #[arg(long = "update-delay", value_parser = crate::units::parse_duration)]
    pub update_delay: Option<Duration>,
    /// stop-first (default) or start-first: the new task starts beside the old one.
    #[arg(long = "update-order", value_parser = ["stop-first", "start-first"])]
    pub update_order: Option<String>,
    /// pause (default), continue or rollback when tasks fail.
    #[arg(long = "update-failure-action", value_parser = ["pause", "continue", "rollback"])]
    pub update_failure_action: Option<String>,
    /// How long a new task must run to count as updated (default 5s).
    #[arg(long = "update-monitor", value_parser = crate::units::parse_duration)]
    pub update_monitor: Option<Duration>,
    /// Fraction of tasks that may fail before the failure action (default 0).
    #[arg(long = "update-max-failure-ratio")]
    pub update_max_failure_ratio: Option<f32>,
    /// How long a task being replaced or removed stays out of DNS and the published ports
    /// before its stop signal, so requests in flight finish (default 2s).
    #[arg(long = "update-drain", value_parser = crate::units::parse_duration)]
    pub update_drain: Option<Duration>,
    /// rolling (default) or blue-green: a full new set of tasks starts beside the old one,
    /// out of rotation, and takes all the traffic at once when ready.
    #[arg(long = "update-strategy", value_parser = ["rolling", "blue-green"])]
    pub update_strategy: Option<String>,
    /// Blue-green: auto (default) switches as soon as the new tasks are ready; manual waits
    /// for `service promote`.
    #[arg(long = "update-promote", value_parser = ["auto", "manual"])]
    pub update_promote: Option<String>,
    /// Blue-green: how long the old tasks are kept, out of rotation, after the switch, for an
    /// instant `service rollback` (default 60s; never less than the monitor period).
    #[arg(long = "update-keep-blue", value_parser = crate::units::parse_duration)]
    pub update_keep_blue: Option<Duration>,
    /// Blue-green: a shell command run inside every new task once it runs (and is healthy),
    /// before the switch; it must exit 0 (e.g. "wget -q -O- http://127.0.0.1/health"). An
    /// empty string removes it.
    #[arg(long = "update-verify-cmd")]
    pub update_verify_cmd: Option<String>,
    /// Tasks rolled back at a time (0: all at once; default 1).
    #[arg(long = "rollback-parallelism")]
    pub rollback_parallelism: Option<u64>,
    /// Wait between rollbacks of a task and the next.
    #[arg(long = "rollback-delay", value_parser = crate::units::parse_duration)]
    pub rollback_delay: Option<Duration>,
    /// stop-first (default) or start-first, for rollbacks.
    #[arg(long = "rollback-order", value_parser = ["stop-first", "start-first"])]
    pub rollback_order: Option<String>,
    /// pause (default) or continue when tasks fail during a rollback.
    #[arg(long = "rollback-failure-action", value_parser = ["pause", "continue"])]
    pub rollback_failure_action: Option<String>,
    /// How long a rolled-back task must run to count (default 5s).
    #[arg(long = "rollback-monitor", value_parser = crate::units::parse_duration)]
    pub rollback_monitor: Option<Duration>,
    /// Fraction of tasks that may fail during a rollback (default 0).
    #[arg(long = "rollback-max-failure-ratio")]
    pub rollback_max_failure_ratio: Option<f32>,
    /// The drain period during rollbacks (default: the update's).
    #[arg(long = "rollback-drain", value_parser = crate::units::parse_duration)]
    pub rollback_drain: Option<Duration>,
}

struct RolloutFlags<'a> {
    parallelism: Option<u64>,
    delay: Option<Duration>,
    order: Option<&'a str>,
    failure_action: Option<&'a str>,
    monitor: Option<Duration>,
    max_failure_ratio: Option<f32>,
    drain: Option<Duration>,
}

impl RolloutFlags<'_> {
    /// The config with these flags applied over `base` (unset flags keep what it has);
    /// `None` when neither sets anything.
    fn apply(&self, base: Option<UpdateConfig>, what: &str) -> Result<Option<UpdateConfig>> {
        let any = self.parallelism.is_some()
            || self.delay.is_some()
            || self.order.is_some()
            || self.failure_action.is_some()
            || self.monitor.is_some()
            || self.max_failure_ratio.is_some()
            || self.drain.is_some();
        if !any {
            return Ok(base);
        }
        let mut c = base.unwrap_or_default();
        if let Some(p) = self.parallelism {
            c.parallelism = Some(p);
        }
        if let Some(d) = self.delay {
            c.delay_ms = d.as_millis() as u64;
        }
        if let Some(m) = self.monitor {
            c.monitor_ms = Some(m.as_millis() as u64);
        }
        if let Some(d) = self.drain {
            c.drain_ms = Some(d.as_millis() as u64);
        }
        if let Some(r) = self.max_failure_ratio {
            if !(0.0..=1.0).contains(&r) {
                bail!("invalid --{what}-max-failure-ratio {r}: use a number from 0 to 1");
            }
            c.max_failure_ratio = r;
        }
        match self.order {
            Some("start-first") => c.set_order(UpdateOrder::StartFirst),
            Some("stop-first") => c.set_order(UpdateOrder::StopFirst),
            Some(o) => bail!("invalid --{what}-order {o:?}: use stop-first or start-first"),
            None => {}
        }
        match self.failure_action {
            Some("pause") => c.set_failure_action(UpdateFailureAction::Pause),
            Some("continue") => c.set_failure_action(UpdateFailureAction::Continue),
            Some("rollback") if what == "update" => {
                c.set_failure_action(UpdateFailureAction::Rollback)
            }
            Some(a) => bail!("invalid --{what}-failure-action {a:?}"),
            None => {}
        }
        Ok(Some(c))
    }
}

impl RolloutArgs {
    pub fn update_config(&self, base: Option<UpdateConfig>) -> Result<Option<UpdateConfig>> {
        let config = RolloutFlags {
            parallelism: self.update_parallelism,
            delay: self.update_delay,
            order: self.update_order.as_deref(),
            failure_action: self.update_failure_action.as_deref(),
            monitor: self.update_monitor,
            max_failure_ratio: self.update_max_failure_ratio,
            drain: self.update_drain,
        }
        .apply(base, "update")?;
        let blue_green = self.update_strategy.is_some()
            || self.update_promote.is_some()
            || self.update_keep_blue.is_some()
            || self.update_verify_cmd.is_some();
        if !blue_green {
            return Ok(config);
        }
        let mut c = config.unwrap_or_default();
        match self.update_strategy.as_deref() {
            Some("rolling") => c.set_strategy(UpdateStrategy::Rolling),
            Some("blue-green") => c.set_strategy(UpdateStrategy::BlueGreen),
            Some(s) => bail!("invalid --update-strategy {s:?}: use rolling or blue-green"),
            None => {}
        }
        match self.update_promote.as_deref() {
            Some("auto") => c.set_promote(PromoteMode::Auto),
            Some("manual") => c.set_promote(PromoteMode::Manual),
            Some(p) => bail!("invalid --update-promote {p:?}: use auto or manual"),
            None => {}
        }
        if let Some(k) = self.update_keep_blue {
            c.keep_blue_ms = Some(k.as_millis() as u64);
        }
        match self.update_verify_cmd.as_deref() {
            Some("") => c.verify.clear(),
            Some(cmd) => c.verify = vec!["CMD-SHELL".into(), cmd.into()],
            None => {}
        }
        Ok(Some(c))
    }

    pub fn rollback_config(&self, base: Option<UpdateConfig>) -> Result<Option<UpdateConfig>> {
        RolloutFlags {
            parallelism: self.rollback_parallelism,
            delay: self.rollback_delay,
            order: self.rollback_order.as_deref(),
            failure_action: self.rollback_failure_action.as_deref(),
            monitor: self.rollback_monitor,
            max_failure_ratio: self.rollback_max_failure_ratio,
            drain: self.rollback_drain,
        }
        .apply(base, "rollback")
    }
}

/// `--health-*` / `--no-healthcheck`.
fn healthcheck_from_args(a: &CreateArgs) -> Option<HealthCheck> {
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
    if a.no_healthcheck {
        return Some(HealthCheck {
            test: vec!["NONE".into()],
            ..Default::default()
        });
    }
    let cmd = a.health_cmd.as_ref()?;
    Some(HealthCheck {
        test: vec!["CMD-SHELL".into(), cmd.clone()],
        interval_ms: ms(a.health_interval),
        timeout_ms: ms(a.health_timeout),
        retries: a.health_retries,
        start_period_ms: ms(a.health_start_period),
        start_interval_ms: ms(a.health_start_interval),
    })
}

/// Docker's PORTS column: `127.0.0.1:8080->80/tcp, *:32768->53/udp`.
fn ports_column(ports: &[PortConfig]) -> String {
    ports
        .iter()
        .map(|p| {
            let ip = if p.host_ip.is_empty() {
                "*"
            } else {
                &p.host_ip
            };
            let proto = match p.protocol() {
                PortProtocol::Tcp => "tcp",
                PortProtocol::Udp => "udp",
            };
            format!("{ip}:{}->{}/{proto}", p.published_port, p.target_port)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--publish`: Docker's short form (through the port layer's parser) or its long form.
pub(crate) fn parse_publish(text: &str) -> Result<Vec<PortConfig>> {
    if !text.contains('=') {
        let mappings = shoal_agent::ports::parse_publish(text)
            .map_err(|e| anyhow!("invalid --publish {text:?}: {e}"))?;
        return Ok(mappings
            .into_iter()
            .map(|m| PortConfig {
                protocol: match m.protocol {
                    shoal_agent::ports::Protocol::Tcp => PortProtocol::Tcp,
                    shoal_agent::ports::Protocol::Udp => PortProtocol::Udp,
                } as i32,
                target_port: u32::from(m.container_port),
                published_port: u32::from(m.host_port),
                publish_mode: PublishMode::Ingress as i32,
                host_ip: m.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            })
            .collect());
    }
    let mut port = PortConfig::default();
    let bad = || {
        anyhow!("invalid --publish {text:?}: use published=HOST,target=CONTAINER[,protocol=tcp|udp][,mode=ingress|host]")
    };
    for field in text.split(',') {
        let (key, value) = field.split_once('=').ok_or_else(bad)?;
        match key {
            "published" => port.published_port = value.parse().map_err(|_| bad())?,
            "target" => port.target_port = value.parse().map_err(|_| bad())?,
            "protocol" => {
                port.protocol = match value {
                    "tcp" => PortProtocol::Tcp,
                    "udp" => PortProtocol::Udp,
                    _ => return Err(bad()),
                } as i32
            }
            "mode" => {
                port.publish_mode = match value {
                    "ingress" => PublishMode::Ingress,
                    "host" => PublishMode::Host,
                    _ => return Err(bad()),
                } as i32
            }
            _ => return Err(bad()),
        }
    }
    if port.target_port == 0 || port.target_port > 65535 || port.published_port > 65535 {
        return Err(bad());
    }
    Ok(vec![port])
}

/// `--network NAME` or `--network name=NAME,alias=A,alias=B` (Docker's long form).
fn parse_network(text: &str) -> Result<NetworkAttachmentConfig> {
    if !text.contains('=') {
        return Ok(NetworkAttachmentConfig {
            target: text.to_string(),
            aliases: Vec::new(),
        });
    }
    let mut config = NetworkAttachmentConfig::default();
    for field in text.split(',') {
        match field.split_once('=') {
            Some(("name" | "target", v)) => config.target = v.to_string(),
            Some(("alias", v)) => config.aliases.push(v.to_string()),
            _ => bail!("invalid --network {text:?}: use NAME or name=NAME,alias=ALIAS"),
        }
    }
    if config.target.is_empty() {
        bail!("invalid --network {text:?}: the network name is missing");
    }
    Ok(config)
}

pub(crate) fn parse_pairs(items: &[String], what: &str) -> Result<HashMap<String, String>> {
    items
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            if k.is_empty() {
                bail!("invalid --{what} {kv:?}: use KEY=VALUE");
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// A name for a service created without `--name`.
fn generated_name() -> String {
    let id = shoal_manager::consensus::new_id();
    format!("svc-{}", &id[..8])
}

pub async fn create(client: &mut Client, args: &CreateArgs) -> Result<()> {
    let spec = spec_from_args(args)?;
    let response = client
        .control
        .create_service(CreateServiceRequest { spec: Some(spec) })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner();
    let service = response
        .service
        .ok_or_else(|| anyhow!("the daemon returned no service"))?;
    println!("{}", service.id);
    if !args.detach {
        converge(client, &service.id).await?;
    }
    Ok(())
}

/// Waits until every wanted task of the service runs, printing progress like Docker.
/// Where a service's rollout stands, from its spec and its tasks. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Tasks of the current spec that run (or, for a one-shot job, finished cleanly).
    pub done: u64,
    /// Of those, the ones that finished.
    pub finished: u64,
    pub desired: u64,
    /// Old or removed tasks that have not stopped yet.
    pub leaving: usize,
    /// A task that failed and will not be restarted (restart condition `none`).
    pub failed: Option<String>,
    /// Its tasks are healthy once running (it has a healthcheck).
    pub health_checked: bool,
}

impl Progress {
    pub fn of(s: &Service, tasks: &[Task]) -> Progress {
        let spec = s.spec.clone().unwrap_or_default();
        // Only tasks of the current spec count: right after an update the old ones still run.
        let current = |t: &Task| {
            shoal_manager::orchestrator::update::same_task_spec(t.spec.as_deref(), Some(&spec))
        };
        let restart = spec.restart.unwrap_or_default();
        let job = spec.restart.is_some() && restart.condition() != RestartCondition::Any;
        let finished_cleanly = |t: &Task| {
            task_state(t) == TaskState::Complete
                && t.status.as_ref().and_then(|st| st.exit_code) == Some(0)
        };
        let running = tasks
            .iter()
            .filter(|t| current(t))
            .filter(|t| {
                task_state(t) == TaskState::Running && t.desired_state() == TaskState::Running
            })
            .count() as u64;
        let finished = tasks
            .iter()
            .filter(|t| job && current(t) && finished_cleanly(t))
            .count() as u64;
        let never_again = spec.restart.is_some() && restart.condition() == RestartCondition::None;
        let failed = tasks
            .iter()
            .find(|t| never_again && current(t) && task_state(t) == TaskState::Failed)
            .map(|t| {
                t.status
                    .as_ref()
                    .map(|st| st.error.clone())
                    .unwrap_or_default()
            });
        let leaving = tasks
            .iter()
            .filter(|t| t.desired_state() != TaskState::Running && !task_state(t).is_terminal())
            .count();
        let health_checked = spec
            .container
            .as_ref()
            .and_then(|c| c.healthcheck.as_ref())
            .is_some_and(|h| {
                !h.test.is_empty() && h.test.first().map(String::as_str) != Some("NONE")
            });
        Progress {
            done: running + finished,
            finished,
            desired: desired_tasks(s, tasks),
            leaving,
            failed,
            health_checked,
        }
    }

    /// Every wanted task runs (or finished, for a job) and nothing old is left.
    pub fn converged(&self, s: &Service) -> bool {
        // A global service has converged once its tasks exist and all run.
        let placed = self.desired > 0 || mode_name(s) == "replicated";
        placed && self.done == self.desired && self.leaving == 0
    }
}

/// Waits until the service's tasks run its current spec, printing progress and task errors.
pub async fn converge(client: &mut Client, service: &str) -> Result<()> {
    let mut last_line = String::new();
    let mut shown_errors: Vec<String> = Vec::new();
    let mut watch = TaskWatch::default();
    loop {
        let s = get(client, service).await?;
        let tasks = watch.next(client, &s.id).await?;
        let progress = Progress::of(&s, &tasks);
        if let Some(error) = &progress.failed {
            bail!(
                "service {}: a task failed and will not be restarted: {error}",
                spec_name(&s),
            );
        }
        for (task, error) in task_errors(&tasks) {
            if !shown_errors.contains(&task.id) {
                shown_errors.push(task.id.clone());
                eprintln!("task {}.{}: {}", spec_name(&s), task.slot, error);
            }
        }
        let line = format!(
            "overall progress: {} out of {} tasks",
            progress.done, progress.desired
        );
        if line != last_line {
            eprintln!("{line}");
            last_line = line;
        }
        if progress.converged(&s) {
            eprintln!("verify: Service {} converged", spec_name(&s));
            return Ok(());
        }
    }
}

/// The tasks that carry an error (a start error, or why they cannot be placed), and it.
pub fn task_errors(tasks: &[Task]) -> impl Iterator<Item = (&Task, String)> {
    tasks.iter().filter_map(|t| {
        let error = t
            .status
            .as_ref()
            .map(|s| s.error.clone())
            .unwrap_or_default();
        let error = if error.is_empty() {
            t.scheduling_error.clone()
        } else {
            error
        };
        (!error.is_empty()).then_some((t, error))
    })
}

fn task_state(t: &Task) -> TaskState {
    t.status.as_ref().map(|s| s.state()).unwrap_or_default()
}

/// Replicas, or for a global service the tasks placed (one per eligible node).
fn desired_tasks(s: &Service, tasks: &[Task]) -> u64 {
    match s.spec.as_ref().and_then(|s| s.mode.as_ref()) {
        Some(Mode::Replicated(r)) => r.replicas,
        Some(Mode::Global(_)) => tasks
            .iter()
            .filter(|t| t.desired_state() == TaskState::Running)
            .count() as u64,
        None => 0,
    }
}

fn mode_name(s: &Service) -> &'static str {
    match s.spec.as_ref().and_then(|s| s.mode.as_ref()) {
        Some(Mode::Global(_)) => "global",
        _ => "replicated",
    }
}

fn spec_name(s: &Service) -> &str {
    s.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")
}

pub async fn get(client: &mut Client, service: &str) -> Result<Service> {
    client
        .control
        .get_service(GetServiceRequest {
            service: service.into(),
        })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .service
        .ok_or_else(|| anyhow!("no such service: {service}"))
}

pub async fn list_tasks(client: &mut Client, service: &str) -> Result<Vec<Task>> {
    TaskWatch::default().next(client, service).await
}

/// Follows a task list as it changes: the first [`TaskWatch::next`] answers at once, each
/// later one when the store has changed since (or after about a second), so a command waiting
/// for tasks sees each change as it lands instead of polling.
#[derive(Default)]
pub struct TaskWatch {
    seen: u64,
}

impl TaskWatch {
    /// The tasks of `service` (empty: every task).
    pub async fn next(&mut self, client: &mut Client, service: &str) -> Result<Vec<Task>> {
        let answer = client
            .control
            .list_tasks(ListTasksRequest {
                service: service.into(),
                node_id: String::new(),
                changed_after: self.seen,
            })
            .await
            .map_err(|s| anyhow!(status_message(&s)))?
            .into_inner();
        self.seen = answer.index;
        Ok(answer.tasks)
    }
}

pub async fn ls(client: &mut Client, args: ListArgs) -> Result<()> {
    ls_where(client, args, |_| true).await
}

/// `service ls` limited to the services `keep` accepts (e.g. one stack's).
pub async fn ls_where(
    client: &mut Client,
    args: ListArgs,
    keep: impl Fn(&Service) -> bool,
) -> Result<()> {
    let mut services = client
        .control
        .list_services(ListServicesRequest {})
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .services;
    services.retain(|summary| summary.service.as_ref().is_some_and(&keep));
    if args.quiet {
        for s in services.iter().filter_map(|s| s.service.as_ref()) {
            println!("{}", s.id);
        }
        return Ok(());
    }
    if args.format.format == Some(Format::Json) {
        return print_json(&services);
    }
    let rows = services
        .iter()
        .filter_map(|summary| {
            let s = summary.service.as_ref()?;
            let image = s
                .spec
                .as_ref()
                .and_then(|sp| sp.container.as_ref())
                .map(|c| c.image.clone())
                .unwrap_or_default();
            Some(vec![
                crate::output::short_id(&s.id).to_string(),
                spec_name(s).to_string(),
                mode_name(s).into(),
                format!("{}/{}", summary.running, summary.desired),
                image,
                String::new(),
            ])
        })
        .collect();
    println!(
        "{}",
        table(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], rows)
    );
    Ok(())
}

pub async fn ps(client: &mut Client, service: &str, args: ListArgs) -> Result<()> {
    let s = get(client, service).await?;
    if !args.quiet && args.format.format != Some(Format::Json) {
        if let Some(line) = s.update_status.as_ref().and_then(update_status_line) {
            println!("{line}");
        }
    }
    ps_of(client, vec![s], args).await
}

/// The one-line form of a rollout's status, as `service ps` shows it above the tasks:
/// `Update status: updating (blue-green: deploying), started 3 seconds ago: <message>`.
pub fn update_status_line(status: &UpdateStatus) -> Option<String> {
    let state = status.state();
    if state == UpdateState::Unknown {
        return None;
    }
    let phase = match status.phase() {
        BlueGreenPhase::None => String::new(),
        p => format!(" (blue-green: {})", blue_green_phase_name(p)),
    };
    let when = if status.completed_at > 0 {
        format!("completed {}", ago(status.completed_at))
    } else {
        format!("started {}", ago(status.started_at))
    };
    let message = if status.message.is_empty() {
        String::new()
    } else {
        format!(": {}", status.message)
    };
    Some(format!(
        "Update status: {}{phase}, {when}{message}",
        update_state_name(state)
    ))
}

pub fn blue_green_phase_name(phase: BlueGreenPhase) -> &'static str {
    match phase {
        BlueGreenPhase::None => "none",
        BlueGreenPhase::Deploying => "deploying",
        BlueGreenPhase::Ready => "ready",
        BlueGreenPhase::Switched => "switched",
        BlueGreenPhase::Done => "done",
    }
}

/// The tasks of `services` in one table, like `service ps` (and `stack ps`).
pub async fn ps_of(client: &mut Client, services: Vec<Service>, args: ListArgs) -> Result<()> {
    let mut tasks = Vec::new();
    for s in &services {
        tasks.extend(list_tasks(client, &s.id).await?);
    }
    let names: HashMap<&str, &str> = services
        .iter()
        .map(|s| (s.id.as_str(), spec_name(s)))
        .collect();
    // Docker's order: by service and slot (a global task's slot is its node), the current
    // task first, then its history, newest first.
    tasks.sort_by_key(|t| {
        (
            names.get(t.service_id.as_str()).copied().unwrap_or(""),
            t.slot,
            slot_node(t).to_string(),
            t.desired_state() != TaskState::Running,
            std::cmp::Reverse(t.meta.as_ref().map(|m| m.created_at).unwrap_or(0)),
        )
    });
    if args.quiet {
        for t in &tasks {
            println!("{}", t.id);
        }
        return Ok(());
    }
    if args.format.format == Some(Format::Json) {
        return print_json(&tasks);
    }
    let nodes: HashMap<String, String> = client
        .control
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .nodes
        .into_iter()
        .map(|n| {
            let host = n.description.map(|d| d.hostname).unwrap_or_default();
            (n.id, host)
        })
        .collect();
    let mut previous_slot = None;
    let rows = tasks
        .iter()
        .map(|t| {
            let status = t.status.clone().unwrap_or_default();
            let service = names.get(t.service_id.as_str()).copied().unwrap_or("");
            // A global task is known by its node, as in Docker.
            let name = if t.slot == 0 {
                format!("{service}.{}", t.node_id)
            } else {
                format!("{service}.{}", t.slot)
            };
            let name = if previous_slot == Some((service, t.slot, slot_node(t))) {
                format!(" \\_ {name}")
            } else {
                name
            };
            previous_slot = Some((service, t.slot, slot_node(t)));
            let state = status.state();
            let mut current = capitalize(state.display());
            current.push(' ');
            current.push_str(&ago(status.timestamp));
            // Blue-green: running, but the manager keeps traffic away from it.
            if t.out_of_rotation && t.desired_state() == TaskState::Running && !state.is_terminal()
            {
                current.push_str(" (out of rotation)");
            }
            let error = if !status.error.is_empty() {
                status.error.clone()
            } else {
                t.scheduling_error.clone()
            };
            vec![
                crate::output::short_id(&t.id).to_string(),
                name,
                t.spec
                    .as_ref()
                    .and_then(|sp| sp.container.as_ref())
                    .map(|c| c.image.clone())
                    .unwrap_or_default(),
                nodes.get(&t.node_id).cloned().unwrap_or_default(),
                capitalize(t.desired_state().display()),
                current,
                error,
                ports_column(&status.ports),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "ID",
                "NAME",
                "IMAGE",
                "NODE",
                "DESIRED STATE",
                "CURRENT STATE",
                "ERROR",
                "PORTS"
            ],
            rows
        )
    );
    Ok(())
}

/// The node that identifies a global task's slot; empty for replicated tasks.
fn slot_node(t: &Task) -> &str {
    if t.slot == 0 {
        &t.node_id
    } else {
        ""
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

pub async fn inspect(client: &mut Client, services: &[String], _format: FormatArgs) -> Result<()> {
    // Docker prints inspect output as a JSON array whatever the format.
    let mut found = Vec::new();
    for name in services {
        found.push(get(client, name).await?);
    }
    print_json(&found)
}

/// What `service update` changes; everything else stays as it is.
#[derive(Default)]
pub struct SpecChange {
    pub image: Option<String>,
    pub env_add: Vec<String>,
    pub env_rm: Vec<String>,
    pub replicas: Option<u64>,
    /// Replace every task although nothing else changes.
    pub force: bool,
    pub placement: PlacementArgs,
    pub rollout: RolloutArgs,
}

impl SpecChange {
    fn apply(&self, spec: &mut ServiceSpec) -> Result<()> {
        spec.update_config = self.rollout.update_config(spec.update_config.take())?;
        spec.rollback_config = self.rollout.rollback_config(spec.rollback_config.take())?;
        spec.placement = self.placement.apply(spec.placement.take())?;
        let container = spec.container.get_or_insert_with(Default::default);
        if let Some(image) = &self.image {
            container.image = image.clone();
            // `--image` asks for what the name means now: the manager pins it anew.
            container.image_digest.clear();
        }
        for key in &self.env_rm {
            container
                .env
                .retain(|e| e.split('=').next() != Some(key.as_str()));
        }
        for kv in &self.env_add {
            let key = kv.split('=').next().unwrap_or("");
            if key.is_empty() || !kv.contains('=') {
                bail!("invalid --env-add {kv:?}: use KEY=VALUE");
            }
            container.env.retain(|e| e.split('=').next() != Some(key));
            container.env.push(kv.clone());
        }
        if self.force {
            spec.force_update += 1;
        }
        if let Some(replicas) = self.replicas {
            match spec.mode {
                Some(Mode::Global(_)) => bail!("a global service has no replica count"),
                _ => spec.mode = Some(Mode::Replicated(ReplicatedService { replicas })),
            }
        }
        Ok(())
    }
}

/// Reads, changes and writes a service spec, retrying when something else changed the
/// service meanwhile (compare-and-set). Returns the service id.
async fn change_spec(client: &mut Client, name: &str, change: &SpecChange) -> Result<String> {
    modify_spec(client, name, |spec| change.apply(spec)).await
}

/// Reads a service's spec, lets `change` edit it and writes it back, retrying when something
/// else changed the service meanwhile (compare-and-set). Returns the service id.
pub async fn modify_spec(
    client: &mut Client,
    name: &str,
    change: impl Fn(&mut ServiceSpec) -> Result<()>,
) -> Result<String> {
    for _ in 0..5 {
        let s = get(client, name).await?;
        let mut spec = s.spec.clone().unwrap_or_default();
        change(&mut spec)?;
        let request = UpdateServiceRequest {
            service_id: s.id.clone(),
            version: s.meta.as_ref().map(|m| m.version).unwrap_or(0),
            spec: Some(spec),
            rollback: false,
        };
        match client.control.update_service(request).await {
            Ok(_) => return Ok(s.id),
            Err(e) if e.code() == tonic::Code::Aborted => continue,
            Err(e) => bail!("{}", status_message(&e)),
        }
    }
    bail!("service {name} kept changing while it was being updated: try again")
}

pub async fn update(
    client: &mut Client,
    name: &str,
    change: &SpecChange,
    detach: bool,
) -> Result<()> {
    let id = change_spec(client, name, change).await?;
    println!("{name}");
    if !detach {
        follow_rollout(client, &id, false).await?;
        converge(client, &id).await?;
    }
    Ok(())
}

/// `service rollback`: back to the previous spec, with the rollback config.
pub async fn rollback(client: &mut Client, name: &str, detach: bool) -> Result<()> {
    let s = get(client, name).await?;
    start_rollback(client, &s).await?;
    println!("{name}");
    if !detach {
        wait_rollback(client, &s.id).await?;
    }
    Ok(())
}

/// `service promote`: blue-green with manual promotion switches the traffic to green. Waits
/// (unless detached) until the switch happened.
pub async fn promote(client: &mut Client, name: &str, detach: bool) -> Result<()> {
    let s = client
        .control
        .promote_service(PromoteServiceRequest {
            service: name.to_string(),
        })
        .await
        .map_err(|e| anyhow!(status_message(&e)))?
        .into_inner()
        .service
        .ok_or_else(|| anyhow!("the daemon returned no service"))?;
    println!("{name}");
    if detach {
        return Ok(());
    }
    let mut last = String::new();
    loop {
        let s = get(client, &s.id).await?;
        let status = s.update_status.clone().unwrap_or_default();
        let line = format!("{}: {}", update_state_name(status.state()), status.message);
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        match (status.phase(), status.state()) {
            (BlueGreenPhase::Switched | BlueGreenPhase::Done, _) => return Ok(()),
            (_, UpdateState::Paused | UpdateState::RollbackPaused) => {
                bail!(
                    "service {name} {}: {}",
                    update_state_name(status.state()),
                    status.message
                )
            }
            (_, UpdateState::RollbackCompleted) => {
                bail!("service {name} rolled back: {}", status.message)
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asks the manager to roll `s` back (as read: fails if it changed since).
pub async fn start_rollback(client: &mut Client, s: &Service) -> Result<()> {
    let request = UpdateServiceRequest {
        service_id: s.id.clone(),
        version: s.meta.as_ref().map(|m| m.version).unwrap_or(0),
        spec: None,
        rollback: true,
    };
    client
        .control
        .update_service(request)
        .await
        .map_err(|e| anyhow!(status_message(&e)))?;
    Ok(())
}

/// Waits until a rollback completed and its tasks run.
pub async fn wait_rollback(client: &mut Client, id: &str) -> Result<()> {
    follow_rollout(client, id, true).await?;
    converge(client, id).await
}

/// The update status as `service inspect` and the progress lines name it.
pub fn update_state_name(state: UpdateState) -> &'static str {
    match state {
        UpdateState::Unknown => "unknown",
        UpdateState::Updating => "updating",
        UpdateState::Paused => "paused",
        UpdateState::Completed => "completed",
        UpdateState::RollbackStarted => "rollback_started",
        UpdateState::RollbackPaused => "rollback_paused",
        UpdateState::RollbackCompleted => "rollback_completed",
    }
}

/// Waits for the rollout that the last change started, printing its state as it moves:
/// success once COMPLETED (ROLLBACK_COMPLETED when `rollback` was asked for), an error when
/// it pauses or rolls back by itself. A change that replaces no task has no rollout.
async fn follow_rollout(client: &mut Client, id: &str, rollback: bool) -> Result<()> {
    let mut last = String::new();
    loop {
        let s = get(client, id).await?;
        let status = s.update_status.clone().unwrap_or_default();
        let state = status.state();
        let line = format!("{}: {}", update_state_name(state), status.message);
        if state != UpdateState::Unknown && line != last {
            eprintln!("{line}");
            last = line;
        }
        match state {
            // Manual promotion: green is ready and waits for `service promote`; so does not
            // this command.
            UpdateState::Updating if !rollback && status.phase() == BlueGreenPhase::Ready => {
                return Ok(())
            }
            UpdateState::Completed if !rollback => return Ok(()),
            UpdateState::RollbackCompleted if rollback => return Ok(()),
            UpdateState::RollbackCompleted => {
                bail!("service {} rolled back: {}", spec_name(&s), status.message)
            }
            UpdateState::Paused | UpdateState::RollbackPaused => {
                bail!(
                    "service {} {}: {}",
                    spec_name(&s),
                    update_state_name(state),
                    status.message
                )
            }
            UpdateState::Unknown => {
                // Not started yet, or nothing to roll out (a scale, a label).
                let tasks = list_tasks(client, id).await?;
                let outdated = tasks.iter().any(|t| {
                    t.desired_state() == TaskState::Running
                        && !shoal_manager::orchestrator::update::same_task_spec(
                            t.spec.as_deref(),
                            s.spec.as_ref(),
                        )
                });
                if !outdated {
                    return Ok(());
                }
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn scale(client: &mut Client, targets: &[(String, u64)], detach: bool) -> Result<()> {
    for (name, replicas) in targets {
        let change = SpecChange {
            replicas: Some(*replicas),
            ..SpecChange::default()
        };
        let id = change_spec(client, name, &change).await?;
        println!("{name} scaled to {replicas}");
        if !detach {
            converge(client, &id).await?;
        }
    }
    Ok(())
}

pub async fn logs(
    client: &mut Client,
    service: &str,
    follow: bool,
    tail: Option<u64>,
    timestamps: bool,
) -> Result<()> {
    use std::io::Write;
    let s = get(client, service).await?;
    let mut stream = client
        .control
        .service_logs(ServiceLogsRequest {
            service: s.id.clone(),
            follow,
            tail: tail.unwrap_or(0),
            timestamps,
        })
        .await
        .map_err(|st| anyhow!(status_message(&st)))?
        .into_inner();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    while let Some(line) = stream
        .message()
        .await
        .map_err(|st| anyhow!(status_message(&st)))?
    {
        let mut prefix = format!(
            "{}.{}.{}@{}    | ",
            spec_name(&s),
            line.slot,
            crate::output::short_id(&line.task_id),
            crate::output::short_id(&line.node_id)
        );
        if timestamps {
            prefix = format!("{} {prefix}", rfc3339(line.timestamp));
        }
        let mut out: Box<dyn Write> = if line.stream == "stderr" {
            Box::new(stderr.lock())
        } else {
            Box::new(stdout.lock())
        };
        out.write_all(prefix.as_bytes())?;
        out.write_all(&line.line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Unix ms → `2026-11-22T21:07:09.123Z`.
pub(crate) fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub async fn rm(client: &mut Client, services: &[String]) -> Result<()> {
    let mut failed = false;
    for name in services {
        match client
            .control
            .remove_service(RemoveServiceRequest {
                service: name.clone(),
            })
            .await
        {
            Ok(_) => println!("{name}"),
            Err(e) => {
                eprintln!("Error: {}", status_message(&e));
                failed = true;
            }
        }
    }
    if failed {
        bail!("some services could not be removed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_flags_change_only_what_they_name() {
        let none = RolloutArgs::default();
        assert_eq!(none.update_config(None).expect("ok"), None);
        let base = UpdateConfig {
            parallelism: Some(3),
            delay_ms: 100,
            ..Default::default()
        };
        let args = RolloutArgs {
            update_order: Some("start-first".into()),
            update_failure_action: Some("rollback".into()),
            update_monitor: Some(Duration::from_millis(1500)),
            rollback_parallelism: Some(0),
            ..Default::default()
        };
        let u = args.update_config(Some(base)).expect("ok").expect("set");
        assert_eq!(
            (u.parallelism, u.delay_ms, u.monitor_ms),
            (Some(3), 100, Some(1500))
        );
        assert_eq!(u.order(), UpdateOrder::StartFirst);
        assert_eq!(u.failure_action(), UpdateFailureAction::Rollback);
        let r = args.rollback_config(None).expect("ok").expect("set");
        assert_eq!(r.parallelism, Some(0));
        let bad = RolloutArgs {
            update_max_failure_ratio: Some(1.5),
            ..Default::default()
        };
        assert!(bad.update_config(None).is_err());
    }

    #[test]
    fn blue_green_and_drain_flags() {
        let args = RolloutArgs {
            update_strategy: Some("blue-green".into()),
            update_promote: Some("manual".into()),
            update_keep_blue: Some(Duration::from_secs(30)),
            update_verify_cmd: Some("test -f /ready".into()),
            update_drain: Some(Duration::from_millis(250)),
            rollback_drain: Some(Duration::ZERO),
            ..Default::default()
        };
        let u = args.update_config(None).expect("ok").expect("set");
        assert_eq!(u.strategy(), UpdateStrategy::BlueGreen);
        assert_eq!(u.promote(), PromoteMode::Manual);
        assert_eq!((u.keep_blue_ms, u.drain_ms), (Some(30_000), Some(250)));
        assert_eq!(u.verify, ["CMD-SHELL", "test -f /ready"]);
        let r = args.rollback_config(None).expect("ok").expect("set");
        assert_eq!(r.drain_ms, Some(0));
        // Back to rolling, and the check removed, keeping the rest.
        let back = RolloutArgs {
            update_strategy: Some("rolling".into()),
            update_verify_cmd: Some(String::new()),
            ..Default::default()
        };
        let u = back.update_config(Some(u)).expect("ok").expect("set");
        assert_eq!(u.strategy(), UpdateStrategy::Rolling);
        assert!(u.verify.is_empty());
        assert_eq!(u.keep_blue_ms, Some(30_000));
    }

    #[test]
    fn the_update_status_line_names_state_phase_and_reason() {
        let mut st = UpdateStatus {
            started_at: shoal_proto::now_ms(),
            message: "starting green beside blue, out of rotation: 1 of 2 ready".into(),
            ..Default::default()
        };
        assert_eq!(update_status_line(&st), None);
        st.set_state(UpdateState::Updating);
        st.set_phase(BlueGreenPhase::Deploying);
        assert_eq!(
            update_status_line(&st).as_deref(),
            Some("Update status: updating (blue-green: deploying), started Less than a second ago: starting green beside blue, out of rotation: 1 of 2 ready")
        );
        let mut done = UpdateStatus {
            completed_at: shoal_proto::now_ms(),
            message: "update completed".into(),
            ..Default::default()
        };
        done.set_state(UpdateState::Completed);
        assert_eq!(
            update_status_line(&done).as_deref(),
            Some("Update status: completed, completed Less than a second ago: update completed")
        );
    }

    #[test]
    fn placement_flags_edit_the_placement() {
        let add = PlacementArgs {
            constraint_add: vec!["node.labels.zone == a".into(), "node.role!=manager".into()],
            placement_pref_add: vec!["spread=node.labels.zone".into()],
            replicas_max_per_node: Some(2),
            ..Default::default()
        };
        let p = add.apply(None).unwrap().unwrap();
        assert_eq!(
            p.constraints,
            vec!["node.labels.zone == a", "node.role!=manager"]
        );
        assert_eq!(p.preferences[0].spread, "node.labels.zone");
        assert_eq!(p.max_replicas_per_node, 2);
        // Adding again repeats nothing; removing matches whatever the spacing.
        let p = add.apply(Some(p)).unwrap().unwrap();
        assert_eq!(p.constraints.len(), 2);
        let rm = PlacementArgs {
            constraint_rm: vec!["node.labels.zone==a".into(), "node.role != manager".into()],
            placement_pref_rm: vec!["spread=node.labels.zone".into()],
            replicas_max_per_node: Some(0),
            ..Default::default()
        };
        assert_eq!(rm.apply(Some(p)).unwrap(), None);
        // No flag: the placement stays as it is.
        let kept = Placement {
            constraints: vec!["node.id==x".into()],
            ..Default::default()
        };
        assert_eq!(
            PlacementArgs::default().apply(Some(kept.clone())).unwrap(),
            Some(kept)
        );
        let bad = PlacementArgs {
            constraint_add: vec!["engine.labels.x==y".into()],
            ..Default::default()
        };
        assert!(bad
            .apply(None)
            .unwrap_err()
            .to_string()
            .contains("engine labels are not supported"));
    }

    #[test]
    fn placement_prefs_are_spread_only() {
        assert_eq!(
            parse_placement_pref("spread=node.labels.zone")
                .unwrap()
                .spread,
            "node.labels.zone"
        );
        assert!(parse_placement_pref("pack=node.labels.zone")
            .unwrap_err()
            .to_string()
            .contains("only spread is supported"));
        assert!(parse_placement_pref("node.labels.zone")
            .unwrap_err()
            .to_string()
            .contains("use spread=DESCRIPTOR"));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_381_629_123), "2026-11-22T21:07:09.123Z");
    }
}
