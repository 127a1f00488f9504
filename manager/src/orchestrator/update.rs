//! The spec-update step: Swarm's rolling update and rollback, as a pure function.
//!
//! The replicated (and global) orchestrator judges every slot first, then asks
//! [`plan_update`] which slots whose current task runs an outdated spec get a new task now, and
//! what the service's [`UpdateStatus`] becomes. Nothing here remembers anything between calls:
//! the state of a rollout is read back from the tasks and from the service's `update_status`.
//!
//! # The rules
//!
//! - The config in effect is the spec's `update_config`, or, while rolling back, the
//!   `rollback_config` of the spec rolled away from (`previous_spec`, which holds the
//!   `--rollback-*` settings given with the update that failed), else the current spec's.
//!   Unset fields take Swarm's defaults: parallelism 1, delay 0, monitor 5 s, pause on failure,
//!   stop-first.
//! - An update starts when a slot is outdated and no update is under way (no status, or the
//!   last one COMPLETED / ROLLBACK_COMPLETED): status UPDATING, `started_at` = now.
//! - A slot is *in flight* from its replacement until its new task (made since `started_at`)
//!   has been RUNNING for `monitor` (a task with a healthcheck reports RUNNING only once
//!   healthy); it keeps its "worker" `delay` longer. At most `parallelism` slots are busy
//!   (0: no limit); the outdated slots are taken in slot order.
//! - Stop-first: the old task is set to SHUTDOWN as its replacement is created. Start-first:
//!   the old task stays desired RUNNING beside the new one and is shut down once the new one
//!   is RUNNING (see [`super::replicated`]); if the new one fails, the old one goes on.
//! - A failure is a task made from the target spec since `started_at` that ended FAILED,
//!   REJECTED or COMPLETE (a service task that exits during its rollout). When
//!   failures / slots > `max_failure_ratio`, the failure action runs: *pause* (status PAUSED
//!   with the task named, nothing more replaced until the next update), *continue*, or
//!   *rollback*: spec and previous_spec swap, status ROLLBACK_STARTED, and the next passes
//!   roll back with the rollback config (whose own *rollback* action means pause:
//!   ROLLBACK_PAUSED). Without a previous spec, *rollback* pauses.
//! - When no slot is outdated and none is in flight: COMPLETED (or ROLLBACK_COMPLETED, whose
//!   message keeps the rollback's reason).
//!
//! Choices that differ from Swarm: the failure ratio's denominator is the number of slots,
//! not of slots outdated when the update began (that number is not kept); an automatic
//! rollback swaps the specs (Swarm forgets the failed one), so `service rollback` afterwards
//! goes forward to it again, as it does after a manual rollback.

use shoal_proto::{
    Service, ServiceSpec, Task, TaskState, UpdateConfig, UpdateFailureAction, UpdateOrder,
    UpdateState, UpdateStatus,
};

/// Swarm's default parallelism.
pub const DEFAULT_PARALLELISM: u64 = 1;
/// Swarm's default monitor period.
pub const DEFAULT_MONITOR_MS: u64 = 5_000;

/// A slot as the update step sees it, after the orchestrator judged it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SlotView<'a> {
    /// The slot's current task: desired RUNNING, not ended, on a live node.
    pub current: Option<&'a Task>,
    /// The current task runs an outdated spec.
    pub dirty: bool,
    /// The slot gets a new task in this pass (its task ended, or its node was lost): it is not
    /// settled, whatever its current task.
    pub refilled: bool,
}

/// What [`plan_update`] decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateStep {
    /// Positions (in the given slots) of the outdated slots replaced now, in order.
    pub replace: Vec<usize>,
    /// When the rollout wants to be looked at again (a monitor period or delay ending).
    pub wake_at: Option<i64>,
    /// The service rewritten: a new update status, or a rollback's spec swap.
    pub service: Option<Service>,
}

impl UpdateStep {
    /// The step swaps the service's spec (an automatic rollback): nothing else should be
    /// planned from the old spec in the same pass.
    pub fn changes_spec(&self, service: &Service) -> bool {
        self.service
            .as_ref()
            .is_some_and(|s| s.spec != service.spec)
    }

    fn wake(&mut self, at: i64) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// An [`UpdateConfig`] with Swarm's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rollout {
    /// 0: every slot at once.
    pub parallelism: u64,
    pub delay_ms: i64,
    pub monitor_ms: i64,
    pub failure_action: UpdateFailureAction,
    pub max_failure_ratio: f32,
    pub order: UpdateOrder,
}

