//! The restart supervisor: whether, and when, a slot whose task ended gets a new one.
//!
//! Swarm keeps its restart history in the leader's memory, so a leader change forgets how
//! many attempts a slot made. shoal has no such state: everything is derived from the slot's
//! task history in the store, which is what makes [`decide`] a pure function. Two choices
//! follow from that:
//!
//! - **What counts as an attempt**: a task of the slot that ended COMPLETE, FAILED, REJECTED or
//!   ORPHANED (a node lost: Swarm counts those restarts too). A task that ended SHUTDOWN does
//!   not count: almost always the orchestrator stopped it on purpose (update, scale down), and
//!   counting those would make a service that was updated three times give up after its first
//!   real failure with `max_attempts: 3`. A task that reached SHUTDOWN while still desired
//!   RUNNING (its container stopped from outside) is still restarted by the policy.
//! - **The window is anchored on the last failure**, not on `now`: attempts are the tasks that
//!   ended within `window_ms` before the newest one ended. Once a slot gave up it stays given
//!   up; anchoring on `now` would silently restart it whenever a later, unrelated event
//!   happened to run the loop after the window slid by.
//!
//! History trimming ([`history_limit`]) keeps at least `max_attempts + 1` tasks per slot, and
//! [`decide`] looks at exactly the tasks trimming keeps, so trimming never changes a decision.

use shoal_proto::{RestartCondition, RestartPolicy, Task, TaskState};

/// Swarm's default restart delay.
pub const DEFAULT_RESTART_DELAY_MS: u64 = 5_000;

/// Swarm's default task history per slot (`task-history-limit`), the current task included.
pub const TASK_HISTORY_LIMIT: usize = 5;

/// What the restart policy says about a slot whose newest task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Create the replacement now.
    Now,
    /// Create it at this time (unix ms): the restart delay has not expired yet.
    At(i64),
    /// The policy forbids a restart: the slot is settled without a running task.
    Never,
}

/// How many of a slot's tasks to keep: Swarm's 5, or enough to count `max_attempts`.
pub fn history_limit(policy: Option<&RestartPolicy>) -> usize {
    let attempts = policy.map(|p| p.max_attempts).unwrap_or(0);
    if attempts == 0 {
        return TASK_HISTORY_LIMIT;
    }
    usize::try_from(attempts.saturating_add(1))
        .unwrap_or(usize::MAX)
        .max(TASK_HISTORY_LIMIT)
}

/// Decides for a slot whose newest task ended. `history` is the slot's tasks, newest first,
/// `history[0]` being the one that ended; only the first `limit` are looked at (the ones
/// history trimming keeps). The policy is the one in that task's spec, as in Swarm.
pub fn decide(history: &[&Task], limit: usize, now: i64) -> Restart {
    let Some(last) = history.first() else {
        return Restart::Now;
    };
    let policy = last
        .spec
        .as_ref()
        .and_then(|s| s.restart)
        .unwrap_or_default();
    let (state, ended_at, exit_code) = last
        .status
        .as_ref()
        .map(|s| (s.state(), s.timestamp, s.exit_code))
        .unwrap_or((TaskState::New, 0, None));

    match policy.condition() {
        RestartCondition::Any => {}
        RestartCondition::None => return Restart::Never,
        RestartCondition::OnFailure => {
            // COMPLETE is a success unless it carries a non-zero exit code (it should not).
            if state == TaskState::Complete && exit_code.unwrap_or(0) == 0 {
                return Restart::Never;
            }
        }
    }

    if policy.max_attempts > 0 {
        let window = i64::try_from(policy.window_ms).unwrap_or(i64::MAX);
        let attempts = history
            .iter()
            .take(limit)
            .filter(|t| counts_as_attempt(t))
            .filter(|t| {
                let at = t.status.as_ref().map(|s| s.timestamp).unwrap_or(0);
                window == 0 || at >= ended_at.saturating_sub(window)
            })
            .count();
        // `attempts` includes the run that just ended: the first run plus `max_attempts`
        // restarts may all end before the slot gives up.
        if u64::try_from(attempts).unwrap_or(u64::MAX) > policy.max_attempts {
            return Restart::Never;
        }
    }

    let delay = policy.delay_ms.unwrap_or(DEFAULT_RESTART_DELAY_MS);
    let at = ended_at.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
    if now >= at {
        Restart::Now
    } else {
        Restart::At(at)
    }
}

