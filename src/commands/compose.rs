//! `shoal compose ...`: Docker Compose's verbs over a stack. The project named by the file (or
//! `-p`) is the stack `<project>`; its services are `<project>_<service>`.
//!
//! - `up` deploys (only the named services and what they depend on, when services are given),
//!   shows a line per service as it gets created, starts, becomes healthy or finishes, and
//!   then follows the logs; Ctrl-C stops the project (`stop`), as Compose does.
//! - `stop` scales a service to 0 and remembers its replica count in a label; `start` restores
//!   it. `restart` replaces every task through the service's update settings (Swarm's forced
//!   update), so a service with `order: start-first` restarts without downtime.
//! - `exec` and `top` reach the service's containers on this node; `run` makes a one-off
//!   container with the service's image, environment and mounts on the project's networks.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use shoal_proto::service_spec::Mode;
use shoal_proto::{
    ContainerInfo, InspectImagesRequest, ListContainersRequest, RemoveImagesRequest,
    RemoveVolumeRequest, ReplicatedService, Service, ServiceLogsRequest, ServiceSpec, StackSpec,
    Task, TaskState,
};

use super::service::{self, Progress};
use super::stack;
use crate::cli::{ComposeArgs, ComposeCommand, ComposeRunArgs, ExecArgs, RunArgs};
use crate::client::{status_message, Client};
use crate::compose::{self, Flavor, Project};
use crate::output::table;

/// Label holding a stopped service's replica count (`compose stop` → `start`).
const STOPPED_REPLICAS: &str = "com.shoal.compose.stopped-replicas";