impl Rollout {
    pub fn of(config: Option<&UpdateConfig>) -> Rollout {
        let c = config.cloned().unwrap_or_default();
        Rollout {
            parallelism: c.parallelism.unwrap_or(DEFAULT_PARALLELISM),
            delay_ms: i64::try_from(c.delay_ms).unwrap_or(i64::MAX),
            monitor_ms: i64::try_from(c.monitor_ms.unwrap_or(DEFAULT_MONITOR_MS))
                .unwrap_or(i64::MAX),
            failure_action: c.failure_action(),
            max_failure_ratio: c.max_failure_ratio,
            order: c.order(),
        }
    }
}

fn update_state(service: &Service) -> UpdateState {
    service
        .update_status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(UpdateState::Unknown)
}

/// The service is being (or was being, if paused) rolled back.
pub fn rolling_back(service: &Service) -> bool {
    matches!(
        update_state(service),
        UpdateState::RollbackStarted | UpdateState::RollbackPaused
    )
}

/// The rollout settings in effect for the service now (see the module docs).
pub fn rollout_of(service: &Service) -> Rollout {
    let spec = service.spec.as_ref();
    if rolling_back(service) {
        let config = service
            .previous_spec
            .as_ref()
            .and_then(|p| p.rollback_config.as_ref())
            .or_else(|| spec.and_then(|s| s.rollback_config.as_ref()));
        Rollout::of(config)
    } else {
        Rollout::of(spec.and_then(|s| s.update_config.as_ref()))
    }
}

/// How long a task the orchestrator stops now stays out of rotation before its stop signal:
/// during a rollback the rollback config's drain if it sets one, else the update config's,
/// else [`shoal_proto::DEFAULT_DRAIN_MS`]. Stamped on the task, so that a drain changed with
/// the update itself applies to the tasks that update replaces.
pub fn drain_of(service: &Service) -> u64 {
    let spec = service.spec.as_ref();
    let rollback = rolling_back(service)
        .then(|| {
            service
                .previous_spec
                .as_ref()
                .and_then(|p| p.rollback_config.as_ref())
                .and_then(|c| c.drain_ms)
                .or_else(|| spec?.rollback_config.as_ref()?.drain_ms)
        })
        .flatten();
    rollback
        .or_else(|| spec?.update_config.as_ref()?.drain_ms)
        .unwrap_or(shoal_proto::DEFAULT_DRAIN_MS)
}

/// New tasks start beside the old ones (start-first) in the rollout in effect.
pub fn starts_first(service: &Service) -> bool {
    rollout_of(service).order == UpdateOrder::StartFirst
}

fn created_at(task: &Task) -> i64 {
    task.meta.as_ref().map(|m| m.created_at).unwrap_or(0)
}

fn state_of(task: &Task) -> TaskState {
    task.status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(TaskState::New)
}

fn status(state: UpdateState, started_at: i64, completed_at: i64, message: String) -> UpdateStatus {
    let mut s = UpdateStatus {
        started_at,
        completed_at,
        message,
        ..Default::default()
    };
    s.set_state(state);
    s
}

