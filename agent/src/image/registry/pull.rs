//! `docker pull`: manifest (an index resolved to linux/<this arch>), config, then the layers,
//! three at a time, each unpacked while it downloads. Stored exactly as `load` stores an
//! image, with the same guarantees (see `image/mod.rs`).
//!
//! Integrity: the manifest must hash to the digest the reference or the index names; the
//! config and every layer blob to their descriptors' digests (checked as the bytes stream
//! through, and again by the distribution client), and be exactly their descriptors' size;
//! each layer's uncompressed stream must hash to the config's diff id. A mismatch anywhere
//! fails the pull before the image is registered, and the layers it placed are collected.

use std::fs;
use std::io::{self, Read, Write};

use futures::StreamExt;
use oci_client::client::BlobResponse;
use oci_client::RegistryOperation;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::super::config::{oci_architecture, OciImageConfig};
use super::super::error::ImageError;
use super::super::fsutil::start_writeback;
use super::super::reference::Reference;
use super::super::store::{ImageStore, PreparedImage, StagedBlob};
use super::error::RegistryError;
use super::manifest::{self, Descriptor, ImageManifest, Manifest};
use super::progress::{short_id, Progress, Throttle};
use super::session::{Credentials, Session};
use super::settings::{RegistrySettings, Target};

/// Layers downloaded at once (Docker's default `max-concurrent-downloads`).
const CONCURRENT_LAYERS: usize = 3;
/// Chunks in flight between a layer's download and its unpacker.
const CHANNEL_DEPTH: usize = 64;
/// Blob bytes written between two writeback hints (see [`start_writeback`]).
const WRITEBACK_STEP: u64 = 8 << 20;

/// What a pull did.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub image: shoal_proto::Image,
    /// The digest of the image manifest stored (for a multi-arch image, the platform's).
    pub digest: String,
    /// Layers downloaded (0: the store had them all).
    pub downloaded: usize,
}

pub(super) async fn pull(
    store: &ImageStore,
    settings: &RegistrySettings,
    reference: &str,
    credentials: &Credentials,
    insecure: bool,
    progress: &Progress,
) -> Result<Pulled, RegistryError> {
    let parsed = Reference::parse_any(reference)?;
    let target = Target::of(&parsed);
    let session = Session::new(settings, target.clone(), credentials, insecure, true);
    tracing::info!(url = %target.manifest_url(session.http), "pulling an image");
    progress.line(format!(
        "{}: Pulling from {}",
        target.digest.as_deref().unwrap_or(&target.tag),
        target.shown_repository()
    ));
    session.authenticate(RegistryOperation::Pull).await?;
    let (manifest_bytes, manifest_digest, image_manifest) =
        fetch_image_manifest(&session, &parsed).await?;

    let config_what = format!("image config {}", image_manifest.config.digest);
    let config_bytes = fetch_small_blob(&session, &image_manifest.config, &config_what).await?;
    let config = parse_config(&config_bytes, &image_manifest, &config_what)?;

    let diff_ids = config.rootfs.diff_ids.clone();
    let pins = store.pin_layers(&diff_ids);
    let result = fetch_layers(store, &session, &image_manifest, &diff_ids, progress).await;
    let result = match result {
        Ok(downloaded) => {
            let tag = parsed.tag_key().and_then(|_| {
                parsed.digest.is_none().then(|| Reference {
                    digest: None,
                    ..parsed.clone()
                })
            });
            let store2 = store.clone();
            let prepared = PreparedImage {
                blobs: diff_ids.iter().map(|_| None).collect(),
                config_bytes,
                config,
                manifest: Some(manifest_bytes),
                tags: tag.into_iter().collect(),
            };
            tokio::task::spawn_blocking(move || {
                let previous = prepared
                    .tags
                    .first()
                    .and_then(|t| store2.resolve(&t.to_string()).ok())
                    .map(|r| r.image.id);
                store2
                    .commit_images(vec![prepared])
                    .map(|images| (images, previous))
            })
            .await
            .map_err(|e| crashed("registering the image", e))?
            .map_err(RegistryError::from)
            .and_then(|(mut images, previous)| {
                let image = images.pop().ok_or_else(|| RegistryError::Protocol {
                    registry: target.registry.clone(),
                    what: "registering the pulled image".into(),
                    detail: "the store registered nothing".into(),
                })?;
                Ok((image, downloaded, previous))
            })
        }
        Err(e) => Err(e),
    };
    drop(pins);
    match result {
        Ok((image, downloaded, previous)) => {
            // Pulled through an index (a multi-arch digest): the image answers to it too.
            if let Some(asked) = parsed.digest.clone().filter(|d| *d != manifest_digest) {
                let (store, id) = (store.clone(), image.id.clone());
                let noted =
                    tokio::task::spawn_blocking(move || store.add_digest_alias(&id, &asked));
                if let Ok(Err(e)) = noted.await {
                    tracing::warn!(error = %e, "image store: cannot note the digest an image was pulled by");
                }
            }
            progress.line(format!("Digest: {manifest_digest}"));
            let status = if downloaded == 0 && previous.as_deref() == Some(image.id.as_str()) {
                format!("Status: Image is up to date for {}", parsed.canonical())
            } else {
                format!("Status: Downloaded newer image for {}", parsed.canonical())
            };
            progress.done(status, &manifest_digest);
            Ok(Pulled {
                image,
                digest: manifest_digest,
                downloaded,
            })
        }
        Err(e) => {
            let store = store.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = store.collect_garbage() {
                    tracing::warn!(error = %e, "image store: cannot collect a failed pull's layers");
                }
            })
            .await;
            Err(e)
        }
    }
}

