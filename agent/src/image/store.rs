//! The image store proper: layers, image configs, tags, and their life cycle on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::busybox;
use super::config::{
    format_rfc3339, oci_architecture, parse_rfc3339, OciHistory, OciImageConfig, OciRootFs,
    OciRunConfig,
};
use super::error::ImageError;
use super::fsutil::{fsync_dir, remove_tree, write_atomic, TMP_MARKER};
use super::reference::Reference;
use super::unpack::{compression_of, unpack_layer, ImportLimits, UnpackedLayer};

/// Length of a layer directory name (hex digits of the digest) when there is no collision;
/// longer prefixes, in steps of 4, up to the full 64, are used when there is.
const SHORT_ID_LEN: usize = 12;
/// A bare hex string this long or longer may be an image id prefix (`sha256:` prefixes may be
/// any length).
const MIN_BARE_ID_PREFIX: usize = 4;
const TAGS_FILE: &str = "tags.json";

/// The node's image store. Cheap to clone; safe to use from many threads (metadata changes are
/// serialised by a mutex; unpacking, the slow part, runs outside it). One process per root.
#[derive(Clone, Debug)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    limits: ImportLimits,
    lock: Mutex<()>,
    /// Layers (diff ids) being unpacked, and loads' pins (diff id → count): a pinned layer is
    /// never garbage-collected, a layer being unpacked is not unpacked a second time.
    layers_busy: Mutex<LayerLocks>,
    layers_cv: Condvar,
}

#[derive(Debug, Default)]
struct LayerLocks {
    unpacking: BTreeSet<String>,
    pinned: BTreeMap<String, usize>,
    /// Layers placed whose files (and blob) may not be on disk yet: whatever registers an
    /// image or a build cache entry on one syncs first ([`ImageStore::sync_layers`]). Until
    /// then no image names them, so after a crash recovery removes them as unused.
    unsynced: BTreeSet<String>,
}

/// A container that uses an image: its image layers (to match an image by), its name (for the
/// messages) and whether it runs. Given to [`ImageStore::remove_with`] and
/// [`ImageStore::prune`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerUse {
    /// The container's name.
    pub name: String,
    /// Its image layer directories, lowest first (as [`ResolvedImage::layer_dirs`]).
    pub layers: Vec<PathBuf>,
    /// Whether it runs (or is paused).
    pub running: bool,
}

/// What a removal or a prune did, in Docker's terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoveReport {
    /// `name:tag` references removed.
    pub untagged: Vec<String>,
    /// Image ids deleted.
    pub deleted: Vec<String>,
    /// Layer digests (diff ids) deleted.
    pub layers: Vec<String>,
    /// Bytes of layer content and blobs freed.
    pub reclaimed: u64,
}

/// An image and where its layers are on disk.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedImage {
    /// The image.
    pub image: shoal_proto::Image,
    /// Its layers' unpacked directories, lowest first (overlay wants them the other way round:
    /// `lowerdir=top:...:bottom`).
    pub layer_dirs: Vec<PathBuf>,
}

/// `layers/<short>.json`: which layer a short directory name stands for.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct LayerRecord {
    /// `sha256:<hex>` of the uncompressed tar stream (OCI diff id).
    digest: String,
    /// Bytes of file content.
    size: u64,
    /// Unix milliseconds.
    created: i64,
    /// The layer as it came (compressed or not), in `blobs/sha256/`: what `save` writes and a
    /// manifest names. Absent for layers stored by earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blob: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    blob_size: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// `tags.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct TagsFile {
    /// `name:tag` → `sha256:<hex>` image id.
    tags: BTreeMap<String, String>,
    /// Image id → the digest of its OCI manifest (a blob in `blobs/sha256/`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    manifests: BTreeMap<String, String>,
    /// Other digests an image is known by → its id: the index it was pulled through, or a
    /// peer's manifest that names other blobs than this store keeps for the same layers. So
    /// that `name@<that digest>`, as a service pins it, resolves here too.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    aliases: BTreeMap<String, String>,
}

/// An image as another node fetches it (see [`ImageStore::describe_for_peer`]).
#[derive(Clone, Debug)]
pub(crate) struct PeerImageBytes {
    /// `sha256:<hex>` of the config.
    pub id: String,
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
}

/// A layer blob received (in `tmp/`), not yet in `blobs/`.
#[derive(Debug)]
pub(crate) struct StagedBlob {
    pub path: PathBuf,
    pub digest: String,
    pub size: u64,
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        // Moved into `blobs/` (then this is a no-op), or not needed.
        let _ = fs::remove_file(&self.path);
    }
}

/// An image ready to be registered by [`ImageStore::commit_images`]: its layers are in place
/// (and pinned).
#[derive(Debug)]
pub(crate) struct PreparedImage {
    pub config_bytes: Vec<u8>,
    pub config: OciImageConfig,
    /// The manifest it came with (its bytes are kept, so its digest stays), or None to make one.
    pub manifest: Option<Vec<u8>>,
    /// One staged (or already stored: None) blob per layer, lowest first.
    pub blobs: Vec<Option<StagedBlob>>,
    pub tags: Vec<Reference>,
}

/// A save in progress: everything opened under the lock, so that a concurrent removal cannot
/// pull files from under it.
pub(crate) struct SaveSet {
    pub images: Vec<SaveImage>,
}

pub(crate) struct SaveImage {
    pub config_hex: String,
    pub config_bytes: Vec<u8>,
    pub manifest_bytes: Vec<u8>,
    pub tags: Vec<Reference>,
    /// (blob hex, size, open file), lowest first.
    pub layers: Vec<(String, u64, fs::File)>,
}

pub(crate) const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The OCI media type of a layer blob, from its first bytes.
pub(crate) fn layer_media_type(head: &[u8]) -> &'static str {
    match compression_of(head) {
        Some("gzip") => "application/vnd.oci.image.layer.v1.tar+gzip",
        Some("zstd") => "application/vnd.oci.image.layer.v1.tar+zstd",
        _ => "application/vnd.oci.image.layer.v1.tar",
    }
}

/// What a reference resolved to.
enum Target {
    /// A tag (`name:tag`) and the image hex id it points at.
    Tag(String, String),
    /// An image hex id.
    Id(String),
}

/// What to put into a new image's config.
struct NewImage {
    run: OciRunConfig,
    created_ms: i64,
    created_by: String,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, e.g. `/var/lib/shoal/images`, with the
    /// default [`ImportLimits`]. Leftovers of a crash (temporary files and directories, layers
    /// no image uses) are cleaned up.
    pub fn open(root: PathBuf) -> Result<ImageStore, ImageError> {
        ImageStore::open_with_limits(root, ImportLimits::default())
    }

