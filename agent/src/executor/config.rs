//! From a task and its image to the container the runtime makes: Docker's merge rules.

use std::path::PathBuf;
use std::time::Duration;

use shoal_proto::{ContainerSpec, ImageConfig, Task};

use super::net::Prepared;
use crate::runtime::{
    parse_extra_host, ContainerConfig, HostEntry, Limits, Mount, MountKind, Ulimit,
};

/// Docker's default stop grace period.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// The container name Swarm gives a task: `service.slot.taskid`.
pub fn container_name(task: &Task) -> String {
    task.container_name()
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
        labels: task_labels(task, spec),
        cap_add: c.cap_add.clone(),
        cap_drop: c.cap_drop.clone(),
        privileged: c.privileged,
        seccomp_unconfined: security_opt(&c, "seccomp", "unconfined")?,
        allow_new_privileges: security_opt(&c, "no-new-privileges", "false")?,
        read_only: c.read_only,
        shm_size: c.shm_size,
        sysctls: c.sysctls.clone().into_iter().collect(),
        ulimits: c
            .ulimits
            .iter()
            .map(|u| Ulimit {
                name: u.name.clone(),
                soft: u.soft,
                hard: u.hard,
            })
            .collect(),
        group_add: c.group_add.clone(),
        domainname: c.domainname.clone(),
        oom_score_adj: c.oom_score_adj,
        stop_signal: c.stop_signal.clone(),
        init: c.init,
        logging: crate::runtime::LogOptions::from_docker(
            &c.log_options.clone().into_iter().collect(),
        )
        .map_err(|e| format!("logging options: {e}"))?,
        ..ContainerConfig::default()
    })
}

/// Label of a task's container naming its service's id (Swarm's), and the others it sets.
pub const SERVICE_ID_LABEL: &str = "com.docker.swarm.service.id";

/// The container's labels: the spec's, plus Swarm's `com.docker.swarm.*` ones.
fn task_labels(
    task: &Task,
    spec: &shoal_proto::ServiceSpec,
) -> std::collections::BTreeMap<String, String> {
    let mut labels: std::collections::BTreeMap<String, String> = spec
        .container
        .as_ref()
        .map(|c| c.labels.clone().into_iter().collect())
        .unwrap_or_default();
    labels.insert(SERVICE_ID_LABEL.into(), task.service_id.clone());
    labels.insert("com.docker.swarm.service.name".into(), spec.name.clone());
    labels.insert("com.docker.swarm.task.id".into(), task.id.clone());
    labels.insert("com.docker.swarm.task.name".into(), container_name(task));
    labels.insert("com.docker.swarm.node.id".into(), task.node_id.clone());
    labels
}

/// Whether `security_opt` holds `key=value` (or Docker's older `key:value`). Unknown options
/// are refused rather than ignored: a user asking for a protection must not silently lose it.
fn security_opt(c: &ContainerSpec, key: &str, value: &str) -> Result<bool, String> {
    let mut found = false;
    for opt in &c.security_opt {
        let (k, v) = opt.split_once(['=', ':']).unwrap_or((opt.as_str(), "true"));
        match k {
            "seccomp" | "no-new-privileges" if k == key => found = v == value,
            "seccomp" if v != "unconfined" => {
                return Err(format!(
                    "security_opt {opt:?}: only seccomp=unconfined is supported (custom profiles are not)"
                ))
            }
            "seccomp" | "no-new-privileges" | "label" | "apparmor" => {}
            _ => return Err(format!("unknown security_opt {opt:?}")),
        }
    }
    Ok(found)
}

/// The container's network side: its namespace, its /etc/hosts (own addresses with its
/// hostname, then `extra_hosts`) and its resolv.conf, which names the node's DNS server on the
/// gateway of its first network (user `dns` servers follow). A container sharing another's
/// namespace takes that one's hostname and its /etc files themselves (bind-mounted, as in
/// Docker: a change to the owner's is seen by both).
pub fn apply_network(
    config: &mut ContainerConfig,
    task: &Task,
    prepared: &Prepared,
) -> Result<(), String> {
    let c = task
        .spec
        .as_ref()
        .and_then(|s| s.container.clone())
        .unwrap_or_default();
    config.network = prepared.mode.clone();
    if let Some(joined) = &prepared.joined {
        config.network_container = joined.id.clone();
        config.hostname = joined.hostname.clone();
        config.etc = Default::default();
        let Some(dir) = &joined.etc_dir else {
            return Ok(());
        };
        for (file, target) in [
            ("hosts", "/etc/hosts"),
            ("hostname", "/etc/hostname"),
            ("resolv.conf", "/etc/resolv.conf"),
        ] {
            // A mount the user asked for at that path wins, as over the container's own.
            if config.mounts.iter().any(|m| m.target == target) {
                continue;
            }
            config.mounts.push(Mount {
                kind: MountKind::Bind,
                source: dir.join(file),
                target: target.into(),
                read_only: false,
                propagation: None,
                copy_up: false,
                create_host_path: false,
            });
        }
        return Ok(());
    }
    let gateway = prepared.attachments.first().map(|a| a.gateway.to_string());
    let mut hosts: Vec<HostEntry> = prepared
        .attachments
        .iter()
        .map(|a| HostEntry::new(a.ip.to_string(), &[config.hostname.as_str()]))
        .collect();
    for extra in &c.extra_hosts {
        hosts.push(parse_extra_host(extra, gateway.as_deref())?);
    }
    config.etc.hosts = hosts;
    config.etc.dns_servers = gateway.iter().cloned().chain(c.dns.clone()).collect();
    config.etc.dns_search = c.dns_search.clone();
    config.etc.dns_options = if !c.dns_options.is_empty() {
        c.dns_options.clone()
    } else if gateway.is_some() {
        // Our names have no dots: ask for them as they are before any search domain.
        vec!["ndots:0".into()]
    } else {
        Vec::new()
    };
    Ok(())
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
            spec: Some(
                ServiceSpec {
                    name: "web".into(),
                    container: Some(ContainerSpec {
                        image: "img".into(),
                        command: command.iter().map(|s| s.to_string()).collect(),
                        args: args.iter().map(|s| s.to_string()).collect(),
                        env: env.iter().map(|s| s.to_string()).collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .into(),
            ),
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
            ..Default::default()
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
