//! From a loaded compose project to the stack the manager deploys.
//!
//! Everything the manager can run maps onto a service spec; `build:` sections are built by the
//! CLI before (`compose up`/`build`), which sets the service's image. Secrets and configs are stack objects named like networks
//! (`<stack>_<key>`); their data is read by [`attach_secrets`].
//!
//! Networks: the project's networks become the stack's (`<stack>_<key>` on the cluster);
//! external ones are referred to by their own name. Volumes: named volumes are `<stack>_<key>`
//! like Compose's (external ones keep their name); relative bind sources were made absolute
//! by the loader.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use shoal_proto::service_spec::Mode;
use shoal_proto::{
    ContainerSpec, DependencyCondition, EndpointSpec, GlobalService, HealthCheck, Mount, MountType,
    NetworkAttachmentConfig, NetworkSpec, Placement, PlacementPreference, PortConfig, PortProtocol,
    PromoteMode, PublishMode, ReplicatedService, Resources, RestartCondition, RestartPolicy,
    SecretKind, SecretReference, SecretSpec, ServiceDependency, ServiceSpec, StackSpec, Ulimit,
    UpdateConfig, UpdateFailureAction, UpdateOrder, UpdateStrategy,
};

use super::model::{FileObject, FileRef, Project, ResourceSpec, Service, ServiceVolume};

/// Which tool's defaults apply where the file is silent: `docker stack deploy` restarts tasks
/// by default (Swarm), `docker compose up` does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Stack,
    Compose,
}

/// The stack for `project`, named `name`, and the warnings about what is not deployed yet.
pub fn to_stack_spec(
    project: &Project,
    name: &str,
    flavor: Flavor,
) -> Result<(StackSpec, Vec<String>), String> {
    let mut warnings = Vec::new();
    let mut services = Vec::new();
    for (service_name, service) in &project.services {
        let mut spec = to_service_spec(project, service_name, service, flavor)?;
        share_service_network(&mut spec, name);
        services.push(spec);
    }
    let mut networks = Vec::new();
    for (key, n) in project.networks.iter().filter(|(_, n)| !n.external) {
        let pool = n.ipam.as_ref().and_then(|i| i.config.first());
        // Swarm's defaults: a stack's networks span the cluster, compose's stay on the node.
        let driver = match n.driver.as_deref() {
            None if flavor == Flavor::Stack => "overlay",
            None | Some("bridge") => "bridge",
            Some("overlay") => "overlay",
            Some(other) => {
                warnings.push(format!(
                    "network {key}: driver {other:?} is not supported: a bridge network is made instead"
                ));
                "bridge"
            }
        };
        networks.push(NetworkSpec {
            name: key.clone(),
            driver: driver.into(),
            labels: n.labels.clone().into_iter().collect(),
            internal: n.internal,
            attachable: n.attachable,
            subnet: pool.and_then(|p| p.subnet.clone()).unwrap_or_default(),
            gateway: pool.and_then(|p| p.gateway.clone()).unwrap_or_default(),
            ip_range: pool.and_then(|p| p.ip_range.clone()).unwrap_or_default(),
            mtu: n
                .driver_opts
                .get("com.docker.network.driver.mtu")
                .and_then(|m| m.parse().ok()),
        });
    }
    Ok((
        StackSpec {
            name: name.to_string(),
            labels: HashMap::new(),
            services,
            networks,
            secrets: Vec::new(),
        },
        warnings,
    ))
}

/// The service's networks: project networks by their key (the manager resolves them to the
/// stack's networks), external ones by their real name.
fn service_networks(project: &Project, s: &Service) -> Vec<NetworkAttachmentConfig> {
    s.networks
        .iter()
        .map(|(key, n)| NetworkAttachmentConfig {
            target: match project.networks.get(key) {
                Some(net) if net.external => net.name.clone(),
                _ => key.clone(),
            },
            aliases: n.aliases.clone(),
        })
        .collect()
}

