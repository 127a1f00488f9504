//! Named volumes of one node: Docker's `local` driver.
//!
//! # Layout: `<dir>/` (e.g. `<data_dir>/volumes`)
//!
//! `<name>/_data/` (the content, what containers mount) · `<name>/volume.json` ([`Volume`]
//! minus the computed mountpoint) · `<name>/users.json` (ids of the containers that use it, see
//! [`VolumeStore::acquire`]). Every metadata write is atomic and fsync'd, so both the volumes
//! and who uses them survive a crash or a restart of the daemon.
//!
//! # Choices (where Docker differs or is silent)
//! - `create` of an existing name returns the existing volume (Docker's behaviour), whatever
//!   labels were asked for.
//! - `remove(name, force)`: `force` only makes a missing volume fine, as `docker volume rm -f`;
//!   a volume in use is never removed.
//! - `prune` removes every unused volume, named or anonymous (`docker volume prune --all`).
//! - Driver options (`driver_opts`: `type`, `device`, `o` for tmpfs/nfs) are not supported
//!   yet: they are refused with a clear error rather than ignored.
//! - Removal first renames the volume to a hidden `.trash-*` name, then deletes it: a crash
//!   mid-delete never leaves a half-empty volume under its name (leftovers are swept by `open`).

mod api;
pub use api::VolumesApi;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

const DATA_DIR: &str = "_data";
const META_FILE: &str = "volume.json";
const USERS_FILE: &str = "users.json";
const TRASH_PREFIX: &str = ".trash-";

/// The only driver there is.
pub const LOCAL_DRIVER: &str = "local";

/// One volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    /// Always [`LOCAL_DRIVER`].
    pub driver: String,
    /// Unix milliseconds.
    pub created_at: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Made by [`VolumeStore::anonymous`] (a container's `VOLUME` or a `- /path` mount).
    #[serde(default)]
    pub anonymous: bool,
    /// The host directory containers mount (`<dir>/<name>/_data`). Computed, not stored.
    #[serde(skip)]
    pub mountpoint: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(
        "invalid volume name {0:?}: it must be at least 2 characters of [a-zA-Z0-9_.-], \
         starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("no such volume {0:?}")]
    NotFound(String),
    #[error("volume {name} is in use by container {container}")]
    InUse { name: String, container: String },
    #[error("volume {name}: {what}")]
    Unsupported { name: String, what: String },
    #[error("volume {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt volume metadata {}: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn validate_name(name: &str) -> Result<(), VolumeError> {
    let b = name.as_bytes();
    let ok = b.len() >= 2
        && b.len() <= 255
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::InvalidName(name.to_string()))
    }
}

/// The volumes of one node.
#[derive(Debug)]
pub struct VolumeStore {
    root: PathBuf,
    /// Serializes this process's changes (metadata read-modify-write).
    lock: Mutex<()>,
}

