//! The blue-green strategy, as a pure function wrapped around the replicated (or global)
//! orchestrator.
//!
//! *Blue* is the set of tasks that serves now, *green* the set made from the service's current
//! spec. Where a rolling update replaces slots a few at a time, blue-green starts green at full
//! count beside blue, out of rotation, and switches all the traffic in one plan. Nothing is
//! remembered between calls: the rollout is read back from the tasks (their spec and their
//! `out_of_rotation` flag) and from the service's `update_status` (`phase`, `switched_at`,
//! `promote_requested`).
//!
//! # The rules
//!
//! - *Parked* tasks are the service's live tasks (desired RUNNING, not ended, on a node that is
//!   up and not drained) made from an outdated spec ([`is_dirty`], as a rolling update sees
//!   them). The orchestrator proper
//!   ([`reconcile_mode`]) sees every other task and not these: to it every slot of the new spec
//!   is simply missing, so green is created at once for every slot, and restarted by the
//!   restart policy like any task.
//! - **Before the switch** (some parked task serves: blue): green is held out of rotation
//!   (`Task.out_of_rotation`, which the agents obey: no DNS answer, no published-port backend).
//!   Parked tasks that are already out of rotation (an older blue kept from an earlier switch,
//!   a green superseded by a newer spec) are stopped. Status UPDATING (or ROLLBACK_STARTED when
//!   the API rolled back), phase DEPLOYING.
//! - Green is *ready* when every slot (every node, for a global service) has a green task that
//!   runs (an agent reports RUNNING only once healthy), and that passed the update config's
//!   `verify` check if its spec has one (not asked of a rollback). Then, with automatic
//!   promotion, after `service promote`, or when rolling back: **the switch**, in one plan:
//!   every green task into rotation, every blue task out of it, phase SWITCHED,
//!   `switched_at` = now. With manual promotion green waits in phase READY.
//! - Failures before the switch (a green task made since the rollout began that ended FAILED,
//!   REJECTED or COMPLETE, that its agent reports unhealthy, or whose verification failed) count against `max_failure_ratio` as
//!   in a rolling update. Beyond it: *continue* goes on; *rollback* aborts: the specs swap back,
//!   green stops, blue is untouched (ROLLBACK_COMPLETED, phase DONE); *pause* (and *rollback*
//!   while rolling back) holds: PAUSED, blue serves, green stays out of rotation, no switch.
//! - **After the switch** (no parked task serves): green is in rotation; blue stays up, out of
//!   rotation, until `switched_at + max(keep_blue, monitor)`, so that `service rollback` is a
//!   switch back (the rollback's green is the kept blue, already ready: it switches in the
//!   first pass). A green failure within the monitor window (an agent reports an unhealthy
//!   task at once and, while a held standby of its service runs on its node, keeps it serving
//!   until the manager moved the traffic) sends the traffic back to blue in one plan (specs swap back, blue into rotation, green stopped: ROLLBACK_COMPLETED), unless
//!   the failure action is *continue*. When the monitor window ends: COMPLETED (or
//!   ROLLBACK_COMPLETED); when the keep window ends, blue is stopped: phase DONE.
//! - A rollback the API asked for before the switch finds green parked and out of rotation:
//!   it is stopped and blue, which never stopped serving, is the rollout's result.
//! - The settings are the update config of the spec rolled out or, while rolling back, of the
//!   spec rolled away from (the blue-green rollout being undone). Rollbacks always promote
//!   themselves.
//! - A blue task that ends before the switch is not restarted (its slot has green already):
//!   blue serves with one task fewer until the switch; when no blue task is left, green goes
//!   into rotation at once (the rollout completes: there is nothing to switch from).

use std::collections::HashSet;

use shoal_proto::{
    BlueGreenPhase, PromoteMode, Service, Task, TaskState, UpdateConfig, UpdateFailureAction,
    UpdateState, UpdateStatus, UpdateStrategy,
};

use super::replicated::{is_terminal, reconcile_mode, replicas, status_state, Nodes, Plan};
use super::update::{is_dirty, rolling_back, Rollout};

