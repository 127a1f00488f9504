//! Image archives: `docker save`'s format in, and out (`docker load`), and OCI image layouts in.
//!
//! # Load
//!
//! The archive is a tar stream (plain, gzip or zstd as a whole), read once, front to back,
//! whatever its order (Docker writes `manifest.json` last, OCI tools `index.json` first):
//!
//! 1. Every regular file goes to a directory under the store's `tmp/` (small ones stay in
//!    memory), hashed on the way. A file named `blobs/sha256/<hex>` must hash to `<hex>`: a
//!    tampered or truncated blob is refused there, before anything is unpacked. Symlinks (old
//!    `docker save` links a layer shared by two images) are followed inside the archive only;
//!    hardlinks, devices and FIFOs are refused.
//! 2. The format is found: `manifest.json` → Docker (`Config`, `RepoTags`, `Layers`, by path —
//!    `<id>/layer.tar` in the old form, `blobs/sha256/<hex>` in the OCI-in-docker form of
//!    Docker 25+); otherwise `oci-layout` + `index.json` → OCI layout: descriptors are followed
//!    (image indexes pick `linux` and this machine's architecture; attestation manifests are
//!    skipped), and each descriptor's size must match its blob. Names come from `RepoTags`, or
//!    from the `io.containerd.image.name` / `org.opencontainers.image.ref.name` annotations.
//! 3. Each layer not yet in the store is unpacked (plain, gzip or zstd; whiteouts applied; see
//!    `unpack.rs`) and its digest checked against the config's `diff_ids`. Two loads of the same
//!    layer unpack it once ([`ImageStore::lock_layer`]); a load's layers are pinned against
//!    garbage collection until its images are registered.
//! 4. All images are registered at once, under the store's lock: configs, manifests (kept
//!    byte for byte, so the digest stays), layer blobs (kept as they came), tags.
//!
//! Any error leaves nothing: no image, no tag; placed layers nothing uses are collected.
//!
//! # Save
//!
//! Docker 25+'s layout, which every `docker load` since 1.10 reads (the legacy loader uses
//! `manifest.json`, containerd's the OCI `index.json`): `blobs/sha256/<hex>` for layers (as
//! stored, compressed or not; `docker load` decompresses), configs and manifests, then
//! `index.json` (one descriptor per tag, annotated with the image name), `manifest.json`,
//! `oci-layout`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::config::{oci_architecture, OciImageConfig};
use super::error::ImageError;
use super::fsutil::remove_tree;
use super::reference::Reference;
use super::store::{ImageStore, PreparedImage, StagedBlob, MEDIA_INDEX, MEDIA_MANIFEST};
use super::unpack::compression_of;

/// Files up to this size are kept in memory while receiving.
const SMALL_FILE: u64 = 1 << 20;
/// ... up to this much in total.
const SMALL_TOTAL: u64 = 64 << 20;
/// JSON documents (manifests, configs, indexes) larger than this are refused.
const MAX_JSON: u64 = 16 << 20;
/// Nesting of image indexes, and symlink hops, followed at most.
const MAX_DEPTH: usize = 8;

const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

fn invalid(detail: impl Into<String>) -> ImageError {
    ImageError::InvalidArchive {
        detail: detail.into(),
    }
}

/// One regular file of the archive.
struct Received {
    data: Option<Vec<u8>>,
    file: Option<PathBuf>,
    digest: String,
    size: u64,
}

/// Everything pass 1 read; the directory under `tmp/` goes when dropped.
struct Archive {
    dir: PathBuf,
    files: BTreeMap<String, Received>,
    links: BTreeMap<String, String>,
}

impl Drop for Archive {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove a load's temporary directory");
        }
    }
}

/// Normalises an archive path (`./a//b` → `a/b`); `..` is refused.
fn clean(path: &Path, shown: &str) -> Result<String, ImageError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                if !out.pop() {
                    return Err(invalid(format!(
                        "entry `{shown}` has a path that leaves the archive (`..`)"
                    )));
                }
            }
            Component::Prefix(_) => return Err(invalid(format!("entry `{shown}`: bad path"))),
        }
    }
    Ok(out.to_string_lossy().into_owned())
}