fn crashed(what: &str, e: tokio::task::JoinError) -> RegistryError {
    RegistryError::Image(ImageError::Io {
        action: "finish",
        path: what.into(),
        source: io::Error::other(e.to_string()),
    })
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The image manifest the reference names: (bytes as served, their digest, parsed). An index
/// is resolved to this node's platform.
async fn fetch_image_manifest(
    session: &Session,
    parsed: &Reference,
) -> Result<(Vec<u8>, String, ImageManifest), RegistryError> {
    let what = format!("manifest for {parsed}");
    let (bytes, _) = session
        .client
        .pull_manifest_raw(&session.reference, &session.auth, manifest::ACCEPTED)
        .await
        .map_err(|e| session.error(&what, e))?;
    let digest = sha256_digest(&bytes);
    if let Some(pinned) = &parsed.digest {
        if &digest != pinned {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: pinned.clone(),
                actual: digest,
            });
        }
    }
    match manifest::parse(&bytes, "", &what)? {
        Manifest::Image(m) => Ok((bytes.to_vec(), digest, m)),
        Manifest::Index(list) => {
            let arch = oci_architecture();
            let pick = manifest::select_platform(&list, "linux", arch).map_err(|detail| {
                RegistryError::BadManifest {
                    what: format!("image index of {parsed}"),
                    detail,
                }
            })?;
            let what = format!("manifest {} (linux/{arch} of {parsed})", pick.digest);
            let reference = session.reference.clone_with_digest(pick.digest.clone());
            let (bytes, _) = session
                .client
                .pull_manifest_raw(&reference, &session.auth, manifest::ACCEPTED)
                .await
                .map_err(|e| session.error(&what, e))?;
            let digest = sha256_digest(&bytes);
            if digest != pick.digest {
                return Err(RegistryError::DigestMismatch {
                    what,
                    expected: pick.digest.clone(),
                    actual: digest,
                });
            }
            if pick.size > 0 && bytes.len() as i64 != pick.size {
                return Err(RegistryError::SizeMismatch {
                    what,
                    expected: pick.size as u64,
                    actual: bytes.len() as u64,
                });
            }
            match manifest::parse(&bytes, &pick.media_type, &what)? {
                Manifest::Image(m) => Ok((bytes.to_vec(), digest, m)),
                Manifest::Index(_) => Err(RegistryError::BadManifest {
                    what,
                    detail: "an index inside an index: shoal follows one level".into(),
                }),
            }
        }
    }
}