/// How long blue is kept after the switch unless the update config says otherwise.
pub const DEFAULT_KEEP_BLUE_MS: u64 = 60_000;

/// What a verification reports in the task status.
pub const VERIFY_PASSED: &str = "passed";
pub const VERIFY_FAILED: &str = "failed";

/// The blue-green settings in effect, with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlueGreen {
    pub rollout: Rollout,
    pub promote: PromoteMode,
    /// Never shorter than the monitor period.
    pub keep_ms: i64,
}

/// The update config a blue-green rollout of the service follows (see the module docs).
fn config_of(service: &Service) -> Option<&UpdateConfig> {
    let spec = if rolling_back(service) {
        service.previous_spec.as_ref()
    } else {
        service.spec.as_ref()
    };
    spec.and_then(|s| s.update_config.as_ref())
}

impl BlueGreen {
    pub fn of(service: &Service) -> BlueGreen {
        let config = config_of(service);
        let rollout = Rollout::of(config);
        let keep = config
            .and_then(|c| c.keep_blue_ms)
            .unwrap_or(DEFAULT_KEEP_BLUE_MS);
        BlueGreen {
            rollout,
            promote: config.map(|c| c.promote()).unwrap_or(PromoteMode::Auto),
            keep_ms: i64::try_from(keep)
                .unwrap_or(i64::MAX)
                .max(rollout.monitor_ms),
        }
    }
}

/// The strategy a spec change of the service follows now.
pub fn strategy_of(service: &Service) -> UpdateStrategy {
    config_of(service)
        .map(|c| c.strategy())
        .unwrap_or(UpdateStrategy::Rolling)
}

fn phase_of(service: &Service) -> BlueGreenPhase {
    service
        .update_status
        .as_ref()
        .map(|s| s.phase())
        .unwrap_or(BlueGreenPhase::None)
}

/// A blue-green rollout is under way (or blue is still kept).
fn in_flight(phase: BlueGreenPhase) -> bool {
    matches!(
        phase,
        BlueGreenPhase::Deploying | BlueGreenPhase::Ready | BlueGreenPhase::Switched
    )
}

/// Desired RUNNING, not ended, on a node that is up and not drained.
fn alive(task: &Task, nodes: &Nodes) -> bool {
    task.desired_state() == TaskState::Running
        && !is_terminal(task)
        && !nodes.is_lost(&task.node_id)
        && !nodes.is_drained(&task.node_id)
}

/// Whether this module owns the service's reconciliation now: its strategy is blue-green, a
/// blue-green rollout is under way, or some task of it is held out of rotation.
pub(super) fn applies(service: &Service, tasks: &[&Task], nodes: &Nodes) -> bool {
    strategy_of(service) == UpdateStrategy::BlueGreen
        || in_flight(phase_of(service))
        || tasks.iter().any(|t| t.out_of_rotation && alive(t, nodes))
}

fn created_at(task: &Task) -> i64 {
    task.meta.as_ref().map(|m| m.created_at).unwrap_or(0)
}

fn verify_of(task: &Task) -> &str {
    task.status
        .as_ref()
        .map(|s| s.verify.as_str())
        .unwrap_or("")
}

/// The task's spec asks for a verification before the switch.
pub fn needs_verify(task: &Task) -> bool {
    task.spec
        .as_ref()
        .and_then(|s| s.update_config.as_ref())
        .is_some_and(|c| !c.verify.is_empty())
}

/// What an agent reports in `TaskStatus.health` of a task that turned unhealthy.
const UNHEALTHY: &str = "unhealthy";

/// Green task ready to take traffic: running (healthy), and verified if asked.
fn ready(task: &Task, rolling_back: bool) -> bool {
    status_state(task) == TaskState::Running
        && task.status.as_ref().is_none_or(|s| s.health != UNHEALTHY)
        && (rolling_back || !needs_verify(task) || verify_of(task) == VERIFY_PASSED)
}

