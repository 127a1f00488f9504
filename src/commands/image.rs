//! `shoal image ...`

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};
use shoal_proto::{
    BootstrapRequest, Image, ImportChunk, ImportResponse, InspectImagesRequest, ListImagesRequest,
    PruneImagesRequest, RemoveImagesRequest, RemoveImagesResponse, SaveImagesRequest,
    TagImageRequest,
};

use super::service::rfc3339;
use crate::cli::{Format, FormatArgs, ListArgs};
use crate::client::{status_message, Client};
use crate::output::{ago, print_json, short_id, size, table};

const CHUNK: usize = 1 << 20;

fn open_input(file: Option<&Path>) -> Result<Box<dyn Read + Send>> {
    Ok(match file {
        None => Box::new(std::io::stdin()),
        Some(f) if f == Path::new("-") => Box::new(std::io::stdin()),
        Some(f) => Box::new(
            std::fs::File::open(f).with_context(|| format!("cannot open {}", f.display()))?,
        ),
    })
}

/// Reads `reader` on a blocking thread into a stream of chunks, the first carrying `name`.
fn chunk_stream(
    mut reader: Box<dyn Read + Send>,
    name: String,
) -> (
    tokio_stream::wrappers::ReceiverStream<ImportChunk>,
    tokio::task::JoinHandle<Result<()>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<ImportChunk>(4);
    let reading = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut first = true;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = reader.read(&mut buf).context("reading the input")?;
            if n == 0 && !first {
                return Ok(());
            }
            buf.truncate(n);
            let chunk = ImportChunk {
                name: if first { name.clone() } else { String::new() },
                data: buf,
            };
            first = false;
            if tx.blocking_send(chunk).is_err() || n == 0 {
                return Ok(());
            }
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), reading)
}

/// `docker load [-i FILE] [-q]`.
pub async fn load(client: &mut Client, input: Option<&Path>, quiet: bool) -> Result<()> {
    let reader = open_input(input)?;
    if input.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("requested load from stdin, but stdin is empty: use -i FILE or pipe an archive in");
    }
    let (stream, reading) = chunk_stream(reader, String::new());
    let response = client.images.load(stream).await;
    let response = response.map_err(|s| anyhow!(status_message(&s)))?;
    reading.await??;
    if !quiet {
        for m in response.into_inner().messages {
            println!("{m}");
        }
    }
    Ok(())
}

/// `docker save [-o FILE] IMAGE...`.
pub async fn save(client: &mut Client, output: Option<&Path>, images: &[String]) -> Result<()> {
    let mut out: Box<dyn Write> = match output {
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                bail!("cowardly refusing to save to a terminal: use -o FILE or redirect stdout");
            }
            Box::new(std::io::stdout().lock())
        }
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
    };
    let result = async {
        let mut stream = client
            .images
            .save(SaveImagesRequest {
                images: images.to_vec(),
            })
            .await
            .map_err(|s| anyhow!(status_message(&s)))?
            .into_inner();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| anyhow!(status_message(&s)))?
        {
            out.write_all(&chunk.data).context("writing the archive")?;
        }
        out.flush().context("writing the archive")
    }
    .await;
    if result.is_err() {
        if let Some(p) = output {
            let _ = std::fs::remove_file(p);
        }
    }
    result
}

async fn inspect_images(client: &mut Client, images: &[String]) -> Result<Vec<Image>> {
    Ok(client
        .images
        .inspect(InspectImagesRequest {
            images: images.to_vec(),
        })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .images)
}

fn keys_map(keys: &[String]) -> Value {
    Value::Object(keys.iter().map(|k| (k.clone(), json!({}))).collect())
}