impl VolumeStore {
    /// Opens (creating it if missing) the store in `dir`, and finishes interrupted removals.
    pub fn open(dir: impl Into<PathBuf>) -> Result<VolumeStore, VolumeError> {
        let root: PathBuf = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(io_err("create", &root))?;
        for entry in fs::read_dir(&root)
            .map_err(io_err("list", &root))?
            .flatten()
        {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(TRASH_PREFIX)
            {
                let p = entry.path();
                if let Err(e) = fs::remove_dir_all(&p) {
                    tracing::warn!(path = %p.display(), error = %e, "removing a deleted volume");
                }
            }
        }
        Ok(VolumeStore {
            root,
            lock: Mutex::new(()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host directory a volume's containers mount (whether or not it exists).
    pub fn data_path(&self, name: &str) -> PathBuf {
        self.root.join(name).join(DATA_DIR)
    }

    /// Creates the volume, or returns it if it exists (Docker's `volume create` is idempotent).
    pub fn create(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Volume, VolumeError> {
        self.create_with(name, labels, BTreeMap::new(), false)
    }

    /// As [`VolumeStore::create`], with driver options (none are supported yet: non-empty
    /// options are refused).
    pub fn create_with(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        options: BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<Volume, VolumeError> {
        validate_name(name)?;
        if !options.is_empty() {
            let keys: Vec<&str> = options.keys().map(String::as_str).collect();
            return Err(VolumeError::Unsupported {
                name: name.to_string(),
                what: format!(
                    "driver options ({}) are not supported by the local driver yet",
                    keys.join(", ")
                ),
            });
        }
        let _g = self.guard();
        if let Some(v) = self.load(name)? {
            return Ok(v);
        }
        let vol = Volume {
            name: name.to_string(),
            driver: LOCAL_DRIVER.to_string(),
            created_at: now_ms(),
            labels,
            options,
            anonymous,
            mountpoint: self.data_path(name),
        };
        // Built under a temporary name and renamed into place: a crash leaves no half volume.
        let tmp = self.root.join(format!("{TRASH_PREFIX}new-{name}"));
        let _ = fs::remove_dir_all(&tmp);
        let result = (|| {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&tmp)
                .map_err(io_err("create", &tmp))?;
            let data = tmp.join(DATA_DIR);
            // Docker's local driver: the data dir is root-owned 0755 until a copy-up sets it.
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&data)
                .map_err(io_err("create", &data))?;
            fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(io_err("chmod", &data))?;
            write_json(&tmp.join(META_FILE), &vol)?;
            write_json(&tmp.join(USERS_FILE), &Vec::<String>::new())?;
            let dst = self.root.join(name);
            fs::rename(&tmp, &dst).map_err(io_err("rename", &dst))?;
            sync_dir(&self.root).map_err(io_err("fsync", &self.root))
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result.map(|()| vol)
    }

    /// A new anonymous volume with a random 64-hex-digit name.
    pub fn anonymous(&self) -> Result<Volume, VolumeError> {
        let name = random_hex64().map_err(io_err(
            "read random bytes for a volume name",
            Path::new("getrandom"),
        ))?;
        self.create_with(&name, BTreeMap::new(), BTreeMap::new(), true)
    }

    fn load(&self, name: &str) -> Result<Option<Volume>, VolumeError> {
        let path = self.root.join(name).join(META_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let mut v: Volume = serde_json::from_slice(&bytes)
            .map_err(|source| VolumeError::Corrupt { path, source })?;
        v.mountpoint = self.data_path(name);
        Ok(Some(v))
    }

    pub fn get(&self, name: &str) -> Result<Volume, VolumeError> {
        validate_name(name)?;
        self.load(name)?
            .ok_or_else(|| VolumeError::NotFound(name.to_string()))
    }

    /// Every volume, by name. Unreadable ones are skipped with a warning.
    pub fn list(&self) -> Result<Vec<Volume>, VolumeError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err("list", &self.root))? {
            let entry = entry.map_err(io_err("list", &self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_name(&name).is_err() {
                continue;
            }
            match self.load(&name) {
                Ok(Some(v)) => out.push(v),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "unreadable volume, skipped"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read_users(&self, name: &str) -> Result<Vec<String>, VolumeError> {
        let path = self.root.join(name).join(USERS_FILE);
        match fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|source| VolumeError::Corrupt { path, source })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// The containers using the volume.
    pub fn users(&self, name: &str) -> Result<Vec<String>, VolumeError> {
        self.get(name)?;
        self.read_users(name)
    }

    /// Records that `container_id` uses the volume (idempotent). Persisted.
    pub fn acquire(&self, name: &str, container_id: &str) -> Result<(), VolumeError> {
        let _g = self.guard();
        self.get(name)?;
        let mut users = self.read_users(name)?;
        if !users.iter().any(|u| u == container_id) {
            users.push(container_id.to_string());
            users.sort();
            write_json(&self.root.join(name).join(USERS_FILE), &users)?;
        }
        Ok(())
    }

    /// Forgets `container_id` as a user of every volume (idempotent). Returns the volumes it
    /// used.
    pub fn release(&self, container_id: &str) -> Result<Vec<String>, VolumeError> {
        let _g = self.guard();
        let mut released = Vec::new();
        for v in self.list()? {
            let mut users = self.read_users(&v.name)?;
            let before = users.len();
            users.retain(|u| u != container_id);
            if users.len() != before {
                write_json(&self.root.join(&v.name).join(USERS_FILE), &users)?;
                released.push(v.name);
            }
        }
        Ok(released)
    }

    /// Removes the volume and its data. Refused while a container uses it; `force` only makes
    /// a missing volume fine (as `docker volume rm -f`).
    pub fn remove(&self, name: &str, force: bool) -> Result<(), VolumeError> {
        validate_name(name)?;
        let _g = self.guard();
        self.remove_locked(name, force)
    }

    fn remove_locked(&self, name: &str, force: bool) -> Result<(), VolumeError> {
        if self.load(name)?.is_none() {
            return if force {
                Ok(())
            } else {
                Err(VolumeError::NotFound(name.to_string()))
            };
        }
        if let Some(container) = self.read_users(name)?.into_iter().next() {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                container,
            });
        }
        let dir = self.root.join(name);
        let trash = self.root.join(format!("{TRASH_PREFIX}{name}-{}", now_ms()));
        fs::rename(&dir, &trash).map_err(io_err("rename", &dir))?;
        sync_dir(&self.root).map_err(io_err("fsync", &self.root))?;
        fs::remove_dir_all(&trash).map_err(io_err("remove", &trash))
    }

    /// Removes every volume no container uses; returns their names.
    pub fn prune(&self) -> Result<Vec<String>, VolumeError> {
        let _g = self.guard();
        let mut removed = Vec::new();
        for v in self.list()? {
            if self.read_users(&v.name)?.is_empty() {
                self.remove_locked(&v.name, true)?;
                removed.push(v.name);
            }
        }
        Ok(removed)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn random_hex64() -> io::Result<String> {
    let mut buf = [0u8; 32];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom(2) writes at most the given length into the buffer.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(hex::encode(buf))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Atomic, durable JSON write: temp file, fsync, rename, fsync of the directory.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), VolumeError> {
    let data = serde_json::to_vec_pretty(value).map_err(|e| VolumeError::Io {
        op: "encode",
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })()
    .map_err(io_err("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, VolumeStore) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = VolumeStore::open(tmp.path().join("volumes")).expect("open");
        (tmp, s)
    }

    #[test]
    fn names_are_validated_like_docker() {
        for good in ["ab", "a1", "web_data", "x.y-z", "0abc"] {
            validate_name(good).expect(good);
        }
        for bad in ["", "a", "_ab", ".ab", "-ab", "a/b", "a b", "../x", "a\0b"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        let (_t, s) = store();
        let err = s.create("../etc", BTreeMap::new()).expect_err("bad");
        assert!(err.to_string().contains("invalid volume name"), "{err}");
    }

    #[test]
    fn create_is_idempotent_and_persists() {
        let (tmp, s) = store();
        let labels = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let v = s.create("data", labels.clone()).expect("create");
        assert_eq!(v.driver, "local");
        assert_eq!(v.labels, labels);
        assert_eq!(v.mountpoint, tmp.path().join("volumes/data/_data"));
        assert!(v.mountpoint.is_dir());
        fs::write(v.mountpoint.join("f"), "x").expect("write");
        let again = s.create("data", BTreeMap::new()).expect("again");
        assert_eq!(again, v, "create of an existing name returns it");
        assert!(v.mountpoint.join("f").exists(), "data kept");
        let reopened = VolumeStore::open(tmp.path().join("volumes")).expect("reopen");
        assert_eq!(reopened.get("data").expect("get"), v);
        assert_eq!(reopened.list().expect("list"), vec![v]);
        assert!(matches!(s.get("nope"), Err(VolumeError::NotFound(_))));
        let err = s
            .create_with(
                "opts",
                BTreeMap::new(),
                BTreeMap::from([("type".into(), "nfs".into())]),
                false,
            )
            .expect_err("options");
        assert!(err.to_string().contains("not supported"), "{err}");
        assert!(s.get("opts").is_err(), "nothing half-made");
    }

    #[test]
    fn in_use_volumes_are_kept_and_refs_survive_restart() {
        let (tmp, s) = store();
        s.create("db", BTreeMap::new()).expect("create");
        s.create("cache", BTreeMap::new()).expect("create");
        s.acquire("db", "c1").expect("acquire");
        s.acquire("db", "c1").expect("idempotent");
        s.acquire("cache", "c1").expect("acquire");
        s.acquire("db", "c2").expect("acquire");
        assert!(matches!(
            s.acquire("nope", "c1"),
            Err(VolumeError::NotFound(_))
        ));
        let err = s.remove("db", true).expect_err("in use");
        assert_eq!(err.to_string(), "volume db is in use by container c1");

        // A restarted daemon sees the same users.
        let s = VolumeStore::open(tmp.path().join("volumes")).expect("reopen");
        assert_eq!(s.users("db").expect("users"), ["c1", "c2"]);
        assert_eq!(s.release("c1").expect("release"), ["cache", "db"]);
        assert!(s.release("c1").expect("again").is_empty());
        assert_eq!(s.prune().expect("prune"), ["cache"]);
        assert!(s.get("cache").is_err());
        assert!(s.get("db").is_ok(), "still used by c2");
        s.release("c2").expect("release");
        s.remove("db", false).expect("remove");
        assert!(!tmp.path().join("volumes/db").exists());
        assert!(matches!(
            s.remove("db", false),
            Err(VolumeError::NotFound(_))
        ));
        s.remove("db", true).expect("force: missing is fine");
    }

    #[test]
    fn anonymous_volumes_have_random_hex_names() {
        let (_t, s) = store();
        let a = s.anonymous().expect("anon");
        let b = s.anonymous().expect("anon");
        assert_eq!(a.name.len(), 64);
        assert!(a.name.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.name, b.name);
        assert!(a.anonymous && a.mountpoint.is_dir());
        assert_eq!(s.prune().expect("prune").len(), 2);
        assert!(s.list().expect("list").is_empty());
    }
}