fn ports(name: &str, s: &Service) -> Result<Vec<PortConfig>, String> {
    let mut out = Vec::new();
    for p in &s.ports {
        let protocol = match p.protocol.as_str() {
            "" | "tcp" => PortProtocol::Tcp,
            "udp" => PortProtocol::Udp,
            other => {
                return Err(format!(
                    "service {name}: ports: protocol {other:?} is not supported: use tcp or udp"
                ))
            }
        };
        let published = match p.published.as_deref() {
            None | Some("") => 0,
            Some(text) => text.parse::<u16>().map_err(|_| {
                format!("service {name}: ports: published port {text:?}: give one port number (ranges are not supported yet)")
            })?,
        };
        out.push(PortConfig {
            protocol: protocol as i32,
            target_port: u32::from(p.target),
            published_port: u32::from(published),
            publish_mode: if p.mode == "host" {
                PublishMode::Host
            } else {
                PublishMode::Ingress
            } as i32,
            host_ip: p.host_ip.clone().unwrap_or_default(),
        });
    }
    Ok(out)
}

fn mounts(project: &Project, name: &str, s: &Service) -> Result<Vec<Mount>, String> {
    let mut out = Vec::new();
    for v in &s.volumes {
        let source = match (v.kind.as_str(), v.source.as_deref()) {
            ("volume", Some(key)) => match project.volumes.get(key) {
                Some(vol) => vol.name.clone(),
                None => key.to_string(),
            },
            (_, source) => source.unwrap_or_default().to_string(),
        };
        out.push(mount(v, source).map_err(|e| format!("service {name}: volumes: {e}"))?);
    }
    out.extend(s.tmpfs.iter().map(|t| tmpfs_mount(t)));
    Ok(out)
}

/// A service's `secrets:` or `configs:` as references by the objects' full names.
fn file_refs(
    service: &str,
    word: &str,
    refs: &[FileRef],
    defined: &BTreeMap<String, FileObject>,
) -> Result<Vec<SecretReference>, String> {
    let id = |text: &Option<String>, what: &str| -> Result<u32, String> {
        match text.as_deref() {
            None | Some("") => Ok(0),
            Some(t) => t
                .parse()
                .map_err(|_| format!("service {service}: {word} {what} {t:?} is not a number")),
        }
    };
    refs.iter()
        .map(|r| {
            let object = defined.get(&r.source).ok_or_else(|| {
                format!(
                    "service {service}: {word} {} is not defined under the top-level {word}s",
                    r.source
                )
            })?;
            Ok(SecretReference {
                secret_id: String::new(),
                secret_name: object.name.clone(),
                // A short reference shows the file under the key it was given.
                target: r.target.clone().unwrap_or_else(|| r.source.clone()),
                uid: id(&r.uid, "uid")?,
                gid: id(&r.gid, "gid")?,
                mode: r.mode,
            })
        })
        .collect()
}

/// Adds the secrets and configs the stack's services use (all but external ones) to `spec`,
/// their data read from their file, the environment, or the file's own `content`.
pub fn attach_secrets(
    project: &Project,
    spec: &mut StackSpec,
    read_file: &dyn Fn(&str) -> std::io::Result<Vec<u8>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    let used: BTreeSet<(i32, String)> = spec
        .services
        .iter()
        .filter_map(|s| s.container.as_ref())
        .flat_map(|c| {
            c.secrets
                .iter()
                .map(|r| (SecretKind::Secret as i32, r.secret_name.clone()))
                .chain(
                    c.configs
                        .iter()
                        .map(|r| (SecretKind::Config as i32, r.secret_name.clone())),
                )
        })
        .collect();
    for (kind, word, defined) in [
        (SecretKind::Secret, "secret", &project.secrets),
        (SecretKind::Config, "config", &project.configs),
    ] {
        for (key, object) in defined {
            if object.external || !used.contains(&(kind as i32, object.name.clone())) {
                continue;
            }
            let data = if let Some(path) = &object.file {
                read_file(path).map_err(|e| format!("{word} {key}: cannot read {path}: {e}"))?
            } else if let Some(var) = &object.environment {
                env(var)
                    .ok_or_else(|| format!("{word} {key}: environment variable {var} is not set"))?
                    .into_bytes()
            } else if let Some(content) = &object.content {
                content.clone().into_bytes()
            } else {
                return Err(format!("{word} {key}: give file, environment or content"));
            };
            spec.secrets.push(SecretSpec {
                kind: kind as i32,
                name: object.name.clone(),
                labels: object.labels.clone().into_iter().collect(),
                data,
            });
        }
    }
    Ok(())
}