/// A small blob (the config) into memory, verified and bounded.
async fn fetch_small_blob(
    session: &Session,
    desc: &Descriptor,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    if desc.size < 0 || desc.size as usize > manifest::MAX_MANIFEST_BYTES {
        return Err(RegistryError::BadManifest {
            what: what.to_string(),
            detail: format!("its size {} is out of bounds", desc.size),
        });
    }
    let mut stream = session
        .client
        .pull_blob_stream(&session.reference, desc.digest.as_str())
        .await
        .map_err(|e| session.error(what, e))?;
    let mut out = Vec::with_capacity(desc.size as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| session.io_error(what, e))?;
        out.extend_from_slice(&chunk);
        if out.len() > desc.size as usize {
            break;
        }
    }
    let digest = sha256_digest(&out);
    if digest != desc.digest {
        return Err(RegistryError::DigestMismatch {
            what: what.to_string(),
            expected: desc.digest.clone(),
            actual: digest,
        });
    }
    if out.len() as i64 != desc.size {
        return Err(RegistryError::SizeMismatch {
            what: what.to_string(),
            expected: desc.size as u64,
            actual: out.len() as u64,
        });
    }
    Ok(out)
}

pub(in crate::image) fn parse_config(
    bytes: &[u8],
    manifest: &ImageManifest,
    what: &str,
) -> Result<OciImageConfig, RegistryError> {
    let bad = |detail: String| RegistryError::BadManifest {
        what: what.to_string(),
        detail,
    };
    let config: OciImageConfig =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a valid image config: {e}")))?;
    if config.rootfs.kind != "layers" {
        return Err(bad(format!(
            "rootfs type `{}` is not `layers`",
            config.rootfs.kind
        )));
    }
    if !config.os.is_empty() && config.os != "linux" {
        return Err(bad(format!("the image is for {}, not linux", config.os)));
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(bad(format!(
            "it lists {} layers but the manifest has {}",
            config.rootfs.diff_ids.len(),
            manifest.layers.len()
        )));
    }
    for d in &config.rootfs.diff_ids {
        let ok = d.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        if !ok {
            return Err(bad(format!("bad layer diff id `{d}`")));
        }
    }
    Ok(config)
}

/// Downloads and unpacks the layers the store lacks; returns how many it downloaded.
async fn fetch_layers(
    store: &ImageStore,
    session: &Session,
    manifest: &ImageManifest,
    diff_ids: &[String],
    progress: &Progress,
) -> Result<usize, RegistryError> {
    for l in &manifest.layers {
        progress.layer(&short_id(&l.digest), "Pulling fs layer");
    }
    // Collected first: a lazy iterator of futures trips the compiler's Send check.
    let jobs: Vec<_> = manifest
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(desc, diff)| Box::pin(fetch_layer(store, session, desc, diff, progress)))
        .collect();
    let mut results = futures::stream::iter(jobs).buffer_unordered(CONCURRENT_LAYERS);
    // Every job runs to its end even after one fails, so that a failed pull returns only
    // once no unpacker is still writing under `tmp/`.
    let (mut downloaded, mut first_error) = (0, None);
    while let Some(r) = results.next().await {
        match r {
            Ok(true) => downloaded += 1,
            Ok(false) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(downloaded),
    }
}