/// Counts the uncompressed bytes of the outer stream against the limit.
struct Bounded<R> {
    inner: R,
    left: u64,
    tripped: bool,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.left.checked_sub(n as u64) {
            Some(l) => self.left = l,
            None => {
                self.tripped = true;
                return Err(io::Error::other("import limit exceeded"));
            }
        }
        Ok(n)
    }
}

impl Archive {
    /// Pass 1: reads the whole archive into `tmp/load-<uuid>/`, verifying `blobs/` names.
    fn receive<R: Read>(store: &ImageStore, reader: R) -> Result<Archive, ImageError> {
        let dir = store
            .tmp_path()
            .join(format!("load-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir(&dir).map_err(ImageError::io("create", &dir))?;
        let mut archive = Archive {
            dir,
            files: BTreeMap::new(),
            links: BTreeMap::new(),
        };
        let limits = store.limits();
        let mut reader = io::BufReader::with_capacity(256 << 10, reader);
        let head = io::BufRead::fill_buf(&mut reader)
            .map_err(|e| invalid(format!("cannot read the input: {e}")))?
            .to_vec();
        if head.is_empty() {
            return Err(invalid(
                "the input is empty: give an archive made by `docker save` or an OCI image layout",
            ));
        }
        let stream: Box<dyn Read> = match compression_of(&head) {
            Some("gzip") => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            Some(_) => Box::new(
                zstd::stream::read::Decoder::with_buffer(reader)
                    .map_err(|e| invalid(format!("cannot start zstd decompression: {e}")))?,
            ),
            None => Box::new(reader),
        };
        let mut bounded = Bounded {
            inner: stream,
            left: limits.max_bytes,
            tripped: false,
        };
        let result = archive.read_entries(&mut bounded, limits.max_entries);
        if bounded.tripped {
            return Err(ImageError::LimitExceeded {
                what: "uncompressed bytes",
                limit: limits.max_bytes,
            });
        }
        result?;
        if archive.files.is_empty() {
            return Err(invalid("the archive has no files"));
        }
        Ok(archive)
    }

    fn read_entries<R: Read>(&mut self, reader: R, max_entries: u64) -> Result<(), ImageError> {
        let mut tar = tar::Archive::new(reader);
        let truncated = |e: io::Error, last: &Option<String>| {
            invalid(format!(
                "the archive is truncated or is not a tar archive{}: {e}",
                last.as_ref()
                    .map(|l| format!(" (after entry `{l}`)"))
                    .unwrap_or_default()
            ))
        };
        let mut last: Option<String> = None;
        let mut small_total = 0u64;
        let mut count = 0u64;
        let entries = tar.entries().map_err(|e| truncated(e, &last))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| truncated(e, &last))?;
            count += 1;
            if count > max_entries {
                return Err(ImageError::LimitExceeded {
                    what: "entries",
                    limit: max_entries,
                });
            }
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let path = clean(Path::new(&*shown), &shown)?;
            let kind = entry.header().entry_type();
            match kind {
                tar::EntryType::Directory | tar::EntryType::XGlobalHeader => {}
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default();
                    let base = Path::new(&path).parent().unwrap_or(Path::new(""));
                    let resolved = if target.starts_with('/') {
                        clean(Path::new(&target), &shown)?
                    } else {
                        clean(&base.join(&target), &shown)?
                    };
                    self.links.insert(path.clone(), resolved);
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if self.files.contains_key(&path) || self.links.contains_key(&path) {
                        return Err(invalid(format!("`{path}` appears twice in the archive")));
                    }
                    let size = entry.size();
                    let keep_in_memory = size <= SMALL_FILE && small_total + size <= SMALL_TOTAL;
                    let mut hasher = Sha256::new();
                    let mut buf = vec![0u8; 256 << 10];
                    let mut data = keep_in_memory.then(|| Vec::with_capacity(size as usize));
                    let mut file = None;
                    let file_path = self.dir.join(format!("f{}", self.files.len()));
                    if !keep_in_memory {
                        file = Some(
                            fs::File::create(&file_path)
                                .map_err(ImageError::io("create", &file_path))?,
                        );
                    }
                    let mut read = 0u64;
                    loop {
                        let n = match entry.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(truncated(e, &Some(path.clone()))),
                        };
                        read += n as u64;
                        hasher.update(&buf[..n]);
                        match (&mut data, &mut file) {
                            (Some(d), _) => d.extend_from_slice(&buf[..n]),
                            (None, Some(f)) => f
                                .write_all(&buf[..n])
                                .map_err(ImageError::io("write", &file_path))?,
                            _ => {}
                        }
                    }
                    if read != size {
                        return Err(invalid(format!(
                            "`{path}` is truncated: {read} of {size} bytes"
                        )));
                    }
                    if keep_in_memory {
                        small_total += size;
                    }
                    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
                    if let Some(rest) = path.strip_prefix("blobs/") {
                        let (alg, hex) = rest.split_once('/').unwrap_or((rest, ""));
                        if alg == "sha256" {
                            if digest != format!("sha256:{hex}") {
                                return Err(invalid(format!(
                                    "blob `{path}` does not match its digest: its content hashes \
                                     to {digest} (a corrupted, truncated or tampered archive)"
                                )));
                            }
                        } else {
                            return Err(invalid(format!(
                                "blob `{path}`: digest algorithm `{alg}` is not supported (only \
                                 sha256)"
                            )));
                        }
                    }
                    self.files.insert(
                        path.clone(),
                        Received {
                            data,
                            file: file.map(|_| file_path),
                            digest,
                            size,
                        },
                    );
                }
                other => {
                    return Err(invalid(format!(
                        "entry `{path}` is a {other:?}: an image archive holds only files, \
                         directories and symlinks"
                    )))
                }
            }
            last = Some(path);
        }
        Ok(())
    }

    /// A file by archive path, following the archive's own symlinks.
    fn get(&self, path: &str) -> Result<&Received, ImageError> {
        let mut p = clean(Path::new(path), path)?;
        for _ in 0..MAX_DEPTH {
            if let Some(f) = self.files.get(&p) {
                return Ok(f);
            }
            match self.links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        Err(invalid(format!("`{path}` is named but not in the archive")))
    }

    fn read_json_bytes(&self, path: &str) -> Result<Vec<u8>, ImageError> {
        let f = self.get(path)?;
        if f.size > MAX_JSON {
            return Err(invalid(format!(
                "`{path}` is {} bytes, too big for a JSON document",
                f.size
            )));
        }
        match (&f.data, &f.file) {
            (Some(d), _) => Ok(d.clone()),
            (None, Some(p)) => fs::read(p).map_err(ImageError::io("read", p)),
            _ => Ok(Vec::new()),
        }
    }

    fn open<'a>(&self, f: &'a Received) -> Result<Box<dyn Read + 'a>, ImageError> {
        match (&f.data, &f.file) {
            (Some(d), _) => Ok(Box::new(&d[..])),
            (None, Some(p)) => Ok(Box::new(io::BufReader::with_capacity(
                256 << 10,
                fs::File::open(p).map_err(ImageError::io("open", p))?,
            ))),
            _ => Ok(Box::new(io::empty())),
        }
    }

    /// A blob by descriptor: `blobs/sha256/<hex>`, its size checked.
    fn blob(&self, desc: &Descriptor, what: &str) -> Result<(String, &Received), ImageError> {
        let (alg, hex) = desc.digest.split_once(':').unwrap_or(("", ""));
        if alg != "sha256" || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "{what} has digest `{}`; only sha256:<64 hex> is supported",
                desc.digest
            )));
        }
        let path = format!("blobs/sha256/{hex}");
        let f = self
            .get(&path)
            .map_err(|_| invalid(format!("{what} {} is not in the archive", desc.digest)))?;
        if f.digest != desc.digest {
            return Err(invalid(format!(
                "{what} {} does not match its content ({})",
                desc.digest, f.digest
            )));
        }
        if let Some(size) = desc.size {
            if size != f.size {
                return Err(invalid(format!(
                    "{what} {} is {} bytes, but its descriptor says {size} (truncated or \
                     tampered)",
                    desc.digest, f.size
                )));
            }
        }
        Ok((path, f))
    }
}