/// `/run` or `/run:size=64m,mode=1777` (compose's `tmpfs:`, `run --tmpfs`): the runtime reads
/// the options.
pub fn tmpfs_mount(text: &str) -> Mount {
    let (target, _) = text.split_once(':').unwrap_or((text, ""));
    Mount {
        r#type: MountType::Tmpfs as i32,
        target: target.to_string(),
        source: text.to_string(),
        ..Default::default()
    }
}

/// One of a service's volumes as a mount, its source already resolved (a project volume's
/// full name, an absolute host path, or empty for an anonymous volume).
pub fn mount(v: &ServiceVolume, source: String) -> Result<Mount, String> {
    let kind = match v.kind.as_str() {
        "volume" => MountType::Volume,
        "bind" => MountType::Bind,
        "tmpfs" => MountType::Tmpfs,
        other => {
            return Err(format!(
                "type {other:?} is not supported: use volume, bind or tmpfs"
            ))
        }
    };
    Ok(Mount {
        r#type: kind as i32,
        source,
        target: v.target.clone(),
        read_only: v.read_only,
        propagation: v
            .bind
            .as_ref()
            .and_then(|b| b.propagation.clone())
            .unwrap_or_default(),
        create_host_path: v.bind.as_ref().is_some_and(|b| b.create_host_path),
        no_copy: v.volume.as_ref().is_some_and(|o| o.nocopy),
        tmpfs_size: v
            .tmpfs
            .as_ref()
            .and_then(|t| t.size)
            .map(|n| n.max(0) as u64),
        tmpfs_mode: v.tmpfs.as_ref().and_then(|t| t.mode),
        volume_labels: HashMap::new(),
    })
}

/// `network_mode: service:web` names the stack's service by its full name (`<stack>_web`,
/// as the agent finds its tasks), and makes the service wait for it to start, as Compose's
/// implicit dependency does.
fn share_service_network(spec: &mut ServiceSpec, stack: &str) {
    let Some(c) = spec.container.as_mut() else {
        return;
    };
    let Some(short) = c.network_mode.strip_prefix("service:").map(str::to_string) else {
        return;
    };
    c.network_mode = format!("service:{stack}_{short}");
    if !spec.depends_on.iter().any(|d| d.service == short) {
        spec.depends_on.push(ServiceDependency {
            service: short,
            condition: DependencyCondition::Started as i32,
            required: true,
        });
    }
}

