//! `shoal info`, `shoal version`, `shoal node ls`.

use anyhow::{anyhow, Result};
use shoal_proto::{InfoRequest, JoinTokenRequest, ListNodesRequest, NodeAvailability, NodeRole};

use crate::cli::{Format, FormatArgs, ListArgs};
use crate::client::{status_message, Client};
use crate::output::{print_json, table};

pub async fn info(client: &mut Client, format: FormatArgs) -> Result<()> {
    let info = client
        .control
        .info(InfoRequest {})
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner();
    if format.format == Some(Format::Json) {
        return print_json(&info);
    }
    let cluster = info.cluster.clone().unwrap_or_default();
    println!("Server Version: {}", info.version);
    println!("Data Dir: {}", info.data_dir);
    println!(
        "Cgroup Version: {}",
        info.cgroup_version.trim_start_matches('v')
    );
    println!("Swarm: active");
    println!(" Cluster ID: {}", cluster.id);
    println!(" NodeID: {}", info.node_id);
    println!(" Is Manager: {}", info.is_manager);
    println!(" Is Leader: {}", info.is_leader);
    println!(" Nodes: {}", info.nodes);
    println!(" Services: {}", info.services);
    println!(" Tasks running: {}", info.tasks_running);
    println!(" Raft:");
    println!("  Term: {}", info.raft_term);
    println!("  Last Applied Index: {}", info.raft_last_applied);
    Ok(())
}

pub async fn join_token(client: &mut Client, role: &str, rotate: bool, quiet: bool) -> Result<()> {
    let node_role = if role == "manager" {
        NodeRole::Manager
    } else {
        NodeRole::Worker
    };
    let token = client
        .control
        .join_token(JoinTokenRequest {
            role: node_role as i32,
            rotate,
        })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .token;
    if quiet {
        println!("{token}");
        return Ok(());
    }
    if rotate {
        println!("Successfully rotated {role} join token.\n");
    }
    println!("To add a {role} to this cluster, start shoal on it with:\n");
    println!("    shoal daemon --join <this manager's address> --token {token}\n");
    Ok(())
}

pub fn version() {
    println!("shoal version {}", env!("CARGO_PKG_VERSION"));
}

pub async fn node_ls(client: &mut Client, args: ListArgs) -> Result<()> {
    let nodes = client
        .control
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .nodes;
    if args.quiet {
        for n in &nodes {
            println!("{}", n.id);
        }
        return Ok(());
    }
    if args.format.format == Some(Format::Json) {
        return print_json(&nodes);
    }
    let me = client
        .control
        .info(InfoRequest {})
        .await
        .map(|r| r.into_inner().node_id)
        .unwrap_or_default();
    let rows = nodes
        .iter()
        .map(|n| {
            let d = n.description.clone().unwrap_or_default();
            let state = n.status.as_ref().map(|s| s.state()).unwrap_or_default();
            let availability = match n.availability() {
                NodeAvailability::Active => "Active",
                NodeAvailability::Pause => "Pause",
                NodeAvailability::Drain => "Drain",
            };
            let manager = match n.role() {
                NodeRole::Manager => "Leader",
                NodeRole::Worker => "",
            };
            let id = if n.id == me {
                format!("{} *", n.id)
            } else {
                n.id.clone()
            };
            vec![
                id,
                d.hostname,
                state.display().to_string(),
                availability.to_string(),
                manager.to_string(),
                d.engine_version,
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "ID",
                "HOSTNAME",
                "STATUS",
                "AVAILABILITY",
                "MANAGER STATUS",
                "ENGINE VERSION"
            ],
            rows
        )
    );
    Ok(())
}