/// A green failure: ended badly, or failed its verification.
fn failure(task: &Task) -> Option<String> {
    let status = task.status.as_ref()?;
    match status.state() {
        TaskState::Failed | TaskState::Rejected | TaskState::Complete => {
            Some(if status.error.is_empty() {
                status.state().display().to_string()
            } else {
                status.error.clone()
            })
        }
        _ if status.verify == VERIFY_FAILED => {
            Some(format!("verification failed: {}", status.verify_output))
        }
        // Reported at once, while the agent waits for us before stopping it.
        TaskState::Running if status.health == UNHEALTHY => {
            Some(format!("container unhealthy: {}", status.health_output))
        }
        _ => None,
    }
}

fn new_status(state: UpdateState, phase: BlueGreenPhase, started_at: i64) -> UpdateStatus {
    let mut s = UpdateStatus {
        started_at,
        ..Default::default()
    };
    s.set_state(state);
    s.set_phase(phase);
    s
}

/// Sets a field of a task in the plan: the plan's copy if it has one, else a new update
/// (only when that changes the task).
fn edit(plan: &mut Plan, task: &Task, f: impl FnOnce(&mut Task)) {
    if let Some(t) = plan.update.iter_mut().find(|t| t.id == task.id) {
        f(t);
        return;
    }
    let mut t = task.clone();
    f(&mut t);
    if t != *task {
        plan.update.push(t);
    }
}

fn stop(task: &mut Task) {
    task.set_desired_state(TaskState::Shutdown);
}

/// Reconciles a service this module owns (see [`applies`]).
pub(super) fn reconcile(
    service: &Service,
    service_id: &str,
    tasks: &[&Task],
    nodes: &Nodes,
    now: i64,
    new_id: &mut dyn FnMut() -> String,
) -> Plan {
    // Every task of another spec that is still wanted stays out of the orchestrator's sight:
    // it would take a slot's place beside a newer one. Of those, the live ones are parked;
    // the others (ended, or on a lost node) are simply stopped.
    let (wanted_other, view): (Vec<&Task>, Vec<&Task>) = tasks
        .iter()
        .copied()
        .partition(|t| t.desired_state() == TaskState::Running && is_dirty(t, service));
    let (parked, gone): (Vec<&Task>, Vec<&Task>) =
        wanted_other.into_iter().partition(|t| alive(t, nodes));

    // The orchestrator proper, without the rollout status: no task it sees is outdated and
    // alive, so its rolling-update step has nothing to do. It sees the gone ones as stopped
    // already (history, which it may trim).
    let mut view_service = service.clone();
    view_service.update_status = None;
    let stopped: Vec<Task> = gone
        .iter()
        .map(|t| {
            let mut t = (*t).clone();
            stop(&mut t);
            t
        })
        .collect();
    let mut seen = view.clone();
    seen.extend(stopped.iter());
    let mut plan = reconcile_mode(&view_service, service_id, &seen, nodes, now, new_id);
    for t in gone {
        let planned = plan.delete.contains(&t.id) || plan.update.iter().any(|u| u.id == t.id);
        if !planned {
            edit(&mut plan, t, stop);
        }
    }

    let stopped_by_plan: HashSet<&str> = plan
        .update
        .iter()
        .filter(|t| t.desired_state() != TaskState::Running)
        .map(|t| t.id.as_str())
        .collect();
    let green: Vec<&Task> = view
        .iter()
        .copied()
        .filter(|t| {
            alive(t, nodes) && !is_dirty(t, service) && !stopped_by_plan.contains(t.id.as_str())
        })
        .collect();
    let settings = BlueGreen::of(service);
    let status = service.update_status.clone().unwrap_or_default();
    let blue_serves = parked.iter().any(|t| !t.out_of_rotation);

    let next = if blue_serves {
        match before_switch(
            service, &settings, &status, &parked, &view, &green, now, &mut plan,
        ) {
            Before::Going(next) => next,
            Before::Aborted(plan) => return plan,
        }
    } else {
        match after_switch(
            service, &settings, &status, &parked, &view, &green, now, &mut plan,
        ) {
            After::Going(next) => next,
            After::Reverted(plan) => return plan,
        }
    };
    if Some(&next) != service.update_status.as_ref() && next != UpdateStatus::default() {
        let mut s = service.clone();
        s.update_status = Some(next);
        plan.services.push(s);
    }
    super::replicated::stamp_drain(&mut plan, service);
    plan
}

