//! Compose's `depends_on`, enforced by the manager so that it holds on a cluster too (Swarm
//! ignores it): a service whose required dependencies do not meet their conditions gets no
//! first tasks. Once a service has tasks it is never held back again (as in Compose, the
//! conditions gate the start, not the life of a service). Pure.

use std::collections::{BTreeMap, HashMap};

use shoal_proto::{service_spec::Mode, DependencyCondition, Service, Task, TaskState};

/// Why a service waits, or `None` when it may start.
pub fn waiting_for(
    service: &Service,
    by_name: &HashMap<&str, &Service>,
    tasks_of: &HashMap<&str, Vec<&Task>>,
) -> Option<String> {
    let spec = service.spec.as_ref()?;
    for dep in &spec.depends_on {
        let Some(target) = by_name.get(dep.service.as_str()) else {
            if dep.required {
                return Some(format!("dependency {} does not exist", dep.service));
            }
            continue;
        };
        let tasks = tasks_of
            .get(target.id.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let met = match dep.condition() {
            DependencyCondition::Started => tasks.iter().any(|t| state(t) >= TaskState::Running),
            DependencyCondition::Healthy => all_running(target, tasks),
            DependencyCondition::CompletedSuccessfully => completed(tasks),
        };
        if !met {
            let what = match dep.condition() {
                DependencyCondition::Started => "to start",
                DependencyCondition::Healthy => "to be running and healthy",
                DependencyCondition::CompletedSuccessfully => "to complete successfully",
            };
            return Some(format!("waiting for {} {what}", dep.service));
        }
    }
    None
}

fn state(t: &Task) -> TaskState {
    t.status.as_ref().map(|s| s.state()).unwrap_or_default()
}

/// Every wanted replica runs (a task with a healthcheck reports RUNNING only once healthy).
fn all_running(service: &Service, tasks: &[&Task]) -> bool {
    let running = tasks
        .iter()
        .filter(|t| t.desired_state() == TaskState::Running && state(t) == TaskState::Running)
        .count() as u64;
    let wanted = match service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
        Some(Mode::Replicated(r)) => r.replicas,
        _ => 1,
    };
    running >= wanted.max(1)
}

/// The newest task of every slot has finished with exit code 0.
fn completed(tasks: &[&Task]) -> bool {
    let mut newest: BTreeMap<(u64, &str), &Task> = BTreeMap::new();
    for &t in tasks {
        let key = (t.slot, t.node_id.as_str());
        let created = |t: &Task| t.meta.as_ref().map(|m| m.created_at).unwrap_or(0);
        if newest.get(&key).is_none_or(|n| created(t) >= created(n)) {
            newest.insert(key, t);
        }
    }
    !newest.is_empty()
        && newest.values().all(|t| {
            state(t) == TaskState::Complete
                && t.status.as_ref().and_then(|s| s.exit_code).unwrap_or(0) == 0
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ReplicatedService, ServiceDependency, ServiceSpec, TaskStatus};

    fn service(id: &str, name: &str, deps: &[(&str, DependencyCondition)]) -> Service {
        Service {
            id: id.into(),
            meta: None,
            spec: Some(ServiceSpec {
                name: name.into(),
                mode: Some(Mode::Replicated(ReplicatedService { replicas: 1 })),
                depends_on: deps
                    .iter()
                    .map(|(s, c)| ServiceDependency {
                        service: s.to_string(),
                        condition: *c as i32,
                        required: true,
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(service: &str, state: TaskState, exit: Option<i32>) -> Task {
        Task {
            id: format!("{service}-t"),
            service_id: service.into(),
            slot: 1,
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: state as i32,
                exit_code: exit,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn conditions_gate_the_start() {
        let db = service("db", "app_db", &[]);
        let job = service("job", "app_job", &[]);
        let web = service(
            "web",
            "app_web",
            &[
                ("app_db", DependencyCondition::Healthy),
                ("app_job", DependencyCondition::CompletedSuccessfully),
            ],
        );
        let by_name: HashMap<&str, &Service> =
            [("app_db", &db), ("app_job", &job)].into_iter().collect();
        let starting = task("db", TaskState::Starting, None);
        let running = task("db", TaskState::Running, None);
        let done = task("job", TaskState::Complete, Some(0));
        let failed = task("job", TaskState::Failed, Some(1));
        let wait = |db: &Task, job: &Task| {
            let tasks: HashMap<&str, Vec<&Task>> =
                [("db", vec![db]), ("job", vec![job])].into_iter().collect();
            waiting_for(&web, &by_name, &tasks)
        };
        assert!(wait(&starting, &done).unwrap().contains("app_db"));
        assert!(wait(&running, &failed).unwrap().contains("complete"));
        assert_eq!(wait(&running, &done), None);
        let orphan = service("o", "o", &[("gone", DependencyCondition::Started)]);
        assert!(waiting_for(&orphan, &by_name, &HashMap::new())
            .unwrap()
            .contains("does not exist"));
    }
}