/// One layer from the registry: see [`receive_layer`].
///
/// Asked for as a range from byte 0, which registries answer with a partial-content stream
/// that the client does not hash: [`receive_layer`] checks digest and size itself, and a
/// second hash of every byte costed about a tenth of a pull's CPU time. A registry that
/// ignores the range sends the whole blob, which the client verifies too.
async fn fetch_layer(
    store: &ImageStore,
    session: &Session,
    desc: &Descriptor,
    diff_id: &str,
    progress: &Progress,
) -> Result<bool, RegistryError> {
    let what = format!("layer {}", desc.digest);
    let what = what.as_str();
    receive_layer(store, desc, diff_id, what, progress, || async move {
        let response = session
            .client
            .pull_blob_stream_partial(&session.reference, desc.digest.as_str(), 0, None)
            .await
            .map_err(|e| session.error(what, e))?;
        let stream = match response {
            BlobResponse::Full(s) | BlobResponse::Partial(s) => s,
        };
        Ok(stream.map(move |chunk| chunk.map_err(|e| session.io_error(what, e))))
    })
    .await
}

/// One layer: skipped if the store has it, else the stream `open` gives (the blob's bytes) is
/// written into a blob file and the unpacker at once, and must hash to `desc`'s digest, be
/// `desc`'s size, and unpack to `diff_id`; else nothing is placed. Returns whether it was
/// downloaded. Registry pulls and peer fetches both come through here.
pub(in crate::image) async fn receive_layer<F, Fut, S>(
    store: &ImageStore,
    desc: &Descriptor,
    diff_id: &str,
    what: &str,
    progress: &Progress,
    open: F,
) -> Result<bool, RegistryError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<S, RegistryError>>,
    S: futures::Stream<Item = Result<bytes::Bytes, RegistryError>>,
{
    let id = short_id(&desc.digest);
    // One unpacker per layer at a time, across concurrent pulls and loads.
    let guard = {
        let (store, diff) = (store.clone(), diff_id.to_string());
        tokio::task::spawn_blocking(move || store.lock_layer(&diff))
            .await
            .map_err(|e| crashed("waiting for a layer", e))?
    };
    let present = {
        let (store, diff) = (store.clone(), diff_id.to_string());
        tokio::task::spawn_blocking(move || store.has_layer_blob(&diff))
            .await
            .map_err(|e| crashed("looking up a layer", e))??
    };
    if present {
        progress.layer(&id, "Already exists");
        return Ok(false);
    }
    let size = u64::try_from(desc.size).unwrap_or(0);
    let stream = open().await?;
    let mut stream = std::pin::pin!(stream);

    let (tx, rx) = mpsc::channel::<io::Result<bytes::Bytes>>(CHANNEL_DEPTH);
    let worker = {
        let store = store.clone();
        let (diff, expected, what) = (diff_id.to_string(), desc.digest.clone(), what.to_string());
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let mut tee = Tee::create(rx, &store.tmp_path())?;
            let mut verdict: Option<RegistryError> = None;
            let placed = store.unpack_streamed(&mut tee, &diff, |tee| {
                tee.finish(&expected, size, &what).map_err(|e| {
                    verdict = Some(e);
                    ImageError::InvalidArchive {
                        detail: "the layer blob failed verification".into(),
                    }
                })
            });
            if let Err(e) = placed {
                // A bad blob often fails as a bad tarball first: say what is really wrong.
                if verdict.is_none() {
                    if let Err(v) = tee.finish(&expected, size, &what) {
                        verdict = Some(v);
                    }
                }
                return Err(verdict.unwrap_or(RegistryError::Image(e)));
            }
            Ok::<(), RegistryError>(())
        })
    };

    let mut received = 0u64;
    let mut throttle = Throttle::new(size);
    let mut failed: Option<RegistryError> = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                received += bytes.len() as u64;
                if received > size {
                    failed = Some(RegistryError::SizeMismatch {
                        what: what.to_string(),
                        expected: size,
                        actual: received,
                    });
                    let _ = tx.send(Err(io::Error::other("blob too long"))).await;
                    break;
                }
                if throttle.due(received) {
                    progress.bytes(&id, "Downloading", received, size);
                }
                if tx.send(Ok(bytes)).await.is_err() {
                    break; // the unpacker stopped: its result says why
                }
            }
            Err(e) => {
                failed = Some(e);
                let _ = tx.send(Err(io::Error::other("download failed"))).await;
                break;
            }
        }
    }
    drop(tx);
    if failed.is_none() {
        progress.bytes(&id, "Downloading", received, size);
        progress.layer(&id, "Download complete");
    }
    let unpacked = worker.await.map_err(|e| crashed("unpacking a layer", e))?;
    if let Some(e) = failed {
        return Err(e);
    }
    unpacked?;
    progress.layer(&id, "Pull complete");
    Ok(true)
}