pub async fn run(client: &mut Client, args: ComposeArgs) -> Result<()> {
    let mut project = compose::load_for_cli(&args, &[])?;
    let name = project.name.clone();
    match args.command {
        ComposeCommand::Config { .. } => Ok(()),
        ComposeCommand::Up {
            detach,
            wait,
            wait_timeout,
            remove_orphans,
            force_recreate,
            no_deps,
            abort_on_container_exit,
            build,
            pull,
            services,
        } => {
            let chosen = with_dependencies(&project, &services, no_deps)?;
            // Images of `build:` services: built when missing, or always with --build.
            super::build::compose_build(client, &mut project, &chosen, build, false, &[], false)
                .await?;
            pull_before_up(client, &project, &chosen, pull.as_deref()).await?;
            let mut spec = stack_spec(&project, &chosen)?;
            if force_recreate {
                bump_force_update(client, &name, &mut spec).await?;
            }
            let short: Vec<String> = spec.services.iter().map(|s| s.name.clone()).collect();
            stack::apply(client, spec, &[], remove_orphans, false).await?;
            if detach && !wait {
                return Ok(());
            }
            let deadline = wait_timeout.map(|s| Instant::now() + Duration::from_secs(s));
            show_progress(client, &name, &short, deadline).await?;
            if wait || detach {
                return Ok(());
            }
            foreground(client, &name, &short, abort_on_container_exit).await
        }
        ComposeCommand::Down {
            volumes,
            remove_orphans: _,
            rmi,
        } => {
            let images = project_images(client, &name).await?;
            stack::down(client, &name).await?;
            if volumes {
                remove_volumes(client, &project).await?;
            }
            if let Some(which) = rmi {
                remove_images(client, &project, images, which == "all").await?;
            }
            Ok(())
        }
        ComposeCommand::Pull {
            ignore_pull_failures,
            include_deps,
            quiet,
            services,
        } => {
            let short = match include_deps {
                true => with_dependencies(&project, &services, false)?,
                false => selected(&project, &services)?,
            };
            let wanted: Vec<Pull> = short
                .iter()
                .filter_map(|s| {
                    let service = &project.services[s];
                    let policy = PullPolicy::of(service.pull_policy.as_deref());
                    let image = service.image.clone()?;
                    (!matches!(policy, PullPolicy::Never | PullPolicy::Build)).then(|| Pull {
                        service: s.clone(),
                        image,
                        // An image the project can build may be absent from registries.
                        may_fail: ignore_pull_failures || service.build.is_some(),
                    })
                })
                .collect();
            pull_images(client, &wanted, quiet).await
        }
        ComposeCommand::Build {
            no_cache,
            build_args,
            quiet,
            services,
        } => {
            let built = super::build::compose_build(
                client,
                &mut project,
                &services,
                true,
                no_cache,
                &build_args,
                quiet,
            )
            .await?;
            if quiet {
                for id in built {
                    println!("{id}");
                }
            }
            Ok(())
        }
        ComposeCommand::Ps(list) => stack::ps(client, &name, list).await,
        ComposeCommand::Logs {
            follow,
            tail,
            timestamps,
            no_color,
            services,
        } => {
            let short = selected(&project, &services)?;
            let colour = !no_color && std::io::stdout().is_terminal();
            logs(client, &name, &short, follow, tail, timestamps, colour).await
        }
        ComposeCommand::Exec {
            no_tty,
            user,
            workdir,
            env,
            index,
            service,
            cmd,
        } => {
            selected(&project, std::slice::from_ref(&service))?;
            let container = local_container(client, &name, &service, Some(index)).await?;
            let terminal = std::io::stdin().is_terminal();
            let exec = ExecArgs {
                interactive: terminal,
                tty: terminal && !no_tty,
                user,
                workdir,
                env,
                container: container.name,
                cmd,
            };
            super::container::exec(client, exec).await
        }
        ComposeCommand::Run(run) => {
            let chosen =
                with_dependencies(&project, std::slice::from_ref(&run.service), run.no_deps)?;
            super::build::compose_build(client, &mut project, &chosen, false, false, &[], false)
                .await?;
            let dependencies: Vec<String> =
                chosen.into_iter().filter(|s| *s != run.service).collect();
            // The project's networks exist (and its dependencies run) before the one-off.
            let spec = stack_spec(&project, &dependencies)?;
            let short: Vec<String> = spec.services.iter().map(|s| s.name.clone()).collect();
            stack::apply(client, spec, &[], false, false).await?;
            show_progress(client, &name, &short, None).await?;
            let full = stack_spec(&project, std::slice::from_ref(&run.service))?;
            let spec = full
                .services
                .into_iter()
                .next()
                .ok_or_else(|| anyhow!("no such service: {}", run.service))?;
            let args = one_off(&project, &spec, run)?;
            super::container::run_container(client, args).await
        }
        ComposeCommand::Restart { services } => {
            let short = selected(&project, &services)?;
            for s in &short {
                let full = format!("{name}_{s}");
                service::modify_spec(client, &full, |spec| {
                    spec.force_update += 1;
                    Ok(())
                })
                .await?;
                eprintln!(" Restarting {full}");
            }
            show_progress(client, &name, &short, None).await
        }
        ComposeCommand::Stop { services } => {
            let short = selected(&project, &services)?;
            for s in &short {
                let full = format!("{name}_{s}");
                service::modify_spec(client, &full, stop_spec).await?;
            }
            wait_stopped(client, &name, &short).await
        }
        ComposeCommand::Start { services } => {
            let short = selected(&project, &services)?;
            for s in &short {
                let full = format!("{name}_{s}");
                service::modify_spec(client, &full, start_spec).await?;
            }
            show_progress(client, &name, &short, None).await
        }
        ComposeCommand::Top { services } => {
            let short = selected(&project, &services)?;
            for s in &short {
                for c in local_containers(client, &name, s).await? {
                    println!("{}", c.name);
                    super::container::top(client, &c.name).await?;
                    println!();
                }
            }
            Ok(())
        }
        ComposeCommand::Images { services } => {
            let short = selected(&project, &services)?;
            images(client, &project, &short).await
        }
    }
}

/// When a service's image is pulled: Compose's `pull_policy`, or `up --pull`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullPolicy {
    Always,
    /// Only when this node lacks it (`missing`, `if_not_present`, and the periodic ones:
    /// `daily`, `weekly`, `every_<duration>`, which shoal treats as `missing`).
    Missing,
    Never,
    /// Built from the service's `build:`, never pulled.
    Build,
}

impl PullPolicy {
    fn of(policy: Option<&str>) -> PullPolicy {
        match policy {
            Some("always") => PullPolicy::Always,
            Some("never") => PullPolicy::Never,
            Some("build") => PullPolicy::Build,
            _ => PullPolicy::Missing,
        }
    }
}

/// One image to pull for a service.
struct Pull {
    service: String,
    image: String,
    /// A failure only warns.
    may_fail: bool,
}

