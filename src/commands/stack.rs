//! `shoal stack ...` and the `compose` verbs that deploy: a compose project is a stack.

use std::collections::HashSet;

use anyhow::{anyhow, Result};
use shoal_proto::{
    DeployStackRequest, ListServicesRequest, ListStacksRequest, RemoveStackRequest, Service,
    StackSpec,
};

use crate::cli::{ComposeArgs, ComposeCommand, Format, ListArgs};
use crate::client::{status_message, Client};
use crate::compose::{self, Flavor};
use crate::output::{print_json, table};

const STACK_LABEL: &str = "com.docker.stack.namespace";

/// `stack deploy -c FILE... NAME`.
pub async fn deploy(
    client: &mut Client,
    files: Vec<std::path::PathBuf>,
    name: &str,
    prune: bool,
    detach: bool,
) -> Result<()> {
    let args = ComposeArgs {
        files,
        project_name: Some(name.to_string()),
        env_files: Vec::new(),
        profiles: Vec::new(),
        command: ComposeCommand::Config {
            services: Vec::new(),
        },
    };
    let project = compose::load_for_cli(&args, &[])?;
    let (mut spec, warnings) =
        compose::to_stack_spec(&project, name, Flavor::Stack).map_err(|e| anyhow!(e))?;
    compose::read_secrets(&project, &mut spec)?;
    apply(client, spec, &warnings, prune, !detach).await
}

/// Deploys the stack; with `wait`, follows each service until it converges.
pub(crate) async fn apply(
    client: &mut Client,
    spec: StackSpec,
    warnings: &[String],
    prune: bool,
    wait: bool,
) -> Result<()> {
    for w in warnings {
        eprintln!("WARN: {w}");
    }
    let name = spec.name.clone();
    let done = client
        .control
        .deploy_stack(DeployStackRequest {
            spec: Some(spec),
            prune,
        })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner();
    for s in &done.created {
        eprintln!("Creating service {s}");
    }
    for s in &done.updated {
        eprintln!("Updating service {s}");
    }
    for s in &done.removed {
        eprintln!("Removing service {s}");
    }
    if wait {
        for service in stack_services(client, &name).await? {
            super::service::converge(client, &service.id).await?;
        }
    }
    Ok(())
}

/// Services that carry the stack's label.
pub(crate) async fn stack_services(client: &mut Client, stack: &str) -> Result<Vec<Service>> {
    Ok(client
        .control
        .list_services(ListServicesRequest {})
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .services
        .into_iter()
        .filter_map(|s| s.service)
        .filter(|s| in_stack(s, stack))
        .collect())
}

fn in_stack(service: &Service, stack: &str) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.labels.get(STACK_LABEL))
        .is_some_and(|l| l == stack)
}

pub async fn ls(client: &mut Client, args: ListArgs) -> Result<()> {
    let stacks = client
        .control
        .list_stacks(ListStacksRequest {})
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .stacks;
    if args.quiet {
        for s in stacks.iter().filter_map(|s| s.stack.as_ref()) {
            println!("{}", s.id);
        }
        return Ok(());
    }
    if args.format.format == Some(Format::Json) {
        return print_json(&stacks);
    }
    let rows = stacks
        .iter()
        .filter_map(|s| Some(vec![s.stack.as_ref()?.id.clone(), s.services.to_string()]))
        .collect();
    println!("{}", table(&["NAME", "SERVICES"], rows));
    Ok(())
}

pub async fn services(client: &mut Client, stack: &str, args: ListArgs) -> Result<()> {
    let stack = stack.to_string();
    super::service::ls_where(client, args, |s| in_stack(s, &stack)).await
}

pub async fn ps(client: &mut Client, stack: &str, args: ListArgs) -> Result<()> {
    let services = stack_services(client, stack).await?;
    if services.is_empty() {
        return Err(anyhow!("nothing found in stack: {stack}"));
    }
    super::service::ps_of(client, services, args).await
}

/// `stack rollback NAME`: every service the stack's last deployment changed goes back to its
/// previous spec (each with its rollback settings); the others are left alone.
pub async fn rollback(client: &mut Client, name: &str, detach: bool) -> Result<()> {
    let deployed_at = client
        .control
        .list_stacks(ListStacksRequest {})
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .stacks
        .into_iter()
        .filter_map(|s| s.stack)
        .find(|s| s.id == name)
        .and_then(|s| s.meta)
        .map(|m| m.updated_at)
        .unwrap_or(0);
    let services = stack_services(client, name).await?;
    if services.is_empty() {
        return Err(anyhow!("nothing found in stack: {name}"));
    }
    // Changed by the last deployment (or since): a previous spec, and a rollout that began
    // then (or has not begun yet).
    let changed: Vec<&Service> = services
        .iter()
        .filter(|s| s.previous_spec.is_some())
        .filter(|s| {
            s.update_status
                .as_ref()
                .is_none_or(|u| u.started_at >= deployed_at)
        })
        .collect();
    if changed.is_empty() {
        return Err(anyhow!(
            "stack {name}: no service has a previous deployment to roll back to"
        ));
    }
    for s in &changed {
        super::service::start_rollback(client, s).await?;
        eprintln!(
            "Rolling back service {}",
            s.spec.as_ref().map(|sp| sp.name.as_str()).unwrap_or("")
        );
    }
    if !detach {
        for s in &changed {
            super::service::wait_rollback(client, &s.id).await?;
        }
    }
    Ok(())
}

pub async fn rm(client: &mut Client, names: &[String]) -> Result<()> {
    for name in names {
        let removed = client
            .control
            .remove_stack(RemoveStackRequest { name: name.clone() })
            .await
            .map_err(|s| anyhow!(status_message(&s)))?
            .into_inner()
            .removed;
        for s in removed {
            eprintln!("Removing service {s}");
        }
    }
    Ok(())
}

/// `compose down`: remove the stack, then wait until its tasks are gone (containers
/// stopped and removed), like Compose returns once its containers are.
pub(crate) async fn down(client: &mut Client, stack: &str) -> Result<()> {
    let ids: HashSet<String> = stack_services(client, stack)
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    if ids.is_empty() {
        eprintln!("Nothing to remove: no stack {stack}");
        return Ok(());
    }
    rm(client, &[stack.to_string()]).await?;
    let mut watch = super::service::TaskWatch::default();
    loop {
        let tasks = watch.next(client, "").await?;
        if !tasks.iter().any(|t| ids.contains(&t.service_id)) {
            return Ok(());
        }
    }
}