/// What `docker image inspect` shows for an image.
fn docker_json(i: &Image) -> Value {
    let c = i.config.clone().unwrap_or_default();
    let mut config = Map::new();
    config.insert("User".into(), json!(c.user));
    if !c.exposed_ports.is_empty() {
        config.insert("ExposedPorts".into(), keys_map(&c.exposed_ports));
    }
    config.insert("Env".into(), json!(c.env));
    config.insert(
        "Cmd".into(),
        if c.cmd.is_empty() {
            Value::Null
        } else {
            json!(c.cmd)
        },
    );
    if let Some(h) = &c.healthcheck {
        let mut hc = Map::new();
        hc.insert("Test".into(), json!(h.test));
        for (k, v) in [
            ("Interval", h.interval),
            ("Timeout", h.timeout),
            ("StartPeriod", h.start_period),
            ("StartInterval", h.start_interval),
            ("Retries", h.retries),
        ] {
            if v != 0 {
                hc.insert(k.into(), json!(v));
            }
        }
        config.insert("Healthcheck".into(), Value::Object(hc));
    }
    if c.args_escaped {
        config.insert("ArgsEscaped".into(), json!(true));
    }
    config.insert(
        "Volumes".into(),
        if c.volumes.is_empty() {
            Value::Null
        } else {
            keys_map(&c.volumes)
        },
    );
    config.insert("WorkingDir".into(), json!(c.workdir));
    config.insert(
        "Entrypoint".into(),
        if c.entrypoint.is_empty() {
            Value::Null
        } else {
            json!(c.entrypoint)
        },
    );
    config.insert(
        "Labels".into(),
        if c.labels.is_empty() {
            Value::Null
        } else {
            json!(c
                .labels
                .iter()
                .collect::<std::collections::BTreeMap<_, _>>())
        },
    );
    if !c.stop_signal.is_empty() {
        config.insert("StopSignal".into(), json!(c.stop_signal));
    }
    if !c.shell.is_empty() {
        config.insert("Shell".into(), json!(c.shell));
    }
    let mut out = json!({
        "Id": i.id,
        "RepoTags": i.tags,
        "RepoDigests": i.digests,
        "Parent": "",
        "Comment": i.comment,
        "Created": rfc3339(i.created),
        "Author": i.author,
        "Config": Value::Object(config),
        "Architecture": i.architecture,
        "Os": i.os,
        "Size": i.size,
        "RootFS": {"Type": "layers", "Layers": i.layers},
    });
    if !i.variant.is_empty() {
        out["Variant"] = json!(i.variant);
    }
    if !i.manifest_digest.is_empty() {
        out["Descriptor"] = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": i.manifest_digest,
        });
    }
    out
}

/// `docker image inspect IMAGE...`: a JSON array, as Docker prints it.
pub async fn inspect(client: &mut Client, images: &[String]) -> Result<()> {
    let found = inspect_images(client, images).await?;
    print_json(&found.iter().map(docker_json).collect::<Vec<_>>())
}

