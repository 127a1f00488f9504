//! From a task and its image to the container the runtime makes: Docker's merge rules.

use std::path::PathBuf;
use std::time::Duration;

use shoal_proto::{ImageConfig, Task};

use crate::runtime::{ContainerConfig, Limits};

/// Docker's default stop grace period.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// The container name Swarm gives a task: `service.slot.taskid`.
pub fn container_name(task: &Task) -> String {
    let service = task
        .spec
        .as_ref()
        .map(|s| s.name.as_str())
        .unwrap_or("task");
    format!("{service}.{}.{}", task.slot, task.id)
}

/// Merges the task's container spec over the image's config.
///
/// Like Docker: a spec `command` replaces the entrypoint and drops the image's cmd; spec
/// `args` replace the cmd; env entries of the spec override the image's by key.
pub fn container_config(
    task: &Task,
    image: &ImageConfig,
    layers: Vec<PathBuf>,
) -> Result<ContainerConfig, String> {
    let spec = task
        .spec
        .as_ref()
        .ok_or_else(|| format!("task {} carries no service spec", task.id))?;
    let c = spec.container.clone().unwrap_or_default();
    let entrypoint = if c.command.is_empty() {
        image.entrypoint.clone()
    } else {
        c.command.clone()
    };
    let cmd = if !c.args.is_empty() {
        c.args.clone()
    } else if c.command.is_empty() {
        image.cmd.clone()
    } else {
        Vec::new()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(format!(
            "image {} has no command and the service gives none: add one after the image name",
            c.image
        ));
    }
    let mut env: Vec<String> = image.env.clone();
    for entry in &c.env {
        let key = entry.split('=').next().unwrap_or(entry);
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(entry.clone());
    }
    let limits = spec.limits.unwrap_or_default();
    let hostname = if c.hostname.is_empty() {
        task.id.chars().take(12).collect()
    } else {
        c.hostname.clone()
    };
    Ok(ContainerConfig {
        id: task.id.clone(),
        name: container_name(task),
        layers,
        args,
        env,
        cwd: if c.workdir.is_empty() {
            image.workdir.clone()
        } else {
            c.workdir.clone()
        },
        user: if c.user.is_empty() {
            image.user.clone()
        } else {
            c.user.clone()
        },
        hostname,
        limits: Limits {
            memory_bytes: positive(limits.memory_bytes),
            nano_cpus: positive(limits.nano_cpus),
            pids: positive(limits.pids),
        },
        stop_grace: stop_grace(task),
        labels: c.labels.into_iter().collect(),
        ..ContainerConfig::default()
    })
}

pub fn stop_grace(task: &Task) -> Duration {
    task.spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .and_then(|c| c.stop_grace_period_ms)
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_STOP_GRACE)
}

fn positive(v: i64) -> Option<u64> {
    (v > 0).then_some(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ContainerSpec, ServiceSpec};

    fn task(command: &[&str], args: &[&str], env: &[&str]) -> Task {
        Task {
            id: "t1".into(),
            slot: 2,
            spec: Some(ServiceSpec {
                name: "web".into(),
                container: Some(ContainerSpec {
                    image: "img".into(),
                    command: command.iter().map(|s| s.to_string()).collect(),
                    args: args.iter().map(|s| s.to_string()).collect(),
                    env: env.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            workdir: "/app".into(),
            user: String::new(),
        }
    }

    #[test]
    fn merges_like_docker() {
        let c = container_config(&task(&[], &[], &["A=2"]), &image(), vec![]).expect("valid");
        assert_eq!(c.args, ["/entry", "serve"]);
        assert_eq!(c.env, ["PATH=/bin", "A=2"]);
        assert_eq!(c.cwd, "/app");
        assert_eq!(c.name, "web.2.t1");
        let c = container_config(&task(&[], &["other"], &[]), &image(), vec![]).expect("valid");
        assert_eq!(c.args, ["/entry", "other"]);
        let c = container_config(&task(&["sh"], &[], &[]), &image(), vec![]).expect("valid");
        assert_eq!(
            c.args,
            ["sh"],
            "an entrypoint override drops the image's cmd"
        );
    }

    #[test]
    fn no_command_at_all_is_an_error() {
        let err = container_config(&task(&[], &[], &[]), &ImageConfig::default(), vec![])
            .expect_err("nothing to run");
        assert!(err.contains("no command"));
    }
}
