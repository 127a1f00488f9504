//! Stacks: what a `stack deploy` (and `compose up`) changes, computed purely from the state
//! and the spec, and written as one Raft entry so a deploy is all or nothing.

use std::collections::HashMap;

use shoal_proto::store_object::Object;
use shoal_proto::{
    ChangeKind, Meta, Network, NetworkSpec, Secret, SecretKind, SecretSpec, Service, ServiceSpec,
    Stack, StackSpec, StoreChange,
};

use super::network::{new_network, resolve_targets};
use super::secrets::{check_secret, delete_secret, kind_word, named, resolve_secrets};
use super::validate::{valid_name, validate_spec};
use crate::store::{change, State};

/// The label that ties a service to its stack (Swarm's).
pub const STACK_LABEL: &str = "com.docker.stack.namespace";

/// What a deploy will do, and the changes that do it.
#[derive(Debug, Default, PartialEq)]
pub struct StackPlan {
    pub changes: Vec<StoreChange>,
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
}

/// The full name of a stack's service: `<stack>_<service>`.
pub fn service_name(stack: &str, service: &str) -> String {
    format!("{stack}_{service}")
}

/// Plans deploying `spec`: create the services it adds, update those whose spec changed,
/// leave the rest, and with `prune` remove the stack's services it no longer has.
pub fn plan_deploy(
    state: &State,
    spec: &StackSpec,
    prune: bool,
    new_id: &mut dyn FnMut() -> String,
) -> Result<StackPlan, String> {
    if !valid_name(&spec.name) || spec.name.contains('_') {
        return Err(format!(
            "invalid stack name {:?}: use letters, digits, '.' or '-', starting with a letter or digit",
            spec.name
        ));
    }
    let mut plan = StackPlan::default();
    let networks = plan_networks(state, spec, prune, new_id, &mut plan)?;
    let local = |short: &str| networks.get(short).cloned();
    let secrets = plan_secrets(state, spec, prune, new_id, &mut plan)?;
    let local_secret =
        |kind: SecretKind, full: &str| secrets.get(&(kind as i32, full.to_string())).cloned();
    let mut wanted: HashMap<String, ServiceSpec> = HashMap::new();
    for service in &spec.services {
        let mut full = service.clone();
        full.name = service_name(&spec.name, &service.name);
        full.labels
            .insert(STACK_LABEL.to_string(), spec.name.clone());
        validate_spec(&full).map_err(|e| format!("service {}: {e}", service.name))?;
        resolve_targets(state, &mut full, &local)
            .map_err(|e| format!("service {}: {e}", service.name))?;
        resolve_secrets(state, &mut full, &local_secret)
            .map_err(|e| format!("service {}: {e}", service.name))?;
        // depends_on names the stack's services by their short names.
        for dep in &mut full.depends_on {
            if spec.services.iter().any(|s| s.name == dep.service) {
                dep.service = service_name(&spec.name, &dep.service);
            }
        }
        // Swarm's stack convention: a service answers to its short name on its networks.
        for attachment in &mut full.networks {
            if !attachment.aliases.contains(&service.name) {
                attachment.aliases.insert(0, service.name.clone());
            }
        }
        if wanted.insert(full.name.clone(), full).is_some() {
            return Err(format!(
                "service {} appears twice in the stack",
                service.name
            ));
        }
    }
    let mut names: Vec<&String> = wanted.keys().collect();
    names.sort();
    for name in names {
        let existing = state
            .services
            .values()
            .find(|s| s.spec.as_ref().is_some_and(|sp| &sp.name == name));
        // A file knows nothing of forced restarts: the service's counter stays, unless the
        // deploy forces one itself (`up --force-recreate` sends a higher one).
        let mut kept = wanted[name].clone();
        if let Some(old) = existing.and_then(|s| s.spec.as_ref()) {
            kept.force_update = kept.force_update.max(old.force_update);
        }
        let spec_wanted = &kept;
        let id = existing.map(|s| s.id.as_str()).unwrap_or("");
        crate::ingress::check_ports(state, id, spec_wanted)?;
        match existing {
            None => {
                plan.changes.push(change(
                    ChangeKind::Create,
                    Object::Service(Box::new(Service {
                        id: new_id(),
                        meta: None,
                        spec: Some(spec_wanted.clone()),
                        ..Default::default()
                    })),
                ));
                plan.created.push(name.clone());
            }
            Some(service) if stack_of(service) != Some(spec.name.as_str()) => {
                return Err(format!(
                    "service name {name} is in use by a service outside stack {}: remove or rename it",
                    spec.name
                ));
            }
            Some(service) if service.spec.as_ref() == Some(spec_wanted) => {
                plan.unchanged.push(name.clone());
            }
            Some(service) => {
                let mut updated = service.clone();
                // A new rollout, as with `service update`: keep the spec for rollback.
                if !crate::orchestrator::update::same_task_spec(
                    updated.spec.as_ref(),
                    Some(spec_wanted),
                ) {
                    updated.previous_spec = updated.spec.take();
                    updated.update_status = None;
                }
                updated.spec = Some(spec_wanted.clone());
                plan.changes.push(change(
                    ChangeKind::Update,
                    Object::Service(Box::new(updated)),
                ));
                plan.updated.push(name.clone());
            }
        }
    }
    if prune {
        let mut orphans: Vec<&Service> = state
            .services
            .values()
            .filter(|s| stack_of(s) == Some(spec.name.as_str()))
            .filter(|s| {
                s.spec
                    .as_ref()
                    .is_some_and(|sp| !wanted.contains_key(&sp.name))
            })
            .collect();
        orphans.sort_by(|a, b| a.id.cmp(&b.id));
        for service in orphans {
            plan.changes.push(delete_service(service));
            plan.removed.push(name_of(service));
        }
    }
    let stack = Stack {
        id: spec.name.clone(),
        meta: state.stacks.get(&spec.name).and_then(|s| s.meta),
        // Secrets live in their own objects: the stack keeps only their names.
        spec: Some(StackSpec {
            secrets: spec
                .secrets
                .iter()
                .map(|s| SecretSpec {
                    data: Vec::new(),
                    ..s.clone()
                })
                .collect(),
            ..spec.clone()
        }),
    };
    let kind = if state.stacks.contains_key(&spec.name) {
        ChangeKind::Update
    } else {
        ChangeKind::Create
    };
    plan.changes.push(change(kind, Object::Stack(stack)));
    if prune {
        // Networks go after the services that used them, in the same entry.
        let (first, rest): (Vec<_>, Vec<_>) =
            plan.changes.drain(..).partition(|c| !is_network_delete(c));
        plan.changes = first.into_iter().chain(rest).collect();
    }
    Ok(plan)
}