/// `up`: pulls what the services' pull policies (or `--pull`) ask for before deploying, so a
/// missing image shows up here, not later as a failed task. Services with `build:` were built.
async fn pull_before_up(
    client: &mut Client,
    project: &Project,
    chosen: &[String],
    flag: Option<&str>,
) -> Result<()> {
    let mut wanted = Vec::new();
    let images: BTreeSet<String> = chosen
        .iter()
        .filter_map(|name| project.services[name].image.clone())
        .collect();
    // One question for the usual case (every image is here), one per image otherwise.
    let all_present = images_present(client, images.into_iter().collect()).await;
    for name in chosen {
        let service = &project.services[name];
        let (Some(image), None) = (&service.image, &service.build) else {
            continue;
        };
        let policy = PullPolicy::of(flag.or(service.pull_policy.as_deref()));
        if policy == PullPolicy::Always {
            wanted.push(Pull {
                service: name.clone(),
                image: image.clone(),
                may_fail: false,
            });
            continue;
        }
        let present = all_present || images_present(client, vec![image.clone()]).await;
        match policy {
            _ if present => {}
            PullPolicy::Never | PullPolicy::Build => bail!(
                "service {name}: image {image} is not on this node and its pull policy is \
                 {policy}: pull, load or build it first",
                policy = service.pull_policy.as_deref().or(flag).unwrap_or("never"),
            ),
            _ => wanted.push(Pull {
                service: name.clone(),
                image: image.clone(),
                may_fail: false,
            }),
        }
    }
    pull_images(client, &wanted, false).await
}

/// Whether every one of `images` is on this node.
async fn images_present(client: &mut Client, images: Vec<String>) -> bool {
    let request = InspectImagesRequest { images };
    client.images.inspect(request).await.is_ok()
}