/// Decides which outdated slots to replace now and what the update status becomes.
/// `slots` are the service's slots in order; `history` every task of those slots (failures
/// are counted there).
pub fn plan_update(
    service: &Service,
    slots: &[SlotView<'_>],
    history: &[&Task],
    now: i64,
) -> UpdateStep {
    let mut step = UpdateStep::default();
    let dirty = slots.iter().filter(|s| s.dirty).count();
    let current = service.update_status.as_ref();
    let state = update_state(service);
    let rolling_back = rolling_back(service);
    let (started_at, mut next) = match state {
        UpdateState::Updating | UpdateState::RollbackStarted => {
            let mut status = current.cloned().unwrap_or_default();
            if status.started_at <= 0 || status.started_at > now {
                // Not stamped yet, or by a clock ahead of ours (another manager's): from now
                // on, so that the tasks made from here on count as this rollout's.
                status.started_at = now;
                (now, Some(status))
            } else {
                (status.started_at, None)
            }
        }
        // Paused: nothing is replaced until the next update or a rollback resets the status.
        UpdateState::Paused | UpdateState::RollbackPaused => return step,
        UpdateState::Unknown | UpdateState::Completed | UpdateState::RollbackCompleted => {
            if dirty == 0 {
                return step;
            }
            let s = status(UpdateState::Updating, now, 0, "update in progress".into());
            (now, Some(s))
        }
    };
    let rollout = rollout_of(service);
    let what = if rolling_back { "rollback" } else { "update" };

    // Slots whose new task has not settled (unsettled), or settled less than `delay` ago
    // (busy: their worker still waits).
    let (mut unsettled, mut busy) = (0usize, 0usize);
    for task in slots.iter().filter(|s| !s.dirty).filter_map(|s| s.current) {
        let state = state_of(task);
        // An older task of the target spec counts only until it runs: a rollback finds the
        // tasks it returns to, and one of them that is not running yet (with a start-first
        // predecessor still serving beside it) is not done.
        if created_at(task) < started_at && state >= TaskState::Running {
            continue;
        }
        if state < TaskState::Running {
            unsettled += 1;
            busy += 1;
        } else if state == TaskState::Running {
            let since = task.status.as_ref().map(|s| s.timestamp).unwrap_or(0);
            let settled = since.saturating_add(rollout.monitor_ms);
            let free = settled.saturating_add(rollout.delay_ms);
            if settled > now {
                unsettled += 1;
                busy += 1;
                step.wake(settled);
            } else if free > now && dirty > 0 {
                busy += 1;
                step.wake(free);
            }
        }
    }

    // Failures of the target spec since the rollout began.
    let target = service.spec.as_ref();
    let mut failed: Vec<&Task> = history
        .iter()
        .copied()
        .filter(|t| {
            created_at(t) >= started_at
                && matches!(
                    state_of(t),
                    TaskState::Failed | TaskState::Rejected | TaskState::Complete
                )
                && same_task_spec(t.spec.as_deref(), target)
        })
        .collect();
    failed.sort_by(|a, b| a.id.cmp(&b.id));
    let ratio = failed.len() as f64 / slots.len().max(1) as f64;
    if let Some(first) = failed
        .first()
        .filter(|_| ratio > rollout.max_failure_ratio as f64)
    {
        let id = &first.id;
        match rollout.failure_action {
            UpdateFailureAction::Continue => {}
            UpdateFailureAction::Rollback if !rolling_back && service.previous_spec.is_some() => {
                let mut s = service.clone();
                s.spec = service.previous_spec.clone();
                s.previous_spec = service.spec.clone();
                s.update_status = Some(status(
                    UpdateState::RollbackStarted,
                    now,
                    0,
                    format!("update rolled back due to failure or early termination of task {id}"),
                ));
                step.service = Some(s);
                step.wake_at = None;
                return step;
            }
            UpdateFailureAction::Pause | UpdateFailureAction::Rollback => {
                let paused = if rolling_back {
                    UpdateState::RollbackPaused
                } else {
                    UpdateState::Paused
                };
                let mut s = service.clone();
                s.update_status = Some(status(
                    paused,
                    started_at,
                    0,
                    format!("{what} paused due to failure or early termination of task {id}"),
                ));
                step.service = Some(s);
                step.wake_at = None;
                return step;
            }
        }
    }

    let capacity = match rollout.parallelism {
        0 => usize::MAX,
        n => usize::try_from(n)
            .unwrap_or(usize::MAX)
            .saturating_sub(busy),
    };
    step.replace = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.dirty)
        .map(|(i, _)| i)
        .take(capacity)
        .collect();

    if dirty == 0 && unsettled == 0 && !slots.iter().any(|s| s.refilled) {
        let done = if rolling_back {
            UpdateState::RollbackCompleted
        } else {
            UpdateState::Completed
        };
        // A rollback's reason stays visible: the CLI may never have seen ROLLBACK_STARTED.
        let message = match current.map(|s| s.message.as_str()) {
            Some(reason) if rolling_back && !reason.is_empty() => {
                format!("rollback completed ({reason})")
            }
            _ => format!("{what} completed"),
        };
        next = Some(status(done, started_at, now, message));
    }
    if let Some(next) = next {
        let mut s = service.clone();
        s.update_status = Some(next);
        step.service = Some(s);
    }
    step
}

/// A task is dirty when it was made from an older version of the service whose spec differs
/// from the current one in what a task runs with. Comparing the specs, not just versions,
/// keeps `docker service scale` (which bumps the version) from restarting every task.
pub fn is_dirty(task: &Task, service: &Service) -> bool {
    let version = service.meta.as_ref().map(|m| m.version).unwrap_or(0);
    task.spec_version < version && !same_task_spec(task.spec.as_deref(), service.spec.as_ref())
}

