//! Stacks: what a `stack deploy` (and `compose up`) changes, computed purely from the state
//! and the spec, and written as one Raft entry so a deploy is all or nothing.

use std::collections::HashMap;

use shoal_proto::store_object::Object;
use shoal_proto::{ChangeKind, Meta, Service, ServiceSpec, Stack, StackSpec, StoreChange};

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
    let mut wanted: HashMap<String, ServiceSpec> = HashMap::new();
    for service in &spec.services {
        let mut full = service.clone();
        full.name = service_name(&spec.name, &service.name);
        full.labels
            .insert(STACK_LABEL.to_string(), spec.name.clone());
        validate_spec(&full).map_err(|e| format!("service {}: {e}", service.name))?;
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
        let spec_wanted = &wanted[name];
        let existing = state
            .services
            .values()
            .find(|s| s.spec.as_ref().is_some_and(|sp| &sp.name == name));
        match existing {
            None => {
                plan.changes.push(change(
                    ChangeKind::Create,
                    Object::Service(Service {
                        id: new_id(),
                        meta: None,
                        spec: Some(spec_wanted.clone()),
                    }),
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
                updated.spec = Some(spec_wanted.clone());
                plan.changes
                    .push(change(ChangeKind::Update, Object::Service(updated)));
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
        spec: Some(spec.clone()),
    };
    let kind = if state.stacks.contains_key(&spec.name) {
        ChangeKind::Update
    } else {
        ChangeKind::Create
    };
    plan.changes.push(change(kind, Object::Stack(stack)));
    Ok(plan)
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
        Object::Service(Service {
            id: service.id.clone(),
            meta: Some(Meta::default()),
            spec: None,
        }),
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
                &StoreCommand {
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
                Object::Service(Service {
                    id: "x".into(),
                    meta: None,
                    spec: Some(svc("app_web", "busybox")),
                }),
            )],
            timestamp: 1,
        };
        state.apply(1, &lone).expect("applies");
        let err = plan_deploy(&state, &stack(vec![svc("web", "busybox")]), false, &mut gen)
            .expect_err("name taken outside the stack");
        assert!(err.contains("outside stack"), "{err}");
        assert!(plan_remove(&state, "nope").is_err());
    }
}
