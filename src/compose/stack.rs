//! From a loaded compose project to the stack the manager deploys.
//!
//! Everything the manager can run today maps onto a service spec; keys whose machinery lands
//! with later work (secrets and configs, builds) are reported as
//! warnings naming the service and the key, so nothing is dropped silently.
//!
//! Networks: the project's networks become the stack's (`<stack>_<key>` on the cluster);
//! external ones are referred to by their own name. Volumes: named volumes are `<stack>_<key>`
//! like Compose's (external ones keep their name); relative bind sources were made absolute
//! by the loader.

use std::collections::HashMap;

use shoal_proto::service_spec::Mode;
use shoal_proto::{
    ContainerSpec, DependencyCondition, EndpointSpec, GlobalService, HealthCheck, Mount, MountType,
    NetworkAttachmentConfig, NetworkSpec, PortConfig, PortProtocol, PromoteMode, PublishMode,
    ReplicatedService, Resources, RestartCondition, RestartPolicy, ServiceDependency, ServiceSpec,
    StackSpec, Ulimit, UpdateConfig, UpdateFailureAction, UpdateOrder, UpdateStrategy,
};

use super::model::{Project, ResourceSpec, Service};

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
        services.push(to_service_spec(
            project,
            service_name,
            service,
            flavor,
            &mut warnings,
        )?);
    }
    let mut networks = Vec::new();
    for (key, n) in project.networks.iter().filter(|(_, n)| !n.external) {
        let pool = n.ipam.as_ref().and_then(|i| i.config.first());
        if n.driver.as_deref().is_some_and(|d| d != "bridge") {
            warnings.push(format!(
                "network {key}: driver {:?} is not supported yet: a bridge network is made instead",
                n.driver.as_deref().unwrap_or_default()
            ));
        }
        networks.push(NetworkSpec {
            name: key.clone(),
            driver: "bridge".into(),
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
        let kind = match v.kind.as_str() {
            "volume" => MountType::Volume,
            "bind" => MountType::Bind,
            "tmpfs" => MountType::Tmpfs,
            other => {
                return Err(format!(
                    "service {name}: volumes: type {other:?} is not supported: use volume, bind or tmpfs"
                ))
            }
        };
        let source = match (kind, v.source.as_deref()) {
            (MountType::Volume, Some(key)) => match project.volumes.get(key) {
                Some(vol) => vol.name.clone(),
                None => key.to_string(),
            },
            (_, source) => source.unwrap_or_default().to_string(),
        };
        out.push(Mount {
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
        });
    }
    for t in &s.tmpfs {
        // `/run` or `/run:size=64m,mode=1777`: the runtime reads the options.
        let (target, _) = t.split_once(':').unwrap_or((t, ""));
        out.push(Mount {
            r#type: MountType::Tmpfs as i32,
            target: target.to_string(),
            source: t.clone(),
            ..Default::default()
        });
    }
    Ok(out)
}

fn to_service_spec(
    project: &Project,
    name: &str,
    s: &Service,
    flavor: Flavor,
    warnings: &mut Vec<String>,
) -> Result<ServiceSpec, String> {
    let Some(image) = s.image.clone() else {
        return Err(if s.build.is_some() {
            format!(
                "service {name}: `build:` is not supported yet: build the image and give `image:`"
            )
        } else {
            format!("service {name}: no image: add `image:`")
        });
    };
    let mut pending = Vec::new();
    for (present, key) in [
        (s.build.is_some(), "build"),
        (!s.secrets.is_empty(), "secrets"),
        (!s.configs.is_empty(), "configs"),
    ] {
        if present {
            pending.push(key);
        }
    }
    if !pending.is_empty() {
        warnings.push(format!(
            "service {name}: {} not applied yet by this version of shoal",
            pending.join(", ")
        ));
    }
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
        update_config: rollout_config(name, "update_config", deploy_update(s, false))?,
        rollback_config: rollout_config(name, "rollback_config", deploy_update(s, true))?,
    })
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
    fn what_is_not_applied_yet_is_named() {
        let p = project(
            "services:\n  web:\n    image: busybox\n    ports: [\"8080:80\"]\n  img:\n    build: .\n",
        );
        let err = to_stack_spec(&p, "demo", Flavor::Stack).expect_err("build is refused");
        assert!(
            err.contains("service img") && err.contains("build"),
            "{err}"
        );
        let p = project(
            "services:\n  web:\n    image: busybox\n    secrets: [s]\nsecrets:\n  s: {file: ./s}\n",
        );
        let (_, warnings) = to_stack_spec(&p, "demo", Flavor::Stack).expect("maps");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("secrets"), "{warnings:?}");
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
