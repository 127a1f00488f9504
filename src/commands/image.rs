//! `shoal image ...`

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use shoal_proto::{BootstrapRequest, Image, ImportChunk, ImportResponse, ListImagesRequest};

use crate::cli::{Format, ListArgs};
use crate::client::{status_message, Client};
use crate::output::{ago, print_json, short_id, size, table};

const CHUNK: usize = 1 << 20;

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