fn to_service_spec(
    project: &Project,
    name: &str,
    s: &Service,
    flavor: Flavor,
) -> Result<ServiceSpec, String> {
    let Some(image) = s.image.clone() else {
        return Err(if s.build.is_some() {
            format!(
                "service {name}: its image is built from `build:`, which `stack deploy` does not \
                 do: use `shoal compose up`, or build it (`shoal compose build`) and give `image:`"
            )
        } else {
            format!("service {name}: no image: add `image:`")
        });
    };
    let deploy = s.deploy.clone().unwrap_or_default();
    let mode = match deploy.mode.as_deref() {
        Some("global") => Mode::Global(GlobalService {}),
        _ => Mode::Replicated(ReplicatedService {
            replicas: deploy.replicas.or(s.scale).unwrap_or(1),
        }),
    };
    let resources = deploy.resources.clone().unwrap_or_default();
    let limits = resources.limits.clone().unwrap_or(ResourceSpec {
        cpus: s.cpus,
        memory: s.mem_limit,
        pids: s.pids_limit,
    });
    Ok(ServiceSpec {
        name: name.to_string(),
        labels: deploy.labels.clone().into_iter().collect(),
        container: Some(ContainerSpec {
            image,
            command: s.entrypoint.clone().unwrap_or_default(),
            args: s.command.clone().unwrap_or_default(),
            env: s
                .environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            workdir: s.working_dir.clone().unwrap_or_default(),
            user: s.user.clone().unwrap_or_default(),
            hostname: s.hostname.clone().unwrap_or_default(),
            stop_grace_period_ms: s.stop_grace_period.map(|d| d.0.as_millis() as u64),
            labels: s.labels.clone().into_iter().collect(),
            mounts: mounts(project, name, s)?,
            cap_add: s.cap_add.clone(),
            cap_drop: s.cap_drop.clone(),
            privileged: s.privileged,
            read_only: s.read_only,
            security_opt: s.security_opt.clone(),
            sysctls: s.sysctls.clone().into_iter().collect(),
            ulimits: s
                .ulimits
                .iter()
                .map(|(n, u)| Ulimit {
                    name: n.clone(),
                    soft: u.soft,
                    hard: u.hard,
                })
                .collect(),
            group_add: s.group_add.clone(),
            domainname: s.domainname.clone().unwrap_or_default(),
            oom_score_adj: s.oom_score_adj.map(|v| v.clamp(-1000, 1000) as i32),
            stop_signal: s.stop_signal.clone().unwrap_or_default(),
            shm_size: s.shm_size.map(|v| v.max(0) as u64),
            init: s.init.unwrap_or(false),
            extra_hosts: s
                .extra_hosts
                .iter()
                .flat_map(|(h, ips)| ips.iter().map(move |ip| format!("{h}:{ip}")))
                .collect(),
            dns: s.dns.clone(),
            dns_search: s.dns_search.clone(),
            dns_options: s.dns_opt.clone(),
            network_mode: s.network_mode.clone().unwrap_or_default(),
            healthcheck: s.healthcheck.as_ref().map(to_healthcheck),
            log_options: s
                .logging
                .as_ref()
                .map(|l| l.options.clone().into_iter().collect())
                .unwrap_or_default(),
            secrets: file_refs(name, "secret", &s.secrets, &project.secrets)?,
            configs: file_refs(name, "config", &s.configs, &project.configs)?,
            // Pinned by the manager at deploy.
            image_digest: String::new(),
        }),
        limits: Some(to_resources(&limits)),
        reservations: resources.reservations.as_ref().map(to_resources),
        restart: Some(restart_policy(name, s, flavor)?),
        mode: Some(mode),
        networks: if s.network_mode.is_some() {
            Vec::new()
        } else {
            service_networks(project, s)
        },
        endpoint: Some(EndpointSpec {
            ports: ports(name, s)?,
            mode: deploy.endpoint_mode.clone().unwrap_or_default(),
        }),
        depends_on: s
            .depends_on
            .iter()
            .map(|(dep, d)| ServiceDependency {
                service: dep.clone(),
                condition: match d.condition.as_str() {
                    "service_healthy" => DependencyCondition::Healthy,
                    "service_completed_successfully" => DependencyCondition::CompletedSuccessfully,
                    _ => DependencyCondition::Started,
                } as i32,
                required: d.required,
            })
            .collect(),
        placement: placement(name, deploy.placement.as_ref())?,
        update_config: rollout_config(name, "update_config", deploy_update(s, false))?,
        rollback_config: rollout_config(name, "rollback_config", deploy_update(s, true))?,
        force_update: 0,
    })
}

/// `deploy.placement`: constraints and spread preferences as written, checked with the
/// manager's own parser so that a typo names the service and the key here, not later.
fn placement(name: &str, p: Option<&super::model::Placement>) -> Result<Option<Placement>, String> {
    let Some(p) = p else {
        return Ok(None);
    };
    let placement = Placement {
        constraints: p.constraints.iter().map(|c| c.trim().to_string()).collect(),
        preferences: p
            .preferences
            .iter()
            .map(|x| PlacementPreference {
                spread: x.spread.trim().to_string(),
            })
            .collect(),
        max_replicas_per_node: p.max_replicas_per_node.unwrap_or(0),
    };
    shoal_manager::scheduler::constraint::Rules::parse(Some(&placement))
        .map_err(|e| format!("service {name}: deploy.placement: {e}"))?;
    Ok((placement != Placement::default()).then_some(placement))
}

fn deploy_update(s: &Service, rollback: bool) -> Option<&super::model::UpdateConfig> {
    let d = s.deploy.as_ref()?;
    if rollback {
        d.rollback_config.as_ref()
    } else {
        d.update_config.as_ref()
    }
}

