//! The build cache: what each build step produced, by a key made of what went into it.
//!
//! # Key
//! sha256 over: the identity of the state before the step (the sha256 of its image config,
//! which names the layer chain, the environment, workdir, user, shell, history; for the first
//! step the base image's id, or `scratch`), the step as evaluated (`created_by`: the
//! instruction after variable substitution; for `RUN` with the build args in scope), and for
//! `COPY`/`ADD` what it reads (a content digest of the context files: names, types, modes,
//! contents, link targets; or the identity of the stage or image copied from).
//!
//! # Value, on disk
//! `<store root>/buildcache/<key>.json`: the image config after the step, byte for byte. A hit
//! adopts it as is, so a fully cached rebuild makes the very same image (same id) and does no
//! work. An entry whose layers are gone is a miss.
//!
//! # Life cycle
//! Entries are written (atomically, fsync'd) after each step that ran, and survive daemon
//! restarts. The layers they name count as used for the store's garbage collection, so `image
//! rm` of a built image keeps its cache (as BuildKit's cache outlives images). `image prune`
//! drops the entries that no remaining image builds on (an entry is referenced while its layer
//! chain is a prefix of some image's), then collects their layers.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::image::config::OciImageConfig;
use crate::image::error::ImageError;
use crate::image::fsutil::write_atomic;

/// The cache directory under the store's root.
pub const CACHE_DIR: &str = "buildcache";

/// The cache of one store.
#[derive(Clone, Debug)]
pub struct BuildCache {
    dir: PathBuf,
}

/// The key of a step (see the module docs).
pub fn step_key(parent: &str, created_by: &str, inputs: &str) -> String {
    let mut h = Sha256::new();
    for part in ["shoal-build-cache-v1", parent, created_by, inputs] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The identity of a build state: the sha256 of its config's canonical JSON.
pub fn state_id(config: &OciImageConfig) -> (String, Vec<u8>) {
    let bytes = serde_json::to_vec(config).unwrap_or_default();
    (hex::encode(Sha256::digest(&bytes)), bytes)
}

impl BuildCache {
    /// The cache of the store at `store_root` (its directory is made if missing).
    pub fn open(store_root: &Path) -> Result<BuildCache, ImageError> {
        let dir = store_root.join(CACHE_DIR);
        fs::create_dir_all(&dir).map_err(ImageError::io("create directory", &dir))?;
        Ok(BuildCache { dir })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The config a step produced, if cached (an unreadable entry is a miss).
    pub fn get(&self, key: &str) -> Option<(OciImageConfig, Vec<u8>)> {
        let bytes = fs::read(self.path(key)).ok()?;
        let config = serde_json::from_slice(&bytes).ok()?;
        Some((config, bytes))
    }

    /// Records what a step produced.
    pub fn put(&self, key: &str, config_bytes: &[u8]) -> Result<(), ImageError> {
        write_atomic(&self.path(key), config_bytes)
    }
}

/// A cache entry's file and its layer chain (None: unreadable).
type Entry = (PathBuf, Option<Vec<String>>);

/// Every cache entry (unreadable ones too: the next prune removes them).
fn entries(store_root: &Path) -> Result<Vec<Entry>, ImageError> {
    let dir = store_root.join(CACHE_DIR);
    let list = match fs::read_dir(&dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ImageError::io("list directory", &dir)(e)),
    };
    let mut out = Vec::new();
    for entry in list {
        let entry = entry.map_err(ImageError::io("list directory", &dir))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let chain = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<OciImageConfig>(&b).ok())
            .map(|c| c.rootfs.diff_ids);
        out.push((path, chain));
    }
    Ok(out)
}

/// The layers cache entries use (kept by garbage collection).
pub fn layers_in_use(store_root: &Path) -> Result<BTreeSet<String>, ImageError> {
    Ok(entries(store_root)?
        .into_iter()
        .filter_map(|(_, chain)| chain)
        .flatten()
        .collect())
}

/// Drops the entries no image builds on (`images`: every remaining image's layer chain) and
/// the unreadable ones; returns how many went.
pub fn drop_unreferenced(store_root: &Path, images: &[Vec<String>]) -> Result<usize, ImageError> {
    let mut dropped = 0;
    for (path, chain) in entries(store_root)? {
        let keep = chain.is_some_and(|c| images.iter().any(|img| img.starts_with(&c)));
        if !keep {
            match fs::remove_file(&path) {
                Ok(()) => dropped += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io("remove", &path)(e)),
            }
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(layers: &[&str]) -> OciImageConfig {
        let mut c = OciImageConfig::default();
        c.rootfs.diff_ids = layers.iter().map(|l| l.to_string()).collect();
        c
    }

    #[test]
    fn build_cache_keys_separate_their_parts() {
        assert_ne!(step_key("a", "bc", ""), step_key("ab", "c", ""));
        assert_ne!(step_key("p", "RUN x", ""), step_key("p", "RUN x", "files"));
        assert_eq!(step_key("p", "RUN x", ""), step_key("p", "RUN x", ""));
        let (a, _) = state_id(&config(&["sha256:1"]));
        let (b, _) = state_id(&config(&["sha256:2"]));
        assert_ne!(a, b);
    }

    #[test]
    fn build_cache_put_get_and_prune() {
        let t = tempfile::tempdir().expect("tempdir");
        let cache = BuildCache::open(t.path()).expect("open");
        let (_, one) = state_id(&config(&["sha256:a"]));
        let (_, two) = state_id(&config(&["sha256:a", "sha256:b"]));
        let (_, other) = state_id(&config(&["sha256:x"]));
        cache.put("k1", &one).expect("put");
        cache.put("k2", &two).expect("put");
        cache.put("k3", &other).expect("put");
        fs::write(t.path().join(CACHE_DIR).join("bad.json"), b"{").expect("write");
        let (got, bytes) = cache.get("k2").expect("hit");
        assert_eq!(bytes, two);
        assert_eq!(got.rootfs.diff_ids.len(), 2);
        assert!(cache.get("nope").is_none());
        assert!(cache.get("bad").is_none());
        let used = layers_in_use(t.path()).expect("used");
        assert_eq!(
            used.into_iter().collect::<Vec<_>>(),
            ["sha256:a", "sha256:b", "sha256:x"]
        );
        let images = vec![vec![
            "sha256:a".to_string(),
            "sha256:b".to_string(),
            "sha256:c".to_string(),
        ]];
        assert_eq!(drop_unreferenced(t.path(), &images).expect("prune"), 2);
        assert!(cache.get("k1").is_some());
        assert!(cache.get("k2").is_some());
        assert!(cache.get("k3").is_none());
    }
}
