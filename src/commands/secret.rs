//! `shoal secret ...` and `shoal config ...`: the cluster's secrets and configs (one API, two
//! kinds).

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use shoal_proto::{
    CreateSecretRequest, GetSecretRequest, ListSecretsRequest, Secret, SecretKind, SecretSpec,
};

use super::service::parse_pairs;
use crate::cli::{Format, ListArgs, SecretCommand};
use crate::client::{status_message, Client};
use crate::output::{ago, print_json, short_id, table};

pub async fn run(client: &mut Client, kind: SecretKind, command: SecretCommand) -> Result<()> {
    match command {
        SecretCommand::Create { labels, name, file } => {
            let data = read_data(&file)?;
            let created = client
                .secrets
                .create(CreateSecretRequest {
                    spec: Some(SecretSpec {
                        kind: kind as i32,
                        name,
                        labels: parse_pairs(&labels, "label")?,
                        data,
                    }),
                })
                .await
                .map_err(|s| anyhow!(status_message(&s)))?
                .into_inner();
            println!("{}", created.secret.map(|s| s.id).unwrap_or_default());
            Ok(())
        }
        SecretCommand::Ls(list) => ls(client, kind, list).await,
        SecretCommand::Inspect { names } => {
            let mut found = Vec::new();
            for name in names {
                found.push(get(client, kind, &name).await?);
            }
            print_json(&found)
        }
        SecretCommand::Rm { names } => {
            let mut failed = false;
            for name in names {
                let removed = client
                    .secrets
                    .remove(GetSecretRequest {
                        kind: kind as i32,
                        secret: name.clone(),
                    })
                    .await;
                match removed {
                    Ok(_) => println!("{name}"),
                    Err(e) => {
                        eprintln!("Error: {}", status_message(&e));
                        failed = true;
                    }
                }
            }
            if failed {
                bail!("some could not be removed");
            }
            Ok(())
        }
    }
}

/// The file's bytes, or stdin's for `-`.
fn read_data(file: &Path) -> Result<Vec<u8>> {
    if file == Path::new("-") {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .context("reading stdin")?;
        return Ok(data);
    }
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

async fn get(client: &mut Client, kind: SecretKind, name: &str) -> Result<Secret> {
    client
        .secrets
        .get(GetSecretRequest {
            kind: kind as i32,
            secret: name.to_string(),
        })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .secret
        .ok_or_else(|| anyhow!("no such object: {name}"))
}

async fn ls(client: &mut Client, kind: SecretKind, list: ListArgs) -> Result<()> {
    let mut found = client
        .secrets
        .list(ListSecretsRequest { kind: kind as i32 })
        .await
        .map_err(|s| anyhow!(status_message(&s)))?
        .into_inner()
        .secrets;
    found.sort_by(|a, b| name(a).cmp(name(b)));
    if list.quiet {
        for s in &found {
            println!("{}", s.id);
        }
        return Ok(());
    }
    if list.format.format == Some(Format::Json) {
        return print_json(&found);
    }
    let rows = found
        .iter()
        .map(|s| {
            let created = s.meta.as_ref().map(|m| m.created_at).unwrap_or(0);
            let updated = s.meta.as_ref().map(|m| m.updated_at).unwrap_or(0);
            vec![
                short_id(&s.id).to_string(),
                name(s).to_string(),
                ago(created),
                ago(updated),
            ]
        })
        .collect();
    println!("{}", table(&["ID", "NAME", "CREATED", "UPDATED"], rows));
    Ok(())
}

fn name(s: &Secret) -> &str {
    s.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")
}