fn is_network_delete(c: &StoreChange) -> bool {
    c.kind == ChangeKind::Delete as i32
        && matches!(
            c.object.as_ref().and_then(|o| o.object.as_ref()),
            Some(Object::Network(_))
        )
}

/// The stack's networks: created when missing (named `<stack>_<name>`, labelled with the
/// stack), reused when present; with `prune`, those the spec no longer has are removed.
/// Returns short name → network id.
fn plan_networks(
    state: &State,
    spec: &StackSpec,
    prune: bool,
    new_id: &mut dyn FnMut() -> String,
    plan: &mut StackPlan,
) -> Result<HashMap<String, String>, String> {
    let mut ids = HashMap::new();
    for network in &spec.networks {
        let full_name = service_name(&spec.name, &network.name);
        let existing = state
            .networks
            .values()
            .find(|n| n.spec.as_ref().is_some_and(|s| s.name == full_name));
        let id = match existing {
            Some(n) if network_stack(n) == Some(spec.name.as_str()) => n.id.clone(),
            Some(_) => {
                return Err(format!(
                    "network name {full_name} is in use by a network outside stack {}: remove or rename it",
                    spec.name
                ))
            }
            None => {
                let mut full = NetworkSpec {
                    name: full_name.clone(),
                    ..network.clone()
                };
                full.labels
                    .insert(STACK_LABEL.to_string(), spec.name.clone());
                let planned: Vec<&Network> = plan
                    .changes
                    .iter()
                    .filter_map(|c| match c.object.as_ref()?.object.as_ref()? {
                        Object::Network(n) => Some(n),
                        _ => None,
                    })
                    .collect();
                let created = new_network(state, full, new_id(), &planned)
                    .map_err(|e| format!("network {}: {e}", network.name))?;
                let id = created.id.clone();
                plan.changes.push(change(ChangeKind::Create, Object::Network(created)));
                id
            }
        };
        if ids.insert(network.name.clone(), id).is_some() {
            return Err(format!(
                "network {} appears twice in the stack",
                network.name
            ));
        }
    }
    if prune {
        let keep: Vec<&String> = ids.values().collect();
        for n in state.networks.values() {
            if network_stack(n) == Some(spec.name.as_str()) && !keep.contains(&&n.id) {
                plan.changes.push(delete_network(n));
            }
        }
    }
    Ok(ids)
}

