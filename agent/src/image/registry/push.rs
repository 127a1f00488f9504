//! `docker push`: the layers the registry lacks (a HEAD request tells), three at a time,
//! streamed from the store's blob files — in one PUT up to [`MONOLITHIC_MAX`], in chunks of
//! PATCHes above — then the config, then the manifest, byte for byte as stored (so its digest
//! is the image's digest everywhere).

use std::fs;
use std::io::Read;

use futures::StreamExt;
use oci_client::errors::OciDistributionError;
use oci_client::RegistryOperation;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::super::error::ImageError;
use super::super::reference::Reference;
use super::super::store::ImageStore;
use super::error::RegistryError;
use super::manifest::{self, Manifest};
use super::progress::{short_id, Progress, Throttle};
use super::session::{Credentials, Session};
use super::settings::{RegistrySettings, Target};

/// Blobs up to this size are uploaded in one request; larger ones in chunks (so a proxy's
/// request-size limit or a dropped connection costs one chunk, not the whole blob).
pub const MONOLITHIC_MAX: u64 = 16 << 20;
/// Layers uploaded at once (Docker's default `max-concurrent-uploads` is 5; 3 suits 2 cores).
const CONCURRENT_LAYERS: usize = 3;
/// Bytes read from a blob file at a time.
const READ_CHUNK: usize = 1 << 20;

/// Pushes the local image `reference` names to its registry; returns the manifest digest.
pub(super) async fn push(
    store: &ImageStore,
    settings: &RegistrySettings,
    reference: &str,
    credentials: &Credentials,
    insecure: bool,
    progress: &Progress,
) -> Result<String, RegistryError> {
    let parsed = Reference::parse_any(reference)?;
    if parsed.digest.is_some() {
        return Err(ImageError::InvalidReference {
            reference: reference.into(),
            reason: "push a tag (NAME[:TAG]), not a digest".into(),
        }
        .into());
    }
    let set = {
        let (store2, reference) = (store.clone(), parsed.to_string());
        tokio::task::spawn_blocking(move || store2.open_for_save(&[reference]))
            .await
            .map_err(|e| RegistryError::Protocol {
                registry: String::new(),
                what: "reading the image".into(),
                detail: e.to_string(),
            })?
            .map_err(|e| match e {
                ImageError::NotFound { .. } => ImageError::NotFound {
                    reference: format!("{parsed} (an image does not exist locally with that tag: tag one with `shoal image tag`)"),
                    root: store.root().to_path_buf(),
                },
                other => other,
            })?
    };
    let Some(image) = set.images.into_iter().next() else {
        return Err(ImageError::NotFound {
            reference: reference.into(),
            root: store.root().to_path_buf(),
        }
        .into());
    };
    let what = format!("the manifest of {parsed}");
    let Manifest::Image(m) = manifest::parse(&image.manifest_bytes, "", &what)? else {
        return Err(RegistryError::BadManifest {
            what,
            detail: "the stored manifest is an index".into(),
        });
    };
    let blob_digests: Vec<String> = image
        .layers
        .iter()
        .map(|(hex, _, _)| format!("sha256:{hex}"))
        .collect();
    let named: Vec<String> = m.layers.iter().map(|l| l.digest.clone()).collect();
    if blob_digests != named {
        return Err(RegistryError::BadManifest {
            what,
            detail: "it does not name the layer blobs the store has for the image (remove the \
                     image and load or pull it again)"
                .into(),
        });
    }

    let target = Target::of(&parsed);
    progress.line(format!(
        "The push refers to repository [{}]",
        parsed.full_name()
    ));
    let mono = Session::new(settings, target.clone(), credentials, insecure, true);
    mono.authenticate(RegistryOperation::Push).await?;
    let chunked = if image
        .layers
        .iter()
        .any(|(_, size, _)| *size > MONOLITHIC_MAX)
    {
        let s = Session::new(settings, target.clone(), credentials, insecure, false);
        s.authenticate(RegistryOperation::Push).await?;
        Some(s)
    } else {
        None
    };

    // Docker lists layers top first.
    for (hex, _, _) in image.layers.iter().rev() {
        progress.layer(&short_id(hex), "Preparing");
    }
    let jobs: Vec<_> = image
        .layers
        .into_iter()
        .map(|(hex, size, file)| {
            let session = match &chunked {
                Some(c) if size > MONOLITHIC_MAX => c,
                _ => &mono,
            };
            Box::pin(push_blob(
                session,
                &mono,
                format!("sha256:{hex}"),
                size,
                file,
                progress,
            ))
        })
        .collect();
    let mut results = futures::stream::iter(jobs).buffer_unordered(CONCURRENT_LAYERS);
    while let Some(r) = results.next().await {
        r?;
    }

    let config_digest = format!("sha256:{}", image.config_hex);
    let config_what = format!("image config {config_digest}");
    let exists = mono
        .client
        .blob_exists(&mono.reference, &config_digest)
        .await
        .map_err(|e| mono.error(&config_what, e))?;
    if !exists {
        mono.client
            .push_blob(&mono.reference, image.config_bytes, &config_digest)
            .await
            .map_err(|e| mono.error(&config_what, e))?;
    }

    let digest = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(&image.manifest_bytes))
    );
    let content_type = reqwest::header::HeaderValue::from_str(&m.media_type).map_err(|e| {
        RegistryError::BadManifest {
            what: what.clone(),
            detail: format!("media type `{}`: {e}", m.media_type),
        }
    })?;
    let size = image.manifest_bytes.len();
    mono.client
        .push_manifest_raw(&mono.reference, image.manifest_bytes, content_type)
        .await
        .map_err(|e| mono.error(&what, e))?;
    progress.done(
        format!("{}: digest: {digest} size: {size}", target.tag),
        &digest,
    );
    Ok(digest)
}

/// One layer blob: skipped if the registry has it, else streamed from its file.
async fn push_blob(
    session: &Session,
    mono: &Session,
    digest: String,
    size: u64,
    file: fs::File,
    progress: &Progress,
) -> Result<(), RegistryError> {
    let id = short_id(&digest);
    let what = format!("layer {digest}");
    let exists = mono
        .client
        .blob_exists(&mono.reference, &digest)
        .await
        .map_err(|e| mono.error(&what, e))?;
    if exists {
        progress.layer(&id, "Layer already exists");
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<oci_client::errors::Result<bytes::Bytes>>(4);
    let reader = tokio::task::spawn_blocking(move || {
        let mut file = file;
        loop {
            let mut buf = vec![0u8; READ_CHUNK];
            let chunk = match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    Ok(bytes::Bytes::from(buf))
                }
                Err(e) => Err(OciDistributionError::IoError(e)),
            };
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    let mut sent = 0u64;
    let mut throttle = Throttle::new(size);
    let (progress2, id2) = (progress.clone(), id.clone());
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |chunk| {
        if let Ok(b) = &chunk {
            sent += b.len() as u64;
            if throttle.due(sent) || sent == size {
                progress2.bytes(&id2, "Pushing", sent, size);
            }
        }
        chunk
    });
    let pushed = session
        .client
        .push_blob_stream(&session.reference, stream, &digest, Some(size))
        .await;
    let _ = reader.await;
    pushed.map_err(|e| session.error(&what, e))?;
    progress.layer(&id, "Pushed");
    Ok(())
}
