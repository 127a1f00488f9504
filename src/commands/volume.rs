//! `shoal volume ...`: the volumes of the node the CLI talks to.

use anyhow::{anyhow, bail, Result};
use shoal_proto::{
    CreateVolumeRequest, GetVolumeRequest, ListVolumesRequest, PruneVolumesRequest,
    RemoveVolumeRequest,
};

use super::service::parse_pairs;
use crate::cli::{Format, ListArgs};
use crate::client::{status_message, Client};
use crate::output::{print_json, table};

pub async fn create(
    client: &mut Client,
    name: Option<String>,
    driver: &str,
    labels: &[String],
) -> Result<()> {
    if driver != "local" {
        bail!("volume driver {driver:?} is not supported: use local");
    }
    let volume = client
        .volumes
        .create(CreateVolumeRequest {
            name: name.unwrap_or_default(),
            labels: parse_pairs(labels, "label")?,
        })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .volume
        .ok_or_else(|| anyhow!("the daemon returned no volume"))?;
    println!("{}", volume.name);
    Ok(())
}

pub async fn ls(client: &mut Client, args: ListArgs) -> Result<()> {
    let mut volumes = client
        .volumes
        .list(ListVolumesRequest {})
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .volumes;
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    if args.quiet {
        for v in &volumes {
            println!("{}", v.name);
        }
        return Ok(());
    }
    if args.format.format == Some(Format::Json) {
        return print_json(&volumes);
    }
    let rows = volumes
        .into_iter()
        .map(|v| vec![v.driver, v.name])
        .collect();
    println!("{}", table(&["DRIVER", "VOLUME NAME"], rows));
    Ok(())
}

pub async fn inspect(client: &mut Client, names: &[String]) -> Result<()> {
    let mut found = Vec::new();
    for name in names {
        let volume = client
            .volumes
            .get(GetVolumeRequest { name: name.clone() })
            .await
            .map_err(|s| anyhow!(status_message(&s)))?
            .into_inner()
            .volume;
        found.extend(volume);
    }
    print_json(&found)
}

pub async fn rm(client: &mut Client, names: &[String], force: bool) -> Result<()> {
    let mut failed = false;
    for name in names {
        let request = RemoveVolumeRequest {
            name: name.clone(),
            force,
        };
        match client.volumes.remove(request).await {
            Ok(_) => println!("{name}"),
            Err(s) => {
                eprintln!("Error: {}", status_message(&s));
                failed = true;
            }
        }
    }
    if failed {
        bail!("some volumes were not removed");
    }
    Ok(())
}

pub async fn prune(client: &mut Client) -> Result<()> {
    let removed = client
        .volumes
        .prune(PruneVolumesRequest {})
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .removed;
    if !removed.is_empty() {
        println!("Deleted Volumes:");
        for name in removed {
            println!("{name}");
        }
    }
    Ok(())
}
