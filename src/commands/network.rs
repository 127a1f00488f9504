//! `shoal network ...`

use anyhow::{anyhow, bail, Result};
use shoal_proto::{
    CreateNetworkRequest, GetNetworkRequest, ListNetworksRequest, Network, NetworkSpec,
    RemoveNetworkRequest,
};

use super::service::parse_pairs;
use crate::cli::{Format, ListArgs, NetworkCreateArgs};
use crate::client::{status_message, Client};
use crate::output::{print_json, table};

/// Docker's MTU option of the bridge driver.
const MTU_OPTION: &str = "com.docker.network.driver.mtu";

pub fn spec_from_args(a: &NetworkCreateArgs) -> Result<NetworkSpec> {
    let mut mtu = None;
    for (key, value) in parse_pairs(&a.options, "opt")? {
        match key.as_str() {
            MTU_OPTION => {
                mtu =
                    Some(value.parse().map_err(|_| {
                        anyhow!("invalid -o {key}={value}: the MTU must be a number")
                    })?)
            }
            _ => bail!("unknown driver option {key:?}: the bridge driver takes {MTU_OPTION}"),
        }
    }
    Ok(NetworkSpec {
        name: a.name.clone(),
        driver: a.driver.clone(),
        labels: parse_pairs(&a.labels, "label")?,
        internal: a.internal,
        attachable: a.attachable,
        subnet: a.subnet.clone().unwrap_or_default(),
        gateway: a.gateway.clone().unwrap_or_default(),
        ip_range: a.ip_range.clone().unwrap_or_default(),
        mtu,
    })
}

pub async fn create(client: &mut Client, args: &NetworkCreateArgs) -> Result<()> {
    let spec = spec_from_args(args)?;
    let network = client
        .control
        .create_network(CreateNetworkRequest { spec: Some(spec) })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .network
        .ok_or_else(|| anyhow!("the daemon returned no network"))?;
    println!("{}", network.id);
    Ok(())
}

async fn list(client: &mut Client) -> Result<Vec<Network>> {
    Ok(client
        .control
        .list_networks(ListNetworksRequest {})
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .networks)
}

fn spec(n: &Network) -> NetworkSpec {
    n.spec.clone().unwrap_or_default()
}

pub async fn ls(client: &mut Client, args: ListArgs) -> Result<()> {
    let mut networks = list(client).await?;
    networks.sort_by_key(|n| spec(n).name);
    if args.quiet {
        for n in &networks {
            println!("{}", short(&n.id));
        }
        return Ok(());
    }
    if args.format.format == Some(Format::Json) {
        return print_json(&networks);
    }
    let rows = networks
        .iter()
        .map(|n| {
            let s = spec(n);
            vec![
                short(&n.id).to_string(),
                s.name,
                s.driver,
                "swarm".to_string(),
                if s.subnet.is_empty() {
                    "(per node)".to_string()
                } else {
                    s.subnet
                },
                s.internal.to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "NETWORK ID",
                "NAME",
                "DRIVER",
                "SCOPE",
                "SUBNET",
                "INTERNAL"
            ],
            rows
        )
    );
    Ok(())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub async fn inspect(client: &mut Client, names: &[String]) -> Result<()> {
    let mut found = Vec::new();
    for name in names {
        let network = client
            .control
            .get_network(GetNetworkRequest {
                network: name.clone(),
            })
            .await
            .map_err(|s| anyhow!(status_message(&s)))?
            .into_inner()
            .network;
        found.extend(network);
    }
    print_json(&found)
}

pub async fn rm(client: &mut Client, names: &[String]) -> Result<()> {
    let mut failed = false;
    for name in names {
        match client
            .control
            .remove_network(RemoveNetworkRequest {
                network: name.clone(),
            })
            .await
        {
            Ok(_) => println!("{name}"),
            Err(s) => {
                eprintln!("Error: {}", status_message(&s));
                failed = true;
            }
        }
    }
    if failed {
        bail!("some networks were not removed");
    }
    Ok(())
}

/// Removes the networks no service uses (the manager refuses the others).
pub async fn prune(client: &mut Client) -> Result<()> {
    let mut removed = Vec::new();
    for n in list(client).await? {
        let request = RemoveNetworkRequest {
            network: n.id.clone(),
        };
        if client.control.remove_network(request).await.is_ok() {
            removed.push(spec(&n).name);
        }
    }
    if !removed.is_empty() {
        println!("Deleted Networks:");
        for name in removed {
            println!("{name}");
        }
    }
    Ok(())
}