/// A task that ended on its own (or with its node), as opposed to one stopped on purpose.
fn counts_as_attempt(task: &Task) -> bool {
    let state = task
        .status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(TaskState::New);
    matches!(
        state,
        TaskState::Complete | TaskState::Failed | TaskState::Rejected | TaskState::Orphaned
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ServiceSpec, SharedSpec, TaskStatus};

    fn ended(state: TaskState, at: i64, exit: Option<i32>, policy: RestartPolicy) -> Task {
        let mut status = TaskStatus {
            timestamp: at,
            exit_code: exit,
            ..Default::default()
        };
        status.set_state(state);
        Task {
            spec: Some(SharedSpec::new(ServiceSpec {
                restart: Some(policy),
                ..Default::default()
            })),
            status: Some(status),
            ..Default::default()
        }
    }

    fn policy(condition: RestartCondition) -> RestartPolicy {
        let mut p = RestartPolicy::default();
        p.set_condition(condition);
        p
    }

    #[test]
    fn any_restarts_after_the_default_delay() {
        let t = ended(TaskState::Complete, 1000, Some(0), RestartPolicy::default());
        assert_eq!(decide(&[&t], 5, 1000), Restart::At(6000));
        assert_eq!(decide(&[&t], 5, 5999), Restart::At(6000));
        assert_eq!(decide(&[&t], 5, 6000), Restart::Now);
    }

    #[test]
    fn a_task_without_a_policy_uses_swarms_defaults() {
        let mut t = ended(TaskState::Failed, 1000, Some(1), RestartPolicy::default());
        t.spec = None;
        assert_eq!(decide(&[&t], 5, 0), Restart::At(6000));
    }

    #[test]
    fn explicit_delay() {
        let p = RestartPolicy {
            delay_ms: Some(0),
            ..Default::default()
        };
        let t = ended(TaskState::Failed, 1000, Some(1), p);
        assert_eq!(decide(&[&t], 5, 1000), Restart::Now);
    }

    #[test]
    fn none_never_restarts() {
        let t = ended(
            TaskState::Failed,
            0,
            Some(1),
            policy(RestartCondition::None),
        );
        assert_eq!(decide(&[&t], 5, 10_000), Restart::Never);
    }

    #[test]
    fn on_failure_restarts_unless_success() {
        let p = policy(RestartCondition::OnFailure);
        let ok = ended(TaskState::Complete, 0, Some(0), p);
        let ok_no_code = ended(TaskState::Complete, 0, None, p);
        let failed = ended(TaskState::Failed, 0, Some(2), p);
        let rejected = ended(TaskState::Rejected, 0, None, p);
        let shutdown = ended(TaskState::Shutdown, 0, None, p);
        let odd = ended(TaskState::Complete, 0, Some(3), p);
        assert_eq!(decide(&[&ok], 5, 10_000), Restart::Never);
        assert_eq!(decide(&[&ok_no_code], 5, 10_000), Restart::Never);
        assert_eq!(decide(&[&failed], 5, 10_000), Restart::Now);
        assert_eq!(decide(&[&rejected], 5, 10_000), Restart::Now);
        assert_eq!(decide(&[&shutdown], 5, 10_000), Restart::Now);
        assert_eq!(decide(&[&odd], 5, 10_000), Restart::Now);
    }

    #[test]
    fn max_attempts_over_the_whole_history() {
        let p = RestartPolicy {
            max_attempts: 2,
            delay_ms: Some(0),
            ..Default::default()
        };
        let t: Vec<Task> = (0..4)
            .map(|i| ended(TaskState::Failed, 1000 - i * 100, Some(1), p))
            .collect();
        let refs: Vec<&Task> = t.iter().collect();
        // First run ended, then restart 1 ended: still one restart left.
        assert_eq!(decide(&refs[..1], 5, 2000), Restart::Now);
        assert_eq!(decide(&refs[..2], 5, 2000), Restart::Now);
        // Restart 2 ended too: give up.
        assert_eq!(decide(&refs[..3], 5, 2000), Restart::Never);
        // Only the kept history counts.
        assert_eq!(decide(&refs[..3], 2, 2000), Restart::Now);
    }

    #[test]
    fn deliberate_shutdowns_are_not_attempts() {
        let p = RestartPolicy {
            max_attempts: 1,
            delay_ms: Some(0),
            ..Default::default()
        };
        let failed = ended(TaskState::Failed, 1000, Some(1), p);
        let updated_away = ended(TaskState::Shutdown, 900, None, p);
        assert_eq!(decide(&[&failed, &updated_away], 5, 2000), Restart::Now);
        let failed_before = ended(TaskState::Failed, 900, Some(1), p);
        assert_eq!(decide(&[&failed, &failed_before], 5, 2000), Restart::Never);
    }

    #[test]
    fn window_counts_only_recent_attempts() {
        let p = RestartPolicy {
            max_attempts: 1,
            window_ms: 500,
            delay_ms: Some(0),
            ..Default::default()
        };
        let last = ended(TaskState::Failed, 10_000, Some(1), p);
        let long_ago = ended(TaskState::Failed, 9_000, Some(1), p);
        let recent = ended(TaskState::Failed, 9_600, Some(1), p);
        assert_eq!(decide(&[&last, &long_ago], 5, 20_000), Restart::Now);
        assert_eq!(decide(&[&last, &recent], 5, 20_000), Restart::Never);
    }

    #[test]
    fn history_limit_keeps_enough_to_count() {
        assert_eq!(history_limit(None), 5);
        let limit = |max_attempts| {
            history_limit(Some(&RestartPolicy {
                max_attempts,
                ..Default::default()
            }))
        };
        assert_eq!(limit(0), 5);
        assert_eq!(limit(3), 5);
        assert_eq!(limit(9), 10);
        assert_eq!(limit(u64::MAX), usize::MAX);
    }
}
