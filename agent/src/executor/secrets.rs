//! A task's secrets and configs as files (Swarm's rules).
//!
//! - Secrets are written to a directory of the container's own on a tmpfs (`/dev/shm`, so they
//!   never touch a disk), which appears read-only at `/run/secrets`; a secret whose target is
//!   an absolute path elsewhere is a file mount of its own.
//! - Configs are file mounts at their targets (default `/<name>`), read-only.
//! - Files get the reference's uid, gid and mode (default 0444). The directory goes with the
//!   container.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use shoal_proto::{Secret, SecretReference, Task};

use crate::runtime::{Mount, MountKind};

/// Where a task's secrets appear inside its container.
pub const SECRETS_DIR: &str = "/run/secrets";

/// This node's secrets directory on the host's tmpfs, one per runtime root (several daemons on
/// one machine, as tests run them, keep theirs apart).
pub fn secrets_root(runtime_root: &Path) -> PathBuf {
    let digest = Sha256::digest(runtime_root.as_os_str().as_encoded_bytes());
    let short: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    PathBuf::from("/dev/shm/shoal").join(short)
}

/// Where a reference's file lands in the container.
fn target_of(r: &SecretReference, config: bool) -> String {
    match (r.target.as_str(), config) {
        ("", false) => format!("{SECRETS_DIR}/{}", r.secret_name),
        ("", true) => format!("/{}", r.secret_name),
        (t, _) if t.starts_with('/') => t.to_string(),
        (t, false) => format!("{SECRETS_DIR}/{t}"),
        (t, true) => format!("/{t}"),
    }
}

/// Writes the task's secret and config files under `root/<container id>` and returns the
/// mounts that show them. On error nothing is left behind.
pub fn prepare(
    root: &Path,
    task: &Task,
    known: &HashMap<String, Secret>,
) -> Result<Vec<Mount>, String> {
    let c = task
        .spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .cloned()
        .unwrap_or_default();
    if c.secrets.is_empty() && c.configs.is_empty() {
        return Ok(Vec::new());
    }
    let result = write_all(root, &task.id, &c.secrets, &c.configs, known);
    if result.is_err() {
        release(root, &task.id);
    }
    result
}

fn write_all(
    root: &Path,
    container_id: &str,
    secrets: &[SecretReference],
    configs: &[SecretReference],
    known: &HashMap<String, Secret>,
) -> Result<Vec<Mount>, String> {
    let dir = root.join(container_id);
    // What /run/secrets shows, and the files mounted one by one elsewhere.
    let secrets_dir = dir.join("secrets");
    let files_dir = dir.join("files");
    for d in [&secrets_dir, &files_dir] {
        std::fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
    }
    let mut mounts = Vec::new();
    let mut in_secrets_dir = false;
    for (i, (r, config)) in secrets
        .iter()
        .map(|r| (r, false))
        .chain(configs.iter().map(|r| (r, true)))
        .enumerate()
    {
        let word = if config { "config" } else { "secret" };
        let data = known
            .get(&r.secret_id)
            .and_then(|s| s.spec.as_ref())
            .map(|s| s.data.as_slice())
            .ok_or_else(|| {
                format!(
                    "{word} {} was not sent to this node: the manager no longer has it",
                    r.secret_name
                )
            })?;
        let target = target_of(r, config);
        let under_run_secrets = !config
            && target
                .strip_prefix(SECRETS_DIR)
                .is_some_and(|rest| rest.starts_with('/') && !rest[1..].contains('/'));
        let file = if under_run_secrets {
            in_secrets_dir = true;
            secrets_dir.join(&target[SECRETS_DIR.len() + 1..])
        } else {
            files_dir.join(i.to_string())
        };
        write_file(&file, data, r).map_err(|e| format!("{word} {}: {e}", r.secret_name))?;
        if !under_run_secrets {
            mounts.push(read_only_bind(file, target));
        }
    }
    if in_secrets_dir {
        mounts.insert(0, read_only_bind(secrets_dir, SECRETS_DIR.to_string()));
    }
    Ok(mounts)
}

fn write_file(path: &Path, data: &[u8], r: &SecretReference) -> std::io::Result<()> {
    let mode = r.mode.unwrap_or(0o444);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    std::os::unix::fs::chown(path, Some(r.uid), Some(r.gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
}

fn read_only_bind(source: PathBuf, target: String) -> Mount {
    Mount {
        kind: MountKind::Bind,
        source,
        target,
        read_only: true,
        propagation: None,
        copy_up: false,
        create_host_path: false,
    }
}

/// The container is gone: its files go. Idempotent.
pub fn release(root: &Path, container_id: &str) {
    let dir = root.join(container_id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), "removing secret files: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ContainerSpec, SecretKind, SecretSpec, ServiceSpec};

    fn secret(id: &str, data: &[u8]) -> (String, Secret) {
        (
            id.into(),
            Secret {
                id: id.into(),
                meta: None,
                spec: Some(SecretSpec {
                    kind: SecretKind::Secret as i32,
                    name: id.into(),
                    data: data.to_vec(),
                    ..Default::default()
                }),
            },
        )
    }

    fn reference(id: &str, target: &str, mode: Option<u32>) -> SecretReference {
        SecretReference {
            secret_id: id.into(),
            secret_name: id.into(),
            target: target.into(),
            uid: 0,
            gid: 0,
            mode,
        }
    }

    #[test]
    fn targets_follow_swarm() {
        assert_eq!(
            target_of(&reference("db", "", None), false),
            "/run/secrets/db"
        );
        assert_eq!(
            target_of(&reference("db", "pw", None), false),
            "/run/secrets/pw"
        );
        assert_eq!(
            target_of(&reference("db", "/etc/pw", None), false),
            "/etc/pw"
        );
        assert_eq!(
            target_of(&reference("nginx.conf", "", None), true),
            "/nginx.conf"
        );
    }

    #[test]
    fn files_are_written_with_their_modes_and_mounted_read_only() {
        let root = tempfile::tempdir().expect("tempdir");
        let known: HashMap<String, Secret> = [
            secret("db", b"pw"),
            secret("tls", b"key"),
            secret("conf", b"x=1"),
        ]
        .into_iter()
        .collect();
        let task = Task {
            id: "c1".into(),
            spec: Some(
                ServiceSpec {
                    container: Some(ContainerSpec {
                        secrets: vec![
                            reference("db", "", None),
                            reference("tls", "/etc/tls.key", Some(0o400)),
                        ],
                        configs: vec![reference("conf", "/app/app.conf", None)],
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .into(),
            ),
            ..Default::default()
        };
        let mounts = prepare(root.path(), &task, &known).expect("prepares");
        let targets: Vec<&str> = mounts.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, ["/run/secrets", "/etc/tls.key", "/app/app.conf"]);
        assert!(mounts.iter().all(|m| m.read_only));
        let db = root.path().join("c1/secrets/db");
        assert_eq!(std::fs::read(&db).expect("db"), b"pw");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&db), 0o444);
        assert_eq!(mode(&mounts[1].source), 0o400);
        release(root.path(), "c1");
        assert!(!root.path().join("c1").exists());
    }

    #[test]
    fn a_missing_secret_leaves_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        let task = Task {
            id: "c2".into(),
            spec: Some(
                ServiceSpec {
                    container: Some(ContainerSpec {
                        secrets: vec![reference("gone", "", None)],
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .into(),
            ),
            ..Default::default()
        };
        let e = prepare(root.path(), &task, &HashMap::new()).unwrap_err();
        assert!(e.contains("secret gone"), "{e}");
        assert!(!root.path().join("c2").exists());
    }
}