/// Pulls every image of `wanted` at once, each once, with a line per service.
async fn pull_images(client: &Client, wanted: &[Pull], quiet: bool) -> Result<()> {
    let unique: Vec<String> = wanted
        .iter()
        .map(|w| w.image.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if unique.is_empty() {
        return Ok(());
    }
    if !quiet {
        for w in wanted {
            eprintln!(" Pulling {} ({})", w.service, w.image);
        }
    }
    let results = super::registry::pull_quietly(client, &unique).await;
    let outcome: BTreeMap<&String, &Result<()>> = unique.iter().zip(&results).collect();
    let mut failed = Vec::new();
    for w in wanted {
        match outcome.get(&w.image) {
            Some(Err(e)) if w.may_fail => eprintln!(" {} not pulled: {e:#}", w.service),
            Some(Err(e)) => failed.push(format!("{} ({}): {e:#}", w.service, w.image)),
            _ if quiet => {}
            _ => eprintln!(" {} Pulled", w.service),
        }
    }
    if !failed.is_empty() {
        bail!("could not pull: {}", failed.join("; "));
    }
    Ok(())
}

/// The named services (all when none is named), checked against the file.
fn selected(project: &Project, services: &[String]) -> Result<Vec<String>> {
    if services.is_empty() {
        return Ok(project.services.keys().cloned().collect());
    }
    for s in services {
        if !project.services.contains_key(s) {
            bail!(
                "no such service: {s} (the project has: {})",
                project
                    .services
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(services.to_vec())
}

/// The named services and, unless `no_deps`, everything they depend on. Pure.
fn with_dependencies(project: &Project, services: &[String], no_deps: bool) -> Result<Vec<String>> {
    let named = selected(project, services)?;
    if no_deps || services.is_empty() {
        return Ok(named);
    }
    let mut out: BTreeSet<String> = BTreeSet::new();
    let mut todo = named;
    while let Some(s) = todo.pop() {
        if out.insert(s.clone()) {
            if let Some(service) = project.services.get(&s) {
                todo.extend(service.depends_on.keys().cloned());
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// The stack spec of the project limited to `services` (its networks all stay).
fn stack_spec(project: &Project, services: &[String]) -> Result<StackSpec> {
    let (mut spec, warnings) =
        compose::to_stack_spec(project, &project.name, Flavor::Compose).map_err(|e| anyhow!(e))?;
    for w in &warnings {
        eprintln!("WARN: {w}");
    }
    spec.services.retain(|s| services.contains(&s.name));
    // A dependency left out (`--no-deps`) is not waited for.
    for s in &mut spec.services {
        s.depends_on.retain(|d| services.contains(&d.service));
    }
    compose::read_secrets(project, &mut spec)?;
    Ok(spec)
}

/// `up --force-recreate`: every deployed service gets a forced update.
async fn bump_force_update(client: &mut Client, project: &str, spec: &mut StackSpec) -> Result<()> {
    let existing = stack::stack_services(client, project).await?;
    for s in &mut spec.services {
        let full = format!("{project}_{}", s.name);
        let current = existing
            .iter()
            .filter_map(|e| e.spec.as_ref())
            .find(|e| e.name == full)
            .map(|e| e.force_update)
            .unwrap_or(0);
        s.force_update = current + 1;
    }
    Ok(())
}

/// What a service line says, Compose-style.
fn state_word(p: &Progress, s: &Service) -> &'static str {
    if p.failed.is_some() {
        "Error"
    } else if p.converged(s) && p.desired == 0 {
        "Stopped"
    } else if p.converged(s) && p.finished == p.done {
        "Exited"
    } else if p.converged(s) && p.health_checked {
        "Healthy"
    } else if p.converged(s) {
        "Started"
    } else if p.done > 0 {
        "Starting"
    } else {
        "Created"
    }
}

/// Follows the services until each has converged, printing a line whenever one's state
/// changes (and task errors once). Fails on a task that will not be restarted, or at the
/// deadline.
async fn show_progress(
    client: &mut Client,
    project: &str,
    short: &[String],
    deadline: Option<Instant>,
) -> Result<()> {
    let width = short.iter().map(|s| s.len()).max().unwrap_or(0) + project.len() + 1;
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    let mut errors: BTreeSet<String> = BTreeSet::new();
    let mut watch = service::TaskWatch::default();
    loop {
        // Two requests a round, whatever the project's size: its services, then the tasks
        // (once they changed).
        let services = stack::stack_services(client, project).await?;
        let all_tasks = watch.next(client, "").await?;
        let mut all_done = true;
        for s in short {
            let full = format!("{project}_{s}");
            let service = services
                .iter()
                .find(|x| x.spec.as_ref().is_some_and(|spec| spec.name == full))
                .ok_or_else(|| anyhow!("no such service: {full}"))?;
            let tasks: Vec<Task> = all_tasks
                .iter()
                .filter(|t| t.service_id == service.id)
                .cloned()
                .collect();
            let progress = Progress::of(service, &tasks);
            for (task, error) in service::task_errors(&tasks) {
                if errors.insert(task.id.clone()) {
                    eprintln!(" ! {full}.{}: {error}", task.slot);
                }
            }
            if let Some(error) = &progress.failed {
                bail!("service {full}: a task failed and will not be restarted: {error}");
            }
            let line = format!(
                "{:<width$}  {} {}/{}",
                full,
                state_word(&progress, service),
                progress.done,
                progress.desired
            );
            if shown.get(s) != Some(&line) {
                let mark = if progress.converged(service) {
                    "✔"
                } else {
                    "⠿"
                };
                eprintln!(" {mark} Service {line}");
                shown.insert(s.clone(), line);
            }
            all_done &= progress.converged(service);
        }
        if all_done {
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bail!("timed out waiting for the project {project} to run (--wait-timeout)");
        }
    }
}

/// Foreground `up`: logs until Ctrl-C (which stops the project) or, with
/// `--abort-on-container-exit`, until a container exits.
async fn foreground(
    client: &mut Client,
    project: &str,
    short: &[String],
    abort: bool,
) -> Result<()> {
    eprintln!("Attaching to {project} (Ctrl-C stops the project)");
    let colour = std::io::stdout().is_terminal();
    let mut logs_client = client.clone();
    let (p, s) = (project.to_string(), short.to_vec());
    let logs =
        tokio::spawn(
            async move { logs(&mut logs_client, &p, &s, true, None, false, colour).await },
        );
    let exited = async {
        if !abort {
            return std::future::pending::<Result<String>>().await;
        }
        let mut c = client.clone();
        first_exit(&mut c, project, short).await
    };
    let reason = tokio::select! {
        _ = tokio::signal::ctrl_c() => "Gracefully stopping... (the project keeps its services)".to_string(),
        exited = exited => exited?,
    };
    logs.abort();
    eprintln!("{reason}");
    for s in short {
        service::modify_spec(client, &format!("{project}_{s}"), stop_spec).await?;
    }
    wait_stopped(client, project, short).await
}

/// Waits until a task of the services ends; says which.
async fn first_exit(client: &mut Client, project: &str, short: &[String]) -> Result<String> {
    loop {
        for s in short {
            let full = format!("{project}_{s}");
            let service = service::get(client, &full).await?;
            for t in service::list_tasks(client, &service.id).await? {
                let state = t.status.as_ref().map(|st| st.state()).unwrap_or_default();
                if state.is_terminal() && t.desired_state() == TaskState::Running {
                    let code = t.status.as_ref().and_then(|st| st.exit_code).unwrap_or(0);
                    return Ok(format!(
                        "{full}.{} exited with code {code}: aborting",
                        t.slot
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `stop`: no tasks, remembering how many there were.
fn stop_spec(spec: &mut ServiceSpec) -> Result<()> {
    if let Some(Mode::Replicated(r)) = &mut spec.mode {
        if r.replicas > 0 {
            spec.labels
                .insert(STOPPED_REPLICAS.into(), r.replicas.to_string());
            r.replicas = 0;
        }
    }
    Ok(())
}

/// `start`: the replicas `stop` remembered.
fn start_spec(spec: &mut ServiceSpec) -> Result<()> {
    if let Some(replicas) = spec.labels.remove(STOPPED_REPLICAS) {
        let replicas = replicas.parse().unwrap_or(1);
        spec.mode = Some(Mode::Replicated(ReplicatedService { replicas }));
    }
    Ok(())
}

/// Waits until the services have no task running any more.
async fn wait_stopped(client: &mut Client, project: &str, short: &[String]) -> Result<()> {
    for s in short {
        let full = format!("{project}_{s}");
        let service = service::get(client, &full).await?;
        loop {
            let tasks = service::list_tasks(client, &service.id).await?;
            if tasks.iter().all(|t| {
                t.status
                    .as_ref()
                    .map(|st| st.state())
                    .unwrap_or_default()
                    .is_terminal()
            }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(" ✔ Service {full}  Stopped");
    }
    Ok(())
}

/// ANSI colours for the log prefixes, one per service, as Compose does.
const COLOURS: [u8; 6] = [36, 33, 32, 35, 34, 31];

/// The services' logs, each line prefixed `service-slot  |`.
async fn logs(
    client: &mut Client,
    project: &str,
    short: &[String],
    follow: bool,
    tail: Option<u64>,
    timestamps: bool,
    colour: bool,
) -> Result<()> {
    let width = short.iter().map(|s| s.len()).max().unwrap_or(0) + 3;
    let mut streams = Vec::new();
    for (i, s) in short.iter().enumerate() {
        let full = format!("{project}_{s}");
        let service = service::get(client, &full).await?;
        let mut c = client.clone();
        let (short_name, code) = (s.clone(), COLOURS[i % COLOURS.len()]);
        streams.push(tokio::spawn(async move {
            let mut stream = c
                .control
                .service_logs(ServiceLogsRequest {
                    service: service.id.clone(),
                    follow,
                    tail: tail.unwrap_or(0),
                    timestamps,
                })
                .await
                .map_err(|st| anyhow!(status_message(&st)))?
                .into_inner();
            while let Some(line) = stream
                .message()
                .await
                .map_err(|st| anyhow!(status_message(&st)))?
            {
                let label = format!("{short_name}-{}", line.slot);
                let mut prefix = format!("{label:<width$}| ");
                if colour {
                    prefix = format!("\x1b[{code}m{prefix}\x1b[0m");
                }
                if timestamps {
                    prefix.push_str(&service::rfc3339(line.timestamp));
                    prefix.push(' ');
                }
                let mut text = prefix.into_bytes();
                text.extend_from_slice(&line.line);
                text.push(b'\n');
                // One write per line, so lines of different services never mix.
                std::io::stdout().lock().write_all(&text)?;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for s in streams {
        s.await??;
    }
    Ok(())
}

/// The service's containers on this node, by slot.
async fn local_containers(
    client: &mut Client,
    project: &str,
    service: &str,
) -> Result<Vec<ContainerInfo>> {
    let prefix = format!("{project}_{service}.");
    let mut found: Vec<ContainerInfo> = client
        .containers
        .list(ListContainersRequest { all: false })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .containers
        .into_iter()
        .filter(|c| c.name.starts_with(&prefix))
        .collect();
    found.sort_by_key(|c| slot_of(&c.name, &prefix));
    Ok(found)
}

/// `web.3.taskid` → 3.
fn slot_of(name: &str, prefix: &str) -> u64 {
    name.strip_prefix(prefix)
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The running container of the service's replica `index` on this node.
async fn local_container(
    client: &mut Client,
    project: &str,
    service: &str,
    index: Option<u64>,
) -> Result<ContainerInfo> {
    let prefix = format!("{project}_{service}.");
    let all = local_containers(client, project, service).await?;
    let index = index.unwrap_or(1);
    all.into_iter()
        .find(|c| slot_of(&c.name, &prefix) == index)
        .ok_or_else(|| {
            anyhow!(
                "service {service} has no running container with index {index} on this node \
                 (is the project up? `shoal compose ps` shows where its tasks run)"
            )
        })
}

/// `compose run SERVICE`: a `shoal run` of the service's container settings on the project's
/// networks.
fn one_off(project: &Project, spec: &ServiceSpec, o: ComposeRunArgs) -> Result<RunArgs> {
    let service = o.service.as_str();
    let c = spec.container.clone().unwrap_or_default();
    let networks: Vec<String> = project
        .services
        .get(service)
        .map(|s| s.networks.keys().cloned().collect())
        .unwrap_or_default();
    let network = match c.network_mode.as_str() {
        "" => networks
            .first()
            .map(|key| match project.networks.get(key) {
                Some(n) => n.name.clone(),
                None => format!("{}_{key}", project.name),
            })
            .unwrap_or_else(|| "bridge".into()),
        mode => mode.to_string(),
    };
    let mut publish = o.publish;
    if o.service_ports {
        for p in spec.endpoint.iter().flat_map(|e| e.ports.iter()) {
            let proto = if p.protocol == shoal_proto::PortProtocol::Udp as i32 {
                "udp"
            } else {
                "tcp"
            };
            publish.push(match p.published_port {
                0 => format!("{}/{proto}", p.target_port),
                host => format!("{host}:{}/{proto}", p.target_port),
            });
        }
    }
    let mut volumes: Vec<String> = c
        .mounts
        .iter()
        .filter(|m| m.r#type != shoal_proto::MountType::Tmpfs as i32)
        .map(|m| {
            let ro = if m.read_only { ":ro" } else { "" };
            if m.source.is_empty() {
                m.target.clone()
            } else {
                format!("{}:{}{ro}", m.source, m.target)
            }
        })
        .collect();
    volumes.extend(o.volumes);
    let mut env = c.env.clone();
    env.extend(o.env);
    let id = shoal_manager::consensus::new_id();
    let suffix = &id[..id.len().min(8)];
    let mut labels = vec![
        format!("com.docker.compose.project={}", project.name),
        format!("com.docker.compose.service={service}"),
        "com.docker.compose.oneoff=True".to_string(),
    ];
    labels.extend(c.labels.iter().map(|(k, v)| format!("{k}={v}")));
    let (entrypoint, args) = match o.entrypoint {
        Some(e) => (Some(e), o.cmd),
        None if !o.cmd.is_empty() => (None, o.cmd),
        None => (None, c.args.clone()),
    };
    let mut cmd = args;
    // The service's own entrypoint (a list) runs as the command when none is given here.
    let entrypoint = match entrypoint {
        Some(e) => Some(e),
        None if !c.command.is_empty() => {
            let mut full = c.command.clone();
            let first = full.remove(0);
            full.extend(cmd);
            cmd = full;
            Some(first)
        }
        None => None,
    };
    let limits = spec.limits.unwrap_or_default();
    Ok(RunArgs {
        detach: o.detach,
        rm: o.rm,
        interactive: false,
        tty: false,
        name: Some(
            o.name
                .unwrap_or_else(|| format!("{}_{service}_run_{suffix}", project.name)),
        ),
        env,
        env_files: Vec::new(),
        workdir: o
            .workdir
            .or((!c.workdir.is_empty()).then(|| c.workdir.clone())),
        user: o.user.or((!c.user.is_empty()).then(|| c.user.clone())),
        memory: (limits.memory_bytes > 0).then_some(limits.memory_bytes),
        cpus: (limits.nano_cpus > 0).then_some(limits.nano_cpus),
        pids_limit: (limits.pids > 0).then_some(limits.pids),
        cap_add: c.cap_add.clone(),
        cap_drop: c.cap_drop.clone(),
        read_only: c.read_only,
        init: c.init,
        network,
        publish,
        volumes,
        tmpfs: c
            .mounts
            .iter()
            .filter(|m| m.r#type == shoal_proto::MountType::Tmpfs as i32)
            .map(|m| m.source.clone())
            .collect(),
        entrypoint,
        hostname: None,
        labels,
        image: c.image.clone(),
        args: cmd,
    })
}

/// The image references the project's deployed services use.
async fn project_images(client: &mut Client, project: &str) -> Result<BTreeSet<String>> {
    Ok(stack::stack_services(client, project)
        .await?
        .iter()
        .filter_map(|s| s.spec.as_ref()?.container.as_ref())
        .map(|c| c.image.clone())
        .collect())
}

/// `down -v`: the project's own named volumes (not external ones) on this node.
async fn remove_volumes(client: &mut Client, project: &Project) -> Result<()> {
    for v in project.volumes.values().filter(|v| !v.external) {
        // The node lets go of a volume just after its task's container is removed.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let removed = client
                .volumes
                .remove(RemoveVolumeRequest {
                    name: v.name.clone(),
                    force: true,
                })
                .await;
            match removed {
                Ok(_) => break,
                Err(s)
                    if s.code() == tonic::Code::FailedPrecondition && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(s) => bail!("volume {}: {}", v.name, status_message(&s)),
            }
        }
        eprintln!(" ✔ Volume {}  Removed", v.name);
    }
    Ok(())
}

/// `down --rmi`: `all` the services' images, or only the `local` ones (those compose named
/// after the project because the file gave no `image:`).
async fn remove_images(
    client: &mut Client,
    project: &Project,
    images: BTreeSet<String>,
    all: bool,
) -> Result<()> {
    for image in images {
        let local = project
            .services
            .values()
            .all(|s| s.image.as_deref() != Some(image.as_str()));
        if !all && !local {
            continue;
        }
        match client
            .images
            .remove(RemoveImagesRequest {
                images: vec![image.clone()],
                force: false,
            })
            .await
        {
            Ok(_) => eprintln!(" ✔ Image {image}  Removed"),
            Err(e) => eprintln!(" ! Image {image}: {}", status_message(&e)),
        }
    }
    Ok(())
}

/// `compose images`: each service's image with its id and size.
async fn images(client: &mut Client, project: &Project, short: &[String]) -> Result<()> {
    let deployed = stack::stack_services(client, &project.name).await?;
    let mut rows = Vec::new();
    for s in short {
        let full = format!("{}_{s}", project.name);
        let Some(image) = deployed
            .iter()
            .filter_map(|d| d.spec.as_ref())
            .find(|d| d.name == full)
            .and_then(|d| d.container.as_ref())
            .map(|c| c.image.clone())
        else {
            continue;
        };
        let found = client
            .images
            .inspect(InspectImagesRequest {
                images: vec![image.clone()],
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().images.into_iter().next());
        let (id, size) = match found {
            Some(i) => (
                crate::output::short_id(i.id.trim_start_matches("sha256:")).to_string(),
                crate::output::size(i.size),
            ),
            None => ("<missing>".into(), String::new()),
        };
        rows.push(vec![full, image, id, size]);
    }
    println!("{}", table(&["SERVICE", "IMAGE", "IMAGE ID", "SIZE"], rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policies_map_to_when_up_pulls() {
        assert_eq!(PullPolicy::of(None), PullPolicy::Missing);
        assert_eq!(PullPolicy::of(Some("always")), PullPolicy::Always);
        assert_eq!(PullPolicy::of(Some("never")), PullPolicy::Never);
        assert_eq!(PullPolicy::of(Some("build")), PullPolicy::Build);
        for periodic in ["missing", "if_not_present", "daily", "weekly", "every_12h"] {
            assert_eq!(
                PullPolicy::of(Some(periodic)),
                PullPolicy::Missing,
                "{periodic}"
            );
        }
    }

    fn project(yaml: &str) -> Project {
        let opts = compose::LoadOptions {
            files: vec!["/p/compose.yaml".into()],
            project_name: Some("p".into()),
            env_files: Vec::new(),
            profiles: Vec::new(),
            services: Vec::new(),
            environment: Default::default(),
            working_dir: "/p".into(),
        };
        struct One(String);
        impl compose::FileSystem for One {
            fn read(&self, path: &std::path::Path) -> std::io::Result<String> {
                if path == std::path::Path::new("/p/compose.yaml") {
                    Ok(self.0.clone())
                } else {
                    Err(std::io::ErrorKind::NotFound.into())
                }
            }
            fn exists(&self, path: &std::path::Path) -> bool {
                path == std::path::Path::new("/p/compose.yaml")
            }
        }
        compose::load_with(&opts, &One(yaml.into()))
            .expect("loads")
            .project
    }

    const APP: &str = "services:\n  web:\n    image: busybox\n    depends_on: [api]\n  api:\n    image: busybox\n    depends_on: [db]\n  db:\n    image: busybox\n  other:\n    image: busybox\n";

    #[test]
    fn up_of_a_service_brings_what_it_depends_on() {
        let p = project(APP);
        assert_eq!(
            with_dependencies(&p, &["web".into()], false).expect("ok"),
            ["api", "db", "web"]
        );
        assert_eq!(
            with_dependencies(&p, &["web".into()], true).expect("ok"),
            ["web"]
        );
        assert_eq!(with_dependencies(&p, &[], false).expect("ok").len(), 4);
        let err = with_dependencies(&p, &["nope".into()], false).unwrap_err();
        assert!(err.to_string().contains("no such service: nope"), "{err}");
    }

    #[test]
    fn a_partial_spec_forgets_dependencies_left_out() {
        let p = project(APP);
        let spec = stack_spec(&p, &["web".into()]).expect("spec");
        assert_eq!(spec.services.len(), 1);
        assert!(spec.services[0].depends_on.is_empty());
    }

    #[test]
    fn stop_remembers_the_replicas_and_start_restores_them() {
        let mut spec = ServiceSpec {
            mode: Some(Mode::Replicated(ReplicatedService { replicas: 3 })),
            ..Default::default()
        };
        stop_spec(&mut spec).expect("stop");
        assert_eq!(
            spec.mode,
            Some(Mode::Replicated(ReplicatedService { replicas: 0 }))
        );
        assert_eq!(spec.labels[STOPPED_REPLICAS], "3");
        // Stopping twice keeps the count.
        stop_spec(&mut spec).expect("stop");
        assert_eq!(spec.labels[STOPPED_REPLICAS], "3");
        start_spec(&mut spec).expect("start");
        assert_eq!(
            spec.mode,
            Some(Mode::Replicated(ReplicatedService { replicas: 3 }))
        );
        assert!(spec.labels.is_empty());
    }

    #[test]
    fn a_running_service_without_restart_says_started_and_a_finished_job_exited() {
        use shoal_proto::{RestartCondition, RestartPolicy, TaskStatus};
        let spec = ServiceSpec {
            mode: Some(Mode::Replicated(ReplicatedService { replicas: 1 })),
            restart: Some(RestartPolicy {
                condition: RestartCondition::None as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let service = Service {
            id: "s".into(),
            spec: Some(spec.clone()),
            ..Default::default()
        };
        let task = |state: TaskState, exit_code: Option<i32>| Task {
            id: "t".into(),
            service_id: "s".into(),
            slot: 1,
            spec: Some(spec.clone().into()),
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: state as i32,
                exit_code,
                ..Default::default()
            }),
            ..Default::default()
        };
        let running = Progress::of(&service, &[task(TaskState::Running, None)]);
        assert_eq!(state_word(&running, &service), "Started");
        let exited = Progress::of(&service, &[task(TaskState::Complete, Some(0))]);
        assert_eq!(state_word(&exited, &service), "Exited");
    }

    #[test]
    fn slots_are_read_from_task_container_names() {
        assert_eq!(slot_of("p_web.3.abc", "p_web."), 3);
        assert_eq!(slot_of("p_web.x.abc", "p_web."), 0);
    }

    #[test]
    fn a_one_off_runs_the_service_on_its_first_network() {
        let p = project(
            "services:\n  web:\n    image: busybox\n    entrypoint: [sh, -c]\n    command: [echo hi]\n    environment: {A: '1'}\n    ports: ['8080:80']\n",
        );
        let spec = stack_spec(&p, &["web".into()])
            .expect("spec")
            .services
            .remove(0);
        let o = ComposeRunArgs {
            no_deps: false,
            service: "web".into(),
            detach: false,
            rm: true,
            name: None,
            env: vec!["B=2".into()],
            entrypoint: None,
            user: None,
            workdir: None,
            volumes: Vec::new(),
            publish: Vec::new(),
            service_ports: false,
            cmd: vec!["echo other".into()],
        };
        let run = one_off(&p, &spec, o).expect("run args");
        assert_eq!(run.network, "p_default");
        assert_eq!(run.entrypoint.as_deref(), Some("sh"));
        assert_eq!(run.args, ["-c", "echo other"]);
        assert_eq!(run.env, ["A=1", "B=2"]);
        assert!(run.publish.is_empty(), "ports only with --service-ports");
        assert!(run.name.expect("a name").starts_with("p_web_run_"));
    }
}