enum Before {
    Going(UpdateStatus),
    /// The whole plan: green stopped, specs swapped back.
    Aborted(Plan),
}

enum After {
    Going(UpdateStatus),
    /// The whole plan: traffic back to blue, green stopped, specs swapped back.
    Reverted(Plan),
}

/// Blue serves: green starts out of rotation, then the switch (see the module docs).
#[allow(clippy::too_many_arguments)]
fn before_switch(
    service: &Service,
    settings: &BlueGreen,
    status: &UpdateStatus,
    parked: &[&Task],
    view: &[&Task],
    green: &[&Task],
    now: i64,
    plan: &mut Plan,
) -> Before {
    let phase = status.phase();
    let deploying = matches!(phase, BlueGreenPhase::Deploying | BlueGreenPhase::Ready);
    let paused = deploying
        && matches!(
            status.state(),
            UpdateState::Paused | UpdateState::RollbackPaused
        );
    let going = deploying
        && matches!(
            status.state(),
            UpdateState::Updating | UpdateState::RollbackStarted
        );
    let rolling_back = rolling_back(service);
    let mut next = status.clone();
    if !going && !paused {
        if status.state() == UpdateState::RollbackStarted {
            // The rollback the API asked for: its status, now blue-green.
            next.set_phase(BlueGreenPhase::Deploying);
            if next.started_at <= 0 || next.started_at > now {
                next.started_at = now;
            }
        } else {
            next = new_status(UpdateState::Updating, BlueGreenPhase::Deploying, now);
        }
    }
    let started_at = next.started_at;

    // What is parked out of rotation already (an older blue, a superseded green) goes. Green
    // stays out of rotation until the switch.
    for t in parked.iter().filter(|t| t.out_of_rotation) {
        edit(plan, t, stop);
    }
    let hold_green = |plan: &mut Plan| {
        for t in green {
            edit(plan, t, |t| t.out_of_rotation = true);
        }
        for t in &mut plan.create {
            t.out_of_rotation = true;
        }
    };
    if paused {
        hold_green(plan);
        return Before::Going(next);
    }

    // Failures of green since the rollout began.
    let mut failed: Vec<(&Task, String)> = view
        .iter()
        .copied()
        .filter(|t| created_at(t) >= started_at && !is_dirty(t, service))
        .filter_map(|t| Some((t, failure(t)?)))
        .collect();
    failed.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    let expected = expected_tasks(service, green, plan);
    let ratio = failed.len() as f64 / expected.max(1) as f64;
    if let Some((task, reason)) = failed
        .first()
        .filter(|_| ratio > f64::from(settings.rollout.max_failure_ratio))
    {
        match settings.rollout.failure_action {
            UpdateFailureAction::Continue => {}
            UpdateFailureAction::Rollback if !rolling_back && service.previous_spec.is_some() => {
                let message = format!(
                    "blue-green update rolled back before the switch: green task {} failed ({reason}); blue kept serving",
                    task.id
                );
                let mut s = swapped(service);
                let mut st = new_status(
                    UpdateState::RollbackCompleted,
                    BlueGreenPhase::Done,
                    started_at,
                );
                st.completed_at = now;
                st.message = message;
                s.update_status = Some(st);
                let mut abort = Plan::default();
                for t in wanted_of_target(service, view) {
                    edit(&mut abort, t, stop);
                }
                abort.services.push(s);
                super::replicated::stamp_drain(&mut abort, service);
                return Before::Aborted(abort);
            }
            UpdateFailureAction::Pause | UpdateFailureAction::Rollback => {
                let (state, what) = if rolling_back {
                    (UpdateState::RollbackPaused, "rollback")
                } else {
                    (UpdateState::Paused, "update")
                };
                next.set_state(state);
                next.message = format!(
                    "blue-green {what} paused: green task {} failed ({reason}); blue keeps serving",
                    task.id
                );
                hold_green(plan);
                return Before::Going(next);
            }
        }
    }

    let ready_count = green.iter().filter(|t| ready(t, rolling_back)).count();
    let all_ready = plan.create.is_empty() && ready_count >= expected && ready_count == green.len();
    let promote = settings.promote == PromoteMode::Auto || status.promote_requested || rolling_back;
    if all_ready && promote {
        for t in green {
            edit(plan, t, |t| t.out_of_rotation = false);
        }
        for t in parked.iter().filter(|t| !t.out_of_rotation) {
            edit(plan, t, |t| t.out_of_rotation = true);
        }
        next.set_phase(BlueGreenPhase::Switched);
        next.switched_at = now;
        next.promote_requested = false;
        next.message = format!(
            "traffic switched to green ({ready_count} tasks); blue kept out of rotation, monitoring green"
        );
        // Windows of zero end with the switch itself.
        close_windows(&mut next, settings, now, rolling_back, parked, plan);
    } else if all_ready {
        hold_green(plan);
        next.set_phase(BlueGreenPhase::Ready);
        let name = service.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("");
        next.message = format!(
            "green ready ({ready_count} tasks, out of rotation): switch with `shoal service promote {name}`"
        );
    } else {
        hold_green(plan);
        next.set_phase(BlueGreenPhase::Deploying);
        next.message = format!(
            "starting green beside blue, out of rotation: {ready_count} of {expected} ready"
        );
    }
    Before::Going(next)
}

