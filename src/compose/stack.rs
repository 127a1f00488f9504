//! From a loaded compose project to the stack the manager deploys.
//!
//! Everything the manager can run today maps onto a service spec; keys whose machinery lands
//! with later work (published ports, volumes, extra networks, healthchecks, depends_on,
//! secrets and configs, builds) are reported as warnings naming the service and the key, so
//! nothing is dropped silently.

use std::collections::HashMap;

use shoal_proto::service_spec::Mode;
use shoal_proto::{
    ContainerSpec, GlobalService, ReplicatedService, Resources, RestartCondition, RestartPolicy,
    ServiceSpec, StackSpec,
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
            service_name,
            service,
            flavor,
            &mut warnings,
        )?);
    }
    Ok((
        StackSpec {
            name: name.to_string(),
            labels: HashMap::new(),
            services,
        },
        warnings,
    ))
}

fn to_service_spec(
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
        (!s.ports.is_empty(), "ports"),
        (!s.volumes.is_empty(), "volumes"),
        (s.networks.keys().any(|n| n != "default"), "networks"),
        (s.healthcheck.is_some(), "healthcheck"),
        (!s.depends_on.is_empty(), "depends_on"),
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
        }),
        limits: Some(to_resources(&limits)),
        reservations: resources.reservations.as_ref().map(to_resources),
        restart: Some(restart_policy(name, s, flavor)?),
        mode: Some(mode),
    })
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
    fn what_is_not_applied_yet_is_named() {
        let p = project(
            "services:\n  web:\n    image: busybox\n    ports: [\"8080:80\"]\n  img:\n    build: .\n",
        );
        let err = to_stack_spec(&p, "demo", Flavor::Stack).expect_err("build is refused");
        assert!(
            err.contains("service img") && err.contains("build"),
            "{err}"
        );
        let p = project("services:\n  web:\n    image: busybox\n    ports: [\"8080:80\"]\n");
        let (_, warnings) = to_stack_spec(&p, "demo", Flavor::Stack).expect("maps");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("ports"), "{warnings:?}");
    }
}