/// `docker history IMAGE`: newest first.
pub async fn history(
    client: &mut Client,
    image: &str,
    no_trunc: bool,
    quiet: bool,
    format: FormatArgs,
) -> Result<()> {
    let found = inspect_images(client, &[image.to_string()]).await?;
    let Some(i) = found.into_iter().next() else {
        bail!("no such image: {image}");
    };
    let mut hist = i.history.clone();
    hist.reverse();
    if format.format == Some(Format::Json) {
        return print_json(&hist);
    }
    // The newest entry is the image itself; older ones are "<missing>" as in Docker (their
    // intermediate images are not in the store).
    let id = |n: usize| {
        if n == 0 {
            if no_trunc {
                i.id.clone()
            } else {
                short_id(&i.id).to_string()
            }
        } else {
            "<missing>".to_string()
        }
    };
    if quiet {
        for n in 0..hist.len() {
            println!("{}", id(n));
        }
        return Ok(());
    }
    // Sizes: each non-empty entry is one layer, lowest first.
    let layers = hist.iter().filter(|h| !h.empty_layer).count();
    let sizes: Vec<String> = {
        let mut left = layers;
        hist.iter()
            .map(|h| {
                if h.empty_layer {
                    "0B".to_string()
                } else {
                    left = left.saturating_sub(1);
                    // Per-layer sizes are not on the wire; the whole image's is, on the lowest.
                    if left == 0 && layers == 1 {
                        size(i.size)
                    } else {
                        "-".to_string()
                    }
                }
            })
            .collect()
    };
    let rows = hist
        .iter()
        .enumerate()
        .map(|(n, h)| {
            let mut by = h.created_by.clone();
            if !no_trunc && by.chars().count() > 45 {
                by = by.chars().take(44).collect::<String>() + "…";
            }
            vec![
                id(n),
                ago(h.created),
                by,
                sizes[n].clone(),
                h.comment.clone(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(&["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], rows)
    );
    Ok(())
}

/// `docker tag SOURCE TARGET`.
pub async fn tag(client: &mut Client, source: &str, target: &str) -> Result<()> {
    client
        .images
        .tag(TagImageRequest {
            source: source.into(),
            target: target.into(),
        })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?;
    Ok(())
}

fn print_removed(r: &RemoveImagesResponse) {
    for t in &r.untagged {
        println!("Untagged: {t}");
    }
    for d in &r.deleted {
        println!("Deleted: {d}");
    }
}

/// `docker rmi [-f] IMAGE...`.
pub async fn rm(client: &mut Client, images: &[String], force: bool) -> Result<()> {
    let r = client
        .images
        .remove(RemoveImagesRequest {
            images: images.to_vec(),
            force,
        })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner();
    print_removed(&r);
    Ok(())
}

/// `docker image prune [-a]`.
pub async fn prune(client: &mut Client, all: bool) -> Result<()> {
    let r = client
        .images
        .prune(PruneImagesRequest { all })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner();
    if !r.untagged.is_empty() || !r.deleted.is_empty() {
        println!("Deleted Images:");
        print_removed(&r);
        println!();
    }
    println!("Total reclaimed space: {}", size(r.reclaimed));
    Ok(())
}

pub async fn import(client: &mut Client, file: &Path, name: &str) -> Result<()> {
    let mut reader: Box<dyn Read + Send> = if file == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
        )
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<ImportChunk>(4);
    let name = name.to_string();
    // Read on a blocking thread and stream chunks: tarballs can be larger than memory.
    let reading = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut first = true;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = reader.read(&mut buf).context("reading the tarball")?;
            if n == 0 && !first {
                return Ok(());
            }
            buf.truncate(n);
            let chunk = ImportChunk {
                name: if first { name.clone() } else { String::new() },
                data: buf,
            };
            first = false;
            if tx.blocking_send(chunk).is_err() || n == 0 {
                return Ok(());
            }
        }
    });
    let response = client
        .images
        .import(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reading.await??;
    print_image_id(response)
}

pub async fn bootstrap(client: &mut Client, what: &str) -> Result<()> {
    let response = client
        .images
        .bootstrap(BootstrapRequest { what: what.into() })
        .await;
    print_image_id(response)
}

/// Prints the id of the image an import or bootstrap made, like `docker import` does.
fn print_image_id(response: Result<tonic::Response<ImportResponse>, tonic::Status>) -> Result<()> {
    let image = response
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .image
        .ok_or_else(|| anyhow!("the daemon returned no image"))?;
    println!("{}", image.id);
    Ok(())
}

pub async fn ls(client: &mut Client, args: ListArgs) -> Result<()> {
    let images: Vec<Image> = client
        .images
        .list(ListImagesRequest {})
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .images;
    if args.quiet {
        for i in &images {
            println!("{}", short_id(&i.id));
        }
        return Ok(());
    }
    if args.format.format == Some(Format::Json) {
        return print_json(&images);
    }
    let mut rows = Vec::new();
    for i in &images {
        let tags: Vec<&String> = i.tags.iter().collect();
        let names = if tags.is_empty() {
            vec![("<none>".to_string(), "<none>".to_string())]
        } else {
            tags.iter()
                .map(|t| match t.rsplit_once(':') {
                    Some((r, tag)) if !tag.contains('/') => (r.to_string(), tag.to_string()),
                    _ => (t.to_string(), "latest".to_string()),
                })
                .collect()
        };
        for (repo, tag) in names {
            rows.push(vec![
                repo,
                tag,
                short_id(&i.id).to_string(),
                ago(i.created),
                size(i.size),
            ]);
        }
    }
    println!(
        "{}",
        table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows)
    );
    Ok(())
}