/// Whether two specs make the same task. The service's name, labels, mode (replicas), start
/// dependencies and rollout settings do not reach the task's container; everything else does,
/// placement included: as in Swarm, a new constraint replaces the tasks (through the rolling
/// update) so that each lands where the new rules allow. The
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
        placement,
        depends_on: _,
        update_config: _,
        rollback_config: _,
        force_update,
    } = a.unwrap_or(&empty);
    let b = b.unwrap_or(&empty);
    *force_update == b.force_update
        && *container == b.container
        && *limits == b.limits
        && *reservations == b.reservations
        && *restart == b.restart
        && *networks == b.networks
        && *endpoint == b.endpoint
        && *placement == b.placement
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{
        service_spec::Mode, ContainerSpec, Meta, ReplicatedService, SharedSpec, TaskStatus,
    };

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
            ..Default::default()
        }
    }

    fn task_of(s: &Service) -> Task {
        Task {
            spec: s.spec.clone().map(SharedSpec::new),
            spec_version: s.meta.as_ref().map(|m| m.version).unwrap_or(0),
            ..Default::default()
        }
    }

    fn updating(mut s: Service, started_at: i64) -> Service {
        s.update_status = Some(status(UpdateState::Updating, started_at, 0, String::new()));
        s
    }

    fn with_config(mut s: Service, c: UpdateConfig) -> Service {
        if let Some(spec) = s.spec.as_mut() {
            spec.update_config = Some(c);
        }
        s
    }

    /// A task of `s` created at `created`, in `state` since `since`.
    fn new_task(s: &Service, id: &str, created: i64, state: TaskState, since: i64) -> Task {
        let mut t = task_of(s);
        t.id = id.into();
        t.meta = Some(Meta {
            created_at: created,
            ..Default::default()
        });
        let mut st = TaskStatus {
            timestamp: since,
            ..Default::default()
        };
        st.set_state(state);
        t.status = Some(st);
        t
    }

    #[test]
    fn a_new_image_makes_tasks_dirty() {
        let t = task_of(&service(3, "busybox:1", 2));
        assert!(!is_dirty(&t, &service(3, "busybox:1", 2)));
        assert!(is_dirty(&t, &service(7, "busybox:2", 2)));
    }

    #[test]
    fn scaling_relabelling_or_new_rollout_settings_do_not() {
        let t = task_of(&service(3, "busybox:1", 2));
        let mut s = service(7, "busybox:1", 5);
        if let Some(spec) = s.spec.as_mut() {
            spec.labels.insert("team".into(), "a".into());
            spec.update_config = Some(UpdateConfig {
                parallelism: Some(3),
                ..Default::default()
            });
            spec.rollback_config = Some(UpdateConfig::default());
        }
        assert!(!is_dirty(&t, &s));
    }

    #[test]
    fn a_task_newer_than_the_service_is_never_dirty() {
        let t = task_of(&service(9, "busybox:1", 2));
        assert!(!is_dirty(&t, &service(7, "busybox:2", 2)));
    }

    #[test]
    fn defaults_are_swarms() {
        let r = Rollout::of(None);
        assert_eq!(r.parallelism, 1);
        assert_eq!(r.delay_ms, 0);
        assert_eq!(r.monitor_ms, 5_000);
        assert_eq!(r.failure_action, UpdateFailureAction::Pause);
        assert_eq!(r.order, UpdateOrder::StopFirst);
        assert_eq!(r.max_failure_ratio, 0.0);
        // A partly set config keeps the defaults of what it leaves out.
        let r = Rollout::of(Some(&UpdateConfig {
            delay_ms: 10,
            ..Default::default()
        }));
        assert_eq!((r.parallelism, r.monitor_ms, r.delay_ms), (1, 5_000, 10));
    }

    #[test]
    fn an_update_starts_with_one_slot_by_default() {
        let s = service(7, "busybox:2", 3);
        let t = task_of(&service(3, "busybox:1", 3));
        let slots = [
            SlotView {
                current: Some(&t),
                dirty: true,
                refilled: false,
            },
            SlotView {
                current: Some(&t),
                dirty: true,
                refilled: false,
            },
        ];
        let step = plan_update(&s, &slots, &[], 50);
        assert_eq!(step.replace, vec![0]);
        let status = step
            .service
            .and_then(|s| s.update_status)
            .unwrap_or_default();
        assert_eq!(status.state(), UpdateState::Updating);
        assert_eq!(status.started_at, 50);
    }

    #[test]
    fn parallelism_zero_replaces_every_dirty_slot() {
        let s = with_config(
            service(7, "busybox:2", 3),
            UpdateConfig {
                parallelism: Some(0),
                ..Default::default()
            },
        );
        let t = task_of(&service(3, "busybox:1", 3));
        let d = SlotView {
            current: Some(&t),
            dirty: true,
            refilled: false,
        };
        let step = plan_update(&s, &[d, SlotView::default(), d], &[], 0);
        assert_eq!(step.replace, vec![0, 2]);
    }

    #[test]
    fn a_slot_is_busy_until_monitor_and_delay_passed() {
        let s = updating(
            with_config(
                service(7, "busybox:2", 2),
                UpdateConfig {
                    monitor_ms: Some(1_000),
                    delay_ms: 500,
                    ..Default::default()
                },
            ),
            100,
        );
        let old = task_of(&service(3, "busybox:1", 2));
        let new = new_task(&s, "n", 100, TaskState::Running, 200);
        let slots = [
            SlotView {
                current: Some(&new),
                dirty: false,
                refilled: false,
            },
            SlotView {
                current: Some(&old),
                dirty: true,
                refilled: false,
            },
        ];
        let step = plan_update(&s, &slots, &[&new], 1_000);
        assert!(step.replace.is_empty());
        assert_eq!(step.wake_at, Some(1_200));
        let step = plan_update(&s, &slots, &[&new], 1_200);
        assert!(step.replace.is_empty());
        assert_eq!(step.wake_at, Some(1_700));
        let step = plan_update(&s, &slots, &[&new], 1_700);
        assert_eq!(step.replace, vec![1]);
        assert_eq!(step.service, None);
    }

    #[test]
    fn completes_once_nothing_is_outdated_or_in_flight() {
        let s = updating(service(7, "busybox:2", 1), 100);
        let new = new_task(&s, "n", 100, TaskState::Running, 200);
        let slots = [SlotView {
            current: Some(&new),
            dirty: false,
            refilled: false,
        }];
        let step = plan_update(&s, &slots, &[&new], 5_199);
        assert_eq!((step.service.is_none(), step.wake_at), (true, Some(5_200)));
        let step = plan_update(&s, &slots, &[&new], 5_200);
        let status = step
            .service
            .and_then(|s| s.update_status)
            .unwrap_or_default();
        assert_eq!(status.state(), UpdateState::Completed);
        assert_eq!((status.started_at, status.completed_at), (100, 5_200));
        assert_eq!(status.message, "update completed");
    }

    #[test]
    fn a_failure_pauses_by_default_and_names_the_task() {
        let s = updating(service(7, "busybox:2", 2), 100);
        let old = task_of(&service(3, "busybox:1", 2));
        let failed = new_task(&s, "f1", 150, TaskState::Failed, 300);
        let slots = [
            SlotView::default(),
            SlotView {
                current: Some(&old),
                dirty: true,
                refilled: false,
            },
        ];
        let step = plan_update(&s, &slots, &[&failed], 400);
        assert!(step.replace.is_empty());
        let status = step
            .service
            .and_then(|s| s.update_status)
            .unwrap_or_default();
        assert_eq!(status.state(), UpdateState::Paused);
        assert_eq!(
            status.message,
            "update paused due to failure or early termination of task f1"
        );
        // Paused: nothing more, however long one waits.
        let mut paused = s.clone();
        paused.update_status = Some(status);
        assert_eq!(
            plan_update(&paused, &slots, &[&failed], 99_999),
            UpdateStep::default()
        );
        // A failure from before the update started does not count.
        let earlier = new_task(&s, "f0", 50, TaskState::Failed, 60);
        assert_eq!(plan_update(&s, &slots, &[&earlier], 400).replace, vec![1]);
    }

    #[test]
    fn the_failure_ratio_tolerates_some_failures() {
        let s = updating(
            with_config(
                service(7, "busybox:2", 4),
                UpdateConfig {
                    max_failure_ratio: 0.3,
                    ..Default::default()
                },
            ),
            100,
        );
        let f1 = new_task(&s, "f1", 150, TaskState::Rejected, 300);
        let f2 = new_task(&s, "f2", 150, TaskState::Complete, 300);
        let old = task_of(&service(3, "busybox:1", 4));
        let mut slots = [SlotView::default(); 4];
        slots[3] = SlotView {
            current: Some(&old),
            dirty: true,
            refilled: false,
        };
        assert!(plan_update(&s, &slots, &[&f1], 400).service.is_none());
        let status = plan_update(&s, &slots, &[&f1, &f2], 400)
            .service
            .and_then(|s| s.update_status)
            .unwrap_or_default();
        assert_eq!(status.state(), UpdateState::Paused);
    }

    #[test]
    fn continue_goes_on_and_rollback_swaps_the_specs() {
        let old = service(3, "busybox:1", 2);
        let mut s = updating(service(7, "busybox:2", 2), 100);
        s.previous_spec = old.spec.clone();
        let failed = new_task(&s, "f1", 150, TaskState::Failed, 300);
        let running_old = task_of(&old);
        let slots = [
            SlotView::default(),
            SlotView {
                current: Some(&running_old),
                dirty: true,
                refilled: false,
            },
        ];
        let mut cont = s.clone();
        if let Some(spec) = cont.spec.as_mut() {
            spec.update_config = Some(UpdateConfig {
                failure_action: UpdateFailureAction::Continue as i32,
                ..Default::default()
            });
        }
        assert_eq!(plan_update(&cont, &slots, &[&failed], 400).replace, vec![1]);

        let mut rb = cont.clone();
        if let Some(spec) = rb.spec.as_mut() {
            spec.update_config = Some(UpdateConfig {
                failure_action: UpdateFailureAction::Rollback as i32,
                ..Default::default()
            });
        }
        let step = plan_update(&rb, &slots, &[&failed], 400);
        assert!(step.replace.is_empty());
        let back = step.service.unwrap_or_default();
        assert_eq!(back.spec, old.spec);
        assert_eq!(back.previous_spec, rb.spec);
        let status = back.update_status.clone().unwrap_or_default();
        assert_eq!(status.state(), UpdateState::RollbackStarted);
        assert_eq!(status.started_at, 400);
        assert!(rolling_back(&back));
        // The rollback uses the failed spec's rollback config, and its own failure pauses it.
        if let Some(spec) = rb.spec.as_mut() {
            spec.rollback_config = Some(UpdateConfig {
                parallelism: Some(0),
                order: UpdateOrder::StartFirst as i32,
                failure_action: UpdateFailureAction::Rollback as i32,
                ..Default::default()
            });
        }
        let back = plan_update(&rb, &slots, &[&failed], 400)
            .service
            .unwrap_or_default();
        assert_eq!(rollout_of(&back).parallelism, 0);
        assert!(starts_first(&back));
        let failed_again = new_task(&back, "f2", 500, TaskState::Failed, 600);
        let status = plan_update(&back, &slots, &[&failed_again], 700)
            .service
            .and_then(|s| s.update_status)
            .unwrap_or_default();
        assert_eq!(status.state(), UpdateState::RollbackPaused);
        assert_eq!(
            status.message,
            "rollback paused due to failure or early termination of task f2"
        );
    }

    #[test]
    fn the_drain_comes_from_the_config_in_effect() {
        let mut s = service(7, "busybox:2", 1);
        assert_eq!(drain_of(&s), shoal_proto::DEFAULT_DRAIN_MS);
        s = with_config(
            s,
            UpdateConfig {
                drain_ms: Some(300),
                ..Default::default()
            },
        );
        assert_eq!(drain_of(&s), 300);
        // A rollback keeps the update's drain unless its own config names one.
        let mut back = s.clone();
        back.update_status = Some(status(UpdateState::RollbackStarted, 1, 0, String::new()));
        assert_eq!(drain_of(&back), 300);
        let mut previous = s.spec.clone().unwrap_or_default();
        previous.rollback_config = Some(UpdateConfig {
            drain_ms: Some(0),
            ..Default::default()
        });
        back.previous_spec = Some(previous);
        assert_eq!(drain_of(&back), 0);
    }

    #[test]
    fn rollback_without_a_previous_spec_pauses() {
        let mut s = updating(service(7, "busybox:2", 1), 100);
        if let Some(spec) = s.spec.as_mut() {
            spec.update_config = Some(UpdateConfig {
                failure_action: UpdateFailureAction::Rollback as i32,
                ..Default::default()
            });
        }
        let failed = new_task(&s, "f1", 150, TaskState::Failed, 300);
        let status = plan_update(&s, &[SlotView::default()], &[&failed], 400)
            .service
            .and_then(|s| s.update_status)
            .unwrap_or_default();
        assert_eq!(status.state(), UpdateState::Paused);
    }
}
