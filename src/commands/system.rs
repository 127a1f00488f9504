//! `shoal info`, `shoal version`, `shoal node ls`.

use anyhow::{anyhow, bail, Result};
use shoal_proto::{
    InfoRequest, JoinTokenRequest, ListNodesRequest, Node, NodeAvailability, NodeRole,
    RemoveNodeRequest, UpdateNodeRequest,
};

use crate::cli::{AvailabilityArg, Format, FormatArgs, ListArgs, RoleArg};
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
            // Docker's words: the leader, and whether the answering manager reaches the others.
            let manager = match (n.role(), n.manager_status.as_ref()) {
                (NodeRole::Worker, _) => "",
                (NodeRole::Manager, Some(m)) if m.leader => "Leader",
                (NodeRole::Manager, Some(m)) if m.reachability == "unreachable" => "Unreachable",
                (NodeRole::Manager, Some(m)) if m.reachability == "reachable" => "Reachable",
                (NodeRole::Manager, _) => "Leader",
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

async fn list_nodes(client: &mut Client) -> Result<Vec<Node>> {
    Ok(client
        .control
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .nodes)
}

/// `node inspect`: Docker prints a JSON array whatever the format.
pub async fn node_inspect(client: &mut Client, keys: &[String]) -> Result<()> {
    let nodes = list_nodes(client).await?;
    let mut found = Vec::new();
    for key in keys {
        let matches: Vec<&Node> = nodes
            .iter()
            .filter(|n| {
                n.id == *key
                    || n.id.starts_with(key.as_str())
                    || n.description.as_ref().is_some_and(|d| d.hostname == *key)
            })
            .collect();
        match matches.as_slice() {
            [one] => found.push((*one).clone()),
            [] => bail!("no such node: {key}"),
            _ => bail!("node {key:?} is ambiguous: give more of its id"),
        }
    }
    print_json(&found)
}

/// What `node update` changes.
pub struct NodeUpdate {
    pub availability: Option<AvailabilityArg>,
    pub label_add: Vec<String>,
    pub label_rm: Vec<String>,
    pub role: Option<RoleArg>,
}

fn node_role(role: RoleArg) -> NodeRole {
    match role {
        RoleArg::Worker => NodeRole::Worker,
        RoleArg::Manager => NodeRole::Manager,
    }
}

/// `node promote` / `node demote`: Docker's wording for each node.
pub async fn node_set_role(client: &mut Client, nodes: &[String], role: RoleArg) -> Result<()> {
    for node in nodes {
        client
            .control
            .update_node(UpdateNodeRequest {
                node: node.clone(),
                role: Some(node_role(role) as i32),
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow!(status_message(&s)))?;
        match role {
            RoleArg::Manager => println!("Node {node} promoted to a manager in the cluster."),
            RoleArg::Worker => println!("Manager {node} demoted in the cluster."),
        }
    }
    Ok(())
}

pub async fn node_update(client: &mut Client, node: &str, update: NodeUpdate) -> Result<()> {
    let NodeUpdate {
        availability,
        label_add,
        label_rm,
        role,
    } = update;
    let mut labels = std::collections::HashMap::new();
    for kv in &label_add {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        if k.is_empty() {
            bail!("invalid --label-add {kv:?}: use KEY=VALUE");
        }
        labels.insert(k.to_string(), v.to_string());
    }
    let availability = availability.map(|a| match a {
        AvailabilityArg::Active => NodeAvailability::Active,
        AvailabilityArg::Pause => NodeAvailability::Pause,
        AvailabilityArg::Drain => NodeAvailability::Drain,
    } as i32);
    client
        .control
        .update_node(UpdateNodeRequest {
            node: node.to_string(),
            availability,
            label_add: labels,
            label_rm,
            role: role.map(|r| node_role(r) as i32),
        })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?;
    println!("{node}");
    Ok(())
}

pub async fn node_rm(client: &mut Client, nodes: &[String], force: bool) -> Result<()> {
    for node in nodes {
        client
            .control
            .remove_node(RemoveNodeRequest {
                node: node.clone(),
                force,
            })
            .await
            .map_err(|s| anyhow!(status_message(&s)))?;
        println!("{node}");
    }
    Ok(())
}
