//! From a task's mounts to the runtime's: volumes are created on first use (Docker's local
//! driver, filled from the image on first mount unless `nocopy`) and marked in use by the
//! container; binds pass through; tmpfs mounts get their size and mode.
//!
//! A task's anonymous volumes (a mount with no source) belong to its container and go with
//! it, as with `docker run --rm`; named volumes stay until `volume rm`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use shoal_proto::{MountType, Task};

use crate::runtime::{Mount, MountKind, TmpfsMount};
use crate::volume::VolumeStore;

/// The runtime mounts of a task.
#[derive(Debug, Default, PartialEq)]
pub struct TaskMounts {
    pub mounts: Vec<Mount>,
    pub tmpfs: Vec<TmpfsMount>,
}

/// Resolves the task's mounts, creating and acquiring its volumes. On error, the volumes
/// acquired so far are released again.
pub fn prepare(volumes: &VolumeStore, task: &Task) -> Result<TaskMounts, String> {
    let result = resolve(volumes, task);
    if result.is_err() {
        release(volumes, &task.id);
    }
    result
}

fn resolve(volumes: &VolumeStore, task: &Task) -> Result<TaskMounts, String> {
    let spec = task
        .spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .cloned()
        .unwrap_or_default();
    let mut out = TaskMounts::default();
    for m in &spec.mounts {
        match m.r#type() {
            MountType::Tmpfs => out.tmpfs.push(tmpfs(m)?),
            MountType::Bind => out.mounts.push(Mount {
                kind: MountKind::Bind,
                source: PathBuf::from(&m.source),
                target: m.target.clone(),
                read_only: m.read_only,
                propagation: (!m.propagation.is_empty()).then(|| m.propagation.clone()),
                copy_up: false,
                create_host_path: m.create_host_path,
            }),
            MountType::Volume => {
                let volume = if m.source.is_empty() {
                    volumes.anonymous()
                } else {
                    let labels: BTreeMap<String, String> =
                        m.volume_labels.clone().into_iter().collect();
                    volumes.create(&m.source, labels)
                }
                .map_err(|e| format!("volume for {}: {e}", m.target))?;
                volumes
                    .acquire(&volume.name, &task.id)
                    .map_err(|e| format!("volume {}: {e}", volume.name))?;
                out.mounts.push(Mount {
                    kind: MountKind::Volume,
                    source: volume.mountpoint,
                    target: m.target.clone(),
                    read_only: m.read_only,
                    propagation: None,
                    copy_up: !m.no_copy,
                    create_host_path: false,
                });
            }
        }
    }
    Ok(out)
}

/// A tmpfs mount: the long syntax carries size and mode; the compose `tmpfs:` short form
/// `/run:size=64m,mode=1777` carries them in `source`.
fn tmpfs(m: &shoal_proto::Mount) -> Result<TmpfsMount, String> {
    let mut mount = TmpfsMount {
        path: m.target.clone(),
        size: m.tmpfs_size,
        mode: m.tmpfs_mode,
    };
    let options = m.source.split_once(':').map(|(_, o)| o).unwrap_or("");
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option.split_once('=') {
            Some(("size", v)) => mount.size = Some(parse_size(v)?),
            Some(("mode", v)) => {
                mount.mode = Some(u32::from_str_radix(v, 8).map_err(|_| {
                    format!("tmpfs {}: mode {v:?} is not an octal number", m.target)
                })?)
            }
            _ => {
                return Err(format!(
                    "tmpfs {}: unknown option {option:?} (size=, mode=)",
                    m.target
                ))
            }
        }
    }
    Ok(mount)
}

/// `64m`, `1g`, `512k`, `1024`.
fn parse_size(text: &str) -> Result<u64, String> {
    let lower = text.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches('b');
    let (digits, unit) = match trimmed.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&trimmed[..i], c),
        _ => (trimmed, ' '),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("size {text:?}: use a number with k, m or g"))?;
    let shift = match unit {
        ' ' => 0,
        'k' => 10,
        'm' => 20,
        'g' => 30,
        _ => return Err(format!("size {text:?}: use a number with k, m or g")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// The container is gone: it no longer uses its volumes, and its anonymous ones go.
pub fn release(volumes: &VolumeStore, container_id: &str) {
    let released = match volumes.release(container_id) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(container = container_id, "releasing volumes: {e}");
            return;
        }
    };
    for name in released {
        let anonymous_and_unused = volumes.get(&name).is_ok_and(|v| v.anonymous)
            && volumes.users(&name).is_ok_and(|u| u.is_empty());
        if anonymous_and_unused {
            if let Err(e) = volumes.remove(&name, false) {
                tracing::warn!(volume = %name, "removing anonymous volume: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ContainerSpec, ServiceSpec};

    fn task(mounts: Vec<shoal_proto::Mount>) -> Task {
        Task {
            id: "t1".into(),
            spec: Some(
                ServiceSpec {
                    container: Some(ContainerSpec {
                        mounts,
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .into(),
            ),
            ..Default::default()
        }
    }

    fn mount(kind: MountType, source: &str, target: &str) -> shoal_proto::Mount {
        shoal_proto::Mount {
            r#type: kind as i32,
            source: source.into(),
            target: target.into(),
            ..Default::default()
        }
    }

    #[test]
    fn volumes_are_made_used_and_anonymous_ones_go_with_the_container() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = VolumeStore::open(dir.path()).expect("store");
        let t = task(vec![
            mount(MountType::Volume, "data", "/data"),
            mount(MountType::Volume, "", "/cache"),
            mount(MountType::Bind, "/srv", "/srv"),
            mount(MountType::Tmpfs, "/run:size=64m,mode=1777", "/run"),
        ]);
        let m = prepare(&store, &t).expect("prepares");
        assert_eq!(m.mounts.len(), 3);
        assert!(m.mounts[0].copy_up);
        assert_eq!(m.mounts[0].source, store.data_path("data"));
        assert_eq!(m.tmpfs[0].size, Some(64 << 20));
        assert_eq!(m.tmpfs[0].mode, Some(0o1777));
        assert_eq!(store.users("data").expect("users"), ["t1"]);
        assert_eq!(store.list().expect("list").len(), 2);
        release(&store, "t1");
        let left: Vec<String> = store
            .list()
            .expect("list")
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(
            left,
            ["data"],
            "the named volume stays, the anonymous one goes"
        );
    }

    #[test]
    fn bad_tmpfs_options_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = VolumeStore::open(dir.path()).expect("store");
        let t = task(vec![mount(MountType::Tmpfs, "/run:sise=1", "/run")]);
        assert!(prepare(&store, &t).unwrap_err().contains("unknown option"));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("12q").is_err());
    }
}