/// No parked task serves: green is in rotation; blue is kept, then goes (module docs).
#[allow(clippy::too_many_arguments)]
fn after_switch(
    service: &Service,
    settings: &BlueGreen,
    status: &UpdateStatus,
    parked: &[&Task],
    view: &[&Task],
    green: &[&Task],
    now: i64,
    plan: &mut Plan,
) -> After {
    for t in green {
        edit(plan, t, |t| t.out_of_rotation = false);
    }
    let switched = status.phase() == BlueGreenPhase::Switched && status.switched_at > 0;
    let at = status.switched_at;
    let monitor_end = at.saturating_add(settings.rollout.monitor_ms);
    let mut next = status.clone();

    if switched
        && now < monitor_end
        && !parked.is_empty()
        && service.previous_spec.is_some()
        && settings.rollout.failure_action != UpdateFailureAction::Continue
    {
        let mut failed: Vec<(&Task, String)> = view
            .iter()
            .copied()
            .filter(|t| !is_dirty(t, service))
            .filter(|t| t.status.as_ref().is_some_and(|s| s.timestamp >= at))
            .filter_map(|t| Some((t, failure(t)?)))
            .collect();
        failed.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let expected = expected_tasks(service, green, plan);
        let ratio = failed.len() as f64 / expected.max(1) as f64;
        if let Some((task, reason)) = failed
            .first()
            .filter(|_| ratio > f64::from(settings.rollout.max_failure_ratio))
        {
            let mut s = swapped(service);
            let mut st = new_status(
                UpdateState::RollbackCompleted,
                BlueGreenPhase::Done,
                status.started_at,
            );
            st.completed_at = now;
            st.message = format!(
                "green task {} failed within the monitor window after the switch ({reason}): traffic back to blue",
                task.id
            );
            s.update_status = Some(st);
            let mut revert = Plan::default();
            for t in parked {
                edit(&mut revert, t, |t| t.out_of_rotation = false);
            }
            for t in wanted_of_target(service, view) {
                edit(&mut revert, t, |t| {
                    t.out_of_rotation = true;
                    stop(t);
                });
            }
            revert.services.push(s);
            super::replicated::stamp_drain(&mut revert, service);
            return After::Reverted(revert);
        }
    }

    let rolling_back = rolling_back(service);
    if switched {
        close_windows(&mut next, settings, now, rolling_back, parked, plan);
    } else {
        for t in parked {
            edit(plan, t, stop);
        }
    }
    if !switched
        && (in_flight(status.phase())
            || matches!(
                status.state(),
                UpdateState::Updating | UpdateState::RollbackStarted
            ))
    {
        // Nothing left to switch from: a rollback asked before the switch (green goes, blue
        // never stopped serving), or blue ended meanwhile (green serves now).
        let (state, message) = if rolling_back {
            (
                UpdateState::RollbackCompleted,
                "rollback completed: green removed before the switch; blue untouched",
            )
        } else {
            (
                UpdateState::Completed,
                "update completed: no blue task was left to switch from",
            )
        };
        next.set_state(state);
        next.set_phase(BlueGreenPhase::Done);
        next.completed_at = now;
        next.message = message.into();
    }
    After::Going(next)
}