/// The download as a `Read` for the unpacker (on a blocking thread), copying every byte into
/// a blob file under `tmp/` and hashing it on the way.
struct Tee {
    rx: mpsc::Receiver<io::Result<bytes::Bytes>>,
    chunk: bytes::Bytes,
    file: fs::File,
    path: std::path::PathBuf,
    hasher: Sha256,
    size: u64,
    /// Bytes up to here were handed to the disk's writeback.
    written_back: u64,
    /// Verified once (whatever the outcome).
    finished: bool,
    /// The file became a [`StagedBlob`], which owns it from then on.
    handed_over: bool,
}

impl Tee {
    fn create(
        rx: mpsc::Receiver<io::Result<bytes::Bytes>>,
        tmp: &std::path::Path,
    ) -> Result<Tee, RegistryError> {
        let path = tmp.join(format!("blob-{}", uuid::Uuid::new_v4().simple()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(ImageError::io("create", &path))?;
        Ok(Tee {
            rx,
            chunk: bytes::Bytes::new(),
            file,
            path,
            hasher: Sha256::new(),
            size: 0,
            written_back: 0,
            finished: false,
            handed_over: false,
        })
    }

    /// Reads what the unpacker left (tar padding), then checks digest and size; hands the
    /// blob file over as a staged blob.
    fn finish(
        &mut self,
        expected: &str,
        size: u64,
        what: &str,
    ) -> Result<StagedBlob, RegistryError> {
        if self.finished {
            return Err(RegistryError::Protocol {
                registry: String::new(),
                what: what.into(),
                detail: "verified twice".into(),
            });
        }
        self.finished = true;
        let drained = io::copy(self, &mut io::sink());
        let digest = format!(
            "sha256:{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        );
        if let Err(e) = drained {
            return Err(RegistryError::Protocol {
                registry: String::new(),
                what: what.into(),
                detail: format!("the download broke: {e}"),
            });
        }
        if digest != expected {
            return Err(RegistryError::DigestMismatch {
                what: what.into(),
                expected: expected.into(),
                actual: digest,
            });
        }
        if self.size != size {
            return Err(RegistryError::SizeMismatch {
                what: what.into(),
                expected: size,
                actual: self.size,
            });
        }
        self.file
            .flush()
            .map_err(ImageError::io("write", &self.path))?;
        start_writeback(&self.file, self.written_back, 0);
        self.handed_over = true;
        Ok(StagedBlob {
            path: self.path.clone(),
            digest,
            size: self.size,
        })
    }
}

impl Read for Tee {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(c)) => {
                    self.hasher.update(&c);
                    self.size += c.len() as u64;
                    self.file.write_all(&c)?;
                    if self.size - self.written_back >= WRITEBACK_STEP {
                        start_writeback(
                            &self.file,
                            self.written_back,
                            self.size - self.written_back,
                        );
                        self.written_back = self.size;
                    }
                    self.chunk = c;
                }
                Some(Err(e)) => return Err(e),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // Once staged, the blob is moved into `blobs/` (or its StagedBlob removes it).
        if !self.handed_over {
            let _ = fs::remove_file(&self.path);
        }
    }
}
