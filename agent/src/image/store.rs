//! The image store proper: layers, image configs, tags, and their life cycle on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
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
use super::unpack::{unpack_layer, ImportLimits, UnpackedLayer};

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
}

/// `tags.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct TagsFile {
    /// `name:tag` → `sha256:<hex>` image id.
    tags: BTreeMap<String, String>,
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
        for sub in ["layers", "images"] {
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
        let _guard = self.lock();
        let mut tags = self.read_tags()?;
        let hex = match self.lookup(reference, &tags)? {
            Target::Tag(tag, hex) => {
                tags.tags.remove(&tag);
                self.write_tags(&tags)?;
                if tags
                    .tags
                    .values()
                    .any(|id| id_hex(id) == Some(hex.as_str()))
                {
                    return Ok(());
                }
                hex
            }
            Target::Id(hex) => {
                let named: Vec<String> = tags
                    .tags
                    .iter()
                    .filter(|(_, id)| id_hex(id) == Some(hex.as_str()))
                    .map(|(t, _)| t.clone())
                    .collect();
                if named.len() > 1 {
                    return Err(ImageError::Conflict {
                        id: format!("sha256:{hex}"),
                        tags: named,
                    });
                }
                if !named.is_empty() {
                    for t in &named {
                        tags.tags.remove(t);
                    }
                    self.write_tags(&tags)?;
                }
                hex
            }
        };
        self.delete_image(&hex)
    }

    /// Removes every image no tag names (`docker image prune`); returns their ids.
    pub fn prune_dangling(&self) -> Result<Vec<String>, ImageError> {
        let _guard = self.lock();
        let tags = self.read_tags()?;
        let tagged: BTreeSet<&str> = tags.tags.values().filter_map(|id| id_hex(id)).collect();
        let mut removed = Vec::new();
        for hex in self.image_hexes()? {
            if !tagged.contains(hex.as_str()) {
                self.delete_image(&hex)?;
                removed.push(format!("sha256:{hex}"));
            }
        }
        Ok(removed)
    }

    // --- import -----------------------------------------------------------------------------

    fn import_layer<R: Read>(
        &self,
        reference: &Reference,
        reader: R,
        new: NewImage,
    ) -> Result<shoal_proto::Image, ImageError> {
        let tmp = TmpDir::create(&self.inner.root.join("tmp"))?;
        let unpacked = unpack_layer(reader, tmp.path(), &self.inner.limits)?;
        // One syncfs makes the whole layer durable, far cheaper than an fsync per file.
        sync_filesystem(tmp.path())?;

        let _guard = self.lock();
        let (short, layer_is_new) = self.commit_layer(&unpacked, tmp)?;
        let result = self.commit_image(reference, &unpacked, new);
        if result.is_err() && layer_is_new {
            // Nothing references the layer yet (we hold the lock): take it back out.
            if let Err(e) = self.delete_layer_files(&short) {
                tracing::warn!(layer = %short, error = %e, "cannot roll back a layer");
            }
        }
        result
    }

    /// Moves an unpacked layer into place, or drops it if the store has it already. Returns the
    /// layer's directory name and whether it is new.
    fn commit_layer(
        &self,
        unpacked: &UnpackedLayer,
        tmp: TmpDir,
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
                    return Ok((short.to_string(), false))
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
        let record = LayerRecord {
            digest: unpacked.digest.clone(),
            size: unpacked.size,
            created: now_ms(),
        };
        let written = fsync_dir(&self.layers_dir())
            .and_then(|()| write_json(&self.layer_record_path(&short), &record));
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
            }],
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
        let parsed = Reference::parse(reference)?;
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

    /// Deletes an image config and the layers no remaining image uses. Caller holds the lock
    /// and has removed the tags.
    fn delete_image(&self, hex: &str) -> Result<(), ImageError> {
        let path = self.image_path(hex);
        let layers = match self.read_config(hex) {
            Ok(c) => c.rootfs.diff_ids,
            Err(e) => {
                // Unreadable: delete it anyway; its layers go at the next open's clean-up.
                tracing::warn!(image = hex, error = %e, "removing an unreadable image config");
                Vec::new()
            }
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("remove", &path)(e)),
        }
        fsync_dir(&self.images_dir())?;
        let mut still_used = BTreeSet::new();
        for other in self.image_hexes()? {
            if let Ok(c) = self.read_config(&other) {
                still_used.extend(c.rootfs.diff_ids);
            }
        }
        for digest in layers {
            if still_used.contains(&digest) {
                continue;
            }
            if let Some((short, _)) = self.find_layer(&digest)? {
                self.delete_layer_files(&short)?;
            }
        }
        Ok(())
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
        Ok(())
    }

    // --- files --------------------------------------------------------------------------------

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
        Ok(shoal_proto::Image {
            tags: tags
                .tags
                .iter()
                .filter(|(_, v)| **v == id)
                .map(|(k, _)| k.clone())
                .collect(),
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