#[derive(Debug, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// An image found in the archive, before anything is unpacked.
struct Found {
    config_bytes: Vec<u8>,
    config: OciImageConfig,
    manifest: Option<Vec<u8>>,
    /// Archive paths of the layer blobs, lowest first.
    layers: Vec<String>,
    tags: Vec<Reference>,
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| invalid(format!("cannot parse {what}: {e}")))
}

fn parse_config(bytes: &[u8], what: &str) -> Result<OciImageConfig, ImageError> {
    let config: OciImageConfig = parse_json(bytes, what)?;
    if config.rootfs.kind != "layers" {
        return Err(invalid(format!(
            "{what}: rootfs type `{}` is not `layers`",
            config.rootfs.kind
        )));
    }
    for d in &config.rootfs.diff_ids {
        let ok = d
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(invalid(format!("{what}: bad layer diff id `{d}`")));
        }
    }
    if !config.os.is_empty() && config.os != "linux" {
        return Err(invalid(format!(
            "{what}: the image is for {}, not linux",
            config.os
        )));
    }
    Ok(config)
}

fn names_from(annotations: &BTreeMap<String, String>) -> Vec<Reference> {
    if let Some(n) = annotations.get(ANNOTATION_CONTAINERD_NAME) {
        if let Ok(r) = Reference::parse(n) {
            return vec![r];
        }
    }
    match annotations.get(ANNOTATION_REF_NAME) {
        // A bare tag ("latest") names no repository: the image loads untagged.
        Some(n) if n.contains(':') || n.contains('/') => Reference::parse(n).into_iter().collect(),
        _ => Vec::new(),
    }
}

fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_INDEX || media_type == MEDIA_DOCKER_LIST
}

impl Archive {
    /// Pass 2: the images the archive holds.
    fn images(&self) -> Result<Vec<Found>, ImageError> {
        if self.files.contains_key("manifest.json") {
            self.docker_images()
        } else if self.files.contains_key("index.json") {
            if !self.files.contains_key("oci-layout") {
                return Err(invalid(
                    "`index.json` without `oci-layout`: not an OCI image layout",
                ));
            }
            let layout: serde_json::Value =
                parse_json(&self.read_json_bytes("oci-layout")?, "oci-layout")?;
            if layout["imageLayoutVersion"].as_str().is_none() {
                return Err(invalid("`oci-layout` has no imageLayoutVersion"));
            }
            let index: Index = parse_json(&self.read_json_bytes("index.json")?, "index.json")?;
            let mut out = Vec::new();
            for d in &index.manifests {
                self.walk(d, names_from(&d.annotations), 0, &mut out)?;
            }
            if out.is_empty() {
                return Err(invalid("index.json names no image"));
            }
            Ok(out)
        } else {
            Err(invalid(
                "neither `manifest.json` (docker save) nor `index.json` (OCI image layout) is in \
                 the archive",
            ))
        }
    }

    fn docker_images(&self) -> Result<Vec<Found>, ImageError> {
        let entries: Vec<DockerManifestEntry> =
            parse_json(&self.read_json_bytes("manifest.json")?, "manifest.json")?;
        if entries.is_empty() {
            return Err(invalid("manifest.json lists no image"));
        }
        // The OCI manifests of the Docker 25+ form, by config digest (kept so digests stay).
        let mut manifests: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        if self.files.contains_key("index.json") {
            let mut found = Vec::new();
            if let Ok(bytes) = self.read_json_bytes("index.json") {
                if let Ok(index) = serde_json::from_slice::<Index>(&bytes) {
                    for d in &index.manifests {
                        // Only to keep the manifests' bytes: manifest.json is authoritative.
                        if let Err(e) = self.walk(d, Vec::new(), 0, &mut found) {
                            tracing::debug!(error = %e, "docker archive: index.json entry skipped");
                        }
                    }
                }
            }
            for f in found {
                if let Some(m) = f.manifest {
                    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&f.config_bytes)));
                    manifests.insert(digest, m);
                }
            }
        }
        let mut out = Vec::new();
        for (i, e) in entries.into_iter().enumerate() {
            let what = format!(
                "the config `{}` (image {} of manifest.json)",
                e.config,
                i + 1
            );
            let config_bytes = self.read_json_bytes(&e.config)?;
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&config_bytes)));
            let stem = Path::new(&e.config)
                .file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".json").to_string())
                .unwrap_or_default();
            if stem.len() == 64
                && stem.bytes().all(|b| b.is_ascii_hexdigit())
                && digest != format!("sha256:{stem}")
            {
                return Err(invalid(format!(
                    "{what} does not match its name: it hashes to {digest} (a corrupted or \
                     tampered archive)"
                )));
            }
            let config = parse_config(&config_bytes, &what)?;
            if config.rootfs.diff_ids.len() != e.layers.len() {
                return Err(invalid(format!(
                    "{what} has {} layers but manifest.json lists {}",
                    config.rootfs.diff_ids.len(),
                    e.layers.len()
                )));
            }
            let mut tags = Vec::new();
            for t in e.repo_tags.unwrap_or_default() {
                tags.push(Reference::parse(&t).map_err(|err| {
                    invalid(format!("manifest.json: bad RepoTags entry `{t}`: {err}"))
                })?);
            }
            out.push(Found {
                manifest: manifests.get(&digest).cloned(),
                config_bytes,
                config,
                layers: e.layers,
                tags,
            });
        }
        Ok(out)
    }

    /// Follows a descriptor of index.json (or of an image index) down to image manifests.
    fn walk(
        &self,
        desc: &Descriptor,
        names: Vec<Reference>,
        depth: usize,
        out: &mut Vec<Found>,
    ) -> Result<(), ImageError> {
        if depth > MAX_DEPTH {
            return Err(invalid("image indexes nest too deeply"));
        }
        if desc
            .annotations
            .get("vnd.docker.reference.type")
            .is_some_and(|t| t == "attestation-manifest")
        {
            return Ok(());
        }
        let (path, _) = self.blob(desc, "a manifest")?;
        let bytes = self.read_json_bytes(&path)?;
        let peek: serde_json::Value = parse_json(&bytes, &format!("manifest {}", desc.digest))?;
        let media = peek["mediaType"]
            .as_str()
            .unwrap_or(desc.media_type.as_str())
            .to_string();
        if is_index(&media) || (peek.get("manifests").is_some() && peek.get("config").is_none()) {
            let index: Index = parse_json(&bytes, &format!("image index {}", desc.digest))?;
            let arch = oci_architecture();
            let mut candidates: Vec<&Descriptor> = index
                .manifests
                .iter()
                .filter(|d| {
                    d.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == arch)
                })
                .collect();
            if candidates.is_empty() {
                candidates = index
                    .manifests
                    .iter()
                    .filter(|d| d.platform.is_none())
                    .collect();
            }
            let Some(pick) = candidates.first() else {
                let available: Vec<String> = index
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect();
                return Err(invalid(format!(
                    "image index {} has no linux/{arch} image (it has: {})",
                    desc.digest,
                    available.join(", ")
                )));
            };
            let mut names = names;
            if names.is_empty() {
                names = names_from(&pick.annotations);
            }
            return self.walk(pick, names, depth + 1, out);
        }
        if media != MEDIA_MANIFEST && media != MEDIA_DOCKER_MANIFEST && !media.is_empty() {
            return Err(invalid(format!(
                "manifest {} has media type `{media}`, which is not an image manifest",
                desc.digest
            )));
        }
        let manifest: Manifest = parse_json(&bytes, &format!("manifest {}", desc.digest))?;
        let (config_path, _) = self.blob(&manifest.config, "an image config")?;
        let config_bytes = self.read_json_bytes(&config_path)?;
        let config = parse_config(
            &config_bytes,
            &format!("image config {}", manifest.config.digest),
        )?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(invalid(format!(
                "manifest {} lists {} layers but its config has {}",
                desc.digest,
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for l in &manifest.layers {
            if !l.media_type.is_empty()
                && !l.media_type.contains("layer")
                && !l.media_type.contains("diff.tar")
            {
                return Err(invalid(format!(
                    "layer {} has media type `{}`, which is not a layer",
                    l.digest, l.media_type
                )));
            }
            let (p, _) = self.blob(l, "a layer")?;
            layers.push(p);
        }
        out.push(Found {
            config_bytes,
            config,
            manifest: Some(bytes),
            layers,
            tags: names,
        });
        Ok(())
    }
}

impl ImageStore {
    /// Like `docker load`: registers every image of a `docker save` archive or an OCI image
    /// layout archive (see the module docs). Returns the images and Docker's messages
    /// (`Loaded image: name:tag`, or `Loaded image ID: sha256:…` for an untagged one).
    pub fn load<R: Read>(
        &self,
        reader: R,
    ) -> Result<(Vec<shoal_proto::Image>, Vec<String>), ImageError> {
        let archive = Archive::receive(self, reader)?;
        let found = archive.images()?;
        let all: Vec<String> = found
            .iter()
            .flat_map(|f| f.config.rootfs.diff_ids.iter().cloned())
            .collect();
        let pins = self.pin_layers(&all);
        let result = self.load_found(&archive, found);
        drop(pins);
        if result.is_err() {
            if let Err(e) = self.collect_garbage() {
                tracing::warn!(error = %e, "image store: cannot collect a failed load's layers");
            }
        }
        let (images, names) = result?;
        let mut messages = Vec::new();
        for (i, names) in images.iter().zip(names) {
            if names.is_empty() {
                messages.push(format!("Loaded image ID: {}", i.id));
            }
            for n in names {
                messages.push(format!("Loaded image: {n}"));
            }
        }
        Ok((images, messages))
    }

    fn load_found(
        &self,
        archive: &Archive,
        found: Vec<Found>,
    ) -> Result<(Vec<shoal_proto::Image>, Vec<Vec<String>>), ImageError> {
        let mut staged_layers = BTreeSet::new();
        let mut prepared = Vec::new();
        let mut messages_tags = Vec::new();
        for f in found {
            let mut blobs = Vec::new();
            for (diff, path) in f.config.rootfs.diff_ids.iter().zip(&f.layers) {
                let received = archive.get(path)?;
                if staged_layers.contains(diff) {
                    blobs.push(None);
                    continue;
                }
                let _layer = self.lock_layer(diff);
                if self.has_layer_blob(diff)? {
                    blobs.push(None);
                    continue;
                }
                let blob = self.stage(received)?;
                self.unpack_and_place(archive.open(received)?, diff, blob)
                    .map_err(|e| match e {
                        ImageError::InvalidArchive { detail } => {
                            invalid(format!("layer `{path}`: {detail}"))
                        }
                        other => other,
                    })?;
                staged_layers.insert(diff.clone());
                blobs.push(None);
            }
            messages_tags.push(f.tags.iter().map(|t| t.to_string()).collect());
            prepared.push(PreparedImage {
                config_bytes: f.config_bytes,
                config: f.config,
                manifest: f.manifest,
                blobs,
                tags: f.tags,
            });
        }
        Ok((self.commit_images(prepared)?, messages_tags))
    }

    /// A received file as a blob file under `tmp/`, ready to be moved into `blobs/`.
    fn stage(&self, f: &Received) -> Result<StagedBlob, ImageError> {
        let path = self
            .tmp_path()
            .join(format!("blob-{}", uuid::Uuid::new_v4().simple()));
        match (&f.data, &f.file) {
            (Some(d), _) => fs::write(&path, d).map_err(ImageError::io("write", &path))?,
            (None, Some(p)) => {
                // Hard link, not rename: a symlinked layer may be staged for two images.
                if fs::hard_link(p, &path).is_err() {
                    fs::copy(p, &path).map_err(ImageError::io("copy", p))?;
                }
            }
            _ => fs::write(&path, b"").map_err(ImageError::io("write", &path))?,
        }
        Ok(StagedBlob {
            path,
            digest: f.digest.clone(),
            size: f.size,
        })
    }

    /// Like `docker save`: writes the images `references` name, in Docker 25+'s format (with
    /// the OCI `index.json` and `oci-layout`), to `out`.
    pub fn save<W: Write>(&self, references: &[String], out: W) -> Result<(), ImageError> {
        if references.is_empty() {
            return Err(ImageError::InvalidReference {
                reference: String::new(),
                reason: "name at least one image to save".into(),
            });
        }
        let set = self.open_for_save(references)?;
        let werr = |e: io::Error| ImageError::Io {
            action: "write the archive to",
            path: PathBuf::from("the output"),
            source: e,
        };
        let mut tar = tar::Builder::new(out);
        let header = |path: &str, size: u64, dir: bool| {
            let mut h = tar::Header::new_ustar();
            h.set_size(size);
            h.set_mode(if dir { 0o755 } else { 0o644 });
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(if dir {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            let _ = path;
            h
        };
        for d in ["blobs/", "blobs/sha256/"] {
            let mut h = header(d, 0, true);
            tar.append_data(&mut h, d, io::empty()).map_err(werr)?;
        }
        let mut written = BTreeSet::new();
        let mut manifest_json = Vec::new();
        let mut index = Vec::new();
        let put = |tar: &mut tar::Builder<W>,
                   written: &mut BTreeSet<String>,
                   hex: &str,
                   size: u64,
                   data: &mut dyn Read|
         -> Result<(), ImageError> {
            if written.insert(hex.to_string()) {
                let path = format!("blobs/sha256/{hex}");
                let mut h = header(&path, size, false);
                tar.append_data(&mut h, &path, data).map_err(werr)?;
            }
            Ok(())
        };
        for image in set.images {
            let mut layer_paths = Vec::new();
            for (hex, size, file) in image.layers {
                let mut f = file;
                put(&mut tar, &mut written, &hex, size, &mut f)?;
                layer_paths.push(format!("blobs/sha256/{hex}"));
            }
            put(
                &mut tar,
                &mut written,
                &image.config_hex,
                image.config_bytes.len() as u64,
                &mut &image.config_bytes[..],
            )?;
            let manifest_hex = hex::encode(Sha256::digest(&image.manifest_bytes));
            if !image.manifest_bytes.is_empty() {
                put(
                    &mut tar,
                    &mut written,
                    &manifest_hex,
                    image.manifest_bytes.len() as u64,
                    &mut &image.manifest_bytes[..],
                )?;
                let desc = |annotations: serde_json::Value| {
                    let mut d = serde_json::json!({
                        "mediaType": MEDIA_MANIFEST,
                        "digest": format!("sha256:{manifest_hex}"),
                        "size": image.manifest_bytes.len(),
                    });
                    if !annotations.is_null() {
                        d["annotations"] = annotations;
                    }
                    d
                };
                if image.tags.is_empty() {
                    index.push(desc(serde_json::Value::Null));
                }
                for t in &image.tags {
                    index.push(desc(serde_json::json!({
                        ANNOTATION_CONTAINERD_NAME: t.canonical(),
                        ANNOTATION_REF_NAME: t.tag,
                    })));
                }
            }
            manifest_json.push(serde_json::json!({
                "Config": format!("blobs/sha256/{}", image.config_hex),
                "RepoTags": image.tags.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                "Layers": layer_paths,
            }));
        }
        let files = [
            (
                "index.json",
                serde_json::to_vec(&serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": MEDIA_INDEX,
                    "manifests": index,
                })),
            ),
            ("manifest.json", serde_json::to_vec(&manifest_json)),
            (
                "oci-layout",
                serde_json::to_vec(&serde_json::json!({"imageLayoutVersion": "1.0.0"})),
            ),
        ];
        for (name, bytes) in files {
            let bytes = bytes.map_err(|e| invalid(format!("cannot encode {name}: {e}")))?;
            let mut h = header(name, bytes.len() as u64, false);
            tar.append_data(&mut h, name, &bytes[..]).map_err(werr)?;
        }
        tar.into_inner().map_err(werr)?.flush().map_err(werr)?;
        Ok(())
    }
}