    /// [`ImageStore::open`] with explicit import limits.
    pub fn open_with_limits(root: PathBuf, limits: ImportLimits) -> Result<ImageStore, ImageError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&root)
            .map_err(ImageError::io("create the image store directory", &root))?;
        // Absolute, so that layer directories can be used as overlay lowerdirs as they are.
        let root = fs::canonicalize(&root).map_err(ImageError::io("resolve", &root))?;
        for sub in ["layers", "images", "blobs", "blobs/sha256"] {
            let dir = root.join(sub);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(ImageError::io("create directory", &dir))?;
        }
        let tmp = root.join("tmp");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&tmp)
            .map_err(ImageError::io("create directory", &tmp))?;
        let store = ImageStore {
            inner: Arc::new(Inner {
                root,
                limits,
                lock: Mutex::new(()),
                layers_busy: Mutex::new(LayerLocks::default()),
                layers_cv: Condvar::new(),
            }),
        };
        store.recover()?;
        Ok(store)
    }

    /// The store's directory (absolute).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The import limits in force.
    pub fn limits(&self) -> ImportLimits {
        self.inner.limits
    }

    /// Like `docker import`: a rootfs tarball (plain or gzip, detected by magic bytes) becomes a
    /// one-layer image tagged `name` (`name` alone means `name:latest`). The config has no
    /// command and Docker's default `PATH`. A failed import leaves nothing behind; a tag that
    /// pointed at another image moves, and that image stays, untagged (as in Docker).
    pub fn import_tar<R: Read>(
        &self,
        name: &str,
        reader: R,
    ) -> Result<shoal_proto::Image, ImageError> {
        let reference = Reference::parse(name)?;
        let new = NewImage {
            run: OciRunConfig {
                env: Some(vec![busybox::DEFAULT_PATH_ENV.to_string()]),
                ..Default::default()
            },
            created_ms: now_ms(),
            created_by: "shoal import".into(),
        };
        self.import_layer(&reference, reader, new)
    }

    /// `busybox:latest` from the host's busybox-static (`/bin/busybox`). The same binary always
    /// gives the same image id.
    pub fn bootstrap_busybox(&self) -> Result<shoal_proto::Image, ImageError> {
        let path = busybox::find_busybox()?;
        self.bootstrap_busybox_from(&path)
    }

    /// [`ImageStore::bootstrap_busybox`] from a given binary (must be statically linked).
    pub fn bootstrap_busybox_from(
        &self,
        busybox_path: &Path,
    ) -> Result<shoal_proto::Image, ImageError> {
        let tarball = busybox::rootfs_tar(busybox_path)?;
        let reference = Reference {
            name: "busybox".into(),
            tag: "latest".into(),
            digest: None,
        };
        let new = NewImage {
            run: OciRunConfig {
                env: Some(vec![busybox::DEFAULT_PATH_ENV.to_string()]),
                cmd: Some(vec!["sh".into()]),
                ..Default::default()
            },
            created_ms: 0,
            created_by: "shoal bootstrap busybox".into(),
        };
        self.import_layer(&reference, io::Cursor::new(tarball), new)
    }

    /// Every image, newest first.
    pub fn list(&self) -> Result<Vec<shoal_proto::Image>, ImageError> {
        let _guard = self.lock();
        let tags = self.read_tags()?;
        let mut images = Vec::new();
        for hex in self.image_hexes()? {
            let config = self.read_config(&hex)?;
            images.push(self.to_proto(&hex, &config, &tags)?);
        }
        images.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        Ok(images)
    }

    /// Resolves a reference (`busybox`, `busybox:latest`, `name:tag`, an image id `sha256:…`, or
    /// a unique id prefix, with or without `sha256:`) to the image and its layer directories.
    /// A name is tried as a tag first, then (if it is hex, 4+ digits) as an id prefix.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let _guard = self.lock();
        let tags = self.read_tags()?;
        let hex = match self.lookup(reference, &tags)? {
            Target::Tag(_, hex) | Target::Id(hex) => hex,
        };
        let config = self.read_config(&hex)?;
        let image = self.to_proto(&hex, &config, &tags)?;
        let mut layer_dirs = Vec::with_capacity(config.rootfs.diff_ids.len());
        for digest in &config.rootfs.diff_ids {
            let (short, _) = self
                .find_layer(digest)?
                .ok_or_else(|| ImageError::Corrupt {
                    path: self.image_path(&hex),
                    detail: format!(
                    "image {} needs layer {digest}, which is not in the store; remove the image \
                     and import it again",
                    image.id
                ),
                })?;
            layer_dirs.push(self.layers_dir().join(short));
        }
        Ok(ResolvedImage { image, layer_dirs })
    }

    /// Like `docker tag`: points `new_tag` (`name` or `name:tag`) at the image `reference`
    /// resolves to, moving the tag if it named another image.
    pub fn tag(&self, reference: &str, new_tag: &str) -> Result<shoal_proto::Image, ImageError> {
        let target = Reference::parse(new_tag)?;
        let _guard = self.lock();
        let mut tags = self.read_tags()?;
        let hex = match self.lookup(reference, &tags)? {
            Target::Tag(_, hex) | Target::Id(hex) => hex,
        };
        let config = self.read_config(&hex)?;
        tags.tags
            .insert(target.to_string(), format!("sha256:{hex}"));
        self.write_tags(&tags)?;
        self.to_proto(&hex, &config, &tags)
    }

    /// Like `docker rmi`: by tag, removes the tag, and the image too once no tag is left; by
    /// id, removes the image (refused while more than one tag names it). Layers no other image
    /// uses are deleted.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        self.remove_with(reference, false, &[]).map(|_| ())
    }

    /// `docker rmi [-f]`, knowing which containers use which layers. An image a container uses
    /// (even a stopped one) is not deleted: without `force` the removal is refused; with it, the
    /// tag goes and the image stays, untagged, as in Docker. A running container's image is
    /// never deleted, forced or not. `force` also removes by id an image several tags name.
    pub fn remove_with(
        &self,
        reference: &str,
        force: bool,
        users: &[ContainerUse],
    ) -> Result<RemoveReport, ImageError> {
        let _guard = self.lock();
        let mut tags = self.read_tags()?;
        let mut report = RemoveReport::default();
        let (hex, by_tag) = match self.lookup(reference, &tags)? {
            Target::Tag(tag, hex) => (hex, Some(tag)),
            Target::Id(hex) => (hex, None),
        };
        let named: Vec<String> = tags
            .tags
            .iter()
            .filter(|(_, id)| id_hex(id) == Some(hex.as_str()))
            .map(|(t, _)| t.clone())
            .collect();
        // Removing one of several tags only untags (Docker does not check containers then).
        if let Some(tag) = &by_tag {
            if named.len() > 1 {
                tags.tags.remove(tag);
                self.write_tags(&tags)?;
                report.untagged.push(tag.clone());
                return Ok(report);
            }
        } else if named.len() > 1 && !force {
            return Err(ImageError::Conflict {
                id: format!("sha256:{hex}"),
                tags: named,
            });
        }
        let id = format!("sha256:{hex}");
        let layer_dirs = self.layer_dirs_of(&hex)?;
        let using: Vec<&ContainerUse> = users
            .iter()
            .filter(|u| !layer_dirs.is_empty() && u.layers == layer_dirs)
            .collect();
        if let Some(running) = using.iter().find(|u| u.running) {
            return Err(ImageError::InUse {
                reference: reference.to_string(),
                detail: format!(
                    "image {} is being used by running container {} (cannot be forced): stop \
                     and remove the container (or its service) first",
                    short_hex(&hex),
                    running.name
                ),
            });
        }
        if let Some(user) = using.first() {
            if !force {
                return Err(ImageError::InUse {
                    reference: reference.to_string(),
                    detail: format!(
                        "container {} is using image {} (stopped); remove the container first, \
                         or use --force to untag the image (it stays until the container goes)",
                        user.name,
                        short_hex(&hex)
                    ),
                });
            }
        }
        for t in &named {
            tags.tags.remove(t);
            report.untagged.push(t.clone());
        }
        if !named.is_empty() {
            self.write_tags(&tags)?;
        }
        if using.is_empty() {
            report.deleted.push(id);
            self.delete_image(&hex)?;
            self.gc(&mut report)?;
        }
        Ok(report)
    }

    /// Removes every image no tag names (`docker image prune`); returns their ids.
    pub fn prune_dangling(&self) -> Result<Vec<String>, ImageError> {
        Ok(self.prune(false, &[])?.deleted)
    }

    /// `docker image prune [-a]`: removes dangling (untagged) images, or with `all` every image
    /// no container uses; images containers use are kept either way. Then collects the layers
    /// and blobs nothing references. `deleted` lists the image ids first.
    pub fn prune(&self, all: bool, users: &[ContainerUse]) -> Result<RemoveReport, ImageError> {
        let _guard = self.lock();
        let mut tags = self.read_tags()?;
        let tagged: BTreeSet<String> = tags
            .tags
            .values()
            .filter_map(|id| id_hex(id))
            .map(str::to_string)
            .collect();
        let mut report = RemoveReport::default();
        for hex in self.image_hexes()? {
            if tagged.contains(&hex) && !all {
                continue;
            }
            let dirs = self.layer_dirs_of(&hex).unwrap_or_default();
            if users.iter().any(|u| !dirs.is_empty() && u.layers == dirs) {
                continue;
            }
            let id = format!("sha256:{hex}");
            let named: Vec<String> = tags
                .tags
                .iter()
                .filter(|(_, v)| **v == id)
                .map(|(k, _)| k.clone())
                .collect();
            for t in named {
                tags.tags.remove(&t);
                report.untagged.push(t);
            }
            self.write_tags(&tags)?;
            self.delete_image(&hex)?;
            report.deleted.push(id);
        }
        // Build cache entries no remaining image builds on go too (unless a config is
        // unreadable: then nothing can be told to be unreferenced).
        let chains: Result<Vec<_>, _> = self
            .image_hexes()?
            .iter()
            .map(|hex| self.read_config(hex).map(|c| c.rootfs.diff_ids))
            .collect();
        if let Ok(chains) = chains {
            super::build::cache::drop_unreferenced(&self.inner.root, &chains)?;
        }
        self.gc(&mut report)?;
        Ok(report)
    }

    // --- import -----------------------------------------------------------------------------

    fn import_layer<R: Read>(
        &self,
        reference: &Reference,
        reader: R,
        new: NewImage,
    ) -> Result<shoal_proto::Image, ImageError> {
        let tmp = TmpDir::create(&self.inner.root.join("tmp"))?;
        // The tarball as it comes is kept as the layer's blob (what `save` writes back).
        let mut tee = TeeToFile::new(reader, &self.tmp_path())?;
        let unpacked = unpack_layer(&mut tee, tmp.path(), &self.inner.limits)?;
        let blob = tee.finish()?;
        // One syncfs makes the whole layer durable, far cheaper than an fsync per file.
        sync_filesystem(tmp.path())?;

        let _guard = self.lock();
        let (short, layer_is_new) = self.commit_layer(&unpacked, tmp, blob, true)?;
        let result = self.commit_image(reference, &unpacked, new);
        if result.is_err() && layer_is_new {
            // Nothing references the layer yet (we hold the lock): take it back out.
            if let Err(e) = self.delete_layer_files(&short) {
                tracing::warn!(layer = %short, error = %e, "cannot roll back a layer");
            }
        }
        result
    }

    /// Moves a staged blob into `blobs/` (unless there already) and names it in the layer's
    /// record if the record has no blob yet. Caller holds the lock.
    fn attach_blob(&self, diff_id: &str, blob: Option<StagedBlob>) -> Result<(), ImageError> {
        let Some(blob) = blob else {
            return Ok(());
        };
        let Some((short, mut rec)) = self.find_layer(diff_id)? else {
            return Ok(());
        };
        if rec.blob.is_some() {
            return Ok(());
        }
        self.store_blob(&blob, true)?;
        rec.blob = Some(blob.digest.clone());
        rec.blob_size = blob.size;
        write_json(&self.layer_record_path(&short), &rec)
    }

    /// Moves a staged file into `blobs/sha256/<hex>` (dropping it if an identical blob is there).
    /// `durable`: fsynced and the move made durable now; else the caller syncs the file system
    /// before anything names the blob durably.
    fn store_blob(&self, blob: &StagedBlob, durable: bool) -> Result<(), ImageError> {
        let hex = digest_hex(&blob.digest).ok_or_else(|| ImageError::Corrupt {
            path: blob.path.clone(),
            detail: format!("bad blob digest {}", blob.digest),
        })?;
        let dest = self.blobs_dir().join(hex);
        if dest.exists() {
            let _ = fs::remove_file(&blob.path);
            return Ok(());
        }
        if !durable {
            return fs::rename(&blob.path, &dest).map_err(ImageError::io("move a blob to", &dest));
        }
        let f = fs::File::open(&blob.path).map_err(ImageError::io("open", &blob.path))?;
        f.sync_all().map_err(ImageError::io("fsync", &blob.path))?;
        fs::rename(&blob.path, &dest).map_err(ImageError::io("move a blob to", &dest))?;
        fsync_dir(&self.blobs_dir())
    }

    /// Writes bytes as a blob (manifests); returns `sha256:<hex>`.
    fn put_blob_bytes(&self, bytes: &[u8]) -> Result<String, ImageError> {
        let hex = hex::encode(Sha256::digest(bytes));
        let dest = self.blobs_dir().join(&hex);
        if !dest.exists() {
            write_atomic(&dest, bytes)?;
        }
        Ok(format!("sha256:{hex}"))
    }

    /// An OCI manifest for an image whose layers all have blobs; None otherwise.
    fn make_manifest(
        &self,
        config_bytes: &[u8],
        config: &OciImageConfig,
    ) -> Result<Option<Vec<u8>>, ImageError> {
        let mut layers = Vec::new();
        for diff in &config.rootfs.diff_ids {
            let Some((_, rec)) = self.find_layer(diff)? else {
                return Ok(None);
            };
            let Some(blob) = rec.blob else {
                return Ok(None);
            };
            let path = self.blobs_dir().join(digest_hex(&blob).unwrap_or_default());
            let mut head = [0u8; 4];
            let n = fs::File::open(&path)
                .and_then(|mut f| f.read(&mut head))
                .map_err(ImageError::io("read", &path))?;
            layers.push(serde_json::json!({
                "mediaType": layer_media_type(&head[..n]),
                "digest": blob,
                "size": rec.blob_size,
            }));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {
                "mediaType": MEDIA_CONFIG,
                "digest": format!("sha256:{}", hex::encode(Sha256::digest(config_bytes))),
                "size": config_bytes.len(),
            },
            "layers": layers,
        });
        Ok(Some(serde_json::to_vec(&manifest).map_err(|e| {
            ImageError::Corrupt {
                path: self.blobs_dir(),
                detail: format!("cannot encode a manifest: {e}"),
            }
        })?))
    }

    /// Records an image's manifest (stored as a blob) in `tags`. Caller holds the lock.
    fn record_manifest(
        &self,
        tags: &mut TagsFile,
        hex: &str,
        manifest: Option<Vec<u8>>,
        config_bytes: &[u8],
        config: &OciImageConfig,
    ) -> Result<(), ImageError> {
        let id = format!("sha256:{hex}");
        // A manifest is kept only if it names the blobs the store has for its layers (a layer
        // the store had already may have come with other compression).
        let manifest = manifest.filter(|m| self.manifest_matches(m, config).unwrap_or(false));
        let manifest = match manifest {
            Some(m) => Some(m),
            None if tags.manifests.contains_key(&id) => None,
            None => self.make_manifest(config_bytes, config)?,
        };
        if let Some(m) = manifest {
            let digest = self.put_blob_bytes(&m)?;
            tags.manifests.insert(id, digest);
        }
        Ok(())
    }

    fn manifest_matches(
        &self,
        manifest: &[u8],
        config: &OciImageConfig,
    ) -> Result<bool, ImageError> {
        let v: serde_json::Value = match serde_json::from_slice(manifest) {
            Ok(v) => v,
            Err(_) => return Ok(false),
        };
        let Some(layers) = v["layers"].as_array() else {
            return Ok(false);
        };
        if layers.len() != config.rootfs.diff_ids.len() {
            return Ok(false);
        }
        for (l, diff) in layers.iter().zip(&config.rootfs.diff_ids) {
            let rec = self.find_layer(diff)?.map(|(_, r)| r);
            if rec.and_then(|r| r.blob).as_deref() != l["digest"].as_str() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    // --- peers (peer/) ------------------------------------------------------------------------

    /// What another node needs to fetch the image `reference` names: its id, and its manifest
    /// (made now if the image has none yet) and config, byte for byte as stored.
    pub(crate) fn describe_for_peer(&self, reference: &str) -> Result<PeerImageBytes, ImageError> {
        let _guard = self.lock();
        let mut tags = self.read_tags()?;
        let hex = match self.lookup(reference, &tags)? {
            Target::Tag(_, hex) | Target::Id(hex) => hex,
        };
        let config = self.read_config(&hex)?;
        let config_bytes = fs::read(self.image_path(&hex))
            .map_err(ImageError::io("read", self.image_path(&hex)))?;
        let id = format!("sha256:{hex}");
        if !tags.manifests.contains_key(&id) {
            self.record_manifest(&mut tags, &hex, None, &config_bytes, &config)?;
            self.write_tags(&tags)?;
        }
        let Some(digest) = tags.manifests.get(&id) else {
            return Err(ImageError::Corrupt {
                path: self.layers_dir(),
                detail: format!(
                    "image {id} has layers without a stored blob (imported by an older shoal): \
                     import or load it again so that other nodes can fetch it"
                ),
            });
        };
        let path = self
            .blobs_dir()
            .join(digest_hex(digest).unwrap_or_default());
        let manifest = fs::read(&path).map_err(ImageError::io("read manifest", &path))?;
        Ok(PeerImageBytes {
            id,
            manifest,
            config: config_bytes,
        })
    }

    /// A blob of the store (a layer or a manifest) by digest, opened, with its size: the open
    /// file stays readable even if the image is removed meanwhile.
    pub(crate) fn open_blob(&self, digest: &str) -> Result<(fs::File, u64), ImageError> {
        let hex = digest_hex(digest).ok_or_else(|| ImageError::InvalidReference {
            reference: digest.to_string(),
            reason: "a blob digest is sha256:<64 lowercase hex digits>".into(),
        })?;
        let _guard = self.lock();
        let path = self.blobs_dir().join(hex);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(self.not_found(digest)),
            Err(e) => return Err(ImageError::io("open blob", &path)(e)),
        };
        let size = file
            .metadata()
            .map_err(ImageError::io("stat", &path))?
            .len();
        Ok((file, size))
    }

    /// Records that the image `id` is also known by `digest` (see `TagsFile::aliases`); a
    /// digest that already names it is left alone.
    pub(crate) fn add_digest_alias(&self, id: &str, digest: &str) -> Result<(), ImageError> {
        let (Some(hex), Some(_)) = (id_hex(id), digest_hex(digest)) else {
            return Ok(());
        };
        let _guard = self.lock();
        let mut tags = self.read_tags()?;
        if !self.image_path(hex).exists()
            || id == digest
            || tags.manifests.get(id).map(String::as_str) == Some(digest)
            || tags.aliases.get(digest).map(String::as_str) == Some(id)
        {
            return Ok(());
        }
        tags.aliases.insert(digest.to_string(), id.to_string());
        self.write_tags(&tags)
    }

    // --- builds (build/) ------------------------------------------------------------------------

    /// The image a reference names: its id (`sha256:<hex>`) and config.
    pub(crate) fn image_config(
        &self,
        reference: &str,
    ) -> Result<(String, OciImageConfig), ImageError> {
        let _guard = self.lock();
        let tags = self.read_tags()?;
        let hex = match self.lookup(reference, &tags)? {
            Target::Tag(_, hex) | Target::Id(hex) => hex,
        };
        Ok((format!("sha256:{hex}"), self.read_config(&hex)?))
    }

    /// The unpacked directories of layers (lowest first); an error names a missing one.
    pub(crate) fn layer_dirs_for(&self, diff_ids: &[String]) -> Result<Vec<PathBuf>, ImageError> {
        let _guard = self.lock();
        diff_ids
            .iter()
            .map(|d| {
                self.find_layer(d)?
                    .map(|(short, _)| self.layers_dir().join(short))
                    .ok_or_else(|| ImageError::Corrupt {
                        path: self.layers_dir(),
                        detail: format!("layer {d} is not in the store"),
                    })
            })
            .collect()
    }

    // --- archive loads (archive.rs) ------------------------------------------------------------

    /// `tmp/`, for staged files.
    pub(crate) fn tmp_path(&self) -> PathBuf {
        self.inner.root.join("tmp")
    }

    /// Whether the store has the layer `diff_id` with its blob.
    pub(crate) fn has_layer_blob(&self, diff_id: &str) -> Result<bool, ImageError> {
        let _guard = self.lock();
        Ok(self
            .find_layer(diff_id)?
            .is_some_and(|(_, rec)| rec.blob.is_some()))
    }

    /// Pins layers against garbage collection until the guard drops.
    pub(crate) fn pin_layers(&self, diff_ids: &[String]) -> PinGuard {
        let mut busy = self.busy();
        for d in diff_ids {
            *busy.pinned.entry(d.clone()).or_default() += 1;
        }
        PinGuard {
            store: self.clone(),
            diff_ids: diff_ids.to_vec(),
        }
    }

    /// Waits until no one else unpacks `diff_id`, then marks it as being unpacked by the
    /// caller until the guard drops: two loads of the same layer unpack it once.
    pub(crate) fn lock_layer(&self, diff_id: &str) -> LayerGuard {
        let mut busy = self.busy();
        while busy.unpacking.contains(diff_id) {
            busy = self
                .inner
                .layers_cv
                .wait(busy)
                .unwrap_or_else(|p| p.into_inner());
        }
        busy.unpacking.insert(diff_id.to_string());
        LayerGuard {
            store: self.clone(),
            diff_id: diff_id.to_string(),
        }
    }

    /// Unpacks a layer into a temporary directory and moves it into place (if the store does
    /// not have it meanwhile), with `blob` as its stored blob; checks that it is the layer
    /// `expected` names. The caller holds [`ImageStore::lock_layer`] and a pin.
    pub(crate) fn unpack_and_place<R: Read>(
        &self,
        mut reader: R,
        expected: &str,
        blob: StagedBlob,
    ) -> Result<(), ImageError> {
        self.unpack_streamed(&mut reader, expected, |_| Ok(blob))
    }

    /// [`ImageStore::unpack_and_place`] for a layer unpacked as it streams in (a registry
    /// pull): `finish` runs once the unpacker is done with `reader`, and must hand over the
    /// verified blob (or fail, and then nothing is placed).
    ///
    /// The layer is placed without waiting for its files to reach the disk: it is marked
    /// unsynced, and [`ImageStore::commit_images`] (or [`ImageStore::sync_layers`]) syncs the
    /// file system once for all of an image's layers before registering it. One sync per
    /// image instead of one per layer plus a handful of fsyncs for each.
    pub(crate) fn unpack_streamed<R: Read>(
        &self,
        reader: &mut R,
        expected: &str,
        finish: impl FnOnce(&mut R) -> Result<StagedBlob, ImageError>,
    ) -> Result<(), ImageError> {
        let tmp = TmpDir::create(&self.tmp_path())?;
        let unpacked = unpack_layer(&mut *reader, tmp.path(), &self.inner.limits)?;
        let blob = finish(reader)?;
        if unpacked.digest != expected {
            return Err(ImageError::InvalidArchive {
                detail: format!(
                    "a layer decompresses to {} but the image config says {expected} (a \
                     corrupted or tampered archive)",
                    unpacked.digest
                ),
            });
        }
        let _guard = self.lock();
        let (_, new) = self.commit_layer(&unpacked, tmp, Some(blob), false)?;
        if new {
            self.busy().unsynced.insert(unpacked.digest);
        }
        Ok(())
    }

    /// Makes the layers among `diff_ids` that were placed unsynced durable (files, blob,
    /// record): one `syncfs`, which covers every layer placed before it.
    pub(crate) fn sync_layers(&self, diff_ids: &[String]) -> Result<(), ImageError> {
        let pending: Vec<String> = {
            let busy = self.busy();
            if !diff_ids.iter().any(|d| busy.unsynced.contains(d)) {
                return Ok(());
            }
            busy.unsynced.iter().cloned().collect()
        };
        sync_filesystem(&self.inner.root)?;
        let mut busy = self.busy();
        for d in pending {
            busy.unsynced.remove(&d);
        }
        Ok(())
    }

    /// Registers loaded images whose layers are in place and pinned: blobs moved into the
    /// store, configs written, manifests recorded, tags moved. All under the lock, so a
    /// concurrent removal sees all of a load's images or none.
    pub(crate) fn commit_images(
        &self,
        images: Vec<PreparedImage>,
    ) -> Result<Vec<shoal_proto::Image>, ImageError> {
        let layers: Vec<String> = images
            .iter()
            .flat_map(|i| i.config.rootfs.diff_ids.iter().cloned())
            .collect();
        self.sync_layers(&layers)?;
        let _guard = self.lock();
        let mut tags = self.read_tags()?;
        let mut hexes = Vec::new();
        for image in images {
            for (diff, blob) in image.config.rootfs.diff_ids.iter().zip(image.blobs) {
                if self.find_layer(diff)?.is_none() {
                    return Err(ImageError::Corrupt {
                        path: self.layers_dir(),
                        detail: format!("layer {diff} vanished during the load"),
                    });
                }
                self.attach_blob(diff, blob)?;
            }
            let hex = hex::encode(Sha256::digest(&image.config_bytes));
            let path = self.image_path(&hex);
            if !path.exists() {
                write_atomic(&path, &image.config_bytes)?;
            }
            self.record_manifest(
                &mut tags,
                &hex,
                image.manifest,
                &image.config_bytes,
                &image.config,
            )?;
            for t in &image.tags {
                if let Some(key) = t.tag_key() {
                    tags.tags.insert(key, format!("sha256:{hex}"));
                }
            }
            hexes.push(hex);
        }
        self.write_tags(&tags)?;
        let mut out = Vec::new();
        for hex in hexes {
            let config = self.read_config(&hex)?;
            out.push(self.to_proto(&hex, &config, &tags)?);
        }
        Ok(out)
    }

    /// After a failed load: collects the layers it placed (nothing references them).
    pub(crate) fn collect_garbage(&self) -> Result<RemoveReport, ImageError> {
        let _guard = self.lock();
        let mut report = RemoveReport::default();
        self.gc(&mut report)?;
        Ok(report)
    }

    /// Opens what `save` needs for each reference (duplicates dropped).
    pub(crate) fn open_for_save(&self, references: &[String]) -> Result<SaveSet, ImageError> {
        let _guard = self.lock();
        let mut tags = self.read_tags()?;
        let mut images: Vec<SaveImage> = Vec::new();
        for reference in references {
            let (hex, tag) = match self.lookup(reference, &tags)? {
                Target::Tag(tag, hex) => (hex, Some(tag)),
                Target::Id(hex) => (hex, None),
            };
            let tag = tag.map(|t| Reference::parse(&t)).transpose()?;
            if let Some(existing) = images.iter_mut().find(|i| i.config_hex == hex) {
                if let Some(t) = tag {
                    if !existing.tags.contains(&t) {
                        existing.tags.push(t);
                    }
                }
                continue;
            }
            let config = self.read_config(&hex)?;
            let config_bytes = fs::read(self.image_path(&hex))
                .map_err(ImageError::io("read", self.image_path(&hex)))?;
            let mut layers = Vec::new();
            for diff in &config.rootfs.diff_ids {
                let rec = self.find_layer(diff)?.map(|(_, r)| r);
                let Some(blob) = rec.as_ref().and_then(|r| r.blob.clone()) else {
                    return Err(ImageError::Corrupt {
                        path: self.layers_dir(),
                        detail: format!(
                            "layer {diff} of image sha256:{hex} has no stored blob (imported by \
                             an older shoal): import or load the image again to save it"
                        ),
                    });
                };
                let bhex = digest_hex(&blob).unwrap_or_default().to_string();
                let path = self.blobs_dir().join(&bhex);
                let f = fs::File::open(&path).map_err(ImageError::io("open blob", &path))?;
                let size = f.metadata().map_err(ImageError::io("stat", &path))?.len();
                layers.push((bhex, size, f));
            }
            let id = format!("sha256:{hex}");
            if !tags.manifests.contains_key(&id) {
                self.record_manifest(&mut tags, &hex, None, &config_bytes, &config)?;
                self.write_tags(&tags)?;
            }
            let manifest_bytes = match tags.manifests.get(&id) {
                Some(d) => {
                    let path = self.blobs_dir().join(digest_hex(d).unwrap_or_default());
                    fs::read(&path).map_err(ImageError::io("read manifest", &path))?
                }
                None => Vec::new(),
            };
            images.push(SaveImage {
                config_hex: hex,
                config_bytes,
                manifest_bytes,
                tags: tag.into_iter().collect(),
                layers,
            });
        }
        Ok(SaveSet { images })
    }

    /// Moves an unpacked layer into place with its blob, or drops it if the store has it
    /// already (then the blob is attached if the layer had none). Returns the layer's
    /// directory name and whether it is new. `durable`: the layer's files are on disk (synced
    /// by the caller), and the moves are made durable now; else the layer is placed for the
    /// caller to sync later (see [`ImageStore::unpack_streamed`]). The record is written
    /// durably either way. Caller holds the lock.
    fn commit_layer(
        &self,
        unpacked: &UnpackedLayer,
        tmp: TmpDir,
        blob: Option<StagedBlob>,
        durable: bool,
    ) -> Result<(String, bool), ImageError> {
        let hex = digest_hex(&unpacked.digest).ok_or_else(|| ImageError::Corrupt {
            path: tmp.path().to_path_buf(),
            detail: format!("unexpected layer digest {}", unpacked.digest),
        })?;
        let mut free = None;
        for len in short_id_lengths() {
            let short = &hex[..len];
            match self.read_layer_record(short)? {
                Some(rec) if rec.digest == unpacked.digest => {
                    self.attach_blob(&unpacked.digest, blob)?;
                    return Ok((short.to_string(), false));
                }
                Some(_) => {}
                None => {
                    let dir_taken = fs::symlink_metadata(self.layers_dir().join(short)).is_ok();
                    if free.is_none() && !dir_taken {
                        free = Some(short.to_string());
                    }
                }
            }
        }
        let short = free.ok_or_else(|| ImageError::Corrupt {
            path: self.layers_dir(),
            detail: format!(
                "no free directory name for layer {}: every prefix of its digest is taken; \
                 remove stray directories there",
                unpacked.digest
            ),
        })?;
        let dest = self.layers_dir().join(&short);
        fs::rename(tmp.path(), &dest)
            .map_err(ImageError::io("move an unpacked layer to", &dest))?;
        tmp.disarm();
        let mut record = LayerRecord {
            digest: unpacked.digest.clone(),
            size: unpacked.size,
            created: now_ms(),
            blob: None,
            blob_size: 0,
        };
        let written = (|| {
            if let Some(b) = &blob {
                self.store_blob(b, durable)?;
                record.blob = Some(b.digest.clone());
                record.blob_size = b.size;
            }
            if durable {
                fsync_dir(&self.layers_dir())?;
            }
            write_json(&self.layer_record_path(&short), &record)
        })();
        if let Err(e) = written {
            let _ = self.delete_layer_files(&short);
            return Err(e);
        }
        Ok((short, true))
    }

    /// Writes the image config (if new) and points the tag at it.
    fn commit_image(
        &self,
        reference: &Reference,
        unpacked: &UnpackedLayer,
        new: NewImage,
    ) -> Result<shoal_proto::Image, ImageError> {
        let created = format_rfc3339(new.created_ms);
        let config = OciImageConfig {
            created: Some(created.clone()),
            architecture: oci_architecture().into(),
            os: "linux".into(),
            config: new.run,
            rootfs: OciRootFs {
                kind: "layers".into(),
                diff_ids: vec![unpacked.digest.clone()],
            },
            history: vec![OciHistory {
                created: Some(created),
                created_by: Some(new.created_by),
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = serde_json::to_vec(&config).map_err(|e| ImageError::Corrupt {
            path: self.images_dir(),
            detail: format!("cannot encode an image config: {e}"),
        })?;
        let hex = hex::encode(Sha256::digest(&bytes));
        let path = self.image_path(&hex);
        let image_is_new = !path.exists();
        if image_is_new {
            write_atomic(&path, &bytes)?;
        }
        let mut tags = self.read_tags()?;
        tags.tags
            .insert(reference.to_string(), format!("sha256:{hex}"));
        self.record_manifest(&mut tags, &hex, None, &bytes, &config)?;
        if let Err(e) = self.write_tags(&tags) {
            if image_is_new {
                let _ = fs::remove_file(&path);
            }
            return Err(e);
        }
        self.to_proto(&hex, &config, &tags)
    }

    // --- lookup -----------------------------------------------------------------------------

    fn lookup(&self, reference: &str, tags: &TagsFile) -> Result<Target, ImageError> {
        let invalid = |reason: &str| ImageError::InvalidReference {
            reference: reference.to_string(),
            reason: reason.to_string(),
        };
        if reference.is_empty() {
            return Err(invalid("the reference is empty"));
        }
        if let Some(prefix) = reference.strip_prefix("sha256:") {
            if prefix.is_empty() || prefix.len() > 64 || !is_lower_hex(prefix) {
                return Err(invalid(
                    "an image id is `sha256:` followed by lowercase hex digits (all 64 of them, \
                     or a unique prefix)",
                ));
            }
            return match self.find_by_id_prefix(prefix)? {
                Some(hex) => Ok(Target::Id(hex)),
                None => Err(self.not_found(reference)),
            };
        }
        let parsed = Reference::parse_any(reference)?;
        if let Some(digest) = &parsed.digest {
            return self.lookup_digest(reference, &parsed, digest, tags);
        }
        let tag = parsed.to_string();
        if let Some(id) = tags.tags.get(&tag) {
            let hex = id_hex(id).ok_or_else(|| ImageError::Corrupt {
                path: self.tags_path(),
                detail: format!("tag {tag} points at `{id}`, which is not an image id"),
            })?;
            return Ok(Target::Tag(tag, hex.to_string()));
        }
        if reference.len() >= MIN_BARE_ID_PREFIX && reference.len() <= 64 && is_lower_hex(reference)
        {
            if let Some(hex) = self.find_by_id_prefix(reference)? {
                return Ok(Target::Id(hex));
            }
        }
        Err(self.not_found(reference))
    }

    /// `name@sha256:…`: the image whose manifest digest, config digest (id) or alias it is,
    /// tagged in that repository (any repository if the image has no tag).
    fn lookup_digest(
        &self,
        reference: &str,
        parsed: &Reference,
        digest: &str,
        tags: &TagsFile,
    ) -> Result<Target, ImageError> {
        let hex = match digest_hex(digest) {
            Some(h) if self.image_path(h).exists() => Some(h.to_string()),
            _ => tags
                .manifests
                .iter()
                .find(|(_, m)| m.as_str() == digest)
                .map(|(id, _)| id)
                .or_else(|| tags.aliases.get(digest))
                .and_then(|id| id_hex(id).map(str::to_string))
                .filter(|h| self.image_path(h).exists()),
        };
        let Some(hex) = hex else {
            return Err(self.not_found(reference));
        };
        let id = format!("sha256:{hex}");
        let repos: Vec<String> = tags
            .tags
            .iter()
            .filter(|(_, v)| **v == id)
            .filter_map(|(k, _)| Reference::parse(k).ok().map(|r| r.name))
            .collect();
        if !repos.is_empty() && !repos.contains(&parsed.name) {
            return Err(self.not_found(reference));
        }
        // A tag beside the digest (`name:tag@sha256:…`, as a pinned service names its image)
        // is only a reminder, as in Docker: the digest decides, wherever the tag moved since.
        Ok(Target::Id(hex))
    }

    fn find_by_id_prefix(&self, prefix: &str) -> Result<Option<String>, ImageError> {
        let matches: Vec<String> = self
            .image_hexes()?
            .into_iter()
            .filter(|h| h.starts_with(prefix))
            .collect();
        match matches.len() {
            0 => Ok(None),
            1 => Ok(matches.into_iter().next()),
            _ => Err(ImageError::Ambiguous {
                prefix: prefix.to_string(),
                candidates: matches.iter().map(|h| format!("sha256:{h}")).collect(),
            }),
        }
    }

    fn not_found(&self, reference: &str) -> ImageError {
        ImageError::NotFound {
            reference: reference.to_string(),
            root: self.inner.root.clone(),
        }
    }

    // --- deletion ---------------------------------------------------------------------------

    /// Deletes an image config (and forgets its manifest); [`ImageStore::gc`] then collects
    /// what nothing references any more. Caller holds the lock and has removed the tags.
    fn delete_image(&self, hex: &str) -> Result<(), ImageError> {
        let path = self.image_path(hex);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("remove", &path)(e)),
        }
        fsync_dir(&self.images_dir())?;
        let mut tags = self.read_tags()?;
        let id = format!("sha256:{hex}");
        let aliases = tags.aliases.len();
        tags.aliases.retain(|_, of| *of != id);
        if tags.manifests.remove(&id).is_some() || tags.aliases.len() != aliases {
            self.write_tags(&tags)?;
        }
        Ok(())
    }

    /// Garbage collection, caller holding the lock: deletes the layers no image uses (unless a
    /// load in progress pinned them) and the blobs no layer record or manifest mapping names.
    fn gc(&self, report: &mut RemoveReport) -> Result<(), ImageError> {
        let mut used = BTreeSet::new();
        for hex in self.image_hexes()? {
            match self.read_config(&hex) {
                Ok(c) => used.extend(c.rootfs.diff_ids),
                Err(e) => {
                    // Cannot tell what it uses: collect nothing rather than too much.
                    tracing::warn!(image = %hex, error = %e, "image store: unreadable config; skipping garbage collection");
                    return Ok(());
                }
            }
        }
        // The build cache's layers stay until `prune` drops its entries (see build/cache.rs).
        used.extend(super::build::cache::layers_in_use(&self.inner.root)?);
        let pinned: BTreeSet<String> = {
            let busy = self.busy();
            busy.pinned
                .keys()
                .chain(busy.unpacking.iter())
                .cloned()
                .collect()
        };
        let mut blobs_used = BTreeSet::new();
        for entry in read_dir(&self.layers_dir())? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(short) = name.strip_suffix(".json") else {
                continue;
            };
            if !is_lower_hex(short) {
                continue;
            }
            let Some(rec) = self.read_layer_record(short).ok().flatten() else {
                continue;
            };
            if used.contains(&rec.digest) || pinned.contains(&rec.digest) {
                if let Some(b) = &rec.blob {
                    blobs_used.insert(b.clone());
                }
                continue;
            }
            self.delete_layer_files(short)?;
            report.reclaimed += rec.size;
            report.layers.push(rec.digest);
        }
        let tags = self.read_tags()?;
        blobs_used.extend(tags.manifests.values().cloned());
        for entry in read_dir(&self.blobs_dir())? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.len() != 64 || !is_lower_hex(&name) {
                continue;
            }
            if blobs_used.contains(&format!("sha256:{name}")) {
                continue;
            }
            let path = entry.path();
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(&path) {
                Ok(()) => report.reclaimed += size,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io("remove", &path)(e)),
            }
        }
        Ok(())
    }

    /// The layer directories of an image (empty if a layer is missing). Caller holds the lock.
    fn layer_dirs_of(&self, hex: &str) -> Result<Vec<PathBuf>, ImageError> {
        let config = self.read_config(hex)?;
        let mut dirs = Vec::new();
        for digest in &config.rootfs.diff_ids {
            match self.find_layer(digest)? {
                Some((short, _)) => dirs.push(self.layers_dir().join(short)),
                None => return Ok(Vec::new()),
            }
        }
        Ok(dirs)
    }

    /// Removes a layer's record, then its directory (renamed into `tmp/` first, so a crash never
    /// leaves a half-deleted directory under its real name).
    fn delete_layer_files(&self, short: &str) -> Result<(), ImageError> {
        let record = self.layer_record_path(short);
        match fs::remove_file(&record) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("remove", &record)(e)),
        }
        fsync_dir(&self.layers_dir())?;
        let dir = self.layers_dir().join(short);
        let doomed = self
            .inner
            .root
            .join("tmp")
            .join(format!("rm-{}", uuid::Uuid::new_v4().simple()));
        let target = match fs::rename(&dir, &doomed) {
            Ok(()) => doomed,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(_) => dir,
        };
        remove_tree(&target).map_err(ImageError::io("remove layer directory", &target))
    }

    // --- crash recovery -----------------------------------------------------------------------

    /// Removes what a crash can leave: temporary directories and files, layer directories
    /// without a record (or records without a directory), and layers no image uses.
    fn recover(&self) -> Result<(), ImageError> {
        let _guard = self.lock();
        let tmp = self.inner.root.join("tmp");
        for entry in read_dir(&tmp)? {
            let path = entry.path();
            remove_tree(&path).map_err(ImageError::io("remove leftover", &path))?;
        }
        for dir in [
            self.inner.root.clone(),
            self.images_dir(),
            self.layers_dir(),
        ] {
            for entry in read_dir(&dir)? {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.contains(TMP_MARKER) {
                    let path = entry.path();
                    fs::remove_file(&path).map_err(ImageError::io("remove leftover", &path))?;
                }
            }
        }
        let mut used = BTreeSet::new();
        let mut all_readable = true;
        for hex in self.image_hexes()? {
            match self.read_config(&hex) {
                Ok(c) => used.extend(c.rootfs.diff_ids),
                Err(e) => {
                    all_readable = false;
                    tracing::warn!(error = %e, "image store: unreadable image config; keeping all layers");
                }
            }
        }
        used.extend(super::build::cache::layers_in_use(&self.inner.root)?);
        let layers = self.layers_dir();
        for entry in read_dir(&layers)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if let Some(short) = name.strip_suffix(".json") {
                if !is_lower_hex(short) {
                    continue;
                }
                let keep = match self.read_layer_record(short) {
                    Ok(Some(rec)) => {
                        layers.join(short).is_dir() && (!all_readable || used.contains(&rec.digest))
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "image store: unreadable layer record; keeping it");
                        true
                    }
                };
                if !keep {
                    tracing::info!(layer = short, "image store: removing an unused layer");
                    self.delete_layer_files(short)?;
                }
            } else if is_lower_hex(&name) && !self.layer_record_path(&name).exists() {
                tracing::info!(layer = %name, "image store: removing a layer directory without record");
                remove_tree(&path).map_err(ImageError::io("remove leftover", &path))?;
            }
        }
        if all_readable {
            // Blobs no layer or manifest names (a crash between a rename and a record).
            self.gc(&mut RemoveReport::default())?;
        }
        Ok(())
    }

    // --- files --------------------------------------------------------------------------------

    fn busy(&self) -> MutexGuard<'_, LayerLocks> {
        self.inner
            .layers_busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn blobs_dir(&self) -> PathBuf {
        self.inner.root.join("blobs").join("sha256")
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, only the order of file operations: a poisoned lock is fine.
        self.inner.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn layers_dir(&self) -> PathBuf {
        self.inner.root.join("layers")
    }

    fn images_dir(&self) -> PathBuf {
        self.inner.root.join("images")
    }

    fn tags_path(&self) -> PathBuf {
        self.inner.root.join(TAGS_FILE)
    }

    fn image_path(&self, hex: &str) -> PathBuf {
        self.images_dir().join(format!("{hex}.json"))
    }

    fn layer_record_path(&self, short: &str) -> PathBuf {
        self.layers_dir().join(format!("{short}.json"))
    }

    fn read_tags(&self) -> Result<TagsFile, ImageError> {
        let path = self.tags_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ImageError::Corrupt {
                path: path.clone(),
                detail: format!("cannot parse the tags: {e}; fix or remove the file"),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(TagsFile::default()),
            Err(e) => Err(ImageError::io("read", &path)(e)),
        }
    }

    fn write_tags(&self, tags: &TagsFile) -> Result<(), ImageError> {
        write_json(&self.tags_path(), tags)
    }

    /// Hex ids of every stored image config.
    fn image_hexes(&self) -> Result<Vec<String>, ImageError> {
        let mut out = Vec::new();
        for entry in read_dir(&self.images_dir())? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(hex) = name.strip_suffix(".json") {
                if hex.len() == 64 && is_lower_hex(hex) {
                    out.push(hex.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads an image config and checks that its bytes still hash to its id.
    fn read_config(&self, hex: &str) -> Result<OciImageConfig, ImageError> {
        let path = self.image_path(hex);
        let bytes = fs::read(&path).map_err(ImageError::io("read image config", &path))?;
        if hex::encode(Sha256::digest(&bytes)) != hex {
            return Err(ImageError::Corrupt {
                path,
                detail: "the image config does not match its id (damaged file); remove the image \
                         and import it again"
                    .into(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Corrupt {
            path,
            detail: format!("cannot parse the image config: {e}"),
        })
    }

    fn read_layer_record(&self, short: &str) -> Result<Option<LayerRecord>, ImageError> {
        let path = self.layer_record_path(short);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ImageError::Corrupt {
                        path,
                        detail: format!("cannot parse the layer record: {e}"),
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io("read", &path)(e)),
        }
    }

    /// The directory name and record of a layer, by digest.
    fn find_layer(&self, digest: &str) -> Result<Option<(String, LayerRecord)>, ImageError> {
        let Some(hex) = digest_hex(digest) else {
            return Ok(None);
        };
        for len in short_id_lengths() {
            let short = &hex[..len];
            if let Some(rec) = self.read_layer_record(short)? {
                if rec.digest == digest {
                    return Ok(Some((short.to_string(), rec)));
                }
            }
        }
        Ok(None)
    }

    fn to_proto(
        &self,
        hex: &str,
        config: &OciImageConfig,
        tags: &TagsFile,
    ) -> Result<shoal_proto::Image, ImageError> {
        let id = format!("sha256:{hex}");
        let mut size = 0u64;
        for digest in &config.rootfs.diff_ids {
            if let Some((_, rec)) = self.find_layer(digest)? {
                size += rec.size;
            }
        }
        let image_tags: Vec<String> = tags
            .tags
            .iter()
            .filter(|(_, v)| **v == id)
            .map(|(k, _)| k.clone())
            .collect();
        let manifest_digest = tags.manifests.get(&id).cloned().unwrap_or_default();
        let mut digests: Vec<String> = Vec::new();
        if !manifest_digest.is_empty() {
            for t in &image_tags {
                if let Ok(r) = Reference::parse(t) {
                    let d = format!("{}@{manifest_digest}", r.name);
                    if !digests.contains(&d) {
                        digests.push(d);
                    }
                }
            }
        }
        Ok(shoal_proto::Image {
            tags: image_tags,
            architecture: config.architecture.clone(),
            os: config.os.clone(),
            variant: config.variant.clone().unwrap_or_default(),
            author: config.author.clone().unwrap_or_default(),
            comment: config.comment.clone().unwrap_or_default(),
            history: config.history.iter().map(OciHistory::to_proto).collect(),
            digests,
            manifest_digest,
            id,
            created: config
                .created
                .as_deref()
                .and_then(parse_rfc3339)
                .unwrap_or(0),
            size,
            config: Some(config.config.to_proto()),
            layers: config.rootfs.diff_ids.clone(),
        })
    }
}

/// A directory under `tmp/` removed on drop unless disarmed (moved into place).
struct TmpDir {
    path: PathBuf,
    armed: bool,
}

impl TmpDir {
    fn create(parent: &Path) -> Result<TmpDir, ImageError> {
        let path = parent.join(format!("import-{}", uuid::Uuid::new_v4().simple()));
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .map_err(ImageError::io("create a temporary directory", &path))?;
        // The layer root becomes the container's `/`: 0755 unless the tarball says otherwise.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(ImageError::io("chmod", &path))?;
        Ok(TmpDir { path, armed: true })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = remove_tree(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a temporary layer directory");
            }
        }
    }
}

/// Unpins a load's layers when dropped.
pub(crate) struct PinGuard {
    store: ImageStore,
    diff_ids: Vec<String>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut busy = self.store.busy();
        for d in &self.diff_ids {
            if let Some(n) = busy.pinned.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    busy.pinned.remove(d);
                }
            }
        }
    }
}

/// Marks a layer as being unpacked until dropped (see [`ImageStore::lock_layer`]).
pub(crate) struct LayerGuard {
    store: ImageStore,
    diff_id: String,
}

impl Drop for LayerGuard {
    fn drop(&mut self) {
        self.store.busy().unpacking.remove(&self.diff_id);
        self.store.inner.layers_cv.notify_all();
    }
}

/// A `Read` that copies what is read into a file under `tmp/` and hashes it: an import's
/// tarball becomes the layer's blob without a second pass.
struct TeeToFile<R> {
    inner: R,
    file: Option<fs::File>,
    path: PathBuf,
    hasher: Sha256,
    size: u64,
    failed: bool,
}

impl<R: Read> TeeToFile<R> {
    fn finish(mut self) -> Result<Option<StagedBlob>, ImageError> {
        // The unpacker reads to the end; whatever trails (it never should) is hashed too.
        io::copy(&mut self, &mut io::sink()).map_err(|e| ImageError::BadArchive {
            entry: None,
            detail: format!("cannot read the input: {e}"),
        })?;
        drop(self.file.take());
        if self.failed {
            let _ = fs::remove_file(&self.path);
            return Ok(None);
        }
        Ok(Some(StagedBlob {
            path: self.path.clone(),
            digest: format!(
                "sha256:{}",
                hex::encode(std::mem::take(&mut self.hasher).finalize())
            ),
            size: self.size,
        }))
    }
}

impl<R> TeeToFile<R> {
    fn new(inner: R, tmp: &Path) -> Result<TeeToFile<R>, ImageError> {
        let path = tmp.join(format!("blob-{}", uuid::Uuid::new_v4().simple()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(ImageError::io("create", &path))?;
        Ok(TeeToFile {
            inner,
            file: Some(file),
            path,
            hasher: Sha256::new(),
            size: 0,
            failed: false,
        })
    }
}

impl<R: Read> Read for TeeToFile<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        if let Some(f) = &mut self.file {
            if io::Write::write_all(f, &buf[..n]).is_err() {
                // Out of space for the blob: the import goes on, the layer has no blob.
                self.failed = true;
                self.file = None;
            }
        }
        Ok(n)
    }
}

impl<R> Drop for TeeToFile<R> {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ImageError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| ImageError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("cannot encode: {e}"),
    })?;
    write_atomic(path, &bytes)
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, ImageError> {
    fs::read_dir(dir)
        .and_then(|it| it.collect::<io::Result<Vec<_>>>())
        .map_err(ImageError::io("list directory", dir))
}

fn sync_filesystem(path: &Path) -> Result<(), ImageError> {
    let f = fs::File::open(path).map_err(ImageError::io("open", path))?;
    nix::unistd::syncfs(&f).map_err(|e| ImageError::io("syncfs", path)(e.into()))
}

fn short_id_lengths() -> impl Iterator<Item = usize> {
    (SHORT_ID_LEN..=64).step_by(4)
}

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The 64 hex digits of `sha256:<hex>`.
fn digest_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && is_lower_hex(h))
}

/// The first 12 hex digits, as Docker shows image ids.
fn short_hex(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

/// Same as [`digest_hex`], for image ids.
fn id_hex(id: &str) -> Option<&str> {
    digest_hex(id)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