/// `deploy.update_config` / `deploy.rollback_config` (Swarm's keys and defaults).
fn rollout_config(
    name: &str,
    key: &str,
    c: Option<&super::model::UpdateConfig>,
) -> Result<Option<UpdateConfig>, String> {
    let Some(c) = c else { return Ok(None) };
    let ms = |d: Option<super::model::Dur>| d.map(|d| d.0.as_millis() as u64);
    let mut out = UpdateConfig {
        parallelism: c.parallelism,
        delay_ms: ms(c.delay).unwrap_or(0),
        monitor_ms: ms(c.monitor),
        drain_ms: ms(c.drain),
        keep_blue_ms: ms(c.keep_blue),
        verify: c.verify.clone(),
        ..Default::default()
    };
    out.set_strategy(match c.strategy.as_deref() {
        Some("blue-green") => UpdateStrategy::BlueGreen,
        _ => UpdateStrategy::Rolling,
    });
    out.set_promote(match c.promote.as_deref() {
        Some("manual") => PromoteMode::Manual,
        _ => PromoteMode::Auto,
    });
    if let Some(r) = c.max_failure_ratio {
        if !(0.0..=1.0).contains(&r) {
            return Err(format!(
                "service {name}: deploy.{key}.max_failure_ratio {r}: use a number from 0 to 1"
            ));
        }
        out.max_failure_ratio = r as f32;
    }
    out.set_failure_action(match c.failure_action.as_deref() {
        None | Some("pause") => UpdateFailureAction::Pause,
        Some("continue") => UpdateFailureAction::Continue,
        Some("rollback") if key == "update_config" => UpdateFailureAction::Rollback,
        Some(other) => {
            let allowed = if key == "update_config" {
                "pause, continue or rollback"
            } else {
                "pause or continue"
            };
            return Err(format!(
                "service {name}: deploy.{key}.failure_action {other:?}: use {allowed}"
            ));
        }
    });
    out.set_order(match c.order.as_deref() {
        None | Some("stop-first") => UpdateOrder::StopFirst,
        Some("start-first") => UpdateOrder::StartFirst,
        Some(other) => {
            return Err(format!(
                "service {name}: deploy.{key}.order {other:?}: use stop-first or start-first"
            ))
        }
    });
    Ok(Some(out))
}

fn to_healthcheck(h: &super::model::Healthcheck) -> HealthCheck {
    let ms = |d: Option<super::model::Dur>| d.map(|d| d.0.as_millis() as u64);
    HealthCheck {
        test: if h.disable {
            vec!["NONE".into()]
        } else {
            h.test.clone()
        },
        interval_ms: ms(h.interval),
        timeout_ms: ms(h.timeout),
        retries: h.retries,
        start_period_ms: ms(h.start_period),
        start_interval_ms: ms(h.start_interval),
    }
}

fn to_resources(r: &ResourceSpec) -> Resources {
    Resources {
        memory_bytes: r.memory.unwrap_or(0),
        nano_cpus: r.cpus.map(|c| (c * 1e9).round() as i64).unwrap_or(0),
        pids: r.pids.unwrap_or(0),
    }
}