/// After the switch: the rollout completes once the monitor window passed, and blue goes once
/// the keep window passed. `next` is the status as switched.
fn close_windows(
    next: &mut UpdateStatus,
    settings: &BlueGreen,
    now: i64,
    rolling_back: bool,
    parked: &[&Task],
    plan: &mut Plan,
) {
    let monitor_end = next.switched_at.saturating_add(settings.rollout.monitor_ms);
    let keep_end = next.switched_at.saturating_add(settings.keep_ms);
    let going = matches!(
        next.state(),
        UpdateState::Updating | UpdateState::RollbackStarted
    );
    if now < monitor_end {
        plan.wake(Some(monitor_end));
    } else if going {
        let (state, what) = if rolling_back {
            (UpdateState::RollbackCompleted, "rollback")
        } else {
            (UpdateState::Completed, "update")
        };
        next.set_state(state);
        next.completed_at = now;
        next.message = format!(
            "{what} completed: green serves; blue kept out of rotation for an instant rollback"
        );
    }
    if now < keep_end {
        plan.wake(Some(keep_end));
        return;
    }
    for t in parked {
        edit(plan, t, |t| {
            t.out_of_rotation = true;
            stop(t);
        });
    }
    next.set_phase(BlueGreenPhase::Done);
    if !next.message.contains("blue removed") {
        let done = if next.state() == UpdateState::RollbackCompleted {
            "rollback completed"
        } else {
            "update completed"
        };
        next.message = format!("{done}: green serves; blue removed");
    }
}

/// How many green tasks make a full set: the replica count, or the nodes a global service
/// runs on (the current ones plus those the plan creates).
fn expected_tasks(service: &Service, green: &[&Task], plan: &Plan) -> usize {
    match replicas(service) {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => {
            let mut nodes: HashSet<&str> = green.iter().map(|t| t.node_id.as_str()).collect();
            nodes.extend(plan.create.iter().map(|t| t.node_id.as_str()));
            nodes.len()
        }
    }
}

/// The tasks of the current spec still desired RUNNING (ended ones included): what an abort
/// or a revert stops, so that none of them outlives the spec swap beside the restored tasks.
fn wanted_of_target<'a>(service: &Service, view: &[&'a Task]) -> Vec<&'a Task> {
    view.iter()
        .copied()
        .filter(|t| t.desired_state() == TaskState::Running && !is_dirty(t, service))
        .collect()
}

/// The service with its spec and previous spec swapped.
fn swapped(service: &Service) -> Service {
    let mut s = service.clone();
    s.spec = service.previous_spec.clone();
    s.previous_spec = service.spec.clone();
    s
}

/// `service promote`: the service with the promotion asked for, `None` when there is nothing
/// to change (already asked, or already switched), or why it cannot be promoted.
pub fn promote(service: &Service) -> Result<Option<Service>, String> {
    let status = service.update_status.clone().unwrap_or_default();
    match (status.phase(), status.state()) {
        (BlueGreenPhase::Switched | BlueGreenPhase::Done, _) => Ok(None),
        (
            BlueGreenPhase::Deploying | BlueGreenPhase::Ready,
            UpdateState::Paused | UpdateState::RollbackPaused,
        ) => Err(format!(
            "its blue-green update is paused ({}): roll it back with `shoal service rollback`, or update it again",
            status.message
        )),
        (BlueGreenPhase::Deploying | BlueGreenPhase::Ready, _) if status.promote_requested => {
            Ok(None)
        }
        (BlueGreenPhase::Deploying | BlueGreenPhase::Ready, _) => {
            let mut s = service.clone();
            let mut next = status;
            next.promote_requested = true;
            s.update_status = Some(next);
            Ok(Some(s))
        }
        (BlueGreenPhase::None, _) => Err(
            "no blue-green update is waiting for promotion (update it with --update-strategy blue-green --update-promote manual first)"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests;