/// The stack's secrets and configs (full names, `<stack>_<name>`, from the CLI): created when
/// missing, their data replaced when it changed (tasks made from then on get the new data),
/// and with `prune` those the spec no longer has are removed. Returns (kind, full name) → id.
fn plan_secrets(
    state: &State,
    spec: &StackSpec,
    prune: bool,
    new_id: &mut dyn FnMut() -> String,
    plan: &mut StackPlan,
) -> Result<HashMap<(i32, String), String>, String> {
    let mut ids = HashMap::new();
    for wanted in &spec.secrets {
        let mut full = wanted.clone();
        full.labels
            .insert(STACK_LABEL.to_string(), spec.name.clone());
        let word = kind_word(wanted.kind());
        let id = match named(state, wanted.kind(), &wanted.name) {
            Some(s)
                if s.spec.as_ref().and_then(|sp| sp.labels.get(STACK_LABEL))
                    != Some(&spec.name) =>
            {
                return Err(format!(
                    "{word} name {} is in use outside stack {}: remove or rename it",
                    wanted.name, spec.name
                ))
            }
            Some(s) if s.spec.as_ref() == Some(&full) => s.id.clone(),
            Some(s) => {
                let mut updated = s.clone();
                updated.spec = Some(full);
                plan.changes
                    .push(change(ChangeKind::Update, Object::Secret(updated)));
                s.id.clone()
            }
            None => {
                check_secret(state, &full)?;
                let id = new_id();
                plan.changes.push(change(
                    ChangeKind::Create,
                    Object::Secret(Secret {
                        id: id.clone(),
                        meta: None,
                        spec: Some(full),
                    }),
                ));
                id
            }
        };
        if ids.insert((wanted.kind, wanted.name.clone()), id).is_some() {
            return Err(format!("{word} {} appears twice in the stack", wanted.name));
        }
    }
    if prune {
        let keep: Vec<&String> = ids.values().collect();
        for s in state.secrets.values() {
            if secret_stack(s) == Some(spec.name.as_str()) && !keep.contains(&&s.id) {
                plan.changes.push(delete_secret(s));
            }
        }
    }
    Ok(ids)
}

fn secret_stack(s: &Secret) -> Option<&str> {
    s.spec
        .as_ref()
        .and_then(|s| s.labels.get(STACK_LABEL))
        .map(String::as_str)
}

fn network_stack(network: &Network) -> Option<&str> {
    network
        .spec
        .as_ref()
        .and_then(|s| s.labels.get(STACK_LABEL))
        .map(String::as_str)
}

fn delete_network(network: &Network) -> StoreChange {
    change(
        ChangeKind::Delete,
        Object::Network(Network {
            id: network.id.clone(),
            ..Default::default()
        }),
    )
}

/// Plans removing a stack: every service it labels, then the stack itself.
pub fn plan_remove(state: &State, name: &str) -> Result<StackPlan, String> {
    let mut plan = StackPlan::default();
    let mut services: Vec<&Service> = state
        .services
        .values()
        .filter(|s| stack_of(s) == Some(name))
        .collect();
    if services.is_empty() && !state.stacks.contains_key(name) {
        return Err(format!("no such stack: {name}"));
    }
    services.sort_by(|a, b| a.id.cmp(&b.id));
    for service in services {
        plan.changes.push(delete_service(service));
        plan.removed.push(name_of(service));
    }
    let mut networks: Vec<&Network> = state
        .networks
        .values()
        .filter(|n| network_stack(n) == Some(name))
        .collect();
    networks.sort_by(|a, b| a.id.cmp(&b.id));
    plan.changes
        .extend(networks.into_iter().map(delete_network));
    let mut secrets: Vec<&Secret> = state
        .secrets
        .values()
        .filter(|s| secret_stack(s) == Some(name))
        .collect();
    secrets.sort_by(|a, b| a.id.cmp(&b.id));
    plan.changes.extend(secrets.into_iter().map(delete_secret));
    if state.stacks.contains_key(name) {
        plan.changes.push(change(
            ChangeKind::Delete,
            Object::Stack(Stack {
                id: name.to_string(),
                ..Default::default()
            }),
        ));
    }
    Ok(plan)
}

pub fn stack_of(service: &Service) -> Option<&str> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.labels.get(STACK_LABEL))
        .map(String::as_str)
}

fn name_of(service: &Service) -> String {
    service
        .spec
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default()
}

