//! The spec-update step: which slots whose task runs an outdated spec get a new task now.
//!
//! Today every outdated slot is replaced at once, stop-first (the old task is set to desired
//! SHUTDOWN and its replacement is created in the same plan). Rolling updates (parallelism,
//! delay, monitor, failure action, start-first) will live here, behind [`plan_update`]: the
//! replicated orchestrator only asks it which dirty slots to replace now and when to look
//! again, so that change touches nothing else.

use shoal_proto::{Service, ServiceSpec, Task};

/// A slot whose current task runs an outdated spec.
#[derive(Debug, Clone, Copy)]
pub struct DirtySlot<'a> {
    pub slot: u64,
    /// The slot's current task (desired RUNNING, not terminal, on a live node).
    pub task: &'a Task,
}

/// What [`plan_update`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateStep {
    /// Slots whose current task is replaced in this plan, in the order given.
    pub replace: Vec<u64>,
    /// When the update wants to be looked at again (a rolling update's delay), if ever.
    pub wake_at: Option<i64>,
}

/// Decides which dirty slots to replace now. Currently: all of them (stop-first, all at once).
pub fn plan_update(_service: &Service, dirty: &[DirtySlot<'_>], _now: i64) -> UpdateStep {
    UpdateStep {
        replace: dirty.iter().map(|d| d.slot).collect(),
        wake_at: None,
    }
}

/// A task is dirty when it was made from an older version of the service whose spec differs
/// from the current one in what a task runs with. Comparing the specs, not just versions,
/// keeps `docker service scale` (which bumps the version) from restarting every task.
pub fn is_dirty(task: &Task, service: &Service) -> bool {
    let version = service.meta.as_ref().map(|m| m.version).unwrap_or(0);
    task.spec_version < version && !same_task_spec(task.spec.as_ref(), service.spec.as_ref())
}

/// Whether two specs make the same task. The service's name, labels, mode (replicas) and
/// start dependencies do not reach the task's container; everything else does. The
/// destructuring is exhaustive on purpose: a field added to `ServiceSpec` fails to compile
/// here until someone decides.
pub fn same_task_spec(a: Option<&ServiceSpec>, b: Option<&ServiceSpec>) -> bool {
    let empty = ServiceSpec::default();
    let ServiceSpec {
        name: _,
        labels: _,
        mode: _,
        container,
        limits,
        reservations,
        restart,
        networks,
        endpoint,
        depends_on: _,
    } = a.unwrap_or(&empty);
    let b = b.unwrap_or(&empty);
    *container == b.container
        && *limits == b.limits
        && *reservations == b.reservations
        && *restart == b.restart
        && *networks == b.networks
        && *endpoint == b.endpoint
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{service_spec::Mode, ContainerSpec, Meta, ReplicatedService};

    fn service(version: u64, image: &str, replicas: u64) -> Service {
        Service {
            id: "s".into(),
            meta: Some(Meta {
                version,
                ..Default::default()
            }),
            spec: Some(ServiceSpec {
                name: "web".into(),
                container: Some(ContainerSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                mode: Some(Mode::Replicated(ReplicatedService { replicas })),
                ..Default::default()
            }),
        }
    }

    fn task_of(s: &Service) -> Task {
        Task {
            spec: s.spec.clone(),
            spec_version: s.meta.as_ref().map(|m| m.version).unwrap_or(0),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_image_makes_tasks_dirty() {
        let t = task_of(&service(3, "busybox:1", 2));
        assert!(!is_dirty(&t, &service(3, "busybox:1", 2)));
        assert!(is_dirty(&t, &service(7, "busybox:2", 2)));
    }

    #[test]
    fn scaling_or_relabelling_does_not() {
        let t = task_of(&service(3, "busybox:1", 2));
        let mut s = service(7, "busybox:1", 5);
        if let Some(spec) = s.spec.as_mut() {
            spec.labels.insert("team".into(), "a".into());
        }
        assert!(!is_dirty(&t, &s));
    }

    #[test]
    fn a_task_newer_than_the_service_is_never_dirty() {
        let t = task_of(&service(9, "busybox:1", 2));
        assert!(!is_dirty(&t, &service(7, "busybox:2", 2)));
    }

    #[test]
    fn replaces_every_dirty_slot_for_now() {
        let s = service(7, "busybox:2", 3);
        let t = task_of(&service(3, "busybox:1", 3));
        let dirty = [
            DirtySlot { slot: 1, task: &t },
            DirtySlot { slot: 3, task: &t },
        ];
        assert_eq!(
            plan_update(&s, &dirty, 0),
            UpdateStep {
                replace: vec![1, 3],
                wake_at: None
            }
        );
    }
}