/// `deploy.restart_policy` wins; else `restart:` (Compose's), else the flavor's default.
fn restart_policy(name: &str, s: &Service, flavor: Flavor) -> Result<RestartPolicy, String> {
    let mut policy = RestartPolicy::default();
    if let Some(p) = s.deploy.as_ref().and_then(|d| d.restart_policy.as_ref()) {
        let condition = match p.condition.as_deref() {
            None | Some("any") => RestartCondition::Any,
            Some("on-failure") => RestartCondition::OnFailure,
            Some("none") => RestartCondition::None,
            Some(other) => {
                return Err(format!(
                    "service {name}: deploy.restart_policy.condition {other:?}: use none, on-failure or any"
                ))
            }
        };
        policy.set_condition(condition);
        policy.delay_ms = p.delay.map(|d| d.0.as_millis() as u64);
        policy.max_attempts = p.max_attempts.unwrap_or(0);
        policy.window_ms = p.window.map(|d| d.0.as_millis() as u64).unwrap_or(0);
        return Ok(policy);
    }
    let restart = s.restart.as_deref().unwrap_or(match flavor {
        Flavor::Stack => "always",
        Flavor::Compose => "no",
    });
    let (condition, attempts) = match restart.split_once(':') {
        Some(("on-failure", n)) => (
            RestartCondition::OnFailure,
            n.parse()
                .map_err(|_| format!("service {name}: restart {restart:?}: the count must be a whole number"))?,
        ),
        _ => match restart {
            "no" => (RestartCondition::None, 0),
            "always" | "unless-stopped" => (RestartCondition::Any, 0),
            "on-failure" => (RestartCondition::OnFailure, 0),
            other => {
                return Err(format!(
                    "service {name}: restart {other:?}: use no, always, on-failure[:N] or unless-stopped"
                ))
            }
        },
    };
    policy.set_condition(condition);
    policy.max_attempts = attempts;
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::{load_with, LoadOptions};

    fn project(yaml: &str) -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("compose.yaml"), yaml).expect("write");
        let opts = LoadOptions {
            files: vec![dir.path().join("compose.yaml")],
            project_name: Some("demo".into()),
            env_files: Vec::new(),
            profiles: Vec::new(),
            services: Vec::new(),
            environment: HashMap::new(),
            working_dir: dir.path().to_path_buf(),
        };
        load_with(&opts, &crate::compose::RealFs)
            .expect("loads")
            .project
    }

    #[test]
    fn services_map_onto_specs() {
        let p = project(
            r#"
services:
  web:
    image: busybox
    command: ["httpd", "-f"]
    environment: { A: "1" }
    restart: on-failure:3
    deploy:
      replicas: 2
      resources: { limits: { memory: 64m, cpus: "0.5" } }
  agent:
    image: busybox
    deploy: { mode: global }
"#,
        );
        let (stack, warnings) = to_stack_spec(&p, "demo", Flavor::Compose).expect("maps");
        assert!(warnings.is_empty(), "{warnings:?}");
        let web = stack
            .services
            .iter()
            .find(|s| s.name == "web")
            .expect("web");
        let c = web.container.as_ref().expect("container");
        assert_eq!(c.args, ["httpd", "-f"]);
        assert_eq!(c.env, ["A=1"]);
        assert_eq!(web.limits.as_ref().map(|l| l.memory_bytes), Some(64 << 20));
        assert_eq!(web.limits.as_ref().map(|l| l.nano_cpus), Some(500_000_000));
        let restart = web.restart.as_ref().expect("restart");
        assert_eq!(restart.condition(), RestartCondition::OnFailure);
        assert_eq!(restart.max_attempts, 3);
        assert!(matches!(
            web.mode,
            Some(Mode::Replicated(ReplicatedService { replicas: 2 }))
        ));
        let agent = stack
            .services
            .iter()
            .find(|s| s.name == "agent")
            .expect("agent");
        assert!(matches!(agent.mode, Some(Mode::Global(_))));
        assert_eq!(
            agent.restart.as_ref().map(|r| r.condition()),
            Some(RestartCondition::None),
            "compose's default is no restart"
        );
    }

    #[test]
    fn a_service_network_mode_names_the_full_service_and_waits_for_it() {
        let p = project(
            r#"
services:
  web:
    image: busybox
  side:
    image: busybox
    network_mode: service:web
  late:
    image: busybox
    network_mode: "service:web"
    depends_on:
      web: { condition: service_healthy }
"#,
        );
        let (stack, _) = to_stack_spec(&p, "demo", Flavor::Compose).expect("maps");
        let spec = |name: &str| {
            stack
                .services
                .iter()
                .find(|s| s.name == name)
                .expect("service")
                .clone()
        };
        let side = spec("side");
        let mode = side.container.as_ref().map(|c| c.network_mode.clone());
        assert_eq!(mode.as_deref(), Some("service:demo_web"));
        assert!(side.networks.is_empty());
        assert_eq!(side.depends_on.len(), 1);
        assert_eq!(side.depends_on[0].service, "web");
        assert_eq!(
            side.depends_on[0].condition,
            DependencyCondition::Started as i32
        );
        // An explicit dependency stays as given.
        let late = spec("late");
        assert_eq!(late.depends_on.len(), 1);
        assert_eq!(
            late.depends_on[0].condition,
            DependencyCondition::Healthy as i32
        );
        let web = spec("web");
        assert_eq!(web.container.map(|c| c.network_mode), Some(String::new()));
    }

    #[test]
    fn deploy_placement_maps_onto_the_spec() {
        let p = project(
            r#"
services:
  db:
    image: busybox
    deploy:
      replicas: 4
      placement:
        constraints: ["node.labels.zone != c", "node.role==worker"]
        preferences:
          - spread: node.labels.zone
        max_replicas_per_node: 2
  web:
    image: busybox
"#,
        );
        let (stack, _) = to_stack_spec(&p, "demo", Flavor::Stack).expect("maps");
        let db = stack.services.iter().find(|s| s.name == "db").expect("db");
        assert_eq!(
            db.placement,
            Some(Placement {
                constraints: vec!["node.labels.zone != c".into(), "node.role==worker".into()],
                preferences: vec![PlacementPreference {
                    spread: "node.labels.zone".into()
                }],
                max_replicas_per_node: 2,
            })
        );
        let web = stack
            .services
            .iter()
            .find(|s| s.name == "web")
            .expect("web");
        assert_eq!(web.placement, None);

        let bad = project(
            r#"
services:
  db:
    image: busybox
    deploy:
      placement:
        constraints: ["engine.labels.disk==ssd"]
"#,
        );
        let err = to_stack_spec(&bad, "demo", Flavor::Stack).unwrap_err();
        assert!(
            err.starts_with(
                "service db: deploy.placement: invalid placement \"engine.labels.disk==ssd\""
            ),
            "{err}"
        );
    }

    #[test]
    fn update_and_rollback_configs_map() {
        let p = project(
            r#"
services:
  web:
    image: busybox
    deploy:
      update_config:
        parallelism: 2
        delay: 10s
        failure_action: rollback
        monitor: 30s
        max_failure_ratio: 0.25
        order: start-first
      rollback_config:
        parallelism: 0
  db:
    image: busybox
"#,
        );
        let (stack, _) = to_stack_spec(&p, "demo", Flavor::Stack).expect("maps");
        let web = stack
            .services
            .iter()
            .find(|s| s.name == "web")
            .expect("web");
        let u = web.update_config.clone().expect("update_config");
        assert_eq!(u.parallelism, Some(2));
        assert_eq!(u.delay_ms, 10_000);
        assert_eq!(u.monitor_ms, Some(30_000));
        assert_eq!(u.max_failure_ratio, 0.25);
        assert_eq!(u.failure_action(), UpdateFailureAction::Rollback);
        assert_eq!(u.order(), UpdateOrder::StartFirst);
        let r = web.rollback_config.clone().expect("rollback_config");
        assert_eq!(r.parallelism, Some(0));
        assert_eq!(r.monitor_ms, None, "unset: the default");
        assert_eq!(r.order(), UpdateOrder::StopFirst);
        let db = stack.services.iter().find(|s| s.name == "db").expect("db");
        assert_eq!(db.update_config, None);

        let p = project(
            "services:\n  web:\n    image: busybox\n    deploy:\n      rollback_config:\n        failure_action: rollback\n",
        );
        let err = to_stack_spec(&p, "demo", Flavor::Stack).expect_err("refused");
        assert!(
            err.contains("deploy.rollback_config.failure_action"),
            "{err}"
        );
    }

    #[test]
    fn blue_green_and_drain_extensions_map() {
        let p = project(
            r#"
services:
  web:
    image: busybox
    deploy:
      update_config:
        x-strategy: blue-green
        x-promote: manual
        x-keep-blue: 5m
        x-drain: 500ms
        x-verify: wget -q -O- http://127.0.0.1/health
      rollback_config:
        x-drain: 0s
"#,
        );
        let (stack, _) = to_stack_spec(&p, "demo", Flavor::Stack).expect("maps");
        let web = &stack.services[0];
        let u = web.update_config.clone().expect("update_config");
        assert_eq!(u.strategy(), UpdateStrategy::BlueGreen);
        assert_eq!(u.promote(), PromoteMode::Manual);
        assert_eq!(u.keep_blue_ms, Some(300_000));
        assert_eq!(u.drain_ms, Some(500));
        assert_eq!(
            u.verify,
            ["CMD-SHELL", "wget -q -O- http://127.0.0.1/health"]
        );
        let r = web.rollback_config.clone().expect("rollback_config");
        assert_eq!(r.drain_ms, Some(0));
        assert_eq!(r.strategy(), UpdateStrategy::Rolling);
    }

    #[test]
    fn a_build_without_an_image_says_how_to_build_it() {
        let p = project(
            "services:\n  web:\n    image: busybox\n    ports: [\"8080:80\"]\n  img:\n    build: .\n",
        );
        let err = to_stack_spec(&p, "demo", Flavor::Stack).expect_err("no image yet");
        assert!(
            err.contains("service img") && err.contains("shoal compose build"),
            "{err}"
        );
    }

    #[test]
    fn secrets_and_configs_become_stack_objects_read_from_files_env_or_content() {
        let p = project(
            r#"
services:
  web:
    image: busybox
    secrets: [db, { source: tls, target: /etc/tls.key, uid: "33", mode: 0400 }]
    configs: [{ source: conf, target: /etc/app.conf }]
secrets:
  db: { file: ./db.txt }
  tls: { environment: TLS_KEY }
  unused: { content: nobody }
  shared: { external: true }
configs:
  conf: { content: "x=1" }
"#,
        );
        let (mut spec, warnings) = to_stack_spec(&p, "demo", Flavor::Stack).expect("maps");
        assert!(warnings.is_empty(), "{warnings:?}");
        let c = spec.services[0].container.clone().expect("container");
        assert_eq!(c.secrets[0].secret_name, "demo_db");
        assert_eq!(c.secrets[0].target, "db");
        assert_eq!(c.secrets[1].target, "/etc/tls.key");
        assert_eq!((c.secrets[1].uid, c.secrets[1].mode), (33, Some(0o400)));
        assert_eq!(c.configs[0].secret_name, "demo_conf");
        let read = |path: &str| {
            assert!(path.ends_with("/db.txt"), "{path}");
            Ok(b"pw".to_vec())
        };
        let env = |var: &str| (var == "TLS_KEY").then(|| "key".to_string());
        attach_secrets(&p, &mut spec, &read, &env).expect("reads");
        let got: Vec<(i32, &str, &[u8])> = spec
            .secrets
            .iter()
            .map(|s| (s.kind, s.name.as_str(), s.data.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                (SecretKind::Secret as i32, "demo_db", &b"pw"[..]),
                (SecretKind::Secret as i32, "demo_tls", &b"key"[..]),
                (SecretKind::Config as i32, "demo_conf", &b"x=1"[..]),
            ]
        );
        let mut again = to_stack_spec(&p, "demo", Flavor::Stack).expect("maps").0;
        let e = attach_secrets(&p, &mut again, &read, &|_| None).unwrap_err();
        assert_eq!(e, "secret tls: environment variable TLS_KEY is not set");
    }

    #[test]
    fn networks_ports_and_volumes_map() {
        let p = project(
            r#"
services:
  web:
    image: busybox
    networks:
      front: { aliases: [www] }
      outside: {}
    ports: ["127.0.0.1:8080:80", "53:53/udp"]
    volumes: ["data:/data:ro", "/srv:/srv"]
    cap_add: [NET_ADMIN]
    init: true
  db:
    image: busybox
networks:
  front:
    internal: true
    ipam: { config: [{ subnet: 10.9.0.0/24 }] }
  outside: { external: true, name: corp }
volumes:
  data: {}
"#,
        );
        let (stack, _) = to_stack_spec(&p, "demo", Flavor::Stack).expect("maps");
        let mut nets: Vec<&str> = stack.networks.iter().map(|n| n.name.as_str()).collect();
        nets.sort();
        assert_eq!(
            nets,
            ["default", "front"],
            "external networks are not the stack's"
        );
        let front = stack
            .networks
            .iter()
            .find(|n| n.name == "front")
            .expect("front");
        assert!(front.internal);
        assert_eq!(front.subnet, "10.9.0.0/24");
        let web = stack
            .services
            .iter()
            .find(|s| s.name == "web")
            .expect("web");
        let targets: Vec<&str> = web.networks.iter().map(|n| n.target.as_str()).collect();
        assert_eq!(targets, ["front", "corp"]);
        assert_eq!(web.networks[0].aliases, ["www"]);
        let ports = &web.endpoint.as_ref().expect("endpoint").ports;
        assert_eq!(ports.len(), 2);
        assert_eq!((ports[0].published_port, ports[0].target_port), (8080, 80));
        assert_eq!(ports[0].host_ip, "127.0.0.1");
        assert_eq!(ports[1].protocol(), PortProtocol::Udp);
        let c = web.container.as_ref().expect("container");
        assert_eq!(c.mounts[0].source, "demo_data");
        assert_eq!(c.mounts[0].r#type(), MountType::Volume);
        assert!(c.mounts[0].read_only);
        assert_eq!(c.mounts[1].r#type(), MountType::Bind);
        assert_eq!(c.cap_add, ["NET_ADMIN"]);
        assert!(c.init);
        let db = stack.services.iter().find(|s| s.name == "db").expect("db");
        assert_eq!(db.networks[0].target, "default");
    }
}