fn delete_service(service: &Service) -> StoreChange {
    change(
        ChangeKind::Delete,
        Object::Service(Box::new(Service {
            id: service.id.clone(),
            meta: Some(Meta::default()),
            spec: None,
            ..Default::default()
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::service_spec::Mode;
    use shoal_proto::{ContainerSpec, ReplicatedService, StoreCommand};

    fn svc(name: &str, image: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            container: Some(ContainerSpec {
                image: image.into(),
                ..Default::default()
            }),
            mode: Some(Mode::Replicated(ReplicatedService { replicas: 1 })),
            ..Default::default()
        }
    }

    fn stack(services: Vec<ServiceSpec>) -> StackSpec {
        StackSpec {
            name: "app".into(),
            services,
            ..Default::default()
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("id{n}")
        }
    }

    fn apply(state: &mut State, plan: &StackPlan, index: u64) {
        state
            .apply(
                index,
                StoreCommand {
                    request_id: format!("r{index}"),
                    changes: plan.changes.clone(),
                    timestamp: 1,
                },
            )
            .expect("the plan applies");
    }

    #[test]
    fn deploy_creates_then_updates_only_what_changed_then_prunes() {
        let mut state = State::default();
        let mut gen = ids();
        let first = plan_deploy(
            &state,
            &stack(vec![svc("web", "busybox"), svc("db", "busybox")]),
            false,
            &mut gen,
        )
        .expect("plans");
        assert_eq!(first.created, vec!["app_db", "app_web"]);
        apply(&mut state, &first, 1);
        assert!(state.stacks.contains_key("app"));

        let again = plan_deploy(
            &state,
            &stack(vec![svc("web", "busybox:2"), svc("db", "busybox")]),
            true,
            &mut gen,
        )
        .expect("plans");
        assert_eq!(again.updated, vec!["app_web"]);
        assert_eq!(again.unchanged, vec!["app_db"]);
        apply(&mut state, &again, 2);

        let pruned = plan_deploy(
            &state,
            &stack(vec![svc("web", "busybox:2")]),
            true,
            &mut gen,
        )
        .expect("plans");
        assert_eq!(pruned.removed, vec!["app_db"]);
        apply(&mut state, &pruned, 3);
        assert_eq!(state.services.len(), 1);

        let removal = plan_remove(&state, "app").expect("plans");
        assert_eq!(removal.removed, vec!["app_web"]);
        apply(&mut state, &removal, 4);
        assert!(state.services.is_empty() && state.stacks.is_empty());
    }

    #[test]
    fn a_bad_service_or_a_foreign_name_refuses_the_whole_deploy() {
        let mut state = State::default();
        let mut gen = ids();
        let err = plan_deploy(&state, &stack(vec![svc("web", "")]), false, &mut gen)
            .expect_err("no image");
        assert!(err.contains("service web"), "{err}");
        let lone = StoreCommand {
            request_id: "r".into(),
            changes: vec![change(
                ChangeKind::Create,
                Object::Service(Box::new(Service {
                    id: "x".into(),
                    meta: None,
                    spec: Some(svc("app_web", "busybox")),
                    ..Default::default()
                })),
            )],
            timestamp: 1,
        };
        state.apply(1, lone.clone()).expect("applies");
        let err = plan_deploy(&state, &stack(vec![svc("web", "busybox")]), false, &mut gen)
            .expect_err("name taken outside the stack");
        assert!(err.contains("outside stack"), "{err}");
        assert!(plan_remove(&state, "nope").is_err());
    }

    #[test]
    fn stack_networks_are_made_resolved_and_removed_with_the_stack() {
        use shoal_proto::{NetworkAttachmentConfig, NetworkSpec};
        let mut state = State::default();
        let mut gen = ids();
        let mut web = svc("web", "busybox");
        web.networks = vec![NetworkAttachmentConfig {
            target: "front".into(),
            aliases: vec!["www".into()],
        }];
        let mut spec = stack(vec![web]);
        spec.networks = vec![NetworkSpec {
            name: "front".into(),
            ..Default::default()
        }];
        let plan = plan_deploy(&state, &spec, false, &mut gen).expect("plans");
        apply(&mut state, &plan, 1);
        let network = state.networks.values().next().expect("a network");
        let network_spec = network.spec.as_ref().expect("spec");
        assert_eq!(network_spec.name, "app_front");
        assert_eq!(
            network_spec.labels.get(STACK_LABEL).map(String::as_str),
            Some("app")
        );
        let service = state.services.values().next().expect("service");
        let attachment = &service.spec.as_ref().expect("spec").networks[0];
        assert_eq!(attachment.target, network.id);
        assert_eq!(attachment.aliases, ["web", "www"]);
        // A second deploy reuses the network and changes nothing.
        let again = plan_deploy(&state, &spec, false, &mut gen).expect("plans");
        assert_eq!(again.unchanged, vec!["app_web"]);
        let removal = plan_remove(&state, "app").expect("plans");
        apply(&mut state, &removal, 2);
        assert!(state.networks.is_empty() && state.services.is_empty());
        // An unknown network is refused before anything is written.
        let mut lost = svc("lost", "busybox");
        lost.networks = vec![NetworkAttachmentConfig {
            target: "nowhere".into(),
            aliases: vec![],
        }];
        let err = plan_deploy(&state, &stack(vec![lost]), false, &mut gen).expect_err("unknown");
        assert!(err.contains("no such network"), "{err}");
    }
}
